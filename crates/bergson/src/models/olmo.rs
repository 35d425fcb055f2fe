//! OLMo (the first generation, `allenai/OLMo-*-hf`): the Llama decoder with parameter-free
//! LayerNorms in place of the RMSNorms, optional `clip_qkv` clamping, and q/k rotated in
//! float32.

use super::config::ConfigJson;
use super::llama::DecoderConfig;
use crate::Result;

/// OLMo's config.json as decoder settings (transformers' `OlmoConfig` defaults).
pub fn config(cfg: &ConfigJson) -> Result<DecoderConfig> {
    let mut c = DecoderConfig::common(cfg, "olmo")?;
    if !cfg.has("pad_token_id") {
        c.pad_token_id = Some(1);
    }
    c.read_attention_bias(cfg)?;
    c.clip_qkv = cfg.float(&["clip_qkv"])?;
    if let Some(clip) = c.clip_qkv {
        if clip.is_nan() || clip <= 0.0 {
            return Err(cfg.error(format!(
                "clip_qkv {clip} must be positive or null; fix config.json"
            )));
        }
    }
    c.plain_layer_norm = true;
    c.rotary_in_float = true;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const DIMS: &str = r#""vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 2048"#;

    fn parse(text: &str) -> Result<DecoderConfig> {
        config(&ConfigJson::parse(text, Path::new("config.json")).unwrap())
    }

    #[test]
    fn settings_and_errors() {
        let c = parse(&format!(r#"{{{DIMS}, "clip_qkv": 8.0}}"#)).unwrap();
        assert!(c.plain_layer_norm && c.rotary_in_float && !c.post_norms && !c.qk_norm);
        assert_eq!((c.clip_qkv, c.pad_token_id), (Some(8.0), Some(1)));
        let e = parse(&format!(r#"{{{DIMS}, "clip_qkv": -1}}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("clip_qkv -1 must be positive"), "{e}");
    }
}
