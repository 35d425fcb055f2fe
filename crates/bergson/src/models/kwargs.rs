//! `--model_kwargs`: the extra `from_pretrained` arguments Bergson passes through
//! (`key=value,key=value`, parsed as Bergson's `simple_parse_kwargs_string` parses them).
//!
//! transformers gives a keyword that names a config attribute to the config (it overrides
//! config.json), `attn_implementation` picks the attention kernel, and a few loader options
//! change nothing we compute. We honour exactly those: config overrides reach the
//! architecture's config reader, `eager` / `sdpa` pick our math / fused kernel, and anything
//! else is refused in one line rather than silently ignored.

use super::attention::AttentionKernel;
use crate::kwargs::parse_kwargs_string;
pub use crate::kwargs::KwargValue;
use crate::{Error, Result};

/// Loader options of `from_pretrained` that change nothing we compute.
const NO_EFFECT: &[&str] = &[
    "trust_remote_code",
    "low_cpu_mem_usage",
    "local_files_only",
    "force_download",
    "token",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
];

/// Keywords Bergson itself passes to `from_pretrained`: giving them again is a Python
/// `TypeError` (multiple values), so each names the flag to use instead.
const OWN_FLAGS: &[(&str, &str)] = &[
    ("dtype", "--precision"),
    ("torch_dtype", "--precision"),
    ("revision", "--revision"),
    ("device_map", "nothing (bergson-rs places the model itself)"),
    ("quantization_config", "--precision"),
];

/// Rotary settings: transformers 5 folds them into `rope_parameters` while it loads the
/// config, so as keywords they reach the model's `__init__` and Python fails
/// (`unexpected keyword argument`).
const ROPE_KEYS: &[&str] = &[
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "rope_type",
    "rotary_emb_base",
    "rotary_pct",
    "partial_rotary_factor",
];

/// transformers' `attribute_map` aliases (GPT-2's names): setting the alias sets the key
/// config.json holds.
pub const ALIASES: &[(&str, &str)] = &[
    ("hidden_size", "n_embd"),
    ("max_position_embeddings", "n_positions"),
    ("num_attention_heads", "n_head"),
    ("num_hidden_layers", "n_layer"),
];

/// Parsed `--model_kwargs`, checked against what bergson-rs can honour.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelKwargs {
    /// Attention kernel asked for by `attn_implementation`.
    pub attention: Option<AttentionKernel>,
    /// Config attributes to override, in the order given.
    pub config: Vec<(String, KwargValue)>,
}

impl ModelKwargs {
    /// Parses `key=value,...` as Bergson does and sorts the keys into attention, config
    /// overrides and harmless loader options; anything else is a one-line error.
    pub fn parse(text: &str) -> Result<Self> {
        let mut out = Self::default();
        for (key, value) in parse_kwargs_string("--model_kwargs", text)? {
            out.add(&key, value)?;
        }
        Ok(out)
    }

    fn add(&mut self, key: &str, value: KwargValue) -> Result<()> {
        if key == "attn_implementation" {
            self.attention = Some(match &value {
                KwargValue::Str(s) if s == "eager" => AttentionKernel::Math,
                KwargValue::Str(s) if s == "sdpa" => AttentionKernel::Fused,
                other => {
                    return Err(Error::input(format!(
                        "--model_kwargs attn_implementation={other} is not supported by bergson-rs; use eager or sdpa"
                    )))
                }
            });
            return Ok(());
        }
        if let Some((_, flag)) = OWN_FLAGS.iter().find(|(k, _)| *k == key) {
            return Err(Error::input(format!(
                "--model_kwargs {key}=... is set by Bergson itself (Python raises 'got multiple values'); use {flag}"
            )));
        }
        if ROPE_KEYS.contains(&key) {
            return Err(Error::input(format!(
                "--model_kwargs {key}=...: transformers 5 moves rotary settings into rope_parameters, so from_pretrained refuses them as keywords (Python Bergson fails too); edit rope_parameters in the checkpoint's config.json instead"
            )));
        }
        if NO_EFFECT.contains(&key) {
            tracing::info!("--model_kwargs {key}={value} changes nothing bergson-rs computes");
            return Ok(());
        }
        self.config.retain(|(k, _)| k != key);
        self.config.push((key.to_string(), value));
        Ok(())
    }

    /// True when no keyword was given that changes the model.
    pub fn is_empty(&self) -> bool {
        self.attention.is_none() && self.config.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_into_attention_config_and_loader_options() {
        let k = ModelKwargs::parse(
            " attn_implementation = eager, num_hidden_layers=1,trust_remote_code=true,rms_norm_eps=1e-5",
        )
        .unwrap();
        assert_eq!(k.attention, Some(AttentionKernel::Math));
        assert_eq!(
            k.config,
            vec![
                ("num_hidden_layers".to_string(), KwargValue::Int(1)),
                ("rms_norm_eps".to_string(), KwargValue::Float(1e-5))
            ]
        );
        assert!(ModelKwargs::parse("").unwrap().is_empty());
        assert!(ModelKwargs::parse("use_cache=false").unwrap().is_empty());
        assert_eq!(
            ModelKwargs::parse("attn_implementation=sdpa")
                .unwrap()
                .attention,
            Some(AttentionKernel::Fused)
        );
    }

    #[test]
    fn bad_kwargs_are_refused_in_one_line() {
        for (text, needle) in [
            (
                "attn_implementation",
                "invalid argument 'attn_implementation'",
            ),
            ("=3", "invalid argument"),
            ("a b=3", "invalid key 'a b'"),
            ("attn_implementation=flash_attention_2", "use eager or sdpa"),
            ("dtype=float16", "use --precision"),
            ("revision=main", "use --revision"),
            ("rope_theta=500000", "edit rope_parameters"),
        ] {
            let e = ModelKwargs::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
