//! OPT (Meta's Open Pre-trained Transformers, `facebook/opt-*`): learned position embeddings
//! offset by 2, LayerNorms before (or, as in opt-350m, after) each block, separate q/k/v/out
//! projections with biases, a ReLU MLP (`fc1`, `fc2`), and for a `word_embed_proj_dim` narrower
//! than the model (opt-350m) a projection of the embeddings in and of the final states out.
//!
//! The query is scaled by `head_dim^-0.5` before the scores, as transformers does (its
//! attention then runs with a scale of 1). transformers flattens the MLP's input to
//! `[N·S, D]`; we keep `[N, S, D]`, which is the same product and lets every Linear be
//! collected per example (Bergson 2.5.1's collector asserts 3-D inputs, so it cannot collect
//! `fc1`/`fc2`).

use super::attention::{causal_attention, AttentionKernel};
use super::config::ConfigJson;
use super::loader::{ParamLoader, TensorSource};
use super::norm::LayerNorm;
use super::{Architecture, CausalLm, Linear, LinearHook, Model, ModelInfo};
use crate::Result;
use tch::{Device, Kind, Tensor};

/// Base model attribute (`OPTModel`, whose `decoder` holds the layers).
const PREFIX: &str = "model";

/// `OPTLearnedPositionalEmbedding`'s offset: position `p` reads row `p + 2`.
const POSITION_OFFSET: i64 = 2;

/// `nn.LayerNorm`'s epsilon, which OPT never changes.
const LAYER_NORM_EPS: f64 = 1e-5;

/// The settings of an OPT checkpoint (transformers' `OPTConfig` defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct OptConfig {
    /// Vocabulary rows.
    pub vocab_size: i64,
    /// Model width.
    pub hidden_size: i64,
    /// MLP width (`ffn_dim`).
    pub ffn_dim: i64,
    /// Decoder layers.
    pub num_layers: i64,
    /// Attention heads.
    pub num_heads: i64,
    /// Learned positions (the table holds two more rows).
    pub max_position_embeddings: i64,
    /// LayerNorm before attention and MLP (false: after each residual add, as opt-350m).
    pub do_layer_norm_before: bool,
    /// A LayerNorm after the last layer (`do_layer_norm_before` and not
    /// `_remove_final_layer_norm`).
    pub final_layer_norm: bool,
    /// Width of the token embeddings and the LM head (`project_in`/`project_out` when it is
    /// not `hidden_size`).
    pub word_embed_proj_dim: i64,
    /// MLP activation (`activation_function`).
    pub activation: super::activation::Activation,
    /// Biases on the attention and MLP projections (`enable_bias`).
    pub enable_bias: bool,
    /// LayerNorms with a weight and bias (`layer_norm_elementwise_affine`).
    pub layer_norm_elementwise_affine: bool,
    /// LM head shares the token embedding.
    pub tie_word_embeddings: bool,
    /// Embedding `padding_idx` (`pad_token_id`, 1 by default): only changes its gradient.
    pub pad_token_id: Option<i64>,
}

impl OptConfig {
    /// Reads config.json.
    pub fn from_config(cfg: &ConfigJson) -> Result<Self> {
        let hidden_size = cfg.req_int(&["hidden_size"])?;
        let num_heads = cfg.req_int(&["num_attention_heads"])?;
        if num_heads <= 0 || hidden_size % num_heads != 0 {
            return Err(cfg.error(format!(
                "hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}; fix config.json"
            )));
        }
        let word_embed_proj_dim = cfg.int(&["word_embed_proj_dim"])?.unwrap_or(hidden_size);
        if word_embed_proj_dim <= 0 {
            return Err(cfg.error(format!(
                "word_embed_proj_dim {word_embed_proj_dim} must be positive; fix config.json"
            )));
        }
        let do_layer_norm_before = cfg.bool(&["do_layer_norm_before"])?.unwrap_or(true);
        let remove_final = cfg.bool(&["_remove_final_layer_norm"])?.unwrap_or(false);
        let pad_token_id = if cfg.is_null("pad_token_id") {
            None
        } else {
            Some(cfg.int(&["pad_token_id"])?.unwrap_or(1))
        };
        Ok(Self {
            vocab_size: cfg.req_int(&["vocab_size"])?,
            hidden_size,
            ffn_dim: cfg.int(&["ffn_dim"])?.unwrap_or(3072),
            num_layers: cfg.req_int(&["num_hidden_layers"])?,
            num_heads,
            max_position_embeddings: cfg.int(&["max_position_embeddings"])?.unwrap_or(2048),
            do_layer_norm_before,
            final_layer_norm: do_layer_norm_before && !remove_final,
            word_embed_proj_dim,
            activation: super::activation(cfg, &["activation_function"], "relu")?,
            enable_bias: cfg.bool(&["enable_bias"])?.unwrap_or(true),
            layer_norm_elementwise_affine: cfg
                .bool(&["layer_norm_elementwise_affine"])?
                .unwrap_or(true),
            tie_word_embeddings: super::tie_word_embeddings(cfg, true)?,
            pad_token_id,
        })
    }
}

struct Layer {
    k_proj: Linear,
    v_proj: Linear,
    q_proj: Linear,
    out_proj: Linear,
    self_attn_layer_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    final_layer_norm: LayerNorm,
}

/// A loaded OPT model.
pub struct Opt {
    config: OptConfig,
    embed_tokens: Tensor,
    embed_positions: Tensor,
    project_out: Option<Linear>,
    project_in: Option<Linear>,
    final_layer_norm: Option<LayerNorm>,
    layers: Vec<Layer>,
    lm_head: Linear,
}

/// Registry entry: parses config.json and builds the model from `weights`.
pub fn load(
    cfg: &ConfigJson,
    weights: &dyn TensorSource,
    kind: Kind,
    device: Device,
) -> Result<Box<dyn CausalLm>> {
    let config = OptConfig::from_config(cfg)?;
    Ok(Box::new(Opt::load(config, weights, kind, device)?))
}

/// A LayerNorm with its stored weight and bias, or none (then the plain normalisation).
fn layer_norm(p: &mut ParamLoader, module: &str, dim: i64, affine: bool) -> Result<LayerNorm> {
    if affine {
        p.layer_norm(module, dim, LAYER_NORM_EPS)
    } else {
        Ok(LayerNorm::without_affine(dim, LAYER_NORM_EPS))
    }
}

impl Opt {
    /// Builds the model in transformers' registration order.
    pub fn load(
        config: OptConfig,
        ckpt: &dyn TensorSource,
        kind: Kind,
        device: Device,
    ) -> Result<Model<Self>> {
        let c = &config;
        let (d, e) = (c.hidden_size, c.word_embed_proj_dim);
        let affine = c.layer_norm_elementwise_affine;
        let mut p = ParamLoader::new(ckpt, "opt", PREFIX, kind, device);
        let embed_tokens = p.base_param("decoder.embed_tokens.weight", &[c.vocab_size, e])?;
        let positions = c.max_position_embeddings + POSITION_OFFSET;
        let embed_positions = p.base_param("decoder.embed_positions.weight", &[positions, d])?;
        let (project_out, project_in) = if e != d {
            (
                Some(p.linear("decoder.project_out", d, e, false)?),
                Some(p.linear("decoder.project_in", e, d, false)?),
            )
        } else {
            (None, None)
        };
        let final_layer_norm = if c.final_layer_norm {
            Some(layer_norm(&mut p, "decoder.final_layer_norm", d, affine)?)
        } else {
            None
        };
        let bias = c.enable_bias;
        let mut layers = Vec::with_capacity(c.num_layers as usize);
        for i in 0..c.num_layers {
            let l = format!("decoder.layers.{i}");
            let a = format!("{l}.self_attn");
            layers.push(Layer {
                k_proj: p.linear(&format!("{a}.k_proj"), d, d, bias)?,
                v_proj: p.linear(&format!("{a}.v_proj"), d, d, bias)?,
                q_proj: p.linear(&format!("{a}.q_proj"), d, d, bias)?,
                out_proj: p.linear(&format!("{a}.out_proj"), d, d, bias)?,
                self_attn_layer_norm: layer_norm(
                    &mut p,
                    &format!("{l}.self_attn_layer_norm"),
                    d,
                    affine,
                )?,
                fc1: p.linear(&format!("{l}.fc1"), d, c.ffn_dim, bias)?,
                fc2: p.linear(&format!("{l}.fc2"), c.ffn_dim, d, bias)?,
                final_layer_norm: layer_norm(&mut p, &format!("{l}.final_layer_norm"), d, affine)?,
            });
        }
        let tied = c.tie_word_embeddings.then_some(&embed_tokens);
        let lm_head = p.lm_head(None, e, c.vocab_size, tied)?;
        let info = ModelInfo {
            model_type: "opt".into(),
            base_model_prefix: PREFIX,
            vocab_size: c.vocab_size,
            max_position_embeddings: Some(c.max_position_embeddings),
            max_sequence_length: Some(c.max_position_embeddings),
        };
        let arch = Opt {
            config,
            embed_tokens,
            embed_positions,
            project_out,
            project_in,
            final_layer_norm,
            layers,
            lm_head,
        };
        Ok(Model::new(arch, info, p.finish()?, kind, device))
    }

    /// `OPTAttention`: the query scaled before the scores, causal attention with scale 1.
    fn attention(
        &self,
        l: &Layer,
        x: &Tensor,
        hook: &mut dyn LinearHook,
        kernel: AttentionKernel,
    ) -> Tensor {
        let (n, s, d) = x.size3().unwrap_or_default();
        let heads = self.config.num_heads;
        let head_dim = d / heads;
        let split = |t: Tensor| t.reshape([n, s, heads, head_dim]).transpose(1, 2);
        // The hook sees modules in registration order (k, v, q), as the collector lists them.
        let k = split(hook.linear(&l.k_proj, x));
        let v = split(hook.linear(&l.v_proj, x));
        let q = split(hook.linear(&l.q_proj, x) * (head_dim as f64).powf(-0.5));
        let o = causal_attention(&q, &k, &v, 1.0, None, kernel);
        hook.linear(&l.out_proj, &o.transpose(1, 2).reshape([n, s, d]))
    }
}

impl Architecture for Opt {
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
        let c = &self.config;
        let s = input_ids.size().get(1).copied().unwrap_or(0);
        let tokens =
            super::embed_with_padding(&self.embed_tokens, input_ids, c.pad_token_id, c.vocab_size);
        let mut tokens = hook.embeddings(tokens);
        if let Some(project_in) = &self.project_in {
            tokens = hook.linear(project_in, &tokens);
        }
        // Without an attention mask every row's positions are 0..S.
        let mut h = tokens + self.embed_positions.narrow(0, POSITION_OFFSET, s);
        let pre = c.do_layer_norm_before;
        for l in &self.layers {
            let x = if pre {
                l.self_attn_layer_norm.forward(&h)
            } else {
                h.shallow_clone()
            };
            h = h + self.attention(l, &x, hook, kernel);
            if !pre {
                h = l.self_attn_layer_norm.forward(&h);
            }
            let x = if pre {
                l.final_layer_norm.forward(&h)
            } else {
                h.shallow_clone()
            };
            let a = c.activation.forward(&hook.linear(&l.fc1, &x));
            h = h + hook.linear(&l.fc2, &a);
            if !pre {
                h = l.final_layer_norm.forward(&h);
            }
        }
        if let Some(norm) = &self.final_layer_norm {
            h = norm.forward(&h);
        }
        match &self.project_out {
            Some(project_out) => hook.linear(project_out, &h),
            None => h,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::activation::Activation;
    use std::path::Path;

    fn parse(text: &str) -> Result<OptConfig> {
        OptConfig::from_config(&ConfigJson::parse(text, Path::new("config.json")).unwrap())
    }

    const DIMS: &str = r#""vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4"#;

    /// `OPTConfig`'s defaults, and opt-350m's post-LayerNorm layout without a final norm.
    #[test]
    fn defaults_and_opt_350m_layout() {
        let c = parse(&format!("{{{DIMS}}}")).unwrap();
        assert_eq!((c.ffn_dim, c.max_position_embeddings), (3072, 2048));
        assert_eq!((c.word_embed_proj_dim, c.pad_token_id), (32, Some(1)));
        assert_eq!(c.activation, Activation::Relu);
        assert!(c.do_layer_norm_before && c.final_layer_norm && c.enable_bias);
        assert!(c.layer_norm_elementwise_affine && c.tie_word_embeddings);
        let c = parse(&format!(
            r#"{{{DIMS}, "do_layer_norm_before": false, "word_embed_proj_dim": 16, "pad_token_id": null}}"#
        ))
        .unwrap();
        assert!(!c.do_layer_norm_before && !c.final_layer_norm);
        assert_eq!((c.word_embed_proj_dim, c.pad_token_id), (16, None));
        let c = parse(&format!(r#"{{{DIMS}, "_remove_final_layer_norm": true}}"#)).unwrap();
        assert!(c.do_layer_norm_before && !c.final_layer_norm);
    }

    #[test]
    fn config_errors() {
        let heads = r#"{"vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 5}"#;
        let e = parse(heads).unwrap_err().to_string();
        assert!(e.contains("not divisible"), "{e}");
        for (extra, want) in [
            (r#", "word_embed_proj_dim": 0"#, "word_embed_proj_dim 0"),
            (r#", "activation_function": "swish2""#, "'swish2'"),
        ] {
            let e = parse(&format!("{{{DIMS}{extra}}}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{extra}: {e}");
        }
    }
}
