//! GPT-NeoX (Pythia): LayerNorm, fused QKV with per-head `[q, k, v]` layout, partial rotary
//! embedding, and parallel (`x + attn(ln1 x) + mlp(ln2 x)`) or sequential residuals.

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
const PREFIX: &str = "gpt_neox";

/// GPT-NeoX spells θ `rotary_emb_base` and the rotary fraction `rotary_pct` (default 0.25).
const ROPE_KEYS: RopeKeys = RopeKeys {
    theta: &["rotary_emb_base", "rope_theta"],
    partial: &["rotary_pct", "partial_rotary_factor"],
    default_partial: 0.25,
    longrope_aliases: &[],
};

/// The settings of a GPT-NeoX checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct GptNeoXConfig {
    /// Vocabulary rows.
    pub vocab_size: i64,
    /// Model width.
    pub hidden_size: i64,
    /// MLP width.
    pub intermediate_size: i64,
    /// Decoder layers.
    pub num_layers: i64,
    /// Attention heads.
    pub num_heads: i64,
    /// `max_position_embeddings`.
    pub max_position_embeddings: i64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// MLP activation (`hidden_act`).
    pub hidden_act: Activation,
    /// Parallel attention + MLP residual.
    pub use_parallel_residual: bool,
    /// Biases on the attention projections (`attention_bias`).
    pub attention_bias: bool,
    /// Separate `embed_out` (GPT-NeoX default) or tied to `embed_in`.
    pub tie_word_embeddings: bool,
    /// Rotary settings.
    pub rope: RopeConfig,
}

impl GptNeoXConfig {
    /// Reads config.json, old (`rotary_pct`, `rotary_emb_base`) or new (`rope_parameters`).
    pub fn from_config(cfg: &ConfigJson) -> Result<Self> {
        let hidden_size = cfg.req_int(&["hidden_size"])?;
        let num_heads = cfg.req_int(&["num_attention_heads"])?;
        if hidden_size % num_heads != 0 {
            return Err(cfg.error(format!(
                "hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}; fix config.json"
            )));
        }
        Ok(Self {
            vocab_size: cfg.req_int(&["vocab_size"])?,
            hidden_size,
            intermediate_size: cfg.req_int(&["intermediate_size"])?,
            num_layers: cfg.req_int(&["num_hidden_layers"])?,
            num_heads,
            max_position_embeddings: cfg.pos_int_or(&["max_position_embeddings"], 2048)?,
            layer_norm_eps: cfg.norm_eps(&["layer_norm_eps"], 1e-5)?,
            hidden_act: super::activation(cfg, &["hidden_act"], "gelu")?,
            use_parallel_residual: cfg.bool(&["use_parallel_residual"])?.unwrap_or(true),
            attention_bias: cfg.bool(&["attention_bias"])?.unwrap_or(true),
            tie_word_embeddings: super::tie_word_embeddings(cfg, false)?,
            rope: RopeConfig::from_config(cfg, ROPE_KEYS)?,
        })
    }
}

struct Attention {
    query_key_value: Linear,
    dense: Linear,
}

struct Mlp {
    dense_h_to_4h: Linear,
    dense_4h_to_h: Linear,
}

struct Layer {
    input_layernorm: LayerNorm,
    post_attention_layernorm: LayerNorm,
    attention: Attention,
    mlp: Mlp,
}

/// A loaded GPT-NeoX model.
pub struct GptNeoX {
    config: GptNeoXConfig,
    embed_in: Tensor,
    layers: Vec<Layer>,
    final_layer_norm: LayerNorm,
    /// `embed_out` in checkpoints, `lm_head` in transformers 5.
    lm_head: Linear,
    rotary: Rotary,
    head_size: i64,
}

/// Registry entry: parses config.json and builds the model from `weights`.
pub fn load(
    cfg: &ConfigJson,
    weights: &dyn TensorSource,
    kind: Kind,
    device: Device,
) -> Result<Box<dyn CausalLm>> {
    let config = GptNeoXConfig::from_config(cfg)?;
    Ok(Box::new(GptNeoX::load(config, weights, kind, device)?))
}

impl GptNeoX {
    /// Builds the model in transformers' registration order.
    pub fn load(
        config: GptNeoXConfig,
        ckpt: &dyn TensorSource,
        kind: Kind,
        device: Device,
    ) -> Result<Model<Self>> {
        let c = &config;
        let d = c.hidden_size;
        let mut p = ParamLoader::new(ckpt, "gpt_neox", PREFIX, kind, device);
        let embed_in = p.base_param("embed_in.weight", &[c.vocab_size, d])?;
        let mut layers = Vec::with_capacity(c.num_layers as usize);
        for i in 0..c.num_layers {
            let l = format!("layers.{i}");
            let input_layernorm =
                p.layer_norm(&format!("{l}.input_layernorm"), d, c.layer_norm_eps)?;
            let post_attention_layernorm = p.layer_norm(
                &format!("{l}.post_attention_layernorm"),
                d,
                c.layer_norm_eps,
            )?;
            let attention = Attention {
                query_key_value: p.linear(
                    &format!("{l}.attention.query_key_value"),
                    d,
                    3 * d,
                    c.attention_bias,
                )?,
                dense: p.linear(&format!("{l}.attention.dense"), d, d, c.attention_bias)?,
            };
            let mlp = Mlp {
                dense_h_to_4h: p.linear(
                    &format!("{l}.mlp.dense_h_to_4h"),
                    d,
                    c.intermediate_size,
                    true,
                )?,
                dense_4h_to_h: p.linear(
                    &format!("{l}.mlp.dense_4h_to_h"),
                    c.intermediate_size,
                    d,
                    true,
                )?,
            };
            layers.push(Layer {
                input_layernorm,
                post_attention_layernorm,
                attention,
                mlp,
            });
        }
        let final_layer_norm = p.layer_norm("final_layer_norm", d, c.layer_norm_eps)?;
        let tied = c.tie_word_embeddings.then_some(&embed_in);
        let lm_head = p.lm_head(Some("embed_out.weight"), d, c.vocab_size, tied)?;
        let head_size = d / c.num_heads;
        let rotary = Rotary::new(&c.rope, head_size, c.max_position_embeddings, kind, device);
        let info = ModelInfo {
            model_type: "gpt_neox".into(),
            base_model_prefix: PREFIX,
            vocab_size: c.vocab_size,
            max_position_embeddings: Some(c.max_position_embeddings),
            max_sequence_length: None,
        };
        let arch = GptNeoX {
            config,
            embed_in,
            layers,
            final_layer_norm,
            lm_head,
            rotary,
            head_size,
        };
        Ok(Model::new(arch, info, p.finish()?, kind, device))
    }

    fn attention(
        &self,
        a: &Attention,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        hook: &mut dyn LinearHook,
        kernel: AttentionKernel,
    ) -> Tensor {
        let (n, s, _) = x.size3().unwrap_or_default();
        let hd = self.head_size;
        // [N, S, H * 3hd] -> [N, H, S, 3hd], then q, k, v along the last dimension.
        let qkv = hook
            .linear(&a.query_key_value, x)
            .reshape([n, s, self.config.num_heads, 3 * hd])
            .transpose(1, 2);
        let q = qkv.narrow(-1, 0, hd);
        let k = qkv.narrow(-1, hd, hd);
        let v = qkv.narrow(-1, 2 * hd, hd);
        let q = apply_rotary(&q, &rope.0, &rope.1);
        let k = apply_rotary(&k, &rope.0, &rope.1);
        let o = causal_attention(&q, &k, &v, (hd as f64).powf(-0.5), None, kernel);
        let o = o.transpose(1, 2).reshape([n, s, self.config.hidden_size]);
        hook.linear(&a.dense, &o)
    }

    fn mlp(&self, m: &Mlp, x: &Tensor, hook: &mut dyn LinearHook) -> Tensor {
        let h = self
            .config
            .hidden_act
            .forward(&hook.linear(&m.dense_h_to_4h, x));
        hook.linear(&m.dense_4h_to_h, &h)
    }
}

impl Architecture for GptNeoX {
    fn lm_head(&self) -> &Linear {
        &self.lm_head
    }

    // `h = h + x`, not `h += x`: an in-place add would overwrite tensors autograd saved.
    #[allow(clippy::assign_op_pattern)]
    fn hidden(
        &self,
        input_ids: &Tensor,
        hook: &mut dyn LinearHook,
        kernel: AttentionKernel,
    ) -> Tensor {
        let s = input_ids.size().get(1).copied().unwrap_or(0);
        let rope = self.rotary.cos_sin(s);
        let mut h = hook.embeddings(Tensor::embedding(
            &self.embed_in,
            input_ids,
            -1,
            false,
            false,
        ));
        for layer in &self.layers {
            let attn = self.attention(
                &layer.attention,
                &layer.input_layernorm.forward(&h),
                &rope,
                hook,
                kernel,
            );
            h = if self.config.use_parallel_residual {
                let mlp = self.mlp(
                    &layer.mlp,
                    &layer.post_attention_layernorm.forward(&h),
                    hook,
                );
                mlp + attn + h
            } else {
                let attn = attn + h;
                let mlp = self.mlp(
                    &layer.mlp,
                    &layer.post_attention_layernorm.forward(&attn),
                    hook,
                );
                mlp + attn
            };
        }
        self.final_layer_norm.forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Result<GptNeoXConfig> {
        GptNeoXConfig::from_config(&ConfigJson::parse(text, Path::new("config.json")).unwrap())
    }

    const DIMS: &str = r#""vocab_size": 512, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 2048"#;

    /// A Pythia config.json (transformers 4) and its transformers 5 re-save mean the same model.
    #[test]
    fn pythia_and_transformers5_spellings() {
        let old = parse(&format!(
            r#"{{{DIMS}, "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": true,
            "hidden_act": "gelu", "layer_norm_eps": 1e-5, "torch_dtype": "float16", "tie_word_embeddings": false}}"#
        ))
        .unwrap();
        let new = parse(&format!(
            r#"{{{DIMS}, "rope_parameters": {{"partial_rotary_factor": 0.25, "rope_theta": 10000.0, "rope_type": "default"}},
            "use_parallel_residual": true, "hidden_act": "gelu", "layer_norm_eps": 1e-5, "dtype": "float16"}}"#
        ))
        .unwrap();
        assert_eq!(old, new);
        assert_eq!(old.rope.partial_rotary_factor, 0.25);
        assert!(old.attention_bias && !old.tie_word_embeddings);
        let seq = parse(&format!(r#"{{{DIMS}, "use_parallel_residual": false, "rotary_pct": 1.0, "hidden_act": "gelu_new"}}"#)).unwrap();
        assert!(!seq.use_parallel_residual);
        assert_eq!(seq.rope.partial_rotary_factor, 1.0);
        assert_eq!(seq.hidden_act, Activation::GeluTanh);
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = parse(r#"{"vocab_size": 512, "hidden_size": 32}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config.json") && e.contains("num_attention_heads"),
            "{e}"
        );
        let e = parse(&format!(r#"{{{DIMS}, "hidden_act": "gelu_magic"}}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gelu_magic") && e.contains("gelu_new"), "{e}");
        let e = parse(&format!(r#"{{{DIMS}, "use_parallel_residual": "yes"}}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("use_parallel_residual"), "{e}");
    }
}
