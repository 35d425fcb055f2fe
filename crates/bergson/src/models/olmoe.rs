//! OLMoE: the Llama decoder with RMSNorm on the whole query and key projections (not per head),
//! optional `clip_qkv` clamping, and a sparse mixture of experts on every layer
//! ([`super::moe`]): router before the experts, float32 softmax, top-k renormalised per
//! `norm_topk_prob`.

use super::config::ConfigJson;
use super::llama::DecoderConfig;
use super::moe::{MoeConfig, PerExpertNames};
use crate::Result;

/// OLMoE's config.json as decoder settings (transformers' `OlmoeConfig` defaults).
pub fn config(cfg: &ConfigJson) -> Result<DecoderConfig> {
    let mut c = DecoderConfig::common(cfg, "olmoe")?;
    c.rms_norm_eps = cfg.norm_eps(&["rms_norm_eps"], 1e-5)?;
    c.read_attention_bias(cfg)?;
    c.qk_norm = true;
    c.qk_norm_whole = true;
    // transformers sizes q_norm by hidden_size: the query projection must be that wide.
    if c.num_heads * c.head_dim != c.hidden_size {
        return Err(cfg.error(format!(
            "head_dim {} × num_attention_heads {} must equal hidden_size {} for olmoe; fix config.json",
            c.head_dim, c.num_heads, c.hidden_size
        )));
    }
    c.clip_qkv = cfg.float(&["clip_qkv"])?;
    let num_experts = cfg.int(&["num_experts"])?.unwrap_or(64);
    let top_k = cfg.int(&["num_experts_per_tok"])?.unwrap_or(8);
    if !(1..=num_experts).contains(&top_k) {
        return Err(cfg.error(format!(
            "num_experts_per_tok {top_k} must lie between 1 and num_experts {num_experts}; fix config.json"
        )));
    }
    c.moe = Some(MoeConfig {
        num_experts,
        top_k,
        norm_topk_prob: cfg.bool(&["norm_topk_prob"])?.unwrap_or(false),
        moe_intermediate_size: c.intermediate_size,
        sparse_layers: vec![true; c.num_layers as usize],
        float_weights: false,
        router_first: true,
        per_expert: PerExpertNames::QWEN,
    });
    Ok(c)
}
