//! Gemma-2: the Llama decoder with token embeddings scaled by `sqrt(hidden_size)`, RMSNorms
//! whose stored gains are offsets from 1, four norms per layer (before and after the attention
//! and the MLP), scores scaled by `query_pre_attn_scalar^-0.5` and soft-capped
//! (`attn_logit_softcapping`, default 50), sliding-window attention on every other layer
//! (`layer_types`), the tanh GELU, and soft-capped logits (`final_logit_softcapping`, default
//! 30). transformers runs Gemma-2 with its eager attention only (SDPA cannot cap scores), and so
//! do we whenever scores are capped.

use super::config::ConfigJson;
use super::llama::{sliding_layer_types, window_or, DecoderConfig};
use super::norm::RmsGain;
use crate::Result;

/// Gemma-2's config.json as decoder settings (transformers' `Gemma2Config` defaults).
pub fn config(cfg: &ConfigJson) -> Result<DecoderConfig> {
    let mut c = sandwich_decoder(cfg, "gemma2")?;
    let sliding = match sliding_layer_types(cfg, c.num_layers)? {
        Some(flags) => flags,
        None => (0..c.num_layers).map(|i| (i + 1) % 2 != 0).collect(),
    };
    let window = window_or(cfg, 4096)?;
    c.sliding_windows = sliding.iter().map(|&s| window.filter(|_| s)).collect();
    c.attn_softcap = softcap(cfg, "attn_logit_softcapping", 50.0)?;
    c.final_softcap = softcap(cfg, "final_logit_softcapping", 30.0)?;
    Ok(c)
}

/// What Gemma-2 and Gemma-3 share: the `gemma` settings (scaled embeddings, `1 + w` norms,
/// `head_dim` 256, pad id 0, tied head, the tanh GELU from `hidden_activation`), four norms
/// per layer, the score scale `query_pre_attn_scalar^-0.5` (default 256) and `default_kv_heads`
/// key/value heads by default.
pub fn sandwich_decoder(cfg: &ConfigJson, model_type: &str) -> Result<DecoderConfig> {
    super::gemma::refuse_bidirectional(cfg)?;
    let mut c = DecoderConfig::common(cfg, model_type)?;
    if c.hidden_size % c.num_heads != 0 {
        // transformers' `validate_architecture` refuses it even with an explicit head_dim.
        return Err(cfg.error(format!(
            "hidden_size {} is not a multiple of num_attention_heads {}; fix config.json",
            c.hidden_size, c.num_heads
        )));
    }
    if cfg.int(&["head_dim"])?.is_none() {
        c.head_dim = 256;
    }
    c.default_kv_heads(cfg, 4)?;
    if !cfg.has("pad_token_id") {
        c.pad_token_id = Some(0);
    }
    c.hidden_act = super::activation(cfg, &["hidden_activation"], "gelu_pytorch_tanh")?;
    c.tie_word_embeddings = super::tie_word_embeddings(cfg, true)?;
    c.read_attention_bias(cfg)?;
    c.norm_gain = RmsGain::UnitOffset;
    c.sandwich_norms = true;
    c.embed_scale = true;
    let scalar = cfg.float(&["query_pre_attn_scalar"])?.unwrap_or(256.0);
    if scalar.is_nan() || scalar <= 0.0 {
        return Err(cfg.error(format!(
            "query_pre_attn_scalar {scalar} must be positive; fix config.json"
        )));
    }
    c.attn_scale = Some(scalar.powf(-0.5));
    Ok(c)
}

/// A soft-capping setting: `null` for none, `default` when absent, else a positive number.
fn softcap(cfg: &ConfigJson, key: &str, default: f64) -> Result<Option<f64>> {
    if cfg.is_null(key) {
        return Ok(None);
    }
    let cap = cfg.float(&[key])?.unwrap_or(default);
    if !(cap.is_finite() && cap > 0.0) {
        return Err(cfg.error(format!(
            "{key} {cap} must be a positive number (or null for none); fix config.json"
        )));
    }
    Ok(Some(cap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const DIMS: &str = r#""vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
        "num_attention_heads": 4, "max_position_embeddings": 2048"#;

    fn parse(text: &str) -> Result<DecoderConfig> {
        config(&ConfigJson::parse(text, Path::new("config.json")).unwrap())
    }

    #[test]
    fn defaults_follow_gemma2_config() {
        let c = parse(&format!("{{{DIMS}}}")).unwrap();
        assert_eq!(
            (c.head_dim, c.num_kv_heads, c.pad_token_id),
            (256, 4, Some(0))
        );
        assert_eq!(c.attn_scale, Some(1.0 / 16.0));
        assert_eq!((c.attn_softcap, c.final_softcap), (Some(50.0), Some(30.0)));
        let w = Some(4096);
        assert_eq!(c.sliding_windows, vec![w, None, w, None]);
        assert_eq!(c.rope.theta, 10_000.0);
        assert!(c.tie_word_embeddings && c.sandwich_norms && c.embed_scale && !c.qk_norm);
        assert_eq!(c.norm_gain, RmsGain::UnitOffset);
        assert!(c.sliding_rope.is_none());
    }

    #[test]
    fn explicit_settings() {
        let c = parse(&format!(
            r#"{{{DIMS}, "attn_logit_softcapping": null, "final_logit_softcapping": 5.5, "sliding_window": 8,
            "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
            "query_pre_attn_scalar": 64, "head_dim": 8}}"#
        ))
        .unwrap();
        assert_eq!((c.attn_softcap, c.final_softcap), (None, Some(5.5)));
        assert_eq!(c.sliding_windows, vec![None, Some(8), Some(8), None]);
        assert_eq!((c.attn_scale, c.head_dim), (Some(0.125), 8));
        let c = parse(&format!(r#"{{{DIMS}, "sliding_window": null}}"#)).unwrap();
        assert_eq!(c.sliding_windows, vec![None; 4]);
    }

    #[test]
    fn bad_settings_are_refused() {
        for (extra, want) in [
            (
                r#""final_logit_softcapping": 0"#,
                "final_logit_softcapping 0",
            ),
            (
                r#""attn_logit_softcapping": -1.0"#,
                "attn_logit_softcapping -1",
            ),
            (r#""attn_logit_softcapping": "x""#, "attn_logit_softcapping"),
            (
                r#""use_bidirectional_attention": true"#,
                "use_bidirectional_attention",
            ),
            (r#""query_pre_attn_scalar": 0"#, "query_pre_attn_scalar 0"),
            (r#""sliding_window": 0"#, "sliding_window"),
            (
                r#""num_attention_heads": 5, "head_dim": 8"#,
                "not a multiple",
            ),
        ] {
            let e = parse(&format!("{{{DIMS}, {extra}}}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{extra}: {e}");
        }
    }
}
