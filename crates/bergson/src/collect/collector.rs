//! The gradient collector: sees every targeted Linear's input in the forward pass and its
//! output gradient after one backward of the batch loss, and forms each document's (or
//! token's) normalised, projected weight gradient exactly as Bergson 2.5.1
//! (`HookCollectorBase.forward_hook` / `_module_gradient`).
//!
//! Only the Linear outputs are differentiated (`Tensor::run_backward` on them): no parameter
//! requires grad, so autograd computes no weight-gradient GEMMs.

use std::collections::HashMap;
use std::ops::Range;

use tch::{Device, Kind, Tensor};

use super::normalizer::Normalizer;
use super::processor::{GradientProcessor, ProjectionSettings};
use super::projection::{
    global_block_columns, module_projection_matrix, projection_identifier, random_matrix_values,
};
use super::targets::Target;
use crate::config::ProjectionScale;
use crate::models::{Linear, LinearHook};
use crate::units::human_bytes;
use crate::{Error, Result};

/// A module's state: its target, normalizer and forward-side projection.
struct TargetState {
    target: Target,
    /// Adam normalizers force full per-example gradients before projection.
    adam: bool,
    /// Adafactor's `rsqrt(col + eps)` `[I]`, applied to inputs.
    input_factor: Option<Tensor>,
    /// Right matrix `[p, I]` applied in the forward pass (projected, no bias, not Adam).
    forward_right: Option<Tensor>,
    /// Its gradient blocks.
    blocks: Range<usize>,
}

/// One column block of the index: a module, or one head of a split module.
struct BlockState {
    name: String,
    /// Output features `lo..lo+out` of the module.
    lo: i64,
    out: i64,
    normalizer: Option<Normalizer>,
    /// Adafactor's output factor `[O]`.
    output_factor: Option<Tensor>,
    /// Adam's divisor `[O, W]` (padded with a column of ones when a bias is collected).
    divisor: Option<Tensor>,
    /// Left matrix `[p, O]`.
    left: Option<Tensor>,
    /// Right matrix `[p, W]` applied in the backward pass: `[p, I+1]` with a bias, or the Adam
    /// path's `[p, W]`.
    backward_right: Option<Tensor>,
    /// Global projection column blocks `(start, [p, cols])`, when cached.
    global: Option<Vec<(i64, Tensor)>>,
    /// Values per row in the index.
    size: usize,
}

/// Gradients of one batch, per index column block, on the CPU in the save dtype.
#[derive(Debug)]
pub struct BatchGradients {
    /// `(block name, [rows, size])` in index column order.
    pub blocks: Vec<(String, Tensor)>,
}

impl BatchGradients {
    /// All blocks concatenated along columns: `[rows, Σ sizes]`.
    pub fn concat(&self) -> Result<Tensor> {
        let parts: Vec<&Tensor> = self.blocks.iter().map(|(_, t)| t).collect();
        Ok(Tensor::f_cat(&parts, 1)?)
    }
}

/// Per-module gradient capture for a model (Bergson's `GradientCollector` hooks).
pub struct GradientCollector {
    targets: Vec<TargetState>,
    by_name: HashMap<String, usize>,
    blocks: Vec<BlockState>,
    settings: ProjectionSettings,
    attribute_tokens: bool,
    kind: Kind,
    save_kind: Kind,
    device: Device,
}

/// Refuses a projection whose matrices plus one index row need more memory than the machine
/// has, before any is generated (an absurd `--projection_dim` would otherwise abort the process
/// in the allocator).
fn check_fits_in_memory(
    targets: &[Target],
    settings: &ProjectionSettings,
    kind: Kind,
) -> Result<()> {
    let Some(memory) = crate::units::memory_total() else {
        return Ok(());
    };
    // Counted in f64: the products can overflow any integer type.
    let mut values = 0f64;
    let mut largest_global_block = 0f64;
    for t in targets {
        let width = (t.in_features + i64::from(t.collect_bias)) as f64;
        let out = t.out_features as f64;
        values += match (settings.per_module_dim(), settings.global_dim()) {
            // Left and right matrices, and the p x p block of the row.
            (Some(p), _) => {
                let p = p as f64;
                p * (width + out) + p * p
            }
            // The full gradient that the global matrix projects, one column block at a time.
            (None, Some(m)) => {
                let columns = (global_block_columns(m) as f64).min(out * width);
                largest_global_block = largest_global_block.max(m as f64 * columns);
                out * width
            }
            (None, None) => out * width,
        };
    }
    if let Some(m) = settings.global_dim() {
        values += m as f64 + largest_global_block;
    }
    let bytes = values * kind.elt_size_in_bytes() as f64;
    if bytes > memory as f64 {
        let p = settings.projection_dim.unwrap_or(0);
        return Err(Error::input(format!(
            "--projection_dim {p} needs {} of memory for its projection matrices and one \
             gradient row, more than this machine's {}; use a smaller --projection_dim \
             (Bergson's default is 16)",
            human_bytes(bytes),
            human_bytes(memory as f64)
        )));
    }
    Ok(())
}

/// Largest global projection (in entries, all modules together) kept between batches.
const GLOBAL_CACHE_ENTRIES: usize = 1 << 26;

impl GradientCollector {
    /// A collector for `targets` of a model computing in `kind` on `device`, saving gradients in
    /// `save_kind`. Projection matrices are generated here, once.
    pub fn new(
        targets: Vec<Target>,
        processor: &GradientProcessor,
        attribute_tokens: bool,
        kind: Kind,
        save_kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let settings = processor.settings.clone();
        check_fits_in_memory(&targets, &settings, kind)?;
        let p = settings.per_module_dim();
        let matrix = |name: &str, role: &str, m: usize, n: i64| {
            module_projection_matrix(
                name,
                role,
                m,
                n as usize,
                settings.projection_type,
                settings.projection_scale,
                settings.projection_seed,
                kind,
                device,
            )
        };
        let mut states = Vec::new();
        let mut blocks = Vec::new();
        let mut global_entries = 0usize;
        for target in targets {
            let normalizer = processor
                .normalizer(&target.name)
                .map(|n| n.to_device(device));
            if let Some(n) = &normalizer {
                check_normalizer_shape(&target, n)?;
            }
            let adam = normalizer.as_ref().is_some_and(Normalizer::is_adam);
            let input_factor = normalizer.as_ref().and_then(Normalizer::input_factor);
            let forward_right = match p {
                Some(p) if !target.collect_bias && !adam => {
                    Some(matrix(&target.name, "right", p, target.in_features)?)
                }
                _ => None,
            };
            let width = target.in_features + i64::from(target.collect_bias);
            let first = blocks.len();
            for (name, out) in target.blocks() {
                let lo = if target.heads.is_some() {
                    (blocks.len() - first) as i64 * out
                } else {
                    0
                };
                let block_norm = normalizer.as_ref().map(|n| {
                    if target.heads.is_some() {
                        n.slice_rows(lo, lo + out)
                    } else {
                        n.to_device(device)
                    }
                });
                let output_factor = block_norm.as_ref().and_then(Normalizer::output_factor);
                let mut divisor = block_norm.as_ref().and_then(Normalizer::weight_denominator);
                if let (Some(d), true) = (&divisor, target.collect_bias) {
                    divisor = Some(d.f_constant_pad_nd([0i64, 1].as_slice())?.f_index_fill_(
                        1,
                        &Tensor::from_slice(&[target.in_features]).to_device(device),
                        1.0,
                    )?);
                }
                let (left, backward_right) = match p {
                    Some(p) => {
                        let left = Some(matrix(&name, "left", p, out)?);
                        let right = if adam || target.collect_bias {
                            Some(matrix(&name, "right", p, width)?)
                        } else {
                            None
                        };
                        (left, right)
                    }
                    None => (None, None),
                };
                let size = match (p, settings.global_dim()) {
                    (Some(p), _) => p * p,
                    (None, Some(_)) => 0,
                    (None, None) => (out * width) as usize,
                };
                let global = match settings.global_dim() {
                    Some(m) => {
                        global_entries += m * (out * width) as usize;
                        (global_entries <= GLOBAL_CACHE_ENTRIES)
                            .then(|| global_blocks(&settings, &name, m, out * width, kind, device))
                            .transpose()?
                    }
                    None => None,
                };
                blocks.push(BlockState {
                    name,
                    lo,
                    out,
                    normalizer: block_norm,
                    output_factor,
                    divisor,
                    left,
                    backward_right,
                    global,
                    size,
                });
            }
            states.push(TargetState {
                target,
                adam,
                input_factor,
                forward_right,
                blocks: first..blocks.len(),
            });
        }
        let by_name = states
            .iter()
            .enumerate()
            .map(|(i, s)| (s.target.name.clone(), i))
            .collect();
        Ok(GradientCollector {
            targets: states,
            by_name,
            blocks,
            settings,
            attribute_tokens,
            kind,
            save_kind,
            device,
        })
    }

    /// The index's column blocks and their sizes (`grad_sizes` of info.json).
    pub fn grad_sizes(&self) -> Vec<(String, usize)> {
        match self.settings.global_dim() {
            Some(p) => vec![("gradients".to_string(), p)],
            None => self
                .blocks
                .iter()
                .map(|b| (b.name.clone(), b.size))
                .collect(),
        }
    }

    /// The hook to pass to the model's forward for one batch.
    pub fn hook(&self) -> CaptureHook<'_> {
        CaptureHook {
            collector: self,
            captured: Vec::new(),
            error: None,
            keep_graph: false,
        }
    }

    /// The hook for a training forward pass, whose parameters require grad: the embeddings
    /// stay in the graph (so the parameter gradients reach them) and the captured Linear
    /// outputs are differentiated in the same backward as the parameters
    /// ([`CaptureHook::outputs`], then [`gradients_from`](Self::gradients_from)).
    pub fn training_hook(&self) -> CaptureHook<'_> {
        CaptureHook {
            keep_graph: true,
            ..self.hook()
        }
    }

    /// The batch's gradients from `output_grads`, the loss gradients of the hook's captured
    /// Linear outputs (in [`CaptureHook::outputs`] order), computed by the caller's backward
    /// pass (per-example rows only: no `attribute_tokens`).
    pub fn gradients_from(
        &self,
        hook: CaptureHook<'_>,
        output_grads: Vec<Tensor>,
    ) -> Result<BatchGradients> {
        if self.attribute_tokens {
            return Err(Error::internal(
                "gradients_from forms per-example rows; the collector is per token",
            ));
        }
        let CaptureHook {
            captured, error, ..
        } = hook;
        if let Some(e) = error {
            return Err(e);
        }
        let blocks = self.blocks_from_grads(&captured, output_grads, &Tensor::new())?;
        self.finish_blocks(blocks)
    }

    /// The collected modules' names, in the model's module order.
    pub fn target_names(&self) -> Vec<String> {
        self.targets.iter().map(|t| t.target.name.clone()).collect()
    }

    /// A module call seen by hooks outside this crate's models (the Python package's torch
    /// forward hooks): `x` `[N, S, I]` is the module's input, processed here as the forward
    /// hook does. `None` when `name` is not collected.
    pub fn module_call(&self, name: &str, x: &Tensor) -> Result<Option<ModuleCall>> {
        let Some(&target) = self.by_name.get(name) else {
            return Ok(None);
        };
        let input = self.process_input(&self.targets[target], &x.detach())?;
        Ok(Some(ModuleCall {
            target,
            input,
            output_grad: None,
        }))
    }

    /// The batch's gradients from module calls whose output gradients were recorded by an
    /// outside backward pass ([`ModuleCall::set_output_grad`]), in call order: the same rows as
    /// [`gradients_from`](Self::gradients_from) for this crate's models.
    pub fn gradients_from_calls(&self, calls: Vec<ModuleCall>) -> Result<BatchGradients> {
        if self.attribute_tokens {
            return Err(Error::internal(
                "gradients_from_calls forms per-example rows; the collector is per token",
            ));
        }
        let mut captured = Vec::with_capacity(calls.len());
        let mut grads = Vec::with_capacity(calls.len());
        for call in calls {
            let name = &self.targets[call.target].target.name;
            let g = call.output_grad.ok_or_else(|| {
                Error::input(format!(
                    "module {name} ran in the forward pass but received no gradient in the \
                     backward pass; leave it out of the collected modules"
                ))
            })?;
            captured.push(Captured {
                target: call.target,
                input: call.input,
                output: Tensor::new(),
            });
            grads.push(g);
        }
        let blocks = self.blocks_from_grads(&captured, grads, &Tensor::new())?;
        self.finish_blocks(blocks)
    }

    /// Forward-hook processing of a module input `[N, S, I]` (Bergson's `forward_hook`):
    /// Adafactor column scaling, then the right projection unless the backward pass needs the
    /// raw input (bias column, Adam).
    fn process_input(&self, t: &TargetState, x: &Tensor) -> Result<Tensor> {
        if t.adam {
            return Ok(x.shallow_clone());
        }
        let mut a = x.shallow_clone();
        if let Some(f) = &t.input_factor {
            a = a.f_mul(&f.f_type_as(&a)?)?;
        }
        if let Some(r) = &t.forward_right {
            a = a.f_matmul(&r.f_tr()?)?;
        }
        Ok(a)
    }

    /// Runs the backward pass of `loss` to every captured Linear output and returns the batch's
    /// gradients. `collection_mask` `[N, S]` marks the positions that carry a gradient row with
    /// `attribute_tokens` (every real position but each document's last).
    pub fn backward(
        &self,
        hook: CaptureHook<'_>,
        loss: &Tensor,
        collection_mask: &Tensor,
    ) -> Result<BatchGradients> {
        Ok(self.backward_timed(hook, loss, collection_mask)?.0)
    }

    /// [`backward`](Self::backward), also returning the time autograd took (the rest went into
    /// forming, projecting and moving the gradients).
    pub fn backward_timed(
        &self,
        hook: CaptureHook<'_>,
        loss: &Tensor,
        collection_mask: &Tensor,
    ) -> Result<(BatchGradients, std::time::Duration)> {
        let (blocks, autograd) = self.backward_blocks(hook, loss, collection_mask)?;
        Ok((self.finish_blocks(blocks)?, autograd))
    }

    /// Forms, flattens and clamps each block's rows and moves them to the CPU in the save
    /// dtype (Bergson's `_materialize_gradient`).
    fn finish_blocks(&self, blocks: Vec<(String, BlockGradient)>) -> Result<BatchGradients> {
        let global = self.settings.global_dim().is_some();
        let blocks = blocks
            .into_iter()
            .map(|(name, block)| {
                let rows = if global {
                    block.0.g.shallow_clone()
                } else {
                    // Bergson's `_materialize_gradient`: formed, flattened, clamped to the
                    // save dtype's finite range.
                    let (lo, hi) = finite_range(self.save_kind);
                    block.materialize()?.f_clamp(lo, hi)?
                };
                Ok((
                    name,
                    rows.f_to_device(Device::Cpu)?.f_to_kind(self.save_kind)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(BatchGradients { blocks })
    }

    /// Runs the backward pass and returns each index column block's gradients as the vectors
    /// they are formed from ([`BlockGradient`], on the model's device, in the model dtype),
    /// without forming per-token gradients: the seam for consumers that never store rows
    /// (scoring contracts them with query vectors). With a global projection there is one
    /// block, `gradients`, already projected. Also returns the time autograd took.
    pub fn backward_blocks(
        &self,
        hook: CaptureHook<'_>,
        loss: &Tensor,
        collection_mask: &Tensor,
    ) -> Result<(Vec<(String, BlockGradient)>, std::time::Duration)> {
        let CaptureHook {
            captured, error, ..
        } = hook;
        if let Some(e) = error {
            return Err(e);
        }
        let outputs: Vec<&Tensor> = captured.iter().map(|c| &c.output).collect();
        let autograd_start = std::time::Instant::now();
        let grads = Tensor::f_run_backward(&[loss], &outputs, false, false)?;
        let autograd = autograd_start.elapsed();
        Ok((
            self.blocks_from_grads(&captured, grads, collection_mask)?,
            autograd,
        ))
    }

    /// Each index column block's gradients from the captured Linear calls and their output
    /// gradients `grads` (same order).
    fn blocks_from_grads(
        &self,
        captured: &[Captured],
        grads: Vec<Tensor>,
        collection_mask: &Tensor,
    ) -> Result<Vec<(String, BlockGradient)>> {
        if grads.len() != captured.len() {
            return Err(Error::internal(format!(
                "{} output gradients for {} captured Linear calls",
                grads.len(),
                captured.len()
            )));
        }
        let mut rows: Vec<Option<BlockGradient>> = (0..self.blocks.len()).map(|_| None).collect();
        let mut global: Option<Tensor> = None;
        // Backward-hook order (last module first), which fixes the global sum's order.
        for (cap, g) in captured.iter().zip(grads).rev() {
            let g = if g.defined() {
                g
            } else {
                cap.output.f_zeros_like()?
            };
            let t = &self.targets[cap.target];
            for b in t.blocks.clone() {
                let block = &self.blocks[b];
                let gb = if t.target.heads.is_some() {
                    g.f_narrow(2, block.lo, block.out)?
                } else {
                    g.shallow_clone()
                };
                let grads = self.module_gradient(t, block, &gb, &cap.input, collection_mask)?;
                if let Some(m) = self.settings.global_dim() {
                    let projected = self.project_global(block, &grads, m)?;
                    global = Some(match global {
                        Some(acc) => acc.f_add(&projected)?,
                        None => projected,
                    });
                } else {
                    rows[b] = Some(BlockGradient(grads));
                }
            }
        }
        if let Some(g) = global {
            let block = BlockGradient(OuterProduct::formed(g));
            return Ok(vec![("gradients".into(), block)]);
        }
        let blocks = self
            .blocks
            .iter()
            .zip(rows)
            .map(|(b, r)| {
                r.map(|r| (b.name.clone(), r)).ok_or_else(|| {
                    Error::internal(format!("module {} did not run in the forward pass", b.name))
                })
            })
            .collect::<Result<_>>()?;
        Ok(blocks)
    }

    /// The dtype gradients are saved in.
    pub fn save_kind(&self) -> Kind {
        self.save_kind
    }

    /// Bergson's `_module_gradient`: the per-document (or per-token) gradient of one block as
    /// the vectors it is formed from.
    fn module_gradient(
        &self,
        t: &TargetState,
        block: &BlockState,
        g: &Tensor,
        a: &Tensor,
        mask: &Tensor,
    ) -> Result<OuterProduct> {
        let (mut g, mut a) = (g.shallow_clone(), a.shallow_clone());
        if self.attribute_tokens {
            g = g.f_index(&[Some(mask)])?;
            a = a.f_index(&[Some(mask)])?;
        }
        let mut bias = None;
        if t.target.collect_bias {
            let b = match &block.normalizer {
                Some(n) => n.normalize_bias(&g)?,
                None => g.shallow_clone(),
            };
            let b = if self.attribute_tokens {
                b
            } else {
                b.f_sum_dim_intlist([1i64].as_slice(), false, b.kind())?
            };
            bias = Some(b.f_type_as(&g)?);
        }
        if let Some(f) = &block.output_factor {
            g = g.f_mul(&f.f_type_as(&g)?)?;
        }
        let divisor = block.divisor.as_ref().map(Tensor::shallow_clone);
        let mut bias_col = None;
        let p = self.settings.per_module_dim();
        if let (Some(_), false) = (p, t.adam) {
            let left = block.left.as_ref().expect("projection has a left matrix");
            g = g.f_matmul(&left.f_tr()?)?;
            if let Some(b) = &bias {
                let right = block
                    .backward_right
                    .as_ref()
                    .expect("bias projection has a right matrix");
                let i = t.target.in_features;
                a = a.f_matmul(&right.f_narrow(1, 0, i)?.f_tr()?)?;
                bias = Some(b.f_matmul(&left.f_tr()?)?);
                bias_col = Some(right.f_select(1, i)?);
            }
        } else if bias.is_some() {
            let i = t.target.in_features;
            a = a.f_constant_pad_nd([0i64, 1].as_slice())?;
            let col = Tensor::f_zeros([i + 1], (a.kind(), a.device()))?;
            let _ = col.f_narrow(0, i, 1)?.f_fill_(1.0)?;
            bias_col = Some(col);
            // The divisor was padded with a column of ones at construction.
        }
        let grads = OuterProduct {
            g,
            a,
            bias,
            bias_col,
            divisor,
            per_example: !self.attribute_tokens,
        };
        if let (Some(_), true) = (p, t.adam) {
            // Adam divides entry-wise, so the gradient is formed before the two-sided projection.
            let full = grads.materialize()?;
            let left = block.left.as_ref().expect("projection has a left matrix");
            let right = block
                .backward_right
                .as_ref()
                .expect("Adam projection has a right matrix");
            let projected = left.f_matmul(&full)?.f_matmul(&right.f_tr()?)?;
            return Ok(OuterProduct::formed(projected));
        }
        Ok(grads)
    }

    /// Bergson's `project_global`: `P Rᵀ` with the block's `[m, O·W]` matrix streamed in column
    /// blocks, then scaled.
    fn project_global(&self, block: &BlockState, grads: &OuterProduct, m: usize) -> Result<Tensor> {
        let n = grads.numel_per_row();
        let rows = grads.rows();
        let out_kind = grads.g.kind();
        let mut out = Tensor::f_zeros([rows, m as i64], (out_kind, self.device))?;
        let mut row_sq = match self.settings.projection_scale {
            ProjectionScale::RowNorm => Some(Tensor::f_zeros([m as i64], (out_kind, self.device))?),
            ProjectionScale::Jl => None,
        };
        let generated;
        let column_blocks = match &block.global {
            Some(b) => b,
            None => {
                generated =
                    global_blocks(&self.settings, &block.name, m, n, self.kind, self.device)?;
                &generated
            }
        };
        for (start, q) in column_blocks {
            let q = q.f_to_kind(out_kind)?;
            out = out.f_add(&grads.dot(&q, *start)?)?;
            if let Some(sq) = &mut row_sq {
                *sq = sq.f_add(&q.f_pow_tensor_scalar(2)?.f_sum_dim_intlist(
                    [1i64].as_slice(),
                    false,
                    out_kind,
                )?)?;
            }
        }
        Ok(match row_sq {
            Some(sq) => out.f_div(&sq.f_sqrt()?)?,
            None => out.f_div_scalar((m as f64).sqrt())?,
        })
    }

    /// The model dtype gradients are computed in.
    pub fn kind(&self) -> Kind {
        self.kind
    }
}

/// The unscaled column blocks of a block's global projection matrix.
fn global_blocks(
    settings: &ProjectionSettings,
    name: &str,
    m: usize,
    n: i64,
    kind: Kind,
    device: Device,
) -> Result<Vec<(i64, Tensor)>> {
    let id = projection_identifier(name, "single", settings.projection_seed);
    let cols = global_block_columns(m) as i64;
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let stop = (start + cols).min(n);
        let values = random_matrix_values(
            &format!("{id}/{start}"),
            m,
            (stop - start) as usize,
            settings.projection_type,
        );
        let q = Tensor::f_from_slice(&values)?
            .f_reshape([m as i64, stop - start])?
            .f_to_device(device)?
            .f_to_kind(kind)?;
        out.push((start, q));
        start = stop;
    }
    Ok(out)
}

/// A block's gradients `(g ⊗ a) ⊘ divisor + bias ⊗ bias_col`, kept as the vectors they are
/// formed from (Bergson's `OuterProductGradients`), or already formed.
struct OuterProduct {
    /// `[N, S, O]` per example or `[T, O]` per token.
    g: Tensor,
    /// `[N, S, W]` or `[T, W]`.
    a: Tensor,
    bias: Option<Tensor>,
    bias_col: Option<Tensor>,
    divisor: Option<Tensor>,
    per_example: bool,
}

impl OuterProduct {
    /// An already formed `[rows, O, W]` gradient.
    fn formed(p: Tensor) -> Self {
        OuterProduct {
            g: p,
            a: Tensor::new(),
            bias: None,
            bias_col: None,
            divisor: None,
            per_example: false,
        }
    }

    fn is_formed(&self) -> bool {
        !self.a.defined()
    }

    fn rows(&self) -> i64 {
        self.g.size()[0]
    }

    fn numel_per_row(&self) -> i64 {
        if self.is_formed() {
            self.g.size()[1..].iter().product()
        } else {
            self.g.size().last().copied().unwrap_or(0) * self.a.size().last().copied().unwrap_or(0)
        }
    }

    /// The gradients `[rows, O, W]`.
    fn materialize(&self) -> Result<Tensor> {
        if self.is_formed() {
            return Ok(self.g.shallow_clone());
        }
        let mut p = if self.per_example {
            self.g.f_transpose(-2, -1)?.f_matmul(&self.a)?
        } else {
            self.g.f_unsqueeze(-1)?.f_mul(&self.a.f_unsqueeze(-2)?)?
        };
        if let Some(d) = &self.divisor {
            p = p.f_div_(d)?;
        }
        if let (Some(b), Some(col)) = (&self.bias, &self.bias_col) {
            p = p.f_addcmul_(&b.f_unsqueeze(-1)?, col)?;
        }
        Ok(p)
    }

    /// Dot products `[rows, Q]` of the flattened gradients' entries `start..start+k` with each
    /// row of `q` `[Q, k]` (Bergson's `OuterProductGradients.dot`).
    fn dot(&self, q: &Tensor, start: i64) -> Result<Tensor> {
        let out_kind = q.kind();
        let k = q.size()[1];
        if self.is_formed() {
            let flat = self.g.f_flatten(1, -1)?.f_narrow(1, start, k)?;
            return Ok(flat
                .f_matmul(&q.f_to_kind(flat.kind())?.f_tr()?)?
                .f_to_kind(out_kind)?);
        }
        let w = *self.a.size().last().expect("a has a feature axis");
        let (lo, hi) = (start / w, (start + k + w - 1) / w);
        let o = hi - lo;
        let q_rows = q.size()[0];
        let (pad_l, pad_r) = (start - lo * w, hi * w - start - k);
        let q = if pad_l > 0 || pad_r > 0 {
            q.f_constant_pad_nd([pad_l, pad_r].as_slice())?
        } else {
            q.shallow_clone()
        };
        let q = q.f_reshape([q_rows, o, w])?;
        let narrowed = OuterProduct {
            g: self.g.f_narrow(-1, lo, o)?,
            a: self.a.shallow_clone(),
            bias: self
                .bias
                .as_ref()
                .map(|b| b.f_narrow(-1, lo, o))
                .transpose()?,
            bias_col: self.bias_col.as_ref().map(Tensor::shallow_clone),
            divisor: self
                .divisor
                .as_ref()
                .map(|d| d.f_narrow(0, lo, o))
                .transpose()?,
            per_example: self.per_example,
        };
        // Dividing by Adam's divisor can overflow half precision: work in its dtype.
        let narrowed = match narrowed.divisor.as_ref().map(Tensor::kind) {
            Some(kind) => narrowed.cast(kind)?,
            None => narrowed,
        };
        let q = q.f_to_kind(narrowed.g.kind())?;
        if self.per_example || q_rows >= o.max(w) {
            let p = narrowed.materialize()?.f_flatten(1, -1)?;
            return Ok(p
                .f_matmul(&q.f_flatten(1, -1)?.f_tr()?)?
                .f_to_kind(out_kind)?);
        }
        // ⟨(g ⊗ a) ⊘ D, q⟩ = gᵀ (q ⊘ D) a, without forming [T, O, W].
        let q_weight = match &narrowed.divisor {
            Some(d) => q.f_div(d)?,
            None => q.shallow_clone(),
        };
        let t = narrowed.a.size()[0];
        let mut part = if o <= w {
            let a_q = narrowed.a.f_matmul(&q_weight.f_reshape([-1, w])?.f_tr()?)?;
            Tensor::f_einsum(
                "tqo,to->tq",
                &[a_q.f_view([t, -1, o])?, narrowed.g.shallow_clone()],
                None::<&[i64]>,
            )?
        } else {
            let gq = narrowed.g.f_matmul(&q_weight)?;
            Tensor::f_einsum(
                "qtw,tw->tq",
                &[gq, narrowed.a.shallow_clone()],
                None::<&[i64]>,
            )?
        };
        if let (Some(b), Some(col)) = (&narrowed.bias, &narrowed.bias_col) {
            part = part.f_add_(&b.f_matmul(&q.f_matmul(col)?.f_tr()?)?)?;
        }
        Ok(part.f_to_kind(out_kind)?)
    }

    /// A copy with every factor but the divisor cast to `kind`.
    fn shallow_cast(&self, kind: Kind) -> Result<OuterProduct> {
        let c = |t: &Tensor| t.f_to_kind(kind);
        Ok(OuterProduct {
            g: c(&self.g)?,
            a: if self.a.defined() {
                c(&self.a)?
            } else {
                Tensor::new()
            },
            bias: self.bias.as_ref().map(c).transpose()?,
            bias_col: self.bias_col.as_ref().map(c).transpose()?,
            divisor: self.divisor.as_ref().map(Tensor::shallow_clone),
            per_example: self.per_example,
        })
    }

    fn cast(self, kind: Kind) -> Result<OuterProduct> {
        let c = |t: &Tensor| t.f_to_kind(kind);
        Ok(OuterProduct {
            g: c(&self.g)?,
            a: c(&self.a)?,
            bias: self.bias.as_ref().map(c).transpose()?,
            bias_col: self.bias_col.as_ref().map(c).transpose()?,
            divisor: self.divisor,
            per_example: self.per_example,
        })
    }
}

/// One index column block's gradients for a batch, as the vectors they are formed from
/// (Bergson's `OuterProductGradients`): `(g ⊗ a) ⊘ divisor + bias ⊗ bias_col` per document
/// (summed over its positions) or per token, or already formed `[rows, ...]` (Adam
/// normalisation with a projection, or a global projection).
pub struct BlockGradient(OuterProduct);

impl BlockGradient {
    /// Already formed gradients `[rows, size]` (e.g. after preconditioning).
    pub fn formed(p: Tensor) -> BlockGradient {
        BlockGradient(OuterProduct::formed(p))
    }

    /// Rows (documents or tokens).
    pub fn rows(&self) -> i64 {
        self.0.rows()
    }

    /// Whether each row is one token's gradient, kept as factors (not formed).
    fn per_token_factors(&self) -> bool {
        !self.0.is_formed() && !self.0.per_example
    }

    /// The gradients, formed and flattened: `[rows, size]`.
    pub fn materialize(&self) -> Result<Tensor> {
        Ok(self.0.materialize()?.f_flatten(1, -1)?)
    }

    /// The block as Bergson's scorer sees it: factors cast to `kind` before anything is formed
    /// (`OuterProductGradients.to`, the Adam divisor kept in its dtype); an already formed
    /// block is first clamped to, and rounded through, `save_kind` (`_materialize_gradient`).
    pub fn for_scoring(&self, kind: Kind, save_kind: Kind) -> Result<BlockGradient> {
        let g = &self.0;
        if g.is_formed() {
            let (lo, hi) = finite_range(save_kind);
            let p =
                g.g.f_flatten(1, -1)?
                    .f_clamp(lo, hi)?
                    .f_to_kind(save_kind)?
                    .f_to_kind(kind)?;
            return Ok(BlockGradient(OuterProduct::formed(p)));
        }
        let cast = OuterProduct {
            g: g.g.shallow_clone(),
            a: g.a.shallow_clone(),
            bias: g.bias.as_ref().map(Tensor::shallow_clone),
            bias_col: g.bias_col.as_ref().map(Tensor::shallow_clone),
            divisor: g.divisor.as_ref().map(Tensor::shallow_clone),
            per_example: g.per_example,
        };
        Ok(BlockGradient(cast.cast(kind)?))
    }

    /// Dot products `[rows, Q]` of each row with each column of `q_t` `[size, Q]`, in
    /// `q_t`'s dtype. Per-token rows are contracted without forming them when that is smaller
    /// (Bergson's `OuterProductGradients.dot`).
    pub fn dot(&self, q_t: &Tensor) -> Result<Tensor> {
        if self.per_token_factors() {
            return self.0.dot(&q_t.f_tr()?, 0);
        }
        let p = self.materialize()?;
        Ok(p.f_matmul(&q_t.f_to_kind(p.kind())?)?
            .f_to_kind(q_t.kind())?)
    }

    /// Squared row norms `[rows]` in float32. Per-token factors use
    /// `‖g ⊗ a‖² = ‖g‖²‖a‖²` and its Adam and bias variants (Bergson's `sq_norm`).
    pub fn sq_norm(&self) -> Result<Tensor> {
        if !self.per_token_factors() {
            let p = self.materialize()?.f_to_kind(Kind::Float)?;
            return Ok(p
                .f_square()?
                .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?);
        }
        let f = self.0.shallow_cast(Kind::Float)?;
        let sum = |t: &Tensor| t.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float);
        let (g2, a2) = (f.g.f_square()?, f.a.f_square()?);
        let mut n = match &f.divisor {
            None => sum(&g2)?.f_mul(&sum(&a2)?)?,
            Some(d) => sum(&g2
                .f_matmul(&d.f_to_kind(Kind::Float)?.f_pow_tensor_scalar(-2)?)?
                .f_mul(&a2)?)?,
        };
        if let (Some(b), Some(col)) = (&f.bias, &f.bias_col) {
            n = n.f_add(&sum(&b.f_square()?)?.f_mul(&col.f_square()?.f_sum(Kind::Float)?)?)?;
            let gb = f.g.f_mul(b)?;
            let ac = f.a.f_mul(col)?;
            let cross = match &f.divisor {
                None => sum(&gb)?.f_mul(&sum(&ac)?)?,
                Some(d) => sum(&gb
                    .f_matmul(&d.f_to_kind(Kind::Float)?.f_reciprocal()?)?
                    .f_mul(&ac)?)?,
            };
            n = n.f_add(&cross.f_mul_scalar(2.0)?)?;
        }
        // The cross term can round the total below zero.
        Ok(n.f_clamp_min(0.0)?)
    }
}

/// The finite range of a floating dtype (`torch.finfo(dtype).min/max`).
pub fn finite_range(kind: Kind) -> (f64, f64) {
    let max = match kind {
        Kind::Half => 65504.0,
        Kind::BFloat16 => 3.389_531_389_251_535_5e38,
        Kind::Float => f32::MAX as f64,
        _ => f64::MAX,
    };
    (-max, max)
}

fn check_normalizer_shape(target: &Target, n: &Normalizer) -> Result<()> {
    let (o, i) = (target.out_features, target.in_features);
    let want: Vec<(&str, Vec<i64>)> = match n {
        Normalizer::Adam { .. } => vec![("weight_avg_sq", vec![o, i]), ("bias_avg_sq", vec![o])],
        Normalizer::Adafactor { .. } => {
            vec![("row", vec![o]), ("col", vec![i]), ("bias_avg_sq", vec![o])]
        }
    };
    for (field, tensor) in n.tensors() {
        if let Some((_, shape)) = want.iter().find(|(f, _)| *f == field) {
            if tensor.size() != *shape {
                return Err(Error::input(format!(
                    "the optimizer state does not fit the model: {} {field} has shape {:?}, the module needs {:?}; use the optimizer state saved with this model",
                    target.name,
                    tensor.size(),
                    shape
                )));
            }
        }
    }
    Ok(())
}

/// One call of a collected module made outside this crate's models, waiting for its output
/// gradient ([`GradientCollector::module_call`]).
pub struct ModuleCall {
    target: usize,
    input: Tensor,
    output_grad: Option<Tensor>,
}

impl ModuleCall {
    /// Records the loss gradient of the call's output `[N, S, O]` (from a backward hook).
    pub fn set_output_grad(&mut self, g: &Tensor) {
        self.output_grad = Some(g.detach());
    }

    /// Whether the backward pass has reached this call.
    pub fn has_output_grad(&self) -> bool {
        self.output_grad.is_some()
    }
}

/// One captured Linear call.
struct Captured {
    target: usize,
    /// The processed input (see [`GradientCollector::process_input`]).
    input: Tensor,
    /// The Linear output, differentiated in the backward pass.
    output: Tensor,
}

/// The [`LinearHook`] a model's forward runs through while collecting.
pub struct CaptureHook<'c> {
    collector: &'c GradientCollector,
    captured: Vec<Captured>,
    error: Option<Error>,
    /// Training: leave the embeddings in the parameters' graph.
    keep_graph: bool,
}

impl CaptureHook<'_> {
    /// The captured Linear outputs, in call order: what a training backward differentiates
    /// besides the parameters.
    pub fn outputs(&self) -> Vec<&Tensor> {
        self.captured.iter().map(|c| &c.output).collect()
    }
}

impl LinearHook for CaptureHook<'_> {
    fn embeddings(&mut self, h: Tensor) -> Tensor {
        if self.keep_graph {
            return h;
        }
        // The only tensor requiring grad: autograd reaches every layer, no weight grads.
        h.detach().set_requires_grad(true)
    }

    fn module(&mut self, layer: &Linear, x: &Tensor) -> Tensor {
        let y = layer.forward_base(x);
        if let Some(&t) = self.collector.by_name.get(&layer.name) {
            match self
                .collector
                .process_input(&self.collector.targets[t], &x.detach())
            {
                Ok(input) => self.captured.push(Captured {
                    target: t,
                    input,
                    output: y.shallow_clone(),
                }),
                Err(e) => {
                    self.error.get_or_insert(e);
                }
            }
        }
        y
    }
}
