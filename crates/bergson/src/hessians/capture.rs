//! One batch of the Hessian fit (Bergson's `CollectorComputer` driven by
//! `fwd_bwd_hessian_factory`): the forward pass with every targeted Linear's raw input kept,
//! the loss whose gradient outer products estimate the Hessian, and one backward to the
//! Linear outputs. The factor accumulators ([`super::covariance`], [`super::correction`])
//! consume what this returns; nothing is normalised or projected.
//!
//! The loss: per-token cross-entropy (or `--loss_fn log_odds`) of `logits[:, :-1]` against the
//! dataset's labels, or against labels sampled from the model ([`super::labels`]) at the same
//! positions; each document's summed loss is divided by `sqrt(#labelled tokens)` under
//! `--loss_reduction mean` (so that `g gᵀ` estimates the Hessian of the mean loss, which is
//! `1/#tokens` times that of the sum), and the batch's sum is differentiated.

use std::collections::HashMap;

use tch::Tensor;

use super::labels::LabelSampler;
use crate::collect::head_loss::{fused_applies, fused_head_loss};
use crate::collect::loss::{token_losses, IGNORE_INDEX};
use crate::collect::{LossSpec, Target};
use crate::config::{LossFn, LossReduction};
use crate::data::batching::{collection_mask, pad_batch};
use crate::data::tokenize::TokenizedRow;
use crate::models::head::{head_logits, HeadOutput};
use crate::models::{CausalLm, Linear, LinearHook};
use crate::Result;

/// How the Hessian loss is formed.
#[derive(Debug, Clone, Copy)]
pub struct HessianLoss {
    /// Per-token loss (`--loss_fn`).
    pub loss_fn: LossFn,
    /// `mean` divides each document's loss by the square root of its labelled count.
    pub reduction: LossReduction,
    /// Factor on the logits (`--logit_scale`, folded into Bergson's LM head).
    pub logit_scale: f64,
}

/// One module's batch: raw input `a` `[N, S, I]` and output gradient `g` `[N, S, O]`, in the
/// model's dtype on its device.
pub struct ModuleBatch {
    /// Layer inputs.
    pub a: Tensor,
    /// Gradients of the batch loss with respect to the layer outputs.
    pub g: Tensor,
}

/// One processed batch.
pub struct HessianBatch {
    /// Gradient-carrying positions `[N, S]` (every real position but each document's last).
    pub mask: Tensor,
    /// Number of true entries of `mask`.
    pub positions: i64,
    /// Per target (in target order); `None` for a module the forward pass did not run.
    pub modules: Vec<Option<ModuleBatch>>,
    /// `∂loss/∂hidden` `[N, S, D]` at the final hidden states, when the fused head loss made it:
    /// a later pass over the same batch can seed its backward with it and skip the LM head.
    pub head_grad: Option<Tensor>,
}

/// Runs the model over batches for a set of target modules.
pub struct HessianCapture<'m> {
    model: &'m dyn CausalLm,
    by_name: HashMap<String, usize>,
    num_targets: usize,
    loss: HessianLoss,
    /// The LM head with `logit_scale` and the model's logit divisor folded in.
    scaled_head: Option<Linear>,
}

impl<'m> HessianCapture<'m> {
    /// A capture of `targets` of `model`.
    pub fn new(model: &'m dyn CausalLm, targets: &[Target], loss: HessianLoss) -> Result<Self> {
        let by_name = targets
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let factor = model.head_output().linear_factor(loss.logit_scale);
        let scaled_head = if factor != 1.0 {
            Some(model.lm_head().scaled(factor)?)
        } else {
            None
        };
        Ok(HessianCapture {
            model,
            by_name,
            num_targets: targets.len(),
            loss,
            scaled_head,
        })
    }

    fn head(&self) -> &Linear {
        self.scaled_head.as_ref().unwrap_or(self.model.lm_head())
    }

    /// Forward and backward on the documents `indices` of `rows`. `sampler` draws the labels
    /// (true Fisher); `None` uses the dataset's labels (empirical Fisher). `head_grad`, an earlier
    /// pass's [`HessianBatch::head_grad`] for the same batch, replaces the LM head and loss (the
    /// same labels give the same gradient: the sampled ones are drawn reproducibly).
    pub fn run_batch(
        &self,
        rows: &[TokenizedRow],
        indices: &[usize],
        sampler: Option<&LabelSampler>,
        head_grad: Option<&Tensor>,
    ) -> Result<HessianBatch> {
        let model = self.model;
        let device = model.device();
        let ids: Vec<&[i64]> = indices
            .iter()
            .map(|&i| rows[i].input_ids.as_slice())
            .collect();
        let labels: Option<Vec<&[i64]>> = rows[indices[0]].labels.is_some().then(|| {
            indices
                .iter()
                .map(|&i| rows[i].labels.as_deref().unwrap_or(&[]))
                .collect()
        });
        let (x, y) = pad_batch(&ids, labels.as_deref())?;
        model.check_input_ids(&x)?;
        let lengths: Vec<usize> = ids.iter().map(|d| d.len()).collect();
        let seq_len = x.size()[1];
        let mask = collection_mask(&lengths, seq_len as usize)?.f_to_device(device)?;
        let (x, mut y) = (x.f_to_device(device)?, y.f_to_device(device)?);

        let mut hook = RawCapture {
            by_name: &self.by_name,
            captured: Vec::new(),
        };
        let hidden = model.hidden_with(&x, &mut hook);
        let (seed, head_grad) = match head_grad {
            Some(grad) => {
                let grad = grad.f_to_device(device)?;
                (hidden.f_mul(&grad)?.f_sum(hidden.kind())?, None)
            }
            None => {
                if let Some(sampler) = sampler {
                    let cap = self.model.head_output().softcap;
                    y = sampler.sample(self.head(), cap, &hidden, &y, indices)?;
                }
                self.loss_seed(&hidden, &y)?
            }
        };
        let outputs: Vec<&Tensor> = hook.captured.iter().map(|c| &c.2).collect();
        let grads = Tensor::f_run_backward(&[&seed], &outputs, false, false)?;
        let mut modules: Vec<Option<ModuleBatch>> = (0..self.num_targets).map(|_| None).collect();
        for ((target, a, out), g) in hook.captured.into_iter().zip(grads) {
            let g = if g.defined() { g } else { out.f_zeros_like()? };
            modules[target] = Some(ModuleBatch { a, g });
        }
        let positions = lengths.iter().map(|&l| l.saturating_sub(1) as i64).sum();
        Ok(HessianBatch {
            mask,
            positions,
            modules,
            head_grad,
        })
    }

    /// The scalar whose gradient is the batch's: `Σ_n loss_n / sqrt(denom_n)` (mean) or
    /// `Σ_n loss_n` (sum), `loss_n` the document's summed token loss; and its gradient at the
    /// hidden states when the fused loss formed it.
    fn loss_seed(&self, hidden: &Tensor, y: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let kind = hidden.kind();
        let s = y.size()[1];
        let targets = y.f_narrow(1, 1, s - 1)?;
        // Per-document factor 1/sqrt(#labelled tokens) in the model's dtype, as Bergson's
        // `denoms ** 0.5`.
        let weight = match self.loss.reduction {
            LossReduction::Mean => Some(
                targets
                    .f_ne(IGNORE_INDEX)?
                    .f_sum_dim_intlist([1i64].as_slice(), false, kind)?
                    .f_sqrt()?
                    .f_reciprocal()?,
            ),
            LossReduction::Sum => None,
        };
        let spec = LossSpec {
            loss_fn: self.loss.loss_fn,
            reduction: LossReduction::Sum,
            label_smoothing: 0.0,
            logit_scale: 1.0,
            upcast_logits: false,
        };
        if fused_applies(&spec, kind) {
            // The head and loss fused: the seed is hidden · ∂loss/∂hidden, so the logits never
            // enter the graph (the same gradient as the unfused loss below).
            let cap = self.model.head_output().softcap;
            let (_, grad) = fused_head_loss(self.head(), cap, hidden, y, &spec, weight.as_ref())?;
            return Ok((hidden.f_mul(&grad)?.f_sum(kind)?, Some(grad)));
        }
        let out = HeadOutput {
            divisor: 1.0, // folded into the head with the scale
            ..self.model.head_output()
        };
        let logits = head_logits(self.head(), out, hidden, 1.0).f_narrow(1, 0, s - 1)?;
        let tok = token_losses(&spec, &logits, &targets)?;
        let mut losses = tok.f_sum_dim_intlist([1i64].as_slice(), false, tok.kind())?;
        if let Some(w) = &weight {
            losses = losses.f_mul(w)?;
        }
        Ok((losses.f_sum(losses.kind())?, None))
    }
}

/// The forward hook: every targeted Linear's raw input (detached) and its output.
struct RawCapture<'a> {
    by_name: &'a HashMap<String, usize>,
    captured: Vec<(usize, Tensor, Tensor)>,
}

impl LinearHook for RawCapture<'_> {
    fn embeddings(&mut self, h: Tensor) -> Tensor {
        // The only tensor requiring grad: autograd reaches every layer, no weight grads.
        h.detach().set_requires_grad(true)
    }

    fn module(&mut self, layer: &Linear, x: &Tensor) -> Tensor {
        let y = layer.forward_base(x);
        if let Some(&t) = self.by_name.get(&layer.name) {
            self.captured.push((t, x.detach(), y.shallow_clone()));
        }
        y
    }
}

/// `x` `[N, S, D]` at the true positions of `mask` `[N, S]`: `[T, D]`.
pub fn at_positions(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    Ok(x.f_index(&[Some(mask)])?)
}

/// `x` `[..., I]` with a ones column appended (the bias's input), when `bias`.
pub fn with_bias_column(x: Tensor, bias: bool) -> Result<Tensor> {
    if !bias {
        return Ok(x);
    }
    let mut shape = x.size();
    *shape.last_mut().expect("a feature axis") = 1;
    let ones = Tensor::f_ones(shape.as_slice(), (x.kind(), x.device()))?;
    Ok(Tensor::f_cat(&[x, ones], -1)?)
}
