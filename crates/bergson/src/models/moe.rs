//! Sparse mixture-of-experts blocks as transformers 5 stores them: every expert of a layer in
//! one fused 3-D parameter (`experts.gate_up_proj` `[E, 2I, D]`, `experts.down_proj`
//! `[E, D, I]`) and a top-k softmax router (`gate.weight` `[E, D]`).
//!
//! Fused experts are no Linear modules, so by default they are not collected. `--moe_experts`
//! exposes them as Bergson 2.5.1's `expand_moe` does: one module per expert projection
//! (`<layer>.mlp.experts.expert_<e>.gate_up_proj` / `.down_proj`), each run on the tokens routed
//! to it, gathered into one row per example and right-padded to the widest (padding rows are
//! zero, so they add nothing to a per-example gradient).

use super::activation::Activation;
use super::loader::ParamLoader;
use super::{Linear, LinearHook, LinearInfo};
use crate::{Error, Result};
use glob::Pattern;
use tch::{Kind, Tensor};

/// The router and expert settings of an MoE model.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    /// Experts per sparse layer.
    pub num_experts: i64,
    /// Experts each token is routed to.
    pub top_k: i64,
    /// Renormalise the top-k probabilities to sum to one.
    pub norm_topk_prob: bool,
    /// Width of one expert's MLP.
    pub moe_intermediate_size: i64,
    /// Which layers are sparse (the others keep a dense MLP).
    pub sparse_layers: Vec<bool>,
    /// Keep the routing weights in float32 (Mixtral) rather than casting them to the model
    /// dtype (Qwen3-MoE).
    pub float_weights: bool,
    /// The router is registered before the experts (Mixtral), which orders the parameters.
    pub router_first: bool,
    /// How checkpoints that store one Linear per expert name them.
    pub per_expert: PerExpertNames,
}

/// Names of a checkpoint storing one Linear per expert:
/// `<layer>.<block>.experts.<e>.<gate|up|down>.weight`, router `<layer>.<block>.gate.weight`.
#[derive(Debug, Clone, PartialEq)]
pub struct PerExpertNames {
    /// The block's attribute (`mlp`, Mixtral's `block_sparse_moe`).
    pub block: &'static str,
    /// Gate, up and down projection names (`gate_proj`/`up_proj`/`down_proj`, Mixtral's
    /// `w1`/`w3`/`w2`).
    pub gate: &'static str,
    /// See `gate`.
    pub up: &'static str,
    /// See `gate`.
    pub down: &'static str,
}

impl PerExpertNames {
    /// Qwen-MoE / OLMoE names.
    pub const QWEN: PerExpertNames = PerExpertNames {
        block: "mlp",
        gate: "gate_proj",
        up: "up_proj",
        down: "down_proj",
    };
    /// Mixtral's names.
    pub const MIXTRAL: PerExpertNames = PerExpertNames {
        block: "block_sparse_moe",
        gate: "w1",
        up: "w3",
        down: "w2",
    };
}

/// One expert's projections, as modules (`--moe_experts`).
struct Expert {
    gate_up_proj: Linear,
    down_proj: Linear,
}

/// A sparse MoE block (`Qwen3MoeSparseMoeBlock`): router, then the fused experts.
pub struct SparseMoe {
    /// Module name of the experts relative to the base model (`layers.0.mlp.experts`).
    name: String,
    /// `[E, 2I, D]`: each expert's gate rows, then its up rows.
    gate_up_proj: Tensor,
    /// `[E, D, I]`.
    down_proj: Tensor,
    /// Router `[E, D]`.
    router: Tensor,
    top_k: i64,
    norm_topk_prob: bool,
    float_weights: bool,
    act: Activation,
    /// The per-expert modules, once expanded.
    experts: Option<Vec<Expert>>,
}

impl SparseMoe {
    /// Loads the block of layer `layer` (`layers.<i>`, relative to the base model) in
    /// transformers' parameter order.
    pub fn load(
        p: &mut ParamLoader,
        layer: &str,
        c: &MoeConfig,
        hidden: i64,
        act: Activation,
    ) -> Result<Self> {
        let mlp = format!("{layer}.mlp");
        let names = &c.per_expert;
        let legacy = format!("{layer}.{}", names.block);
        let router_name = format!("{mlp}.gate.weight");
        let load_router = |p: &mut ParamLoader| -> Result<Tensor> {
            if p.has_base(&router_name) {
                p.base_param(&router_name, &[c.num_experts, hidden])
            } else {
                let t = p.base_piece(&format!("{legacy}.gate.weight"), &[c.num_experts, hidden])?;
                p.record_base(&router_name, &t);
                Ok(t)
            }
        };
        let early_router = if c.router_first {
            Some(load_router(p)?)
        } else {
            None
        };
        let (e, i) = (c.num_experts, c.moe_intermediate_size);
        let name = format!("{mlp}.experts");
        let (gate_up_proj, down_proj) = if p.has_base(&format!("{name}.gate_up_proj")) {
            (
                p.base_param(&format!("{name}.gate_up_proj"), &[e, 2 * i, hidden])?,
                p.base_param(&format!("{name}.down_proj"), &[e, hidden, i])?,
            )
        } else {
            // Hub checkpoints (and transformers 5's save_pretrained, which converts back) store
            // one `nn.Linear` per expert: `experts.<e>.{gate,up,down}_proj.weight`.
            let piece = |p: &ParamLoader, e: i64, proj: &str, shape: &[i64]| {
                p.base_piece(&format!("{legacy}.experts.{e}.{proj}.weight"), shape)
            };
            let mut gate_up = Vec::with_capacity(e as usize);
            let mut down = Vec::with_capacity(e as usize);
            for x in 0..e {
                let gate = piece(p, x, names.gate, &[i, hidden])?;
                let up = piece(p, x, names.up, &[i, hidden])?;
                gate_up.push(Tensor::cat(&[gate, up], 0));
                down.push(piece(p, x, names.down, &[hidden, i])?);
            }
            let (gate_up, down) = (Tensor::stack(&gate_up, 0), Tensor::stack(&down, 0));
            p.record_base(&format!("{name}.gate_up_proj"), &gate_up);
            p.record_base(&format!("{name}.down_proj"), &down);
            (gate_up, down)
        };
        let router = match early_router {
            Some(r) => r,
            None => load_router(p)?,
        };
        Ok(Self {
            name,
            gate_up_proj,
            down_proj,
            router,
            top_k: c.top_k,
            norm_topk_prob: c.norm_topk_prob,
            float_weights: c.float_weights,
            act,
            experts: None,
        })
    }

    /// Module name of the experts relative to the base model.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn num_experts(&self) -> i64 {
        self.gate_up_proj.size()[0]
    }

    /// Exposes every expert projection as its own module (idempotent) and returns them in
    /// `named_modules()` order.
    pub fn expand(&mut self) -> Vec<LinearInfo> {
        if self.experts.is_none() {
            let experts = (0..self.num_experts())
                .map(|e| {
                    let module = |proj: &str, w: &Tensor| Linear {
                        name: format!("{}.expert_{e}.{proj}", self.name),
                        weight: w.select(0, e),
                        bias: None,
                        adapter: None,
                    };
                    Expert {
                        gate_up_proj: module("gate_up_proj", &self.gate_up_proj),
                        down_proj: module("down_proj", &self.down_proj),
                    }
                })
                .collect();
            self.experts = Some(experts);
        }
        let info = |l: &Linear| LinearInfo {
            name: l.name.clone(),
            in_features: l.in_features(),
            out_features: l.out_features(),
            has_bias: false,
        };
        self.experts
            .iter()
            .flatten()
            .flat_map(|x| [info(&x.gate_up_proj), info(&x.down_proj)])
            .collect()
    }

    /// Top-k routing as `Qwen3MoeTopKRouter` / `MixtralTopKRouter`: softmax in float32 over the
    /// router logits, the k largest, optionally renormalised, cast back to the model dtype
    /// unless `float_weights`. Returns (`[T, k]` expert ids, `[T, k]` weights).
    fn route(&self, x: &Tensor) -> (Tensor, Tensor) {
        let logits = x.linear::<&Tensor>(&self.router, None);
        let probs = logits.softmax(-1, Kind::Float);
        let (mut top, idx) = probs.topk(self.top_k, -1, true, true);
        if self.norm_topk_prob {
            top = &top / top.sum_dim_intlist(-1, true, Kind::Float);
        }
        if self.float_weights {
            (idx, top)
        } else {
            (idx, top.to_kind(logits.kind()))
        }
    }

    /// The block on `x` `[N, S, D]`.
    pub fn forward(&self, x: &Tensor, hook: &mut dyn LinearHook) -> Tensor {
        let (n, s, d) = x.size3().unwrap_or_default();
        let flat = x.reshape([n * s, d]);
        let (idx, weights) = self.route(&flat);
        let out = match &self.experts {
            None => self.fused(&flat, &idx, &weights),
            Some(experts) => self.per_expert(experts, &flat, n, &idx, &weights, hook),
        };
        out.reshape([n, s, d])
    }

    fn gated(&self, h: &Tensor) -> Tensor {
        let halves = h.chunk(2, -1);
        self.act.forward(&halves[0]) * &halves[1]
    }

    /// transformers' eager experts: each expert that got tokens runs on them alone.
    fn fused(&self, x: &Tensor, idx: &Tensor, weights: &Tensor) -> Tensor {
        let mut out = x.zeros_like();
        for e in 0..self.num_experts() {
            let picked = idx.eq(e);
            let hit = picked.nonzero();
            if hit.size()[0] == 0 {
                continue;
            }
            let (token, slot) = (hit.select(1, 0), hit.select(1, 1));
            let h = x
                .index_select(0, &token)
                .linear::<&Tensor>(&self.gate_up_proj.select(0, e), None);
            let h = self
                .gated(&h)
                .linear::<&Tensor>(&self.down_proj.select(0, e), None);
            let w = weights.index(&[Some(&token), Some(&slot)]).unsqueeze(-1);
            out = out.index_add(0, &token, &(h * w).to_kind(out.kind()));
        }
        out
    }

    /// Bergson 2.5.1's `moe_forward`: per expert, its tokens gathered into `[N, width, D]` (one
    /// row per example, in sequence order, zero-padded), both projections through the hook,
    /// then scattered back weighted. An expert with no token still runs (on zeros) so that
    /// every module appears in every batch.
    fn per_expert(
        &self,
        experts: &[Expert],
        x: &Tensor,
        n: i64,
        idx: &Tensor,
        weights: &Tensor,
        hook: &mut dyn LinearHook,
    ) -> Tensor {
        let (t, d) = x.size2().unwrap_or_default();
        let s = if n > 0 { t / n } else { 0 };
        let mut out = x.zeros_like();
        for (e, expert) in experts.iter().enumerate() {
            let picked = idx.eq(e as i64);
            let w = (weights * &picked).sum_dim_intlist(-1, false, weights.kind());
            let routed = picked.any_dim(-1, false).view([n, s]);
            let hit = routed.nonzero();
            let (example, pos) = (hit.select(1, 0), hit.select(1, 1));
            let token = &example * s + &pos;
            let col = (routed.cumsum(1, Kind::Int64) - 1).index(&[Some(&example), Some(&pos)]);
            let width = routed
                .sum_dim_intlist(1, false, Kind::Int64)
                .max()
                .int64_value(&[])
                .max(1);
            let a = x
                .new_zeros([n, width, d], (x.kind(), x.device()))
                .index_put(
                    &[Some(&example), Some(&col)],
                    &x.index_select(0, &token),
                    false,
                );
            let h = hook.linear(&expert.gate_up_proj, &a);
            let h = hook.linear(&expert.down_proj, &self.gated(&h));
            let h =
                h.index(&[Some(&example), Some(&col)]) * w.index_select(0, &token).unsqueeze(-1);
            out = out.index_add(0, &token, &h.to_kind(out.kind()));
        }
        out
    }
}

/// Expands the blocks whose experts' full names (`<prefix>.<name>`) match one of the
/// comma-separated globs `patterns`, as `expand_moe`; refuses patterns matching none, and
/// patterns matching any of `others` (the full names of the model's other modules, which have
/// no fused expert weights). Returns the expanded modules of each block, by block.
pub fn expand_matching(
    blocks: &mut [&mut SparseMoe],
    prefix: &str,
    patterns: &str,
    others: &[String],
) -> Result<Vec<Vec<LinearInfo>>> {
    let globs: Vec<Pattern> = patterns
        .split(',')
        .map(|p| {
            Pattern::new(p.trim())
                .map_err(|e| Error::input(format!("bad --moe_experts glob '{p}': {e}")))
        })
        .collect::<Result<_>>()?;
    if let Some(other) = others
        .iter()
        .find(|name| globs.iter().any(|g| g.matches(name)))
    {
        return Err(Error::input(format!(
            "--moe_experts '{patterns}' matched '{other}', which has no fused expert weights; expected e.g. 'model.layers.*.mlp.experts'"
        )));
    }
    let mut out = Vec::with_capacity(blocks.len());
    let mut matched = false;
    for b in blocks.iter_mut() {
        let full = format!("{prefix}.{}", b.name());
        if globs.iter().any(|g| g.matches(&full)) {
            matched = true;
            out.push(b.expand());
        } else {
            out.push(Vec::new());
        }
    }
    if !matched {
        return Err(no_match(patterns));
    }
    Ok(out)
}

/// 2.5.1's refusal for a pattern that matches no fused MoE layer (e.g. on a dense model).
pub fn no_match(patterns: &str) -> Error {
    Error::input(format!(
        "--moe_experts '{patterns}' matched no fused MoE experts module of this model; expected e.g. 'model.layers.*.mlp.experts'"
    ))
}
