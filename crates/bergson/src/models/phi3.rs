//! Phi-3 (and Phi-3.5 / Phi-4-mini): the Llama decoder with fused projections (`qkv_proj`,
//! `gate_up_proj`), an optional sliding window on every layer, optional partial rotation, and
//! LongRoPE (`longrope`, which older configs call `su` or `yarn`).

use super::config::ConfigJson;
use super::llama::{positive_window, DecoderConfig};
use super::rotary::{RopeKeys, RopeScaling};
use crate::Result;

/// Phi-3's rotary keys: the Llama family's, with its older `rope_type` names for LongRoPE.
const PHI3_ROPE_KEYS: RopeKeys = RopeKeys {
    theta: &["rope_theta"],
    partial: &["partial_rotary_factor"],
    default_partial: 1.0,
    longrope_aliases: &["su", "yarn"],
};

/// Phi-3's config.json as decoder settings (transformers' `Phi3Config` defaults).
pub fn config(cfg: &ConfigJson) -> Result<DecoderConfig> {
    let mut c = DecoderConfig::common_partial_rotation(cfg, "phi3", PHI3_ROPE_KEYS)?;
    // `Phi3Config.validate_rope` accepts these two only.
    if !matches!(
        c.rope.scaling,
        RopeScaling::Default | RopeScaling::LongRope { .. }
    ) {
        return Err(cfg.error(
            "phi3 supports rope_type default or longrope only (as transformers' Phi3Config); fix config.json",
        ));
    }
    c.rms_norm_eps = cfg.norm_eps(&["rms_norm_eps"], 1e-5)?;
    if !cfg.has("pad_token_id") {
        c.pad_token_id = Some(32000);
    }
    let window = positive_window(cfg, cfg.int(&["sliding_window"])?)?;
    c.sliding_windows = vec![window; c.num_layers as usize];
    c.fused_projections = true;
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

    /// Phi-3-mini-128k's spelling (`su`, top-level original length) and transformers 5's
    /// (`longrope` in `rope_parameters`) mean the same model.
    #[test]
    fn longrope_spellings() {
        let short = "[1.0, 1.5, 2.0, 2.5]";
        let long = "[3.0, 3.5, 4.0, 4.5]";
        let old = parse(&format!(
            r#"{{{DIMS}, "original_max_position_embeddings": 256, "sliding_window": 8,
            "rope_scaling": {{"type": "su", "short_factor": {short}, "long_factor": {long}}}}}"#
        ))
        .unwrap();
        let new = parse(&format!(
            r#"{{{DIMS}, "sliding_window": 8, "rope_parameters": {{"rope_type": "longrope", "rope_theta": 10000.0,
            "original_max_position_embeddings": 256, "short_factor": {short}, "long_factor": {long}}}}}"#
        ))
        .unwrap();
        assert_eq!(old, new);
        let RopeScaling::LongRope {
            attention_factor,
            original_max_position_embeddings,
            ..
        } = old.rope.scaling
        else {
            panic!("longrope expected, got {:?}", old.rope.scaling)
        };
        // factor 2048 / 256 = 8: sqrt(1 + ln 8 / ln 256).
        assert!((attention_factor - (1.0f64 + 8f64.ln() / 256f64.ln()).sqrt()).abs() < 1e-12);
        assert_eq!(original_max_position_embeddings, 256.0);
        assert_eq!(old.sliding_windows, vec![Some(8), Some(8)]);
        assert!(old.fused_projections && old.pad_token_id == Some(32000));
    }

    #[test]
    fn errors_name_the_setting() {
        for (extra, want) in [
            (
                r#""rope_scaling": {"rope_type": "linear", "factor": 2.0}"#,
                "default or longrope",
            ),
            (
                r#""rope_scaling": {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0, 1.0, 1.0, 1.0], "original_max_position_embeddings": 64}"#,
                "short_factor has 1 entries but the heads rotate 4",
            ),
            (
                r#""rope_scaling": {"rope_type": "longrope", "short_factor": "x", "long_factor": [1.0], "original_max_position_embeddings": 64}"#,
                "short_factor must be a list of numbers",
            ),
        ] {
            let e = parse(&format!("{{{DIMS}, {extra}}}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{extra}: {e}");
        }
    }
}
