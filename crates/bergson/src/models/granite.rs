//! Granite (IBM): the Llama decoder with four scalar multipliers, `embedding_multiplier` on the
//! token embeddings, `attention_multiplier` as the score scale (in place of `head_dim^-0.5`),
//! `residual_multiplier` on each block's output before its residual add, and the logits divided
//! by `logits_scaling`.

use super::config::ConfigJson;
use super::llama::DecoderConfig;
use crate::Result;

/// Granite's config.json as decoder settings (transformers' `GraniteConfig` defaults).
pub fn config(cfg: &ConfigJson) -> Result<DecoderConfig> {
    let mut c = DecoderConfig::common(cfg, "granite")?;
    c.read_attention_bias(cfg)?;
    c.mlp_bias = cfg.bool(&["mlp_bias"])?.unwrap_or(false);
    let multiplier = |key: &str, positive: bool| -> Result<f64> {
        let v = cfg.float(&[key])?.unwrap_or(1.0);
        let ok = v.is_finite() && (!positive || v > 0.0);
        if !ok {
            let want = if positive { "a positive" } else { "a finite" };
            return Err(cfg.error(format!("{key} {v} must be {want} number; fix config.json")));
        }
        Ok(v)
    };
    c.embedding_multiplier = multiplier("embedding_multiplier", false)?;
    c.residual_multiplier = multiplier("residual_multiplier", false)?;
    c.attn_scale = Some(multiplier("attention_multiplier", false)?);
    c.logits_divisor = multiplier("logits_scaling", true)?;
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

    /// `GraniteConfig`'s defaults: every multiplier 1, and the score scale is
    /// `attention_multiplier` itself (1), not `head_dim^-0.5`.
    #[test]
    fn defaults_and_settings() {
        let c = parse(&format!("{{{DIMS}}}")).unwrap();
        assert_eq!(
            (
                c.embedding_multiplier,
                c.residual_multiplier,
                c.logits_divisor
            ),
            (1.0, 1.0, 1.0)
        );
        assert_eq!(c.attn_scale, Some(1.0));
        assert!(!c.qkv_bias && !c.mlp_bias && !c.tie_word_embeddings);
        let c = parse(&format!(
            r#"{{{DIMS}, "embedding_multiplier": 12.0, "residual_multiplier": 0.22, "attention_multiplier": 0.0078125,
            "logits_scaling": 8.0, "attention_bias": true, "mlp_bias": true}}"#
        ))
        .unwrap();
        assert_eq!(
            (
                c.embedding_multiplier,
                c.residual_multiplier,
                c.logits_divisor
            ),
            (12.0, 0.22, 8.0)
        );
        assert_eq!(c.attn_scale, Some(0.0078125));
        assert!(c.qkv_bias && c.o_bias && c.mlp_bias);
    }

    #[test]
    fn bad_multipliers_are_refused() {
        for (extra, want) in [
            (r#""logits_scaling": 0"#, "logits_scaling 0"),
            (r#""logits_scaling": -2.0"#, "logits_scaling -2"),
            (r#""embedding_multiplier": "x""#, "embedding_multiplier"),
        ] {
            let e = parse(&format!("{{{DIMS}, {extra}}}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{extra}: {e}");
        }
    }
}
