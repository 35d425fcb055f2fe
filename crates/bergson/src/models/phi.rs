//! Phi (phi-1, phi-1.5, phi-2): one LayerNorm per block feeding the attention and the MLP in
//! parallel (`h + attn(ln(h)) + mlp(ln(h))`), q/k/v and output projections with bias, half of
//! each head rotated by default, an optional LayerNorm on every query and key head, and an LM
//! head with bias.

use super::activation::Activation;
use super::attention::{causal_attention, AttentionKernel};
use super::config::ConfigJson;
use super::loader::{ParamLoader, TensorSource};
use super::norm::LayerNorm;
use super::rotary::{apply_rotary, RopeConfig, RopeKeys, Rotary};
use super::{Architecture, CausalLm, Linear, LinearHook, Model, ModelInfo};
use crate::Result;
use tch::{Device, Kind, Tensor};

/// Base model attribute.
const PREFIX: &str = "model";

/// Phi's rotary keys: half of each head rotates unless the config says otherwise.
const PHI_ROPE_KEYS: RopeKeys = RopeKeys {
    theta: &["rope_theta"],
    partial: &["partial_rotary_factor"],
    default_partial: 0.5,
    longrope_aliases: &[],
};

/// The settings of a Phi checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct PhiConfig {
    /// Vocabulary rows.
    pub vocab_size: i64,
    /// Model width.
    pub hidden_size: i64,
    /// MLP width.
    pub intermediate_size: i64,
    /// Decoder layers.
    pub num_layers: i64,
    /// Query heads.
    pub num_heads: i64,
    /// Key/value heads.
    pub num_kv_heads: i64,
    /// Per-head width.
    pub head_dim: i64,
    /// `max_position_embeddings`.
    pub max_position_embeddings: i64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// MLP activation (`hidden_act`).
    pub activation: Activation,
    /// LayerNorm on every query and key head (`qk_layernorm`).
    pub qk_layernorm: bool,
    /// LM head shares the token embedding.
    pub tie_word_embeddings: bool,
    /// Embedding `padding_idx` (`pad_token_id`).
    pub pad_token_id: Option<i64>,
    /// Rotary settings.
    pub rope: RopeConfig,
}

impl PhiConfig {
    /// Reads config.json (transformers' `PhiConfig` defaults).
    pub fn from_config(cfg: &ConfigJson) -> Result<Self> {
        let hidden_size = cfg.req_int(&["hidden_size"])?;
        let num_heads = cfg.req_int(&["num_attention_heads"])?;
        let num_kv_heads = cfg.int(&["num_key_value_heads"])?.unwrap_or(num_heads);
        if num_kv_heads <= 0 || num_heads % num_kv_heads != 0 {
            return Err(cfg.error(format!(
                "num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}; fix config.json"
            )));
        }
        let head_dim = cfg.head_dim(hidden_size, num_heads)?;
        let rope = RopeConfig::from_config(cfg, PHI_ROPE_KEYS)?;
        rope.check_dims(cfg, head_dim)?;
        Ok(Self {
            vocab_size: cfg.req_int(&["vocab_size"])?,
            hidden_size,
            intermediate_size: cfg.req_int(&["intermediate_size"])?,
            num_layers: cfg.req_int(&["num_hidden_layers"])?,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings: cfg.req_int(&["max_position_embeddings"])?,
            layer_norm_eps: cfg.norm_eps(&["layer_norm_eps"], 1e-5)?,
            activation: super::activation(cfg, &["hidden_act"], "gelu_new")?,
            qk_layernorm: cfg.bool(&["qk_layernorm"])?.unwrap_or(false),
            tie_word_embeddings: super::tie_word_embeddings(cfg, false)?,
            pad_token_id: cfg.int(&["pad_token_id"])?,
            rope,
        })
    }
}

struct Layer {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    dense: Linear,
    q_layernorm: Option<LayerNorm>,
    k_layernorm: Option<LayerNorm>,
    fc1: Linear,
    fc2: Linear,
    input_layernorm: LayerNorm,
}

/// A loaded Phi model.
pub struct Phi {
    config: PhiConfig,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    final_layernorm: LayerNorm,
    lm_head: Linear,
    rotary: Rotary,
}

/// Registry entry: parses config.json and builds the model from `weights`.
pub fn load(
    cfg: &ConfigJson,
    weights: &dyn TensorSource,
    kind: Kind,
    device: Device,
) -> Result<Box<dyn CausalLm>> {
    let config = PhiConfig::from_config(cfg)?;
    Ok(Box::new(Phi::load(config, weights, kind, device)?))
}

impl Phi {
    /// Builds the model in transformers' registration order.
    pub fn load(
        config: PhiConfig,
        ckpt: &dyn TensorSource,
        kind: Kind,
        device: Device,
    ) -> Result<Model<Self>> {
        let c = &config;
        let (d, hd, eps) = (c.hidden_size, c.head_dim, c.layer_norm_eps);
        let mut p = ParamLoader::new(ckpt, "phi", PREFIX, kind, device);
        let embed_tokens = p.base_param("embed_tokens.weight", &[c.vocab_size, d])?;
        let mut layers = Vec::with_capacity(c.num_layers as usize);
        for i in 0..c.num_layers {
            let l = format!("layers.{i}");
            let a = format!("{l}.self_attn");
            let q_proj = p.linear(&format!("{a}.q_proj"), d, c.num_heads * hd, true)?;
            let k_proj = p.linear(&format!("{a}.k_proj"), d, c.num_kv_heads * hd, true)?;
            let v_proj = p.linear(&format!("{a}.v_proj"), d, c.num_kv_heads * hd, true)?;
            let dense = p.linear(&format!("{a}.dense"), c.num_heads * hd, d, true)?;
            // transformers sizes these by hidden_size / heads, whatever head_dim says.
            let qk_width = d / c.num_heads;
            let (q_layernorm, k_layernorm) = match c.qk_layernorm {
                true => (
                    Some(p.layer_norm(&format!("{a}.q_layernorm"), qk_width, eps)?),
                    Some(p.layer_norm(&format!("{a}.k_layernorm"), qk_width, eps)?),
                ),
                false => (None, None),
            };
            let fc1 = p.linear(&format!("{l}.mlp.fc1"), d, c.intermediate_size, true)?;
            let fc2 = p.linear(&format!("{l}.mlp.fc2"), c.intermediate_size, d, true)?;
            let input_layernorm = p.layer_norm(&format!("{l}.input_layernorm"), d, eps)?;
            layers.push(Layer {
                q_proj,
                k_proj,
                v_proj,
                dense,
                q_layernorm,
                k_layernorm,
                fc1,
                fc2,
                input_layernorm,
            });
        }
        let final_layernorm = p.layer_norm("final_layernorm", d, eps)?;
        let tied = c.tie_word_embeddings.then_some(&embed_tokens);
        let lm_head = p.lm_head_with_bias(d, c.vocab_size, tied)?;
        let rotary = Rotary::new(&c.rope, hd, c.max_position_embeddings, kind, device);
        let info = ModelInfo {
            model_type: "phi".into(),
            base_model_prefix: PREFIX,
            vocab_size: c.vocab_size,
            max_position_embeddings: Some(c.max_position_embeddings),
            max_sequence_length: None,
        };
        let arch = Phi {
            config,
            embed_tokens,
            layers,
            final_layernorm,
            lm_head,
            rotary,
        };
        Ok(Model::new(arch, info, p.finish()?, kind, device))
    }

    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        hook: &mut dyn LinearHook,
        kernel: AttentionKernel,
    ) -> Tensor {
        let (n, s, _) = x.size3().unwrap_or_default();
        let hd = self.config.head_dim;
        let heads = |t: Tensor, norm: &Option<LayerNorm>| {
            let t = t.reshape([n, s, -1, hd]).transpose(1, 2);
            match norm {
                Some(norm) => norm.forward(&t),
                None => t,
            }
        };
        let q = heads(hook.linear(&layer.q_proj, x), &layer.q_layernorm);
        let k = heads(hook.linear(&layer.k_proj, x), &layer.k_layernorm);
        let v = heads(hook.linear(&layer.v_proj, x), &None);
        let q = apply_rotary(&q, &rope.0, &rope.1);
        let k = apply_rotary(&k, &rope.0, &rope.1);
        let o = causal_attention(&q, &k, &v, (hd as f64).powf(-0.5), None, kernel);
        let o = o
            .transpose(1, 2)
            .reshape([n, s, self.config.num_heads * hd]);
        hook.linear(&layer.dense, &o)
    }
}

impl Architecture for Phi {
    fn lm_head(&self) -> &Linear {
        &self.lm_head
    }

    fn hidden(
        &self,
        input_ids: &Tensor,
        hook: &mut dyn LinearHook,
        kernel: AttentionKernel,
    ) -> Tensor {
        let s = input_ids.size().get(1).copied().unwrap_or(0);
        let rope = self.rotary.cos_sin(s);
        let tokens = super::embed_with_padding(
            &self.embed_tokens,
            input_ids,
            self.config.pad_token_id,
            self.config.vocab_size,
        );
        let mut h = hook.embeddings(tokens);
        for layer in &self.layers {
            let x = layer.input_layernorm.forward(&h);
            let attn = self.attention(layer, &x, &rope, hook, kernel);
            let act = self.config.activation.forward(&hook.linear(&layer.fc1, &x));
            let ff = hook.linear(&layer.fc2, &act);
            // transformers' order: attn + ff + residual.
            h = attn + ff + h;
        }
        self.final_layernorm.forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Result<PhiConfig> {
        PhiConfig::from_config(&ConfigJson::parse(text, Path::new("config.json")).unwrap())
    }

    const DIMS: &str = r#""vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 2048"#;

    #[test]
    fn defaults_follow_phi_config() {
        let c = parse(&format!("{{{DIMS}}}")).unwrap();
        assert_eq!(c.rope.partial_rotary_factor, 0.5);
        assert_eq!((c.num_kv_heads, c.activation), (4, Activation::GeluTanh));
        assert!(!c.qk_layernorm && !c.tie_word_embeddings);
        let c = parse(&format!(
            r#"{{{DIMS}, "partial_rotary_factor": 0.4, "qk_layernorm": true, "rope_theta": 500.0}}"#
        ))
        .unwrap();
        assert_eq!((c.rope.partial_rotary_factor, c.rope.theta), (0.4, 500.0));
        assert!(c.qk_layernorm);
    }
}
