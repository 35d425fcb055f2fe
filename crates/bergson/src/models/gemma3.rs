//! Gemma-3 (text, `gemma3_text`): the Llama decoder with token embeddings scaled by
//! `sqrt(hidden_size)`, RMSNorms whose stored gains are offsets from 1, four norms per layer
//! (before and after the attention and the MLP), an RMSNorm on every query and key head, scores
//! scaled by `query_pre_attn_scalar^-0.5`, sliding-window attention on the layers `layer_types`
//! marks `sliding_attention` (by default five of every six) with their own rotary settings, and
//! the tanh GELU.

use super::config::ConfigJson;
use super::llama::{sliding_layer_types, window_or, DecoderConfig};
use super::rotary::{RopeConfig, LLAMA_ROPE_KEYS};
use crate::Result;

/// Gemma-3's config.json as decoder settings (transformers' `Gemma3TextConfig` defaults).
pub fn config(cfg: &ConfigJson) -> Result<DecoderConfig> {
    refuse_unsupported(cfg)?;
    let mut c = super::gemma2::sandwich_decoder(cfg, "gemma3_text")?;
    c.qk_norm = true;
    let sliding = match sliding_layer_types(cfg, c.num_layers)? {
        Some(flags) => flags,
        None => {
            let pattern = cfg.int(&["sliding_window_pattern"])?.unwrap_or(6);
            if pattern <= 0 {
                return Err(cfg.error(format!(
                    "sliding_window_pattern {pattern} must be positive; fix config.json"
                )));
            }
            (0..c.num_layers).map(|i| (i + 1) % pattern != 0).collect()
        }
    };
    let window = window_or(cfg, 4096)?;
    c.sliding_windows = sliding.iter().map(|&s| window.filter(|_| s)).collect();
    let full_theta = cfg.float(&["rope_theta"])?.unwrap_or(1_000_000.0);
    let sliding_theta = cfg.float(&["rope_local_base_freq"])?.unwrap_or(10_000.0);
    let [full, sliding_rope] =
        RopeConfig::per_layer_type(cfg, LLAMA_ROPE_KEYS, full_theta, sliding_theta)?;
    c.rope = full;
    c.sliding_rope = Some((sliding_rope, sliding));
    Ok(c)
}

/// Settings transformers honours that this decoder does not implement: each refused in one line.
fn refuse_unsupported(cfg: &ConfigJson) -> Result<()> {
    for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
        if let Some(cap) = cfg.float(&[key])? {
            return Err(cfg.error(format!(
                "{key} {cap} is not supported for gemma3_text (Gemma-3 checkpoints leave it null); \
                 set it to null in config.json"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::norm::RmsGain;
    use crate::models::rotary::RopeScaling;
    use std::path::Path;

    const DIMS: &str = r#""vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 6,
        "num_attention_heads": 4, "max_position_embeddings": 2048"#;

    fn parse(text: &str) -> Result<DecoderConfig> {
        config(&ConfigJson::parse(text, Path::new("config.json")).unwrap())
    }

    #[test]
    fn defaults_follow_gemma3_text_config() {
        let c = parse(&format!("{{{DIMS}}}")).unwrap();
        assert_eq!(
            (c.head_dim, c.num_kv_heads, c.pad_token_id),
            (256, 4, Some(0))
        );
        assert_eq!(c.attn_scale, Some(1.0 / 16.0));
        let w = Some(4096);
        assert_eq!(c.sliding_windows, vec![w, w, w, w, w, None]);
        let (sliding_rope, _) = c.sliding_rope.clone().unwrap();
        assert_eq!((c.rope.theta, sliding_rope.theta), (1e6, 1e4));
        assert!(c.tie_word_embeddings && c.sandwich_norms && c.embed_scale && c.qk_norm);
        assert_eq!(c.norm_gain, RmsGain::UnitOffset);
    }

    /// The hub's spelling (`rope_theta`, `rope_local_base_freq`, `rope_scaling` for the global
    /// layers, `sliding_window_pattern`) and transformers 5's re-save mean the same model.
    #[test]
    fn old_and_new_spellings() {
        let old = parse(&format!(
            r#"{{{DIMS}, "head_dim": 8, "num_key_value_heads": 1, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
            "rope_scaling": {{"rope_type": "linear", "factor": 8.0}}, "sliding_window": 512, "sliding_window_pattern": 3,
            "query_pre_attn_scalar": 8}}"#
        ))
        .unwrap();
        let new = parse(&format!(
            r#"{{{DIMS}, "head_dim": 8, "num_key_value_heads": 1, "sliding_window": 512, "query_pre_attn_scalar": 8,
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention",
            "sliding_attention", "full_attention"], "rope_parameters": {{"full_attention": {{"rope_type": "linear",
            "factor": 8.0, "rope_theta": 1000000.0}}, "sliding_attention": {{"rope_type": "default",
            "rope_theta": 10000.0}}}}}}"#
        ))
        .unwrap();
        assert_eq!(old, new);
        assert_eq!(old.rope.scaling, RopeScaling::Linear { factor: 8.0 });
    }

    #[test]
    fn unsupported_settings_are_refused() {
        for (extra, want) in [
            (
                r#""final_logit_softcapping": 30.0"#,
                "final_logit_softcapping 30",
            ),
            (
                r#""attn_logit_softcapping": 50.0"#,
                "attn_logit_softcapping 50",
            ),
            (
                r#""use_bidirectional_attention": true"#,
                "use_bidirectional_attention",
            ),
            (r#""query_pre_attn_scalar": 0"#, "query_pre_attn_scalar 0"),
            (r#""sliding_window_pattern": 0"#, "sliding_window_pattern 0"),
        ] {
            let e = parse(&format!("{{{DIMS}, {extra}}}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
