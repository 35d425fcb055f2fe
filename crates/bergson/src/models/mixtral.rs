//! Mixtral: Mistral's attention (no biases; one sliding window on every layer when
//! `sliding_window` is set, none by default) with a sparse mixture of experts on every layer
//! ([`super::moe`]): float32 softmax router, top-k always renormalised, routing weights kept in
//! float32. Hub checkpoints store `block_sparse_moe.experts.<e>.w1/w3/w2`.

use super::config::ConfigJson;
use super::llama::{positive_window, DecoderConfig};
use super::moe::{MoeConfig, PerExpertNames};
use crate::Result;

/// Mixtral's config.json as decoder settings (transformers' `MixtralConfig` defaults).
pub fn config(cfg: &ConfigJson) -> Result<DecoderConfig> {
    let mut c = DecoderConfig::common(cfg, "mixtral")?;
    c.rms_norm_eps = cfg.norm_eps(&["rms_norm_eps"], 1e-5)?;
    let window = positive_window(cfg, cfg.int(&["sliding_window"])?)?;
    c.sliding_windows = vec![window; c.num_layers as usize];
    let num_experts = cfg.int(&["num_local_experts", "num_experts"])?.unwrap_or(8);
    let top_k = cfg.int(&["num_experts_per_tok"])?.unwrap_or(2);
    if !(1..=num_experts).contains(&top_k) {
        return Err(cfg.error(format!(
            "num_experts_per_tok {top_k} must lie between 1 and num_local_experts {num_experts}; fix config.json"
        )));
    }
    c.moe = Some(MoeConfig {
        num_experts,
        top_k,
        norm_topk_prob: true,
        moe_intermediate_size: c.intermediate_size,
        sparse_layers: vec![true; c.num_layers as usize],
        float_weights: true,
        router_first: true,
        per_expert: PerExpertNames::MIXTRAL,
    });
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn defaults() {
        let c = config(
            &ConfigJson::parse(
                r#"{"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048}"#,
                Path::new("config.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let moe = c.moe.unwrap();
        assert_eq!((moe.num_experts, moe.top_k), (8, 2));
        assert!(moe.norm_topk_prob && moe.router_first);
        assert_eq!(c.sliding_windows, vec![None, None]);
        assert_eq!(c.rms_norm_eps, 1e-5);
    }
}
