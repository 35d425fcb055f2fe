//! Qwen3-MoE: Qwen3's attention (q/k RMSNorm per head) with sparse mixture-of-experts MLPs
//! ([`super::moe`]) on the layers `decoder_sparse_step` selects outside `mlp_only_layers`, and
//! one sliding window on every layer when `use_sliding_window`.

use super::config::ConfigJson;
use super::llama::{positive_window, DecoderConfig};
use super::moe::{MoeConfig, PerExpertNames};
use crate::Result;

/// Qwen3-MoE's config.json as decoder settings (transformers' `Qwen3MoeConfig` defaults).
pub fn config(cfg: &ConfigJson) -> Result<DecoderConfig> {
    let mut c = DecoderConfig::common(cfg, "qwen3_moe")?;
    let attention_bias = cfg.bool(&["attention_bias"])?.unwrap_or(false);
    c.qkv_bias = attention_bias;
    c.o_bias = attention_bias;
    c.qk_norm = true;
    // `Qwen3MoeConfig` drops the window unless use_sliding_window; then every layer slides.
    if cfg.bool(&["use_sliding_window"])?.unwrap_or(false) && !cfg.is_null("sliding_window") {
        let w = positive_window(cfg, Some(cfg.int(&["sliding_window"])?.unwrap_or(4096)))?;
        c.sliding_windows = vec![w; c.num_layers as usize];
    }
    let num_experts = cfg
        .int(&["num_experts", "num_local_experts"])?
        .unwrap_or(128);
    let top_k = cfg.int(&["num_experts_per_tok"])?.unwrap_or(8);
    if num_experts > 0 && !(1..=num_experts).contains(&top_k) {
        return Err(cfg.error(format!(
            "num_experts_per_tok {top_k} must lie between 1 and num_experts {num_experts}; fix config.json"
        )));
    }
    let step = cfg.int(&["decoder_sparse_step"])?.unwrap_or(1);
    if step <= 0 {
        return Err(cfg.error(format!(
            "decoder_sparse_step {step} must be positive; fix config.json"
        )));
    }
    let dense = cfg.int_list("mlp_only_layers")?.unwrap_or_default();
    let sparse_layers = (0..c.num_layers)
        .map(|i| !dense.contains(&i) && num_experts > 0 && (i + 1) % step == 0)
        .collect();
    c.moe = Some(MoeConfig {
        num_experts,
        top_k,
        norm_topk_prob: cfg.bool(&["norm_topk_prob"])?.unwrap_or(false),
        moe_intermediate_size: cfg.int(&["moe_intermediate_size"])?.unwrap_or(768),
        sparse_layers,
        float_weights: false,
        router_first: false,
        per_expert: PerExpertNames::QWEN,
    });
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const DIMS: &str = r#""vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048"#;

    fn parse(text: &str) -> Result<DecoderConfig> {
        config(&ConfigJson::parse(text, Path::new("config.json")).unwrap())
    }

    #[test]
    fn sparse_layers_and_defaults() {
        let c = parse(&format!(
            r#"{{{DIMS}, "decoder_sparse_step": 2, "mlp_only_layers": [3], "num_experts": 4, "num_experts_per_tok": 2}}"#
        ))
        .unwrap();
        let moe = c.moe.unwrap();
        assert_eq!(moe.sparse_layers, vec![false, true, false, false]);
        assert!(!moe.norm_topk_prob);
        assert_eq!((moe.moe_intermediate_size, c.head_dim), (768, 8));
        assert_eq!(c.sliding_windows, vec![None; 4]);
        let slid = parse(&format!(
            r#"{{{DIMS}, "use_sliding_window": true, "sliding_window": 16, "num_experts": 4, "num_experts_per_tok": 2}}"#
        ))
        .unwrap();
        assert_eq!(slid.sliding_windows, vec![Some(16); 4]);
        let e = parse(&format!(
            r#"{{{DIMS}, "num_experts": 4, "num_experts_per_tok": 5}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("num_experts_per_tok"), "{e}");
    }
}
