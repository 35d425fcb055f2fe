//! GPT-2: learned position embeddings, pre-LayerNorm blocks, `Conv1D` projections (stored
//! `[in, out]`, run as `[out, in]` Linears), LM head tied to the token embedding by default.

use super::activation::Activation;
use super::attention::{causal_attention, AttentionKernel};
use super::config::ConfigJson;
use super::loader::{ParamLoader, TensorSource};
use super::norm::LayerNorm;
use super::{Architecture, CausalLm, Linear, LinearHook, Model, ModelInfo};
use crate::Result;
use tch::{Device, Kind, Tensor};

/// Base model attribute.
const PREFIX: &str = "transformer";

/// The settings of a GPT-2 checkpoint (`n_embd` and `hidden_size` spellings both accepted).
#[derive(Debug, Clone, PartialEq)]
pub struct Gpt2Config {
    /// Vocabulary rows.
    pub vocab_size: i64,
    /// Model width (`n_embd`).
    pub hidden_size: i64,
    /// MLP width (`n_inner`, default `4 * n_embd`).
    pub inner_size: i64,
    /// Blocks (`n_layer`).
    pub num_layers: i64,
    /// Attention heads (`n_head`).
    pub num_heads: i64,
    /// Learned positions (`n_positions`).
    pub max_position_embeddings: i64,
    /// LayerNorm epsilon.
    pub layer_norm_epsilon: f64,
    /// MLP activation (`activation_function`).
    pub activation: Activation,
    /// Scale scores by `1/sqrt(head_dim)`.
    pub scale_attn_weights: bool,
    /// Also scale scores by `1/(layer + 1)`.
    pub scale_attn_by_inverse_layer_idx: bool,
    /// LM head shares the token embedding.
    pub tie_word_embeddings: bool,
}

impl Gpt2Config {
    /// Reads config.json.
    pub fn from_config(cfg: &ConfigJson) -> Result<Self> {
        let hidden_size = cfg.req_int(&["n_embd", "hidden_size"])?;
        let num_heads = cfg.req_int(&["n_head", "num_attention_heads"])?;
        if hidden_size % num_heads != 0 {
            return Err(cfg.error(format!(
                "n_embd {hidden_size} is not divisible by n_head {num_heads}; fix config.json"
            )));
        }
        if cfg.bool(&["add_cross_attention"])?.unwrap_or(false) {
            return Err(cfg.error(
                "add_cross_attention is true: GPT-2 with cross-attention is an encoder-decoder part, not a causal LM; use a plain GPT-2 checkpoint",
            ));
        }
        Ok(Self {
            vocab_size: cfg.req_int(&["vocab_size"])?,
            hidden_size,
            inner_size: cfg.int(&["n_inner"])?.unwrap_or(4 * hidden_size),
            num_layers: cfg.req_int(&["n_layer", "num_hidden_layers"])?,
            num_heads,
            max_position_embeddings: cfg.req_int(&["n_positions", "max_position_embeddings"])?,
            layer_norm_epsilon: cfg.norm_eps(&["layer_norm_epsilon"], 1e-5)?,
            activation: super::activation(cfg, &["activation_function"], "gelu_new")?,
            scale_attn_weights: cfg.bool(&["scale_attn_weights"])?.unwrap_or(true),
            scale_attn_by_inverse_layer_idx: cfg
                .bool(&["scale_attn_by_inverse_layer_idx"])?
                .unwrap_or(false),
            tie_word_embeddings: super::tie_word_embeddings(cfg, true)?,
        })
    }
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    attn_c_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_c_proj: Linear,
    /// Score scale of this block.
    scale: f64,
}

/// A loaded GPT-2 model.
pub struct Gpt2 {
    config: Gpt2Config,
    wte: Tensor,
    wpe: Tensor,
    h: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Linear,
}

/// Registry entry: parses config.json and builds the model from `weights`.
pub fn load(
    cfg: &ConfigJson,
    weights: &dyn TensorSource,
    kind: Kind,
    device: Device,
) -> Result<Box<dyn CausalLm>> {
    let config = Gpt2Config::from_config(cfg)?;
    Ok(Box::new(Gpt2::load(config, weights, kind, device)?))
}

impl Gpt2 {
    /// Builds the model in transformers' registration order.
    pub fn load(
        config: Gpt2Config,
        ckpt: &dyn TensorSource,
        kind: Kind,
        device: Device,
    ) -> Result<Model<Self>> {
        let c = &config;
        let d = c.hidden_size;
        let mut p = ParamLoader::new(ckpt, "gpt2", PREFIX, kind, device);
        let wte = p.base_param("wte.weight", &[c.vocab_size, d])?;
        let wpe = p.base_param("wpe.weight", &[c.max_position_embeddings, d])?;
        let head_dim = d / c.num_heads;
        let mut h = Vec::with_capacity(c.num_layers as usize);
        for i in 0..c.num_layers {
            let b = format!("h.{i}");
            let mut scale = if c.scale_attn_weights {
                (head_dim as f64).powf(-0.5)
            } else {
                1.0
            };
            if c.scale_attn_by_inverse_layer_idx {
                scale /= (i + 1) as f64;
            }
            h.push(Block {
                ln_1: p.layer_norm(&format!("{b}.ln_1"), d, c.layer_norm_epsilon)?,
                c_attn: p.conv1d(&format!("{b}.attn.c_attn"), d, 3 * d)?,
                attn_c_proj: p.conv1d(&format!("{b}.attn.c_proj"), d, d)?,
                ln_2: p.layer_norm(&format!("{b}.ln_2"), d, c.layer_norm_epsilon)?,
                c_fc: p.conv1d(&format!("{b}.mlp.c_fc"), d, c.inner_size)?,
                mlp_c_proj: p.conv1d(&format!("{b}.mlp.c_proj"), c.inner_size, d)?,
                scale,
            });
        }
        let ln_f = p.layer_norm("ln_f", d, c.layer_norm_epsilon)?;
        let tied = c.tie_word_embeddings.then_some(&wte);
        let lm_head = p.lm_head(None, d, c.vocab_size, tied)?;
        let info = ModelInfo {
            model_type: "gpt2".into(),
            base_model_prefix: PREFIX,
            vocab_size: c.vocab_size,
            max_position_embeddings: Some(c.max_position_embeddings),
            max_sequence_length: Some(c.max_position_embeddings),
        };
        let arch = Gpt2 {
            config,
            wte,
            wpe,
            h,
            ln_f,
            lm_head,
        };
        Ok(Model::new(arch, info, p.finish()?, kind, device))
    }

    fn attention(
        &self,
        b: &Block,
        x: &Tensor,
        hook: &mut dyn LinearHook,
        kernel: AttentionKernel,
    ) -> Tensor {
        let (n, s, d) = x.size3().unwrap_or_default();
        let heads = self.config.num_heads;
        // [N, S, 3D] -> q, k, v each [N, H, S, hd]
        let qkv = hook
            .linear(&b.c_attn, x)
            .reshape([n, s, 3, heads, d / heads])
            .permute([2, 0, 3, 1, 4]);
        let o = causal_attention(&qkv.get(0), &qkv.get(1), &qkv.get(2), b.scale, None, kernel);
        let o = o.transpose(1, 2).reshape([n, s, d]);
        hook.linear(&b.attn_c_proj, &o)
    }
}

impl Architecture for Gpt2 {
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
        let tokens = hook.embeddings(Tensor::embedding(&self.wte, input_ids, -1, false, false));
        let mut h = tokens + self.wpe.narrow(0, 0, s);
        for b in &self.h {
            let attn = self.attention(b, &b.ln_1.forward(&h), hook, kernel);
            h = attn + h;
            let x = b.ln_2.forward(&h);
            let a = self.config.activation.forward(&hook.linear(&b.c_fc, &x));
            let m = hook.linear(&b.mlp_c_proj, &a);
            h = h + m;
        }
        self.ln_f.forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Result<Gpt2Config> {
        Gpt2Config::from_config(&ConfigJson::parse(text, Path::new("config.json")).unwrap())
    }

    /// GPT-2's own keys and the generic ones describe the same model.
    #[test]
    fn gpt2_and_generic_spellings() {
        let a = parse(r#"{"vocab_size": 512, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 1024, "n_inner": null}"#).unwrap();
        let b = parse(
            r#"{"vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "max_position_embeddings": 1024, "activation_function": "gelu_new", "tie_word_embeddings": true}"#,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.inner_size, 128);
        assert!(
            a.tie_word_embeddings && a.scale_attn_weights && !a.scale_attn_by_inverse_layer_idx
        );
        let c = parse(r#"{"vocab_size": 5, "n_embd": 8, "n_layer": 1, "n_head": 2, "n_positions": 16, "activation_function": "relu", "scale_attn_by_inverse_layer_idx": true}"#).unwrap();
        assert_eq!(c.activation, Activation::Relu);
        assert!(c.scale_attn_by_inverse_layer_idx);
    }

    #[test]
    fn config_errors() {
        let e = parse(r#"{"vocab_size": 512, "n_embd": 32, "n_layer": 2, "n_head": 4}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("n_positions"), "{e}");
        let e = parse(
            r#"{"vocab_size": 512, "n_embd": 30, "n_layer": 2, "n_head": 4, "n_positions": 8}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("divisible"), "{e}");
        let e = parse(r#"{"vocab_size": 512, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 8, "add_cross_attention": true}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("add_cross_attention"), "{e}");
    }
}
