//! Gemma (the first generation): the Llama decoder with token embeddings scaled by
//! `sqrt(hidden_size)`, RMSNorms whose stored gains are offsets from 1, `head_dim` 256 by
//! default, and the tanh GELU (config.json's legacy `hidden_act: gelu` means it too).

use super::activation::Activation;
use super::config::ConfigJson;
use super::llama::DecoderConfig;
use super::norm::RmsGain;
use crate::Result;

/// Gemma's config.json as decoder settings (transformers' `GemmaConfig` defaults).
pub fn config(cfg: &ConfigJson) -> Result<DecoderConfig> {
    refuse_bidirectional(cfg)?;
    let mut c = DecoderConfig::common(cfg, "gemma")?;
    if cfg.int(&["head_dim"])?.is_none() {
        c.head_dim = 256;
    }
    c.default_kv_heads(cfg, 16)?;
    if !cfg.has("pad_token_id") {
        c.pad_token_id = Some(0);
    }
    // `GemmaConfig` turns the official releases' legacy "gelu" into the tanh approximation.
    c.hidden_act = match super::activation(cfg, &["hidden_act"], "gelu_pytorch_tanh")? {
        Activation::Gelu => Activation::GeluTanh,
        other => other,
    };
    c.tie_word_embeddings = super::tie_word_embeddings(cfg, true)?;
    c.read_attention_bias(cfg)?;
    c.norm_gain = RmsGain::UnitOffset;
    c.embed_scale = true;
    Ok(c)
}

/// Gemma's `use_bidirectional_attention` (an encoder setting) is refused: our models are causal.
pub fn refuse_bidirectional(cfg: &ConfigJson) -> Result<()> {
    if cfg.bool(&["use_bidirectional_attention"])? == Some(true) {
        return Err(cfg.error(
            "use_bidirectional_attention is not supported (bergson-rs models are causal); set it \
             to false in config.json",
        ));
    }
    Ok(())
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
