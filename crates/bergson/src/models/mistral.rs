//! Mistral: the Llama decoder without biases, with a sliding attention window on every layer
//! (`sliding_window`, 4096 when absent as in transformers, `null` for none).

use super::config::ConfigJson;
use super::llama::{positive_window, DecoderConfig};
use crate::Result;

/// Mistral's config.json as decoder settings.
pub fn config(cfg: &ConfigJson) -> Result<DecoderConfig> {
    let mut c = DecoderConfig::common(cfg, "mistral")?;
    let window = if cfg.is_null("sliding_window") {
        None
    } else {
        Some(cfg.int(&["sliding_window"])?.unwrap_or(4096))
    };
    let window = positive_window(cfg, window)?;
    c.sliding_windows = vec![window; c.num_layers as usize];
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(extra: &str) -> Result<DecoderConfig> {
        let text = format!(
            r#"{{"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048{extra}}}"#
        );
        config(&ConfigJson::parse(&text, Path::new("config.json")).unwrap())
    }

    #[test]
    fn sliding_window_spellings() {
        assert_eq!(
            parse(r#", "sliding_window": 4"#).unwrap().sliding_windows,
            vec![Some(4), Some(4)]
        );
        // Mistral v0.2+ disables the window with null; an absent key means transformers' 4096.
        assert_eq!(
            parse(r#", "sliding_window": null"#)
                .unwrap()
                .sliding_windows,
            vec![None, None]
        );
        assert_eq!(
            parse("").unwrap().sliding_windows,
            vec![Some(4096), Some(4096)]
        );
        let c = parse(r#", "rope_theta": 1000000.0, "head_dim": 16"#).unwrap();
        assert_eq!((c.rope.theta, c.head_dim), (1e6, 16));
        assert!(!c.qkv_bias && !c.o_bias && !c.mlp_bias && !c.qk_norm);
        assert!(parse(r#", "sliding_window": 0"#).is_err());
    }
}
