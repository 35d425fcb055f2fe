//! Qwen3: the Llama decoder with an RMSNorm on every query and key head (`q_norm`, `k_norm`)
//! before the rotation, `attention_bias` on all four projections, explicit `head_dim`, and
//! Qwen2's per-layer sliding windows.

use super::config::ConfigJson;
use super::llama::{positive_window, qwen_sliding_windows, DecoderConfig};
use crate::Result;

/// Qwen3's config.json as decoder settings.
pub fn config(cfg: &ConfigJson) -> Result<DecoderConfig> {
    let mut c = DecoderConfig::common(cfg, "qwen3")?;
    // transformers' Qwen3Config defaults head_dim to 128 rather than hidden / heads.
    if cfg.int(&["head_dim"])?.is_none() {
        c.head_dim = 128;
    }
    c.read_attention_bias(cfg)?;
    c.qk_norm = true;
    c.sliding_windows = qwen_sliding_windows(cfg, c.num_layers)?
        .into_iter()
        .map(|w| positive_window(cfg, w))
        .collect::<Result<_>>()?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const DIMS: &str = r#""vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048"#;

    fn parse(text: &str) -> DecoderConfig {
        config(&ConfigJson::parse(text, Path::new("config.json")).unwrap()).unwrap()
    }

    #[test]
    fn old_and_new_spellings() {
        let old = parse(&format!(
            r#"{{{DIMS}, "head_dim": 16, "rope_theta": 1000000, "rope_scaling": null, "use_sliding_window": false,
            "sliding_window": null, "max_window_layers": 28, "torch_dtype": "bfloat16", "tie_word_embeddings": true}}"#
        ));
        let new = parse(&format!(
            r#"{{{DIMS}, "head_dim": 16, "rope_parameters": {{"rope_type": "default", "rope_theta": 1000000.0}},
            "layer_types": ["full_attention", "full_attention"], "dtype": "bfloat16", "tie_word_embeddings": true}}"#
        ));
        assert_eq!(old, new);
        assert!(old.qk_norm && !old.qkv_bias && old.tie_word_embeddings);
        assert_eq!(old.sliding_windows, vec![None, None]);
        // Qwen3's default head_dim is 128, not hidden / heads.
        assert_eq!(parse(&format!("{{{DIMS}}}")).head_dim, 128);
        assert!(parse(&format!(r#"{{{DIMS}, "attention_bias": true}}"#)).o_bias);
    }
}
