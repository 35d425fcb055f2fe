//! GPT-Neo (EleutherAI's GPT-Neo, and the TinyStories models): learned position embeddings,
//! pre-LayerNorm blocks, separate q/k/v projections without bias, unscaled attention scores
//! computed in float32 (transformers' eager attention, the only one it has for GPT-Neo), and
//! layers alternating between global and local (sliding-window) attention per
//! `attention_types`.

use super::activation::Activation;
use super::attention::{sliding_window_mask, AttentionKernel};
use super::config::ConfigJson;
use super::loader::{ParamLoader, TensorSource};
use super::norm::{compute_kind, LayerNorm};
use super::{Architecture, CausalLm, Linear, LinearHook, Model, ModelInfo};
use crate::Result;
use tch::{Kind, Tensor};

/// Base model attribute.
const PREFIX: &str = "transformer";

/// The settings of a GPT-Neo checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct GptNeoConfig {
    /// Vocabulary rows.
    pub vocab_size: i64,
    /// Model width.
    pub hidden_size: i64,
    /// MLP width (`intermediate_size`, default `4 * hidden_size`).
    pub inner_size: i64,
    /// Attention heads (`num_heads`).
    pub num_heads: i64,
    /// Learned positions.
    pub max_position_embeddings: i64,
    /// LayerNorm epsilon.
    pub layer_norm_epsilon: f64,
    /// MLP activation (`activation_function`).
    pub activation: Activation,
    /// Sliding window of each layer: `None` for `global`, `window_size` for `local`.
    pub windows: Vec<Option<i64>>,
    /// LM head shares the token embedding.
    pub tie_word_embeddings: bool,
}

impl GptNeoConfig {
    /// Reads config.json (transformers' `GPTNeoConfig` defaults).
    pub fn from_config(cfg: &ConfigJson) -> Result<Self> {
        let hidden_size = cfg.req_int(&["hidden_size"])?;
        let num_heads = cfg.req_int(&["num_heads", "num_attention_heads"])?;
        if hidden_size % num_heads != 0 {
            return Err(cfg.error(format!(
                "hidden_size {hidden_size} is not divisible by num_heads {num_heads}; fix config.json"
            )));
        }
        let num_layers = cfg.req_int(&["num_layers", "num_hidden_layers"])?;
        let window_size = cfg.int(&["window_size"])?.unwrap_or(256);
        if window_size <= 0 {
            return Err(cfg.error(format!(
                "window_size {window_size} must be positive; fix config.json"
            )));
        }
        let kinds = attention_layers(cfg, num_layers)?;
        let windows = kinds
            .iter()
            .map(|k| match k.as_str() {
                "global" => Ok(None),
                "local" => Ok(Some(window_size)),
                other => Err(cfg.error(format!(
                    "attention type '{other}' is not supported (supported: global, local); fix attention_types in config.json"
                ))),
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            vocab_size: cfg.req_int(&["vocab_size"])?,
            hidden_size,
            inner_size: cfg.int(&["intermediate_size"])?.unwrap_or(4 * hidden_size),
            num_heads,
            max_position_embeddings: cfg.req_int(&["max_position_embeddings"])?,
            layer_norm_epsilon: cfg.norm_eps(&["layer_norm_epsilon"], 1e-5)?,
            activation: super::activation(cfg, &["activation_function"], "gelu_new")?,
            windows,
            tie_word_embeddings: super::tie_word_embeddings(cfg, true)?,
        })
    }
}

/// `attention_types` (`[[["global", "local"], 12]]` by default) expanded to one type per layer,
/// as `GPTNeoConfig.expand_attention_types_params` does; it must give `num_layers` of them.
fn attention_layers(cfg: &ConfigJson, num_layers: i64) -> Result<Vec<String>> {
    let bad = || {
        cfg.error(
            "attention_types must be a list of [[types...], repeats] pairs, e.g. [[[\"global\", \"local\"], 12]]; fix config.json",
        )
    };
    let default = serde_json::json!([[["global", "local"], 12]]);
    let types = cfg.value("attention_types").unwrap_or(&default);
    let mut pairs = Vec::new();
    for item in types.as_array().ok_or_else(bad)? {
        let pair = item.as_array().filter(|p| p.len() == 2).ok_or_else(bad)?;
        let names = pair[0].as_array().ok_or_else(bad)?;
        let names: Vec<&str> = names
            .iter()
            .map(|n| n.as_str().ok_or_else(bad))
            .collect::<Result<_>>()?;
        pairs.push((names, pair[1].as_u64().ok_or_else(bad)?));
    }
    // Counted before expanding, so a huge repeat count is an error, not an allocation.
    let total = pairs.iter().fold(0u64, |n, (names, repeats)| {
        n.saturating_add((names.len() as u64).saturating_mul(*repeats))
    });
    if total != num_layers as u64 {
        return Err(cfg.error(format!(
            "attention_types expands to {total} layers but num_layers is {num_layers}; fix config.json"
        )));
    }
    Ok(pairs
        .iter()
        .flat_map(|(names, repeats)| (0..*repeats).flat_map(move |_| names.iter()))
        .map(|n| n.to_string())
        .collect())
}

struct Block {
    ln_1: LayerNorm,
    k_proj: Linear,
    v_proj: Linear,
    q_proj: Linear,
    out_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
    /// Sliding window of a `local` layer.
    window: Option<i64>,
}

/// A loaded GPT-Neo model.
pub struct GptNeo {
    config: GptNeoConfig,
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
    device: tch::Device,
) -> Result<Box<dyn CausalLm>> {
    let config = GptNeoConfig::from_config(cfg)?;
    Ok(Box::new(GptNeo::load(config, weights, kind, device)?))
}

impl GptNeo {
    /// Builds the model in transformers' registration order.
    pub fn load(
        config: GptNeoConfig,
        ckpt: &dyn TensorSource,
        kind: Kind,
        device: tch::Device,
    ) -> Result<Model<Self>> {
        let c = &config;
        let d = c.hidden_size;
        let eps = c.layer_norm_epsilon;
        let mut p = ParamLoader::new(ckpt, "gpt_neo", PREFIX, kind, device);
        let wte = p.base_param("wte.weight", &[c.vocab_size, d])?;
        let wpe = p.base_param("wpe.weight", &[c.max_position_embeddings, d])?;
        let mut h = Vec::with_capacity(c.windows.len());
        for (i, &window) in c.windows.iter().enumerate() {
            let b = format!("h.{i}");
            let a = format!("{b}.attn.attention");
            h.push(Block {
                ln_1: p.layer_norm(&format!("{b}.ln_1"), d, eps)?,
                k_proj: p.linear(&format!("{a}.k_proj"), d, d, false)?,
                v_proj: p.linear(&format!("{a}.v_proj"), d, d, false)?,
                q_proj: p.linear(&format!("{a}.q_proj"), d, d, false)?,
                out_proj: p.linear(&format!("{a}.out_proj"), d, d, true)?,
                ln_2: p.layer_norm(&format!("{b}.ln_2"), d, eps)?,
                c_fc: p.linear(&format!("{b}.mlp.c_fc"), d, c.inner_size, true)?,
                c_proj: p.linear(&format!("{b}.mlp.c_proj"), c.inner_size, d, true)?,
                window,
            });
        }
        let ln_f = p.layer_norm("ln_f", d, eps)?;
        let tied = c.tie_word_embeddings.then_some(&wte);
        let lm_head = p.lm_head(None, d, c.vocab_size, tied)?;
        let info = ModelInfo {
            model_type: "gpt_neo".into(),
            base_model_prefix: PREFIX,
            vocab_size: c.vocab_size,
            max_position_embeddings: Some(c.max_position_embeddings),
            max_sequence_length: Some(c.max_position_embeddings),
        };
        let arch = GptNeo {
            config,
            wte,
            wpe,
            h,
            ln_f,
            lm_head,
        };
        Ok(Model::new(arch, info, p.finish()?, kind, device))
    }

    /// `GPTNeoSelfAttention`: unscaled scores in float32 (float64 in a float64 model), causal
    /// (and windowed on local layers), softmax, weights cast back to the value dtype. Always
    /// the explicit math, which is what transformers runs and is twice differentiable.
    /// `allowed`: the layer's `[S, S]` mask (causal, and windowed on a local layer).
    fn attention(
        &self,
        b: &Block,
        x: &Tensor,
        allowed: &Tensor,
        hook: &mut dyn LinearHook,
    ) -> Tensor {
        let (n, s, d) = x.size3().unwrap_or_default();
        let heads = self.config.num_heads;
        let split = |t: Tensor| t.reshape([n, s, heads, d / heads]).transpose(1, 2);
        // The hook sees modules in registration order (k, v, q), as the collector lists them.
        let k = split(hook.linear(&b.k_proj, x));
        let v = split(hook.linear(&b.v_proj, x));
        let q = split(hook.linear(&b.q_proj, x));
        let score_kind = compute_kind(v.kind());
        let scores = q
            .to_kind(score_kind)
            .matmul(&k.to_kind(score_kind).transpose(-1, -2));
        let scores = scores.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY);
        let weights = scores.softmax(-1, score_kind).to_kind(v.kind());
        let o = weights.matmul(&v).transpose(1, 2).reshape([n, s, d]);
        hook.linear(&b.out_proj, &o)
    }
}

impl Architecture for GptNeo {
    fn lm_head(&self) -> &Linear {
        &self.lm_head
    }

    // `h = h + x`, not `h += x`: an in-place add would overwrite tensors autograd saved.
    #[allow(clippy::assign_op_pattern)]
    fn hidden(
        &self,
        input_ids: &Tensor,
        hook: &mut dyn LinearHook,
        _kernel: AttentionKernel,
    ) -> Tensor {
        let s = input_ids.size().get(1).copied().unwrap_or(0);
        let tokens = hook.embeddings(Tensor::embedding(&self.wte, input_ids, -1, false, false));
        let mut h = tokens + self.wpe.narrow(0, 0, s);
        // Every local layer has the same window (`window_size`): two masks serve all layers.
        let device = input_ids.device();
        let global = sliding_window_mask(s, s, device);
        let local = self.config.windows.iter().flatten().next();
        let local = local.map(|&w| sliding_window_mask(s, w, device));
        for b in &self.h {
            let allowed = match (b.window, &local) {
                (Some(_), Some(mask)) => mask,
                _ => &global,
            };
            let attn = self.attention(b, &b.ln_1.forward(&h), allowed, hook);
            h = attn + h;
            let x = b.ln_2.forward(&h);
            let a = self.config.activation.forward(&hook.linear(&b.c_fc, &x));
            let m = hook.linear(&b.c_proj, &a);
            h = h + m;
        }
        self.ln_f.forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Result<GptNeoConfig> {
        GptNeoConfig::from_config(&ConfigJson::parse(text, Path::new("config.json")).unwrap())
    }

    const DIMS: &str =
        r#""vocab_size": 512, "hidden_size": 32, "num_heads": 4, "max_position_embeddings": 2048"#;

    #[test]
    fn attention_types_expand_per_layer() {
        let c = parse(&format!(
            r#"{{{DIMS}, "num_layers": 4, "window_size": 3, "attention_types": [[["global", "local"], 2]]}}"#
        ))
        .unwrap();
        assert_eq!(c.windows, vec![None, Some(3), None, Some(3)]);
        assert_eq!((c.inner_size, c.activation), (128, Activation::GeluTanh));
        assert!(c.tie_word_embeddings);
        // The default is 12 global/local pairs, so 24 layers.
        assert_eq!(
            parse(&format!(r#"{{{DIMS}, "num_layers": 24}}"#))
                .unwrap()
                .windows
                .len(),
            24
        );
    }

    #[test]
    fn config_errors() {
        for (extra, want) in [
            (
                r#""num_layers": 3"#,
                "expands to 24 layers but num_layers is 3",
            ),
            (
                r#""num_layers": 1, "attention_types": [[["sparse"], 1]]"#,
                "'sparse'",
            ),
            (
                r#""num_layers": 1, "attention_types": [["global", 1]]"#,
                "attention_types must be",
            ),
            (r#""num_layers": 2, "window_size": 0"#, "window_size 0"),
            (
                r#""num_layers": 2, "attention_types": [[["global", "local"], 1000000000000]]"#,
                "expands to 2000000000000 layers",
            ),
        ] {
            let e = parse(&format!("{{{DIMS}, {extra}}}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{extra}: {e}");
        }
    }
}
