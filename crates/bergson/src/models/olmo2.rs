//! OLMo-2: the Llama decoder with its norms moved after the blocks (the attention and MLP
//! outputs are normalised before each residual add; no input norm), an RMSNorm on the whole
//! query and key projections, gains applied before the cast back to the model dtype, and q/k
//! rotated in float32.

use super::config::ConfigJson;
use super::llama::DecoderConfig;
use super::norm::RmsGain;
use crate::Result;

/// OLMo-2's config.json as decoder settings (transformers' `Olmo2Config` defaults).
pub fn config(cfg: &ConfigJson) -> Result<DecoderConfig> {
    let mut c = DecoderConfig::common(cfg, "olmo2")?;
    olmo2_layout(cfg, &mut c)?;
    Ok(c)
}

/// The settings OLMo-2 and OLMo-3 share on top of [`DecoderConfig::common`].
pub fn olmo2_layout(cfg: &ConfigJson, c: &mut DecoderConfig) -> Result<()> {
    c.rms_norm_eps = cfg.norm_eps(&["rms_norm_eps"], 1e-5)?;
    if !cfg.has("pad_token_id") {
        c.pad_token_id = Some(1);
    }
    c.read_attention_bias(cfg)?;
    c.qk_norm = true;
    c.qk_norm_whole = true;
    c.post_norms = true;
    c.norm_gain = RmsGain::BeforeCast;
    c.rotary_in_float = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> DecoderConfig {
        config(&ConfigJson::parse(text, Path::new("config.json")).unwrap()).unwrap()
    }

    #[test]
    fn defaults_follow_olmo2_config() {
        let c = parse(
            r#"{"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 2048}"#,
        );
        assert_eq!((c.rms_norm_eps, c.pad_token_id), (1e-5, Some(1)));
        assert!(c.post_norms && c.qk_norm_whole && c.rotary_in_float);
        assert_eq!(c.norm_gain, RmsGain::BeforeCast);
        assert!(!c.qkv_bias && !c.o_bias && c.num_kv_heads == 4);
        let c = parse(
            r#"{"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
            "pad_token_id": null, "attention_bias": true, "rms_norm_eps": 1e-6}"#,
        );
        assert_eq!(
            (c.rms_norm_eps, c.pad_token_id, c.num_kv_heads),
            (1e-6, None, 2)
        );
        assert!(c.qkv_bias && c.o_bias);
    }
}
