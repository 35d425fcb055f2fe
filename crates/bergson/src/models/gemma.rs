//! Gemma (the first generation): the Llama decoder with token embeddings scaled by
//! `sqrt(hidden_size)`, RMSNorms whose stored gains are offsets from 1, `head_dim` 256 by
//! default, and the tanh GELU (config.json's legacy `hidden_act: gelu` means it too).

use super::activation::Activation;
use super::config::ConfigJson;
use super::llama::{load_decoder, DecoderConfig};
use super::loader::TensorSource;
use super::norm::RmsGain;
use super::CausalLm;
use crate::Result;
use tch::{Device, Kind};

/// Gemma's config.json as decoder settings (transformers' `GemmaConfig` defaults).
pub fn config(cfg: &ConfigJson) -> Result<DecoderConfig> {
    if cfg.bool(&["use_bidirectional_attention"])? == Some(true) {
        return Err(cfg.error(
            "use_bidirectional_attention is not supported (bergson-rs models are causal); set it \
             to false in config.json",
        ));
    }
    let mut c = DecoderConfig::common(cfg, "gemma")?;
    if cfg.int(&["head_dim"])?.is_none() {
        c.head_dim = 256;
    }
    if cfg.int(&["num_key_value_heads"])?.is_none() {
        c.num_kv_heads = 16;
        if c.num_heads % 16 != 0 {
            return Err(cfg.error(format!(
                "num_attention_heads {} is not a multiple of the default num_key_value_heads 16; \
                 give num_key_value_heads in config.json",
                c.num_heads
            )));
        }
    }
    if !cfg.has("pad_token_id") {
        c.pad_token_id = Some(0);
    }
    // `GemmaConfig` turns the official releases' legacy "gelu" into the tanh approximation.
    c.hidden_act = match super::activation(cfg, &["hidden_act"], "gelu_pytorch_tanh")? {
        Activation::Gelu => Activation::GeluTanh,
        other => other,
    };
    c.tie_word_embeddings = super::tie_word_embeddings(cfg, true)?;
    let attention_bias = cfg.bool(&["attention_bias"])?.unwrap_or(false);
    c.qkv_bias = attention_bias;
    c.o_bias = attention_bias;
    c.norm_gain = RmsGain::UnitOffset;
    c.embed_scale = true;
    Ok(c)
}

/// Registry entry for `gemma`.
pub fn load(
    cfg: &ConfigJson,
    weights: &dyn TensorSource,
    kind: Kind,
    device: Device,
) -> Result<Box<dyn CausalLm>> {
    load_decoder(config(cfg)?, weights, kind, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const DIMS: &str = r#""vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 16, "max_position_embeddings": 2048"#;

    fn parse(text: &str) -> Result<DecoderConfig> {
        config(&ConfigJson::parse(text, Path::new("config.json")).unwrap())
    }

    #[test]
    fn defaults_and_the_legacy_gelu() {
        let c = parse(&format!(r#"{{{DIMS}, "hidden_act": "gelu"}}"#)).unwrap();
        assert_eq!(
            (c.head_dim, c.num_kv_heads, c.pad_token_id),
            (256, 16, Some(0))
        );
        assert_eq!(c.hidden_act, Activation::GeluTanh);
        assert!(c.tie_word_embeddings && c.embed_scale && !c.sandwich_norms && !c.qk_norm);
        assert_eq!(c.norm_gain, RmsGain::UnitOffset);
        let e = parse(&format!(
            r#"{{{DIMS}, "use_bidirectional_attention": true}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("use_bidirectional_attention"), "{e}");
    }
}
