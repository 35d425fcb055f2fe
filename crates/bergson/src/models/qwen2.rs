//! Qwen2: the Llama decoder with biases on q, k and v (not o), and per-layer sliding windows
//! (`use_sliding_window`, `sliding_window`, `max_window_layers` or `layer_types`).

use super::config::ConfigJson;
use super::llama::{positive_window, qwen_sliding_windows, DecoderConfig};
use crate::Result;

/// Qwen2's config.json as decoder settings.
pub fn config(cfg: &ConfigJson) -> Result<DecoderConfig> {
    let mut c = DecoderConfig::common(cfg, "qwen2")?;
    c.qkv_bias = true;
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

    /// Qwen2.5's config.json (transformers 4) and a transformers 5 re-save agree.
    #[test]
    fn old_and_new_spellings() {
        let old = parse(&format!(
            r#"{{{DIMS}, "rope_theta": 1000000.0, "rope_scaling": null, "use_sliding_window": true,
            "sliding_window": 4, "max_window_layers": 1, "torch_dtype": "bfloat16", "tie_word_embeddings": false}}"#
        ));
        let new = parse(&format!(
            r#"{{{DIMS}, "rope_parameters": {{"rope_type": "default", "rope_theta": 1000000.0}}, "use_sliding_window": true,
            "sliding_window": 4, "max_window_layers": 1, "layer_types": ["full_attention", "sliding_attention"], "dtype": "bfloat16"}}"#
        ));
        assert_eq!(old, new);
        assert_eq!(old.sliding_windows, vec![None, Some(4)]);
        assert!(old.qkv_bias && !old.o_bias && !old.mlp_bias);
    }
}
