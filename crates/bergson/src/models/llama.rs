//! The Llama-family decoder: RMSNorm, rotary attention with grouped-query heads, gated MLP
//! (`down(act(gate x) * up x)`). Its options ([`DecoderConfig`]) cover Llama itself and the
//! architectures that differ only in settings: Mistral (sliding window), Qwen2 (QKV bias,
//! per-layer sliding window), Qwen3 (RMSNorm on q and k per head). Their files map their
//! config.json onto [`DecoderConfig`].

use super::activation::Activation;
use super::attention::{causal_attention, softcapped_attention, AttentionKernel};
use super::config::ConfigJson;
use super::head::HeadOutput;
use super::loader::{ParamLoader, TensorSource};
use super::moe::{expand_matching, MoeConfig, SparseMoe};
use super::norm::{Norm, PlainLayerNorm, RmsGain, RmsNorm};
use super::rotary::{apply_rotary, RopeConfig, RopeKeys, Rotary, LLAMA_ROPE_KEYS};
use super::{Architecture, CausalLm, Linear, LinearHook, LinearInfo, Model, ModelInfo};
use crate::Result;
use tch::{Device, Kind, Tensor};

/// Base model attribute of the whole family.
const PREFIX: &str = "model";

/// The settings of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    /// config.json `model_type`.
    pub model_type: String,
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
    /// Key/value heads (GQA when fewer than the query heads).
    pub num_kv_heads: i64,
    /// Per-head width (`head_dim`, default `hidden_size / num_heads`).
    pub head_dim: i64,
    /// `max_position_embeddings`.
    pub max_position_embeddings: i64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// MLP activation (`hidden_act`).
    pub hidden_act: Activation,
    /// LM head shares the token embedding.
    pub tie_word_embeddings: bool,
    /// Biases on q, k, v.
    pub qkv_bias: bool,
    /// Bias on o.
    pub o_bias: bool,
    /// Biases on the MLP projections.
    pub mlp_bias: bool,
    /// RMSNorm on each query and key head before the rotation (Qwen3).
    pub qk_norm: bool,
    /// The q/k RMSNorm spans the whole projection rather than each head (OLMoE).
    pub qk_norm_whole: bool,
    /// Clamp q, k and v to `[-c, c]` after their projections (OLMoE's `clip_qkv`).
    pub clip_qkv: Option<f64>,
    /// Sliding attention window of each layer (`None`: full causal attention).
    pub sliding_windows: Vec<Option<i64>>,
    /// Embedding `padding_idx` (`pad_token_id`): only changes the embedding's gradient.
    pub pad_token_id: Option<i64>,
    /// Rotary settings.
    pub rope: RopeConfig,
    /// Sparse mixture-of-experts MLPs (Qwen3-MoE), `None` for a dense model.
    pub moe: Option<MoeConfig>,
    /// OLMo-2's layer: no input norm; the attention and MLP outputs are normalised
    /// (`post_attention_layernorm`, `post_feedforward_layernorm`) before their residual adds.
    pub post_norms: bool,
    /// How every RMSNorm applies its gain (OLMo-2: before the cast back; Gemma: `1 + w`).
    pub norm_gain: RmsGain,
    /// q and k rotated in float32 and cast back (OLMo-2's `apply_rotary_pos_emb`), rather than
    /// with tables in the model dtype; differs only in half precision.
    pub rotary_in_float: bool,
    /// Rotary settings of the layers flagged `true` when they differ from [`Self::rope`]
    /// (OLMo-3's `sliding_attention` layers).
    pub sliding_rope: Option<(RopeConfig, Vec<bool>)>,
    /// OLMo's parameter-free LayerNorm (eps 1e-5) in place of the layer and final RMSNorms.
    pub plain_layer_norm: bool,
    /// Gemma-3's four norms per layer: input and `pre_feedforward_layernorm` before the blocks,
    /// `post_attention_layernorm` and `post_feedforward_layernorm` after them.
    pub sandwich_norms: bool,
    /// Token embeddings multiplied by `sqrt(hidden_size)` rounded to the model dtype (Gemma).
    pub embed_scale: bool,
    /// The attention's score scale when it is not `head_dim^-0.5` (Gemma-3:
    /// `query_pre_attn_scalar^-0.5`).
    pub attn_scale: Option<f64>,
    /// Phi-3's fused projections: `qkv_proj` (`[q; k; v]`, registered after `o_proj`) and
    /// `gate_up_proj` (`[gate; up]`).
    pub fused_projections: bool,
    /// Which layers rotate q and k (SmolLM3's `no_rope_layers`); `None`: every layer.
    pub rope_layers: Option<Vec<bool>>,
    /// Gemma-2's `attn_logit_softcapping`: scores become `c·tanh(scores / c)` before the mask
    /// (transformers' eager attention, written out).
    pub attn_softcap: Option<f64>,
    /// Gemma-2's `final_logit_softcapping`: logits become `c·tanh(logits / c)`.
    pub final_softcap: Option<f64>,
    /// Granite's `embedding_multiplier` on the token embeddings (1: none).
    pub embedding_multiplier: f64,
    /// Granite's `residual_multiplier` on each block's output before its residual add (1: none).
    pub residual_multiplier: f64,
    /// Granite's `logits_scaling`: the logits are divided by it (1: none).
    pub logits_divisor: f64,
}

impl DecoderConfig {
    /// The settings every family member reads the same way; the caller fills in biases,
    /// q/k norm and sliding windows (defaults: none).
    pub fn common(cfg: &ConfigJson, model_type: &str) -> Result<Self> {
        let c = Self::common_partial_rotation(cfg, model_type, LLAMA_ROPE_KEYS)?;
        if c.rope.partial_rotary_factor != 1.0 {
            return Err(cfg.error(format!(
                "partial_rotary_factor {} is not supported for {model_type} (transformers rotates whole heads); fix config.json",
                c.rope.partial_rotary_factor
            )));
        }
        Ok(c)
    }

    /// [`Self::common`] for architectures that may rotate only part of each head (Phi-3), with
    /// their rotary keys.
    pub fn common_partial_rotation(
        cfg: &ConfigJson,
        model_type: &str,
        rope_keys: RopeKeys,
    ) -> Result<Self> {
        let hidden_size = cfg.req_int(&["hidden_size"])?;
        let num_heads = cfg.req_int(&["num_attention_heads"])?;
        let num_kv_heads = cfg.int(&["num_key_value_heads"])?.unwrap_or(num_heads);
        if num_kv_heads <= 0 || num_heads % num_kv_heads != 0 {
            return Err(cfg.error(format!(
                "num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}; fix config.json"
            )));
        }
        let head_dim = cfg.head_dim(hidden_size, num_heads)?;
        let num_layers = cfg.req_int(&["num_hidden_layers"])?;
        let rope = RopeConfig::from_config(cfg, rope_keys)?;
        rope.check_dims(cfg, head_dim)?;
        Ok(Self {
            model_type: model_type.to_string(),
            vocab_size: cfg.req_int(&["vocab_size"])?,
            hidden_size,
            intermediate_size: cfg.req_int(&["intermediate_size"])?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings: cfg.req_int(&["max_position_embeddings"])?,
            rms_norm_eps: cfg.norm_eps(&["rms_norm_eps"], 1e-6)?,
            hidden_act: super::activation(cfg, &["hidden_act"], "silu")?,
            tie_word_embeddings: super::tie_word_embeddings(cfg, false)?,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            qk_norm_whole: false,
            clip_qkv: None,
            sliding_windows: vec![None; num_layers as usize],
            pad_token_id: cfg.int(&["pad_token_id"])?,
            rope,
            moe: None,
            post_norms: false,
            norm_gain: RmsGain::AfterCast,
            rotary_in_float: false,
            sliding_rope: None,
            plain_layer_norm: false,
            sandwich_norms: false,
            embed_scale: false,
            attn_scale: None,
            fused_projections: false,
            rope_layers: None,
            attn_softcap: None,
            final_softcap: None,
            embedding_multiplier: 1.0,
            residual_multiplier: 1.0,
            logits_divisor: 1.0,
        })
    }

    /// Llama's config.json: `attention_bias` (all four projections), `mlp_bias`.
    pub fn llama(cfg: &ConfigJson) -> Result<Self> {
        let mut c = Self::common(cfg, "llama")?;
        c.read_attention_bias(cfg)?;
        c.mlp_bias = cfg.bool(&["mlp_bias"])?.unwrap_or(false);
        Ok(c)
    }
}

impl DecoderConfig {
    /// `attention_bias` (default false) on all four attention projections.
    pub fn read_attention_bias(&mut self, cfg: &ConfigJson) -> Result<()> {
        let attention_bias = cfg.bool(&["attention_bias"])?.unwrap_or(false);
        self.qkv_bias = attention_bias;
        self.o_bias = attention_bias;
        Ok(())
    }

    /// The architecture's default `num_key_value_heads` when config.json gives none.
    pub fn default_kv_heads(&mut self, cfg: &ConfigJson, default: i64) -> Result<()> {
        if cfg.int(&["num_key_value_heads"])?.is_some() {
            return Ok(());
        }
        if self.num_heads % default != 0 {
            return Err(cfg.error(format!(
                "num_attention_heads {} is not a multiple of the default num_key_value_heads \
                 {default}; give num_key_value_heads in config.json",
                self.num_heads
            )));
        }
        self.num_kv_heads = default;
        Ok(())
    }
}

/// Which layers `layer_types` marks `sliding_attention` (`None` without the key); every entry
/// must be `full_attention` or `sliding_attention`, one per layer.
pub fn sliding_layer_types(cfg: &ConfigJson, num_layers: i64) -> Result<Option<Vec<bool>>> {
    let Some(types) = cfg.str_list("layer_types")? else {
        return Ok(None);
    };
    if types.len() as i64 != num_layers {
        return Err(cfg.error(format!(
            "layer_types has {} entries but num_hidden_layers is {num_layers}; fix config.json",
            types.len()
        )));
    }
    types
        .iter()
        .map(|t| match t.as_str() {
            "full_attention" => Ok(false),
            "sliding_attention" => Ok(true),
            other => Err(cfg.error(format!(
                "layer_types entry '{other}' is not supported (supported: full_attention, sliding_attention); fix config.json"
            ))),
        })
        .collect::<Result<Vec<bool>>>()
        .map(Some)
}

/// `sliding_window`: `null` for none, `default` when absent, else a positive size.
pub fn window_or(cfg: &ConfigJson, default: i64) -> Result<Option<i64>> {
    if cfg.is_null("sliding_window") {
        return Ok(None);
    }
    positive_window(cfg, Some(cfg.int(&["sliding_window"])?.unwrap_or(default)))
}

/// Per-layer sliding windows as Qwen2/Qwen3 define them: `sliding_window` (default 4096) only
/// when `use_sliding_window`; `layer_types` when given, else `sliding_attention` from layer
/// `max_window_layers` (default 28) on.
pub fn qwen_sliding_windows(cfg: &ConfigJson, num_layers: i64) -> Result<Vec<Option<i64>>> {
    let window = if cfg.bool(&["use_sliding_window"])?.unwrap_or(false) {
        if cfg.is_null("sliding_window") {
            None
        } else {
            Some(cfg.int(&["sliding_window"])?.unwrap_or(4096))
        }
    } else {
        None
    };
    let sliding = match sliding_layer_types(cfg, num_layers)? {
        Some(flags) => flags,
        None => {
            let first = cfg.int(&["max_window_layers"])?.unwrap_or(28);
            (0..num_layers)
                .map(|i| window.is_some() && i >= first)
                .collect()
        }
    };
    Ok(sliding.into_iter().map(|s| window.filter(|_| s)).collect())
}

/// Reads a positive window size, for configs that allow `null` (no window).
pub fn positive_window(cfg: &ConfigJson, window: Option<i64>) -> Result<Option<i64>> {
    match window {
        Some(w) if w <= 0 => Err(cfg.error(format!(
            "sliding_window {w} must be positive or null; fix config.json"
        ))),
        w => Ok(w),
    }
}

/// The query, key and value projections: three Linears, or Phi-3's one.
enum QkvProj {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

/// The gated MLP's input projections: two Linears, or Phi-3's one (`[gate; up]`).
enum GateUpProj {
    Separate { gate: Linear, up: Linear },
    Fused(Linear),
}

struct Attention {
    qkv: QkvProj,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    sliding_window: Option<i64>,
}

struct Mlp {
    gate_up: GateUpProj,
    down_proj: Linear,
}

/// A layer's feed-forward block: dense, or a sparse mixture of experts.
enum Ffn {
    Dense(Mlp),
    Sparse(SparseMoe),
}

struct Layer {
    self_attn: Attention,
    mlp: Ffn,
    /// Before the attention (absent with [`DecoderConfig::post_norms`]).
    input_layernorm: Option<Norm>,
    /// Before the MLP, or after the attention with [`DecoderConfig::post_norms`].
    post_attention_layernorm: Norm,
    /// Before the MLP ([`DecoderConfig::sandwich_norms`] only).
    pre_feedforward_layernorm: Option<Norm>,
    /// After the MLP ([`DecoderConfig::post_norms`], [`DecoderConfig::sandwich_norms`]).
    post_feedforward_layernorm: Option<Norm>,
}

/// A loaded Llama-family decoder.
pub struct Decoder {
    config: DecoderConfig,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: Linear,
    rotary: Rotary,
    /// [`DecoderConfig::sliding_rope`]'s tables.
    sliding_rotary: Option<Rotary>,
}

/// Builds a decoder with settings `config` from `weights`.
pub fn load_decoder(
    config: DecoderConfig,
    weights: &dyn TensorSource,
    kind: Kind,
    device: Device,
) -> Result<Box<dyn CausalLm>> {
    Ok(Box::new(Decoder::load(config, weights, kind, device)?))
}

impl Decoder {
    /// Builds the model in transformers' registration order.
    pub fn load(
        config: DecoderConfig,
        ckpt: &dyn TensorSource,
        kind: Kind,
        device: Device,
    ) -> Result<Model<Self>> {
        let c = &config;
        let (d, hd) = (c.hidden_size, c.head_dim);
        let mut p = ParamLoader::new(ckpt, &c.model_type, PREFIX, kind, device);
        let gain = c.norm_gain;
        let rms_norm = |p: &mut ParamLoader, name: &str, dim: i64| -> Result<RmsNorm> {
            let mut norm = p.rms_norm(name, dim, c.rms_norm_eps)?;
            norm.gain = gain;
            Ok(norm)
        };
        // A layer or final norm: OLMo's has no parameters to load.
        let layer_norm = |p: &mut ParamLoader, name: &str| -> Result<Norm> {
            Ok(match c.plain_layer_norm {
                true => Norm::Plain(PlainLayerNorm { eps: 1e-5 }),
                false => Norm::Rms(rms_norm(p, name, d)?),
            })
        };
        let embed_tokens = p.base_param("embed_tokens.weight", &[c.vocab_size, d])?;
        let mut layers = Vec::with_capacity(c.num_layers as usize);
        for (i, &sliding_window) in c.sliding_windows.iter().enumerate() {
            let l = format!("layers.{i}");
            let a = format!("{l}.self_attn");
            let (q_out, kv_out) = (c.num_heads * hd, c.num_kv_heads * hd);
            let (qkv, o_proj) = if c.fused_projections {
                let o_proj = p.linear(&format!("{a}.o_proj"), q_out, d, c.o_bias)?;
                let fused =
                    p.linear(&format!("{a}.qkv_proj"), d, q_out + 2 * kv_out, c.qkv_bias)?;
                (QkvProj::Fused(fused), o_proj)
            } else {
                let q = p.linear(&format!("{a}.q_proj"), d, q_out, c.qkv_bias)?;
                let k = p.linear(&format!("{a}.k_proj"), d, kv_out, c.qkv_bias)?;
                let v = p.linear(&format!("{a}.v_proj"), d, kv_out, c.qkv_bias)?;
                let o_proj = p.linear(&format!("{a}.o_proj"), q_out, d, c.o_bias)?;
                (QkvProj::Separate { q, k, v }, o_proj)
            };
            let (q_width, k_width) = if c.qk_norm_whole {
                (c.num_heads * hd, c.num_kv_heads * hd)
            } else {
                (hd, hd)
            };
            let (q_norm, k_norm) = if c.qk_norm {
                (
                    Some(rms_norm(&mut p, &format!("{a}.q_norm"), q_width)?),
                    Some(rms_norm(&mut p, &format!("{a}.k_norm"), k_width)?),
                )
            } else {
                (None, None)
            };
            let self_attn = Attention {
                qkv,
                o_proj,
                q_norm,
                k_norm,
                sliding_window,
            };
            let m = format!("{l}.mlp");
            let sparse = c.moe.as_ref().filter(|moe| moe.sparse_layers[i]);
            let mlp = if let Some(moe) = sparse {
                Ffn::Sparse(SparseMoe::load(&mut p, &l, moe, d, c.hidden_act)?)
            } else {
                let (inter, bias) = (c.intermediate_size, c.mlp_bias);
                let gate_up = if c.fused_projections {
                    GateUpProj::Fused(p.linear(&format!("{m}.gate_up_proj"), d, 2 * inter, bias)?)
                } else {
                    GateUpProj::Separate {
                        gate: p.linear(&format!("{m}.gate_proj"), d, inter, bias)?,
                        up: p.linear(&format!("{m}.up_proj"), d, inter, bias)?,
                    }
                };
                Ffn::Dense(Mlp {
                    gate_up,
                    down_proj: p.linear(
                        &format!("{m}.down_proj"),
                        c.intermediate_size,
                        d,
                        c.mlp_bias,
                    )?,
                })
            };
            // transformers' registration order: input norm first, or the post norms in order.
            let input_layernorm = match c.post_norms {
                true => None,
                false => Some(layer_norm(&mut p, &format!("{l}.input_layernorm"))?),
            };
            let post_attention_layernorm =
                layer_norm(&mut p, &format!("{l}.post_attention_layernorm"))?;
            let pre_feedforward_layernorm = match c.sandwich_norms {
                true => Some(layer_norm(
                    &mut p,
                    &format!("{l}.pre_feedforward_layernorm"),
                )?),
                false => None,
            };
            let post_feedforward_layernorm = match c.post_norms || c.sandwich_norms {
                true => Some(layer_norm(
                    &mut p,
                    &format!("{l}.post_feedforward_layernorm"),
                )?),
                false => None,
            };
            layers.push(Layer {
                self_attn,
                mlp,
                input_layernorm,
                post_attention_layernorm,
                pre_feedforward_layernorm,
                post_feedforward_layernorm,
            });
        }
        let norm = layer_norm(&mut p, "norm")?;
        let tied = c.tie_word_embeddings.then_some(&embed_tokens);
        let lm_head = p.lm_head(None, d, c.vocab_size, tied)?;
        // OLMo-2 keeps the tables in float32 (float64 in a float64 model) and casts q and k.
        let table_kind = match c.rotary_in_float {
            true => super::norm::compute_kind(kind),
            false => kind,
        };
        let rotary = Rotary::new(&c.rope, hd, c.max_position_embeddings, table_kind, device);
        let sliding_rotary = c
            .sliding_rope
            .as_ref()
            .map(|(rope, _)| Rotary::new(rope, hd, c.max_position_embeddings, table_kind, device));
        let info = ModelInfo {
            model_type: c.model_type.clone(),
            base_model_prefix: PREFIX,
            vocab_size: c.vocab_size,
            max_position_embeddings: Some(c.max_position_embeddings),
            max_sequence_length: None,
        };
        let arch = Decoder {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            sliding_rotary,
        };
        Ok(Model::new(arch, info, p.finish()?, kind, device))
    }

    /// Full names of the modules transformers' `named_modules()` lists besides the fused experts
    /// (and their expansions): what a `--moe_experts` glob must not match.
    fn module_names_besides_experts(&self) -> Vec<String> {
        let mut names: Vec<String> = ["", PREFIX, "model.embed_tokens", "model.layers"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for (i, layer) in self.layers.iter().enumerate() {
            let l = format!("{PREFIX}.layers.{i}");
            let mut rel = vec!["", ".self_attn"];
            if self.config.fused_projections {
                rel.extend([".self_attn.o_proj", ".self_attn.qkv_proj"]);
            } else {
                rel.extend([".self_attn.q_proj", ".self_attn.k_proj"]);
                rel.extend([".self_attn.v_proj", ".self_attn.o_proj"]);
            }
            if self.config.qk_norm {
                rel.extend([".self_attn.q_norm", ".self_attn.k_norm"]);
            }
            rel.push(".mlp");
            match layer.mlp {
                Ffn::Dense(Mlp {
                    gate_up: GateUpProj::Fused(_),
                    ..
                }) => rel.extend([".mlp.gate_up_proj", ".mlp.down_proj", ".mlp.activation_fn"]),
                Ffn::Dense(_) => rel.extend([
                    ".mlp.gate_proj",
                    ".mlp.up_proj",
                    ".mlp.down_proj",
                    ".mlp.act_fn",
                ]),
                Ffn::Sparse(_) => rel.extend([".mlp.gate", ".mlp.experts.act_fn"]),
            }
            let c = &self.config;
            if !c.post_norms {
                rel.push(".input_layernorm");
            }
            rel.push(".post_attention_layernorm");
            if c.sandwich_norms {
                rel.push(".pre_feedforward_layernorm");
            }
            if c.post_norms || c.sandwich_norms {
                rel.push(".post_feedforward_layernorm");
            }
            names.extend(rel.iter().map(|r| format!("{l}{r}")));
        }
        names.extend(["model.norm", "model.rotary_emb", "lm_head"].map(String::from));
        names
    }

    fn attention(
        &self,
        a: &Attention,
        x: &Tensor,
        rope: Option<&(Tensor, Tensor)>,
        hook: &mut dyn LinearHook,
        kernel: AttentionKernel,
    ) -> Tensor {
        let (n, s, _) = x.size3().unwrap_or_default();
        let hd = self.config.head_dim;
        // [N, S, H * hd] (whole-width q/k norm, clipping) -> [N, S, H, hd] (q/k norm per head)
        // -> [N, H, S, hd]
        let whole = self.config.qk_norm_whole;
        let clip = self.config.clip_qkv;
        // A projection's output `t` as heads, after its norm and clipping.
        let heads = |mut t: Tensor, norm: &Option<RmsNorm>| {
            if let (Some(norm), true) = (norm, whole) {
                t = norm.forward(&t);
            }
            if let Some(c) = clip {
                t = t.clamp(-c, c);
            }
            let t = t.reshape([n, s, -1, hd]);
            match norm {
                Some(norm) if !whole => norm.forward(&t),
                _ => t,
            }
            .transpose(1, 2)
        };
        let (q, k, v) = match &a.qkv {
            QkvProj::Separate { q, k, v } => (
                heads(hook.linear(q, x), &a.q_norm),
                heads(hook.linear(k, x), &a.k_norm),
                heads(hook.linear(v, x), &None),
            ),
            QkvProj::Fused(proj) => {
                let c = &self.config;
                let (q_out, kv_out) = (c.num_heads * hd, c.num_kv_heads * hd);
                let qkv = hook.linear(proj, x);
                let q = qkv.narrow(-1, 0, q_out);
                let k = qkv.narrow(-1, q_out, kv_out);
                let v = qkv.narrow(-1, q_out + kv_out, kv_out);
                (heads(q, &a.q_norm), heads(k, &a.k_norm), heads(v, &None))
            }
        };
        let (q, k) = match (rope, self.config.rotary_in_float) {
            (None, _) => (q, k),
            (Some(rope), true) => (
                apply_rotary(&q, &rope.0, &rope.1).to_kind(q.kind()),
                apply_rotary(&k, &rope.0, &rope.1).to_kind(k.kind()),
            ),
            (Some(rope), false) => (
                apply_rotary(&q, &rope.0, &rope.1),
                apply_rotary(&k, &rope.0, &rope.1),
            ),
        };
        let scale = self.config.attn_scale.unwrap_or((hd as f64).powf(-0.5));
        let o = match self.config.attn_softcap {
            Some(cap) => softcapped_attention(&q, &k, &v, scale, cap, a.sliding_window),
            None => causal_attention(&q, &k, &v, scale, a.sliding_window, kernel),
        };
        let o = o
            .transpose(1, 2)
            .reshape([n, s, self.config.num_heads * hd]);
        hook.linear(&a.o_proj, &o)
    }

    /// A layer's feed-forward block on `x`.
    fn ffn(&self, ffn: &Ffn, x: &Tensor, hook: &mut dyn LinearHook) -> Tensor {
        match ffn {
            Ffn::Dense(m) => {
                let act = self.config.hidden_act;
                let gated = match &m.gate_up {
                    GateUpProj::Separate { gate, up } => {
                        act.forward(&hook.linear(gate, x)) * hook.linear(up, x)
                    }
                    GateUpProj::Fused(proj) => {
                        let gate_up = hook.linear(proj, x);
                        let half = gate_up.size().last().copied().unwrap_or(0) / 2;
                        // Phi-3: `up * act(gate)` on the two halves.
                        gate_up.narrow(-1, half, half) * act.forward(&gate_up.narrow(-1, 0, half))
                    }
                };
                hook.linear(&m.down_proj, &gated)
            }
            Ffn::Sparse(moe) => moe.forward(x, hook),
        }
    }
}

impl Architecture for Decoder {
    fn lm_head(&self) -> &Linear {
        &self.lm_head
    }

    fn head_output(&self) -> HeadOutput {
        HeadOutput {
            divisor: self.config.logits_divisor,
            softcap: self.config.final_softcap,
        }
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
        let sliding_rope = self.sliding_rotary.as_ref().map(|r| r.cos_sin(s));
        let sliding_layers = self.config.sliding_rope.as_ref().map(|(_, l)| l.as_slice());
        let mut h = super::embed_with_padding(
            &self.embed_tokens,
            input_ids,
            self.config.pad_token_id,
            self.config.vocab_size,
        );
        if self.config.embed_scale {
            // Gemma: a 0-dim tensor in the model dtype, so its rounding matches transformers'.
            let scale = Tensor::from((self.config.hidden_size as f64).sqrt())
                .to_kind(h.kind())
                .to_device(h.device());
            h = h * scale;
        }
        if self.config.embedding_multiplier != 1.0 {
            h = h * self.config.embedding_multiplier;
        }
        let mut h = hook.embeddings(h);
        let rm = self.config.residual_multiplier;
        // Granite: each block's output times `residual_multiplier` before its residual add.
        let residual = |t: Tensor| if rm != 1.0 { t * rm } else { t };
        for (i, layer) in self.layers.iter().enumerate() {
            let attn_in = match &layer.input_layernorm {
                Some(norm) => norm.forward(&h),
                None => h.shallow_clone(),
            };
            let layer_rope = match (&sliding_rope, sliding_layers) {
                (Some(tables), Some(flags)) if flags.get(i) == Some(&true) => tables,
                _ => &rope,
            };
            let rotates = match &self.config.rope_layers {
                Some(flags) => flags.get(i) == Some(&true),
                None => true,
            };
            let layer_rope = rotates.then_some(layer_rope);
            let attn = self.attention(&layer.self_attn, &attn_in, layer_rope, hook, kernel);
            match &layer.post_feedforward_layernorm {
                // OLMo-2: h + norm(attn(h)), then h + norm(mlp(h)); Gemma-3 also normalises
                // the MLP's input.
                Some(post_ff) => {
                    h = h + layer.post_attention_layernorm.forward(&attn);
                    let out = match &layer.pre_feedforward_layernorm {
                        Some(pre_ff) => self.ffn(&layer.mlp, &pre_ff.forward(&h), hook),
                        None => self.ffn(&layer.mlp, &h, hook),
                    };
                    h = h + post_ff.forward(&out);
                }
                None => {
                    h = h + residual(attn);
                    let x = layer.post_attention_layernorm.forward(&h);
                    let out = self.ffn(&layer.mlp, &x, hook);
                    h = h + residual(out);
                }
            }
        }
        self.norm.forward(&h)
    }

    fn expand_moe(&mut self, patterns: &str, linears: &[LinearInfo]) -> Result<Vec<LinearInfo>> {
        let others = self.module_names_besides_experts();
        let mut blocks: Vec<(usize, &mut SparseMoe)> = self
            .layers
            .iter_mut()
            .enumerate()
            .filter_map(|(i, l)| match &mut l.mlp {
                Ffn::Sparse(moe) => Some((i, moe)),
                Ffn::Dense(_) => None,
            })
            .collect();
        let layer_of: Vec<usize> = blocks.iter().map(|(i, _)| *i).collect();
        let mut refs: Vec<&mut SparseMoe> = blocks.iter_mut().map(|(_, b)| &mut **b).collect();
        let expanded = expand_matching(&mut refs, PREFIX, patterns, &others)?;
        // A sparse layer's experts come after its attention's modules and before the next
        // layer's, as in `named_modules()`.
        let layer_index = |name: &str| -> Option<usize> {
            name.strip_prefix("layers.")?
                .split('.')
                .next()?
                .parse()
                .ok()
        };
        let mut out = Vec::with_capacity(linears.len());
        let mut pending = layer_of.iter().zip(expanded).peekable();
        // Modules of an earlier expansion are listed again below, once.
        let fresh = linears
            .iter()
            .filter(|l| !l.name.contains(".mlp.experts.expert_"));
        for l in fresh {
            let li = layer_index(&l.name);
            while let Some((&i, _)) = pending.peek() {
                if li.is_some_and(|li| li > i) {
                    out.extend(pending.next().map(|(_, e)| e).unwrap_or_default());
                } else {
                    break;
                }
            }
            out.push(l.clone());
        }
        out.extend(pending.flat_map(|(_, e)| e));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::rotary::RopeScaling;
    use std::path::Path;

    fn cfg(text: &str) -> ConfigJson {
        ConfigJson::parse(text, Path::new("config.json")).unwrap()
    }

    const DIMS: &str = r#""vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 2048"#;

    /// A Llama 3.1 style config.json (rope_theta + rope_scaling) and its transformers 5
    /// re-save (rope_parameters) mean the same model.
    #[test]
    fn llama_old_and_new_spellings() {
        let old = DecoderConfig::llama(&cfg(&format!(
            r#"{{{DIMS}, "num_key_value_heads": 2, "rope_theta": 500000.0, "torch_dtype": "bfloat16",
            "rope_scaling": {{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}}, "tie_word_embeddings": true}}"#
        )))
        .unwrap();
        let new = DecoderConfig::llama(&cfg(&format!(
            r#"{{{DIMS}, "num_key_value_heads": 2, "dtype": "bfloat16", "head_dim": 8,
            "rope_parameters": {{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192, "rope_theta": 500000.0}}, "tie_word_embeddings": true}}"#
        )))
        .unwrap();
        assert_eq!(old, new);
        assert_eq!((old.num_kv_heads, old.head_dim), (2, 8));
        assert!(matches!(old.rope.scaling, RopeScaling::Llama3 { .. }));
        let linear = DecoderConfig::llama(&cfg(&format!(
            r#"{{{DIMS}, "rope_scaling": {{"type": "linear", "factor": 2.0}}, "attention_bias": true, "mlp_bias": true, "head_dim": 16}}"#
        )))
        .unwrap();
        assert_eq!(linear.rope.scaling, RopeScaling::Linear { factor: 2.0 });
        assert_eq!((linear.num_kv_heads, linear.head_dim), (4, 16));
        assert!(linear.qkv_bias && linear.o_bias && linear.mlp_bias && !linear.tie_word_embeddings);
    }

    #[test]
    fn qwen_sliding_window_settings() {
        // Qwen2.5's spelling: use_sliding_window off, so no layer slides whatever the rest says.
        let off = cfg(
            r#"{"use_sliding_window": false, "sliding_window": 131072, "max_window_layers": 1}"#,
        );
        assert_eq!(
            qwen_sliding_windows(&off, 3).unwrap(),
            vec![None, None, None]
        );
        let on =
            cfg(r#"{"use_sliding_window": true, "sliding_window": 4, "max_window_layers": 1}"#);
        assert_eq!(
            qwen_sliding_windows(&on, 3).unwrap(),
            vec![None, Some(4), Some(4)]
        );
        // transformers 5 writes layer_types, which win over max_window_layers.
        let typed = cfg(
            r#"{"use_sliding_window": true, "sliding_window": 4, "max_window_layers": 28,
            "layer_types": ["sliding_attention", "full_attention"]}"#,
        );
        assert_eq!(
            qwen_sliding_windows(&typed, 2).unwrap(),
            vec![Some(4), None]
        );
        let default_window = cfg(r#"{"use_sliding_window": true, "max_window_layers": 0}"#);
        assert_eq!(
            qwen_sliding_windows(&default_window, 1).unwrap(),
            vec![Some(4096)]
        );
        let bad = cfg(r#"{"layer_types": ["full_attention"]}"#);
        assert!(qwen_sliding_windows(&bad, 2)
            .unwrap_err()
            .to_string()
            .contains("layer_types"));
        let bad = cfg(r#"{"layer_types": ["chunked_attention"]}"#);
        assert!(qwen_sliding_windows(&bad, 1)
            .unwrap_err()
            .to_string()
            .contains("chunked_attention"));
    }

    #[test]
    fn config_errors() {
        let e = DecoderConfig::llama(&cfg(&format!(r#"{{{DIMS}, "num_key_value_heads": 3}}"#)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
        let e = DecoderConfig::llama(&cfg(r#"{"vocab_size": 512, "hidden_size": 32}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("required key 'num_attention_heads'"), "{e}");
        let e = DecoderConfig::llama(&cfg(&format!(
            r#"{{{DIMS}, "partial_rotary_factor": 0.5}}"#
        )))
        .unwrap_err()
        .to_string();
        assert!(e.contains("partial_rotary_factor"), "{e}");
    }
}
