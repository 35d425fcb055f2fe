//! OLMo-3: OLMo-2's decoder ([`super::olmo2`]) with sliding-window attention on the layers
//! `layer_types` marks `sliding_attention` (by default three of every four), and separate
//! rotary settings for the sliding and the full-attention layers.

use super::config::ConfigJson;
use super::llama::{sliding_layer_types, window_or, DecoderConfig};
use super::olmo2::olmo2_layout;
use super::rotary::{RopeConfig, LLAMA_ROPE_KEYS};
use crate::Result;

/// `Olmo3Config.default_theta`: θ of a layer type whose settings do not give one.
const DEFAULT_THETA: f64 = 500_000.0;

/// OLMo-3's config.json as decoder settings (transformers' `Olmo3Config` defaults).
pub fn config(cfg: &ConfigJson) -> Result<DecoderConfig> {
    let mut c = DecoderConfig::common(cfg, "olmo3")?;
    olmo2_layout(cfg, &mut c)?;
    let sliding = sliding_layer_types(cfg, c.num_layers)?
        .unwrap_or_else(|| (0..c.num_layers).map(|i| (i + 1) % 4 != 0).collect());
    let window = window_or(cfg, 4096)?;
    c.sliding_windows = sliding.iter().map(|&s| window.filter(|_| s)).collect();
    // transformers pops the top-level θ for the full layers; the sliding ones keep the default.
    let full_theta = cfg.float(&["rope_theta"])?.unwrap_or(DEFAULT_THETA);
    let [full, sliding_rope] =
        RopeConfig::per_layer_type(cfg, LLAMA_ROPE_KEYS, full_theta, DEFAULT_THETA)?;
    c.rope = full;
    c.sliding_rope = Some((sliding_rope, sliding));
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::rotary::RopeScaling;
    use std::path::Path;

    const DIMS: &str = r#""vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
        "num_attention_heads": 4, "max_position_embeddings": 2048"#;

    fn parse(text: &str) -> DecoderConfig {
        config(&ConfigJson::parse(text, Path::new("config.json")).unwrap()).unwrap()
    }

    #[test]
    fn defaults_follow_olmo3_config() {
        let c = parse(&format!("{{{DIMS}}}"));
        let w = Some(4096);
        assert_eq!(c.sliding_windows, vec![w, w, w, None]);
        let (sliding_rope, flags) = c.sliding_rope.clone().unwrap();
        assert_eq!(flags, vec![true, true, true, false]);
        assert_eq!(
            (c.rope.theta, sliding_rope.theta),
            (DEFAULT_THETA, DEFAULT_THETA)
        );
        assert!(c.post_norms && c.qk_norm_whole && c.rotary_in_float);
        assert_eq!((c.rms_norm_eps, c.pad_token_id), (1e-5, Some(1)));
    }

    /// The hub's spelling (top-level θ, YaRN in `rope_scaling` for the full layers only) and
    /// transformers 5's re-save (`rope_parameters` per layer type) mean the same model.
    #[test]
    fn old_and_new_rope_spellings() {
        let old = parse(&format!(
            r#"{{{DIMS}, "rope_theta": 500000, "sliding_window": 8, "layer_types": ["sliding_attention",
            "full_attention", "sliding_attention", "full_attention"], "rope_scaling": {{"rope_type": "yarn",
            "factor": 8.0, "original_max_position_embeddings": 256, "attention_factor": 1.2}}}}"#
        ));
        let new = parse(&format!(
            r#"{{{DIMS}, "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention",
            "sliding_attention", "full_attention"], "rope_parameters": {{"full_attention": {{"rope_type": "yarn",
            "factor": 8.0, "original_max_position_embeddings": 256, "attention_factor": 1.2, "rope_theta": 500000.0}},
            "sliding_attention": {{"rope_type": "default", "rope_theta": 500000.0}}}}}}"#
        ));
        assert_eq!(old, new);
        assert!(matches!(old.rope.scaling, RopeScaling::Yarn { .. }));
        let (sliding_rope, _) = old.sliding_rope.unwrap();
        assert_eq!(sliding_rope.scaling, RopeScaling::Default);
        assert_eq!(old.sliding_windows, vec![Some(8), None, Some(8), None]);
        // transformers pops the top-level θ for the full layers; the sliding ones keep the default.
        let c = parse(&format!(r#"{{{DIMS}, "rope_theta": 10000}}"#));
        assert_eq!(
            (c.rope.theta, c.sliding_rope.unwrap().0.theta),
            (10_000.0, DEFAULT_THETA)
        );
    }

    #[test]
    fn bad_layer_types_are_named() {
        let e = config(
            &ConfigJson::parse(
                &format!(r#"{{{DIMS}, "layer_types": ["full_attention"]}}"#),
                Path::new("config.json"),
            )
            .unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("layer_types has 1 entries"), "{e}");
    }
}
