//! The functional trainer of Python Bergson 2.5.1 (`magic/trainer.py`): a trainer state is the
//! trainable parameters, the optimizer state and the batch index; a step maps one state to the
//! next without changing it, running the model on the state's parameters (explicit
//! parameters, [`ModelSpec::build`]). A traced step keeps the autograd graph of the update,
//! gradients included (`create_graph`), so the next state can be differentiated with respect
//! to this one and to the data weights: MAGIC's metagradient.

use super::loss::weighted_causal_lm_ce;
use super::optimizer::{OptState, Optimizer};
use super::stream::{Batch, DataStream};
use crate::collect::{BatchGradients, GradientCollector};
use crate::config::TrainLossReduction;
use crate::dist::{Collective, SingleProcess};
use crate::models::{CausalLm, LinearHook, ModelSpec, NoHook};
use crate::{Error, Result};
use std::rc::Rc;
use tch::{Kind, Tensor};

/// The trainer's state after `batch_index` steps.
#[derive(Debug)]
pub struct TrainerState {
    /// Trainable parameters, in [`Trainer::names`] order.
    pub params: Vec<Tensor>,
    /// Optimizer state.
    pub opt: OptState,
    /// Steps taken (the next batch to train on).
    pub batch_index: usize,
}

impl TrainerState {
    /// A copy without autograd history.
    pub fn detach(&self) -> TrainerState {
        TrainerState {
            params: self.params.iter().map(Tensor::detach).collect(),
            opt: self.opt.detach(),
            batch_index: self.batch_index,
        }
    }

    /// The parameters then the optimizer's floating-point state: what a traced step is
    /// differentiable in (Bergson's `differentiable_tensors`).
    pub fn differentiable_tensors(&self) -> Vec<&Tensor> {
        self.params.iter().chain(self.opt.tensors()).collect()
    }
}

/// A step's gradient with its autograd graph ([`Trainer::traced_gradient`]).
#[derive(Debug)]
pub struct TracedGradient {
    /// The parameters it was taken at: leaves requiring grad, in [`Trainer::names`] order.
    pub params: Vec<Tensor>,
    /// The clipped gradient, differentiable in `params` and the data weights (undefined for
    /// a parameter the loss does not reach).
    pub grads: Vec<Tensor>,
}

impl TracedGradient {
    /// The gradient's values without graph (zeros where it is undefined).
    pub fn values(&self) -> Vec<Tensor> {
        (self.grads.iter().zip(&self.params))
            .map(|(g, p)| {
                if g.defined() {
                    g.detach()
                } else {
                    p.detach().zeros_like()
                }
            })
            .collect()
    }
}

/// How to take a step.
#[derive(Debug, Clone)]
pub struct StepSettings {
    /// Reduction of the token losses.
    pub reduction: TrainLossReduction,
    /// Global-norm gradient clipping (`None` or 0: off).
    pub max_grad_norm: Option<f64>,
    /// Micro-batches per step.
    pub grad_accum_steps: usize,
    /// Factor on the logits before every loss (`--logit_scale`; Bergson hooks the LM head).
    pub logit_scale: f64,
}

/// A model and an optimizer, trained functionally.
pub struct Trainer {
    spec: ModelSpec,
    /// Parameters that do not train: a PEFT model's base weights (Bergson trains only the
    /// adapter's LoRA weights), none otherwise.
    frozen: Vec<(String, Tensor)>,
    /// `--moe_experts`: the fused experts each built model runs one projection at a time.
    moe_experts: Option<String>,
    names: Vec<String>,
    optimizer: Optimizer,
    settings: StepSettings,
    /// The job whose ranks share every batch (data parallel); a job of one by default.
    group: Rc<dyn Collective>,
}

/// Where a collecting step sends each micro-batch's per-example gradients.
pub struct MicroBatchTap<'a> {
    /// The collector the micro-batches' forward passes run through.
    pub collector: &'a GradientCollector,
    /// Called with the micro-batch's first row in the batch and its gradients (one row per
    /// batch row, in order).
    pub sink: &'a mut dyn FnMut(i64, BatchGradients) -> Result<()>,
}

/// What one step reports besides the new state.
#[derive(Debug, Clone, Copy)]
pub struct StepOutput {
    /// The batch's training loss (micro-batch losses combined as the full-batch loss).
    pub loss: f64,
}

impl Trainer {
    /// A trainer of `model` (built from `spec`) with `optimizer`; returns the initial state
    /// (copies of the model's parameters, zero optimizer state). With a PEFT adapter only its
    /// LoRA weights train, as in Bergson; the base weights stay fixed.
    pub fn new(
        spec: ModelSpec,
        model: &dyn CausalLm,
        optimizer: Optimizer,
        settings: StepSettings,
    ) -> Result<(Self, TrainerState)> {
        if settings.grad_accum_steps == 0 {
            return Err(Error::input("--grad_accum_steps must be at least 1"));
        }
        let adapter = model.adapter_parameters();
        let (frozen, trainable) = if adapter.is_empty() {
            (Vec::new(), model.named_parameters())
        } else {
            let frozen = model
                .named_parameters()
                .into_iter()
                .map(|(n, t)| (n, t.detach()))
                .collect();
            (frozen, adapter)
        };
        let (names, params): (Vec<String>, Vec<Tensor>) = trainable
            .into_iter()
            .map(|(n, t)| (n, t.detach().copy()))
            .unzip();
        let opt = optimizer.init(&params)?;
        let state = TrainerState {
            params,
            opt,
            batch_index: 0,
        };
        Ok((
            Self {
                spec,
                frozen,
                moe_experts: None,
                names,
                optimizer,
                settings,
                group: Rc::new(SingleProcess),
            },
            state,
        ))
    }

    /// Names of the trained parameters (full Hugging Face names, `named_parameters()` order;
    /// peft's names of the LoRA weights for an adapter).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Runs the MoE experts matching `patterns` (`--moe_experts`) as one module per expert
    /// projection in every model this trainer builds, as Bergson's `expand_moe` does (the
    /// same parameters and function; the collector sees the expert modules).
    pub fn with_moe_experts(mut self, patterns: &str) -> Self {
        self.moe_experts = Some(patterns.to_string()).filter(|p| !p.is_empty());
        self
    }

    /// Trains data-parallel on the ranks of `group`: each rank runs its share of every batch
    /// (rows `rank, rank + W, ...` of each micro-batch) and the ranks add their gradients, so
    /// every step, and every traced step's derivatives, are the one-process step's.
    pub fn with_group(mut self, group: Rc<dyn Collective>) -> Self {
        self.group = group;
        self
    }

    /// The job the trainer's steps run on.
    pub fn group(&self) -> &dyn Collective {
        &*self.group
    }

    /// Sums per-rank parts of a gradient-shaped list over the job (undefined parts count as
    /// zeros shaped as `like`); the parts themselves in a job of one.
    pub fn sum_over_ranks(&self, parts: &[Tensor], like: &[Tensor]) -> Result<Vec<Tensor>> {
        Ok(crate::dist::sum_over_ranks(self.group(), parts, like)?)
    }

    /// The PEFT adapter whose LoRA weights train, if any.
    pub fn adapter(&self) -> Option<&crate::models::lora::Adapter> {
        self.spec.adapter()
    }

    /// The reduction of the token losses.
    pub fn reduction(&self) -> TrainLossReduction {
        self.settings.reduction
    }

    /// `model`'s logits for `input_ids` with `--logit_scale` applied where Bergson's hook on the
    /// LM head applies it (before a final soft-capping), every Linear through `hook`.
    pub fn logits(
        &self,
        model: &dyn CausalLm,
        input_ids: &Tensor,
        hook: &mut dyn LinearHook,
    ) -> Tensor {
        model.forward_scaled_with(input_ids, hook, self.settings.logit_scale)
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// The model on `params`, with the math attention kernel (it has a double backward, and
    /// it is what Bergson's trainer runs: transformers' eager attention).
    pub fn model_on(&self, params: &[Tensor]) -> Result<Box<dyn CausalLm>> {
        let frozen = self.frozen.iter().map(|(n, t)| (n, t));
        let mut model = self
            .spec
            .build(frozen.chain(self.names.iter().zip(params)))?;
        model.set_math_attention(true);
        if let Some(patterns) = &self.moe_experts {
            model.expand_moe(patterns)?;
        }
        Ok(model)
    }

    /// One optimizer step on `batch` from `state`. With `trace`, the new state keeps its
    /// autograd graph back to `state`'s tensors (which must require grad, or come from a
    /// traced step) and to the data weights the batch was gathered from.
    pub fn step(
        &self,
        state: &TrainerState,
        batch: &Batch,
        trace: bool,
    ) -> Result<(TrainerState, StepOutput)> {
        let params: Vec<Tensor> = if trace {
            state.params.iter().map(Tensor::shallow_clone).collect()
        } else {
            state
                .params
                .iter()
                .map(|p| p.detach().set_requires_grad(true))
                .collect()
        };
        let (grads, loss) = self.gradients(&params, batch, trace, None)?;
        if !loss.is_finite() {
            return Err(Error::input(format!(
                "the training loss is {loss} at step {}; lower --lr, set --max_grad_norm, or use --precision fp32",
                state.batch_index
            )));
        }
        let _guard = (!trace).then(tch::no_grad_guard);
        let grads = self.clip(grads);
        let params: Vec<Tensor> = if trace {
            params
        } else {
            params.iter().map(Tensor::detach).collect()
        };
        let (params, opt) = self.optimizer.update(&params, &grads, &state.opt);
        Ok((
            TrainerState {
                params,
                opt,
                batch_index: state.batch_index + 1,
            },
            StepOutput { loss },
        ))
    }

    /// The clipped full-batch gradient at `state`'s parameters, with its autograd graph back to
    /// them (made leaves) and to the data weights (`create_graph`): what MAGIC's backward
    /// differentiates, without tracing the optimizer's update (whose VJP has a closed form).
    pub fn traced_gradient(&self, state: &TrainerState, batch: &Batch) -> Result<TracedGradient> {
        let params: Vec<Tensor> = (state.params.iter())
            .map(|p| p.detach().set_requires_grad(true))
            .collect();
        let (grads, loss) = self.gradients(&params, batch, true, None)?;
        if !loss.is_finite() {
            return Err(Error::input(format!(
                "the training loss is {loss} at step {}; lower --lr, set --max_grad_norm, or use --precision fp32",
                state.batch_index
            )));
        }
        Ok(TracedGradient {
            grads: self.clip(grads),
            params,
        })
    }

    /// One optimizer step on `batch` from `state` whose gradient is traced
    /// ([`Trainer::traced_gradient`]) and returned beside the new state, so that MAGIC's
    /// backward can reuse it instead of recomputing the step. The update itself runs
    /// without a graph, on the gradient's values.
    pub fn step_keeping_gradient(
        &self,
        state: &TrainerState,
        batch: &Batch,
    ) -> Result<(TrainerState, TracedGradient)> {
        let traced = self.traced_gradient(state, batch)?;
        let _guard = tch::no_grad_guard();
        let grads = traced.values();
        let params: Vec<Tensor> = traced.params.iter().map(Tensor::detach).collect();
        let (params, opt) = self.optimizer.update(&params, &grads, &state.opt);
        let next = TrainerState {
            params,
            opt,
            batch_index: state.batch_index + 1,
        };
        Ok((next, traced))
    }

    /// One untraced optimizer step on `batch` that also hands each micro-batch's per-example
    /// gradients of its training loss (the loss the step differentiates, scaled as in the
    /// step) to `tap`: the collector forms them from the same backward pass as the update.
    pub fn step_collecting(
        &self,
        state: &TrainerState,
        batch: &Batch,
        tap: MicroBatchTap<'_>,
    ) -> Result<(TrainerState, StepOutput)> {
        let params: Vec<Tensor> = state
            .params
            .iter()
            .map(|p| p.detach().set_requires_grad(true))
            .collect();
        let (grads, loss) = self.gradients(&params, batch, false, Some(tap))?;
        self.finish_step(state, params, grads, loss)
    }

    /// Clipping and the optimizer update of an untraced step.
    fn finish_step(
        &self,
        state: &TrainerState,
        params: Vec<Tensor>,
        grads: Vec<Tensor>,
        loss: f64,
    ) -> Result<(TrainerState, StepOutput)> {
        if !loss.is_finite() {
            return Err(Error::input(format!(
                "the training loss is {loss} at step {}; lower --lr, set --max_grad_norm, or use --precision fp32",
                state.batch_index
            )));
        }
        let _guard = tch::no_grad_guard();
        let grads = self.clip(grads);
        let params: Vec<Tensor> = params.iter().map(Tensor::detach).collect();
        let (params, opt) = self.optimizer.update(&params, &grads, &state.opt);
        Ok((
            TrainerState {
                params,
                opt,
                batch_index: state.batch_index + 1,
            },
            StepOutput { loss },
        ))
    }

    /// The full-batch gradient as a sum over micro-batches, each loss scaled by its share of
    /// the batch's supervised tokens (Bergson's `accumulate_grads`), and the loss. With a
    /// `tap`, every micro-batch's captured Linear outputs are differentiated in the same
    /// backward and their per-example gradients handed over.
    fn gradients(
        &self,
        params: &[Tensor],
        batch: &Batch,
        trace: bool,
        mut tap: Option<MicroBatchTap<'_>>,
    ) -> Result<(Vec<Tensor>, f64)> {
        let model = self.model_on(params)?;
        let total = batch.loss_denom();
        let b = batch.len();
        let n = (self.settings.grad_accum_steps as i64).clamp(1, b.max(1));
        let inputs: Vec<&Tensor> = params.iter().collect();
        let mut grads: Option<Vec<Tensor>> = None;
        let mut loss = 0.0;
        let mut start = 0;
        let (rank, world) = (self.group.rank() as i64, self.group.world_size() as i64);
        if world > 1 && tap.is_some() {
            return Err(Error::internal(
                "training gradients are collected in a job of one process only",
            ));
        }
        for i in 0..n {
            let size = b / n + i64::from(i < b % n);
            let whole = batch.rows(start, size);
            start += size;
            crate::interrupt::check()?;
            let whole_coef = whole.loss_denom() / total;
            // This rank's rows of the micro-batch, and their share of its loss: the mean's
            // denominator is the micro-batch's, so the ranks' parts add up to its loss.
            let (micro, share) = if world == 1 {
                (whole, 1.0)
            } else {
                let part = whole.strided(rank, world);
                if part.is_empty() {
                    continue;
                }
                let share = match self.settings.reduction {
                    TrainLossReduction::Mean => {
                        part.supervised_tokens().max(1) as f64 / whole.loss_denom()
                    }
                    TrainLossReduction::SumOfMeans => 1.0,
                };
                (part, share)
            };
            let mut hook = tap.as_ref().map(|t| t.collector.training_hook());
            let logits = match &mut hook {
                Some(h) => self.logits(model.as_ref(), &micro.input_ids, h),
                None => self.logits(model.as_ref(), &micro.input_ids, &mut NoHook),
            };
            let micro_loss = weighted_causal_lm_ce(
                &logits,
                &micro.labels,
                Some(&micro.example_weight),
                &micro.shift_loss_mask,
                self.settings.reduction,
            );
            let coef = whole_coef * share;
            loss += micro_loss.double_value(&[]) * coef;
            let scaled = micro_loss * coef;
            let g = match (hook, &mut tap) {
                (Some(hook), Some(tap)) => {
                    let mut all = inputs.clone();
                    all.extend(hook.outputs());
                    let mut g = Tensor::f_run_backward(&[scaled], &all, false, false)?;
                    let outputs = g.split_off(inputs.len());
                    let rows = tap.collector.gradients_from(hook, outputs)?;
                    (tap.sink)(start - size, rows)?;
                    g
                }
                _ => Tensor::f_run_backward(&[scaled], &inputs, trace, trace)?,
            };
            grads = Some(match grads {
                None => g,
                Some(acc) => acc.iter().zip(&g).map(|(a, g)| a + g).collect(),
            });
        }
        if world > 1 {
            return self.reduce_gradients(grads.unwrap_or_default(), params, loss);
        }
        let grads = grads.ok_or_else(|| Error::internal("a training batch without rows"))?;
        Ok((grads, loss))
    }

    /// The batch's gradient and loss from this rank's parts: the parts summed over the job.
    /// A traced part keeps its graph: the sum is `S + (g - g.detach())`, whose value is the
    /// reduced `S` exactly (the same bits on every rank, so the states stay identical) and
    /// whose derivative is this rank's part, so a backward through it on every rank, with
    /// the parameters' cotangents then summed over the job, is the one-process backward.
    fn reduce_gradients(
        &self,
        parts: Vec<Tensor>,
        params: &[Tensor],
        loss: f64,
    ) -> Result<(Vec<Tensor>, f64)> {
        let parts = if parts.is_empty() {
            params.iter().map(|p| p.detach().zeros_like()).collect()
        } else {
            parts
        };
        let sums = self.sum_over_ranks(&parts, params)?;
        let mut loss_sum = Tensor::from_slice(&[loss]);
        self.group
            .all_reduce(&mut loss_sum, crate::dist::ReduceOp::Sum)?;
        let grads = (parts.iter().zip(sums))
            .map(|(g, s)| {
                if g.defined() && g.requires_grad() {
                    s + (g - g.detach())
                } else {
                    s
                }
            })
            .collect();
        Ok((grads, loss_sum.double_value(&[0])))
    }

    /// Global-norm clipping: `g · min(1, max_norm / (‖g‖ + 1e-6))`.
    fn clip(&self, grads: Vec<Tensor>) -> Vec<Tensor> {
        let Some(max_norm) = self.settings.max_grad_norm.filter(|&m| m > 0.0) else {
            return grads;
        };
        let sq = grads
            .iter()
            .map(|g| g.square().sum(g.kind()))
            .reduce(|a, b| a + b)
            .unwrap_or_else(|| Tensor::from(0.0));
        // `max / x` is `x.reciprocal() * max` in PyTorch (`Tensor.__rtruediv__`).
        let coef = ((sq.sqrt() + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
        grads.iter().map(|g| g * &coef).collect()
    }

    /// Trains from `state` to the end of `data`, calling `on_step(state_before, loss)` after
    /// each step (for checkpoints and logs) and `before_step(state)` before it.
    pub fn train(
        &self,
        mut state: TrainerState,
        data: &DataStream,
        mut before_step: impl FnMut(&TrainerState) -> Result<()>,
        mut on_step: impl FnMut(usize, f64) -> Result<()>,
    ) -> Result<TrainerState> {
        while state.batch_index < data.len() {
            before_step(&state)?;
            let i = state.batch_index;
            let (next, out) = self.step(&state, &data.batch(i), false)?;
            state = next;
            on_step(i, out.loss)?;
        }
        Ok(state)
    }

    /// The model dtype.
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }
}
