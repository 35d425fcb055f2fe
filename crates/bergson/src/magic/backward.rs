//! MAGIC's backward phase (Python Bergson 2.5.1's `Trainer.backward`): reverse-mode
//! differentiation of the query loss through every training step, from the final state back
//! to the first, without keeping the whole trajectory.
//!
//! A training step maps the state `s_t = (θ_t, μ_t, ν_t)` and the data weights `w` to
//! `s_{t+1}`. With the adjoint `ā_{t+1} = ∂L/∂s_{t+1}` of the query loss `L` (at the end:
//! the query gradient for θ, zero for the moments), one vector-Jacobian product through the
//! traced step gives `ā_t = ā_{t+1} · ∂s_{t+1}/∂s_t` and this step's share of the
//! metagradient, `ā_{t+1} · ∂s_{t+1}/∂w`, summed over the steps (MAGIC, arXiv:2503.13751,
//! Sec. 3).
//!
//! The states come back right to left from the checkpoints the forward pass wrote on
//! `--save_mode`'s schedule: a state between two checkpoints is recomputed from the one
//! before it, and the states that will be needed next are stashed in memory on the way, as
//! Bergson does (`sqrt`: every step of the segment; `log`: halving the segment). The step
//! counts and the recomputation order are Bergson's, so the result does not depend on the
//! schedule (up to rounding).

use super::super::train::{DataStream, OptState, TracedGradient, Trainer, TrainerState};
use crate::config::{OptimizerKind, SaveMode};
use crate::error::IoContext;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// A trainer state the backward can return to.
pub enum SavedState {
    /// A checkpoint directory (`step_{i}.ckpt`).
    Disk(PathBuf),
    /// A state kept in memory.
    Memory(TrainerState),
}

/// The adjoints carried backward for one score column.
#[derive(Debug)]
pub struct Adjoint {
    /// ∂L/∂θ, in the trainer's parameter order.
    pub params: Vec<Tensor>,
    /// ∂L/∂(optimizer state), as [`crate::train::OptState::tensors`] orders it.
    pub opt: Vec<Tensor>,
    /// ∂L/∂w accumulated over the steps walked so far (the data weights' shape).
    pub weights: Tensor,
}

impl Adjoint {
    /// The adjoint at the final state: `param_grads` for the parameters, zero for the
    /// optimizer state and the weights.
    pub fn at_end(param_grads: Vec<Tensor>, state: &TrainerState, weights: &Tensor) -> Self {
        Adjoint {
            params: param_grads,
            opt: state
                .opt
                .tensors()
                .into_iter()
                .map(Tensor::zeros_like)
                .collect(),
            weights: weights.detach().zeros_like(),
        }
    }
}

/// How the backward walks.
#[derive(Debug, Clone)]
pub struct BackwardSettings {
    /// The schedule the checkpoints were written on (decides what is stashed).
    pub save_mode: SaveMode,
    /// Delete each checkpoint directory but the last once consumed.
    pub cleanup: bool,
    /// Save the adjoints every this many steps (0: never) to `state_file`.
    pub save_every: usize,
    /// Where the adjoints are saved for resuming (`backward_rank0` style); removed at the end.
    pub state_file: Option<PathBuf>,
    /// Resume from `state_file` if it exists.
    pub resume: bool,
    /// Trace each step's gradient during the replay from a checkpoint and keep it for that
    /// step's VJP (with `sqrt` and `all`; `log` replays from its stashes again): one gradient
    /// per step instead of two, about a fifth less time, for one segment's graphs in memory
    /// beside its stashed states, and only while a quarter of the machine's memory is free.
    /// Off, the backward holds only states, as Bergson's.
    pub keep_gradients: bool,
}

/// Runs the backward from the final state's `adjoints` through the states `checkpoints`
/// (sorted by step, the last one the state before the final step), loading a checkpoint
/// directory with `load`. Returns the adjoints at step 0: their `weights` are the
/// metagradients d(query loss)/d(data weights).
pub fn backward(
    trainer: &Trainer,
    stream: &DataStream,
    mut checkpoints: Vec<(usize, SavedState)>,
    load: &dyn Fn(&Path) -> Result<TrainerState>,
    mut adjoints: Vec<Adjoint>,
    settings: &BackwardSettings,
) -> Result<Vec<Adjoint>> {
    let preserve: Vec<PathBuf> = checkpoints
        .iter()
        .filter_map(|(_, s)| match s {
            SavedState::Disk(p) => Some(p.clone()),
            SavedState::Memory(_) => None,
        })
        .rev()
        .take(if settings.cleanup { 1 } else { usize::MAX })
        .collect();
    let Some(&(last, _)) = checkpoints.last() else {
        return Err(Error::input(
            "the backward has no checkpoint to start from; train with --save_mode all, sqrt or log",
        ));
    };
    let mut expected = last as i64;
    let last = last as i64;
    // Several ranks read the same checkpoints: they are removed once every rank is done.
    let world = trainer.group().world_size();
    let mut consumed: Vec<PathBuf> = Vec::new();
    let mut resumed_at = -1i64;
    if let Some(file) = settings
        .state_file
        .as_ref()
        .filter(|f| settings.resume && f.is_file())
    {
        let (saved, at) = load_adjoints(file, &adjoints)?;
        adjoints = saved;
        expected = at;
        checkpoints.retain(|(i, _)| *i as i64 <= expected);
        if checkpoints.is_empty() && expected >= 0 {
            return Err(Error::input(format!(
                "cannot resume the backward from {}: no checkpoint at or before step {expected} is left; delete it to start the backward over",
                file.display()
            )));
        }
        tracing::info!("resuming the backward pass from step {expected}");
        resumed_at = expected;
    }
    if world > 1 {
        same_resume_step(trainer, resumed_at, settings.state_file.as_deref())?;
    }
    let mut phase = crate::progress::Phase::new("Backward", "steps", Some((expected + 1) as u64));
    // Where every replayed state is stashed and differentiated next without another replay
    // (not `log`), the replay can keep each step's traced gradient for that step's VJP.
    let keep_gradients = settings.keep_gradients
        && !matches!(settings.save_mode, SaveMode::Log)
        && trainer.optimizer().kind != OptimizerKind::Muon;
    let mut gradients: std::collections::HashMap<i64, TracedGradient> = Default::default();
    let next_stash = |idx: i64, expected: i64| match settings.save_mode {
        SaveMode::Log => (expected - idx) / 2 + idx,
        _ => expected.min(idx + 1),
    };
    while let Some((idx, saved)) = checkpoints.last() {
        crate::interrupt::check()?;
        let mut idx = *idx as i64;
        let mut state = match saved {
            SavedState::Disk(p) => load(p)?,
            SavedState::Memory(s) => s.detach(),
        };
        if idx == expected {
            if let Some((_, SavedState::Disk(p))) = checkpoints.pop() {
                if !preserve.contains(&p) {
                    if world == 1 {
                        std::fs::remove_dir_all(&p).at_path(&p)?;
                    } else {
                        consumed.push(p);
                    }
                }
            }
        }
        // Recompute forward to the expected step, stashing the states the next
        // iterations will start from.
        let mut stash_at = next_stash(idx, expected);
        while idx < expected {
            crate::interrupt::check()?;
            let batch = stream.batch(state.batch_index);
            // Every rank takes the same path: a kept gradient skips a collective later.
            state = if keep_gradients && on_every_rank(trainer, memory_to_spare())? {
                let (next, traced) = trainer.step_keeping_gradient(&state, &batch)?;
                gradients.insert(idx, traced);
                next
            } else {
                trainer.step(&state, &batch, false)?.0
            };
            idx += 1;
            if idx == stash_at && idx < expected {
                checkpoints.push((idx as usize, SavedState::Memory(state.detach())));
                stash_at = next_stash(idx, expected);
            }
        }
        expected = idx - 1;
        adjoints = match gradients.remove(&idx) {
            Some(traced) => closed_form_vjp(trainer, stream, &state, traced, adjoints)?,
            None => step_vjp(trainer, stream, &state, adjoints)?,
        };
        phase.inc(1);
        let done = last - expected;
        if let Some(file) = &settings.state_file {
            if settings.save_every > 0 && done % settings.save_every as i64 == 0 {
                save_adjoints(file, &adjoints, expected)?;
            }
        }
    }
    drop(phase);
    if world > 1 {
        trainer.group().barrier()?;
        if trainer.group().rank() == 0 {
            for p in consumed {
                std::fs::remove_dir_all(&p).at_path(&p)?;
            }
        }
    }
    if let Some(file) = &settings.state_file {
        for f in [file.clone(), meta_path(file)] {
            if f.exists() {
                std::fs::remove_file(&f).at_path(&f)?;
            }
        }
    }
    Ok(adjoints)
}

/// One step's vector-Jacobian product: for each column `ā_{t+1} · ∂s_{t+1}/∂(s_t, w)`,
/// returning the adjoints at `state`. The gradient is traced from `state` (its parameters
/// made leaves); the optimizer's update is differentiated in closed form
/// ([`crate::train::Optimizer::update_vjp`]) and the gradient's adjoint taken back through
/// the traced graph by one backward pass per column (the graph kept until the last).
pub fn step_vjp(
    trainer: &Trainer,
    stream: &DataStream,
    state: &TrainerState,
    adjoints: Vec<Adjoint>,
) -> Result<Vec<Adjoint>> {
    if matches!(state.opt, OptState::Muon { .. }) {
        return traced_step_vjp(trainer, stream, state, adjoints);
    }
    let traced = trainer.traced_gradient(state, &stream.batch(state.batch_index))?;
    closed_form_vjp(trainer, stream, state, traced, adjoints)
}

/// [`step_vjp`] with the step's gradient already traced (`traced`, taken at `state`): the
/// optimizer's update differentiated in closed form, the gradient's adjoint taken back
/// through the traced graph.
fn closed_form_vjp(
    trainer: &Trainer,
    stream: &DataStream,
    state: &TrainerState,
    traced: TracedGradient,
    adjoints: Vec<Adjoint>,
) -> Result<Vec<Adjoint>> {
    let step = state.batch_index;
    let values = traced.values();
    let detached: Vec<Tensor> = traced.params.iter().map(Tensor::detach).collect();
    let mut inputs: Vec<&Tensor> = traced.params.iter().collect();
    inputs.push(&stream.weights);
    let count = adjoints.len();
    let mut out = Vec::with_capacity(count);
    for (q, adj) in adjoints.into_iter().enumerate() {
        let through = trainer
            .optimizer()
            .update_vjp(&detached, &values, &state.opt, &adj.params, &adj.opt)
            .ok_or_else(|| Error::internal("no closed-form update VJP for this optimizer"))?;
        // ḡ · ∂g/∂(θ, w): the engine seeds each root `g · ḡ` with ones.
        let roots: Vec<Tensor> = (traced.grads.iter().zip(&through.grads))
            .filter(|(g, _)| g.defined() && g.requires_grad())
            .map(|(g, g_bar)| g * g_bar)
            .collect();
        let mut second = if roots.is_empty() {
            Vec::new()
        } else {
            Tensor::f_run_backward(&roots, &inputs, q + 1 < count, false)?
        };
        drop(roots);
        let w = match second.pop() {
            Some(g) if g.defined() => g,
            _ => adj.weights.zeros_like(),
        };
        check_finite(&w, step)?;
        if trainer.group().world_size() > 1 {
            // Each rank differentiated its share of the batch: the parts add up.
            if second.is_empty() {
                second = detached.iter().map(|_| Tensor::new()).collect();
            }
            second = trainer.sum_over_ranks(&second, &detached)?;
        }
        let mut second = second.into_iter();
        let params = (through.params.into_iter())
            .map(|direct| match second.next() {
                Some(g) if g.defined() => direct + g,
                _ => direct,
            })
            .collect();
        out.push(Adjoint {
            params,
            opt: through.opt,
            weights: adj.weights + w,
        });
    }
    Ok(out)
}

/// Refuses to go on unless every rank resumes the backward from the same step (or none
/// resumes): the ranks replay the same collectives.
fn same_resume_step(trainer: &Trainer, step: i64, file: Option<&Path>) -> Result<()> {
    let (lo, hi) = crate::dist::range_over_ranks(trainer.group(), step)?;
    if lo == hi {
        return Ok(());
    }
    let dir = file
        .and_then(Path::parent)
        .map_or_else(String::new, |d| format!(" in {}", d.display()));
    Err(Error::input(format!(
        "the ranks' saved backward states{dir} disagree (steps {lo} to {hi}); delete the backward_rank*.safetensors files to start the backward over"
    )))
}

/// Whether `flag` holds on every rank of the trainer's job.
fn on_every_rank(trainer: &Trainer, flag: bool) -> Result<bool> {
    let (lo, _) = crate::dist::range_over_ranks(trainer.group(), i64::from(flag))?;
    Ok(lo == 1)
}

/// Whether the replay may keep another step's traced gradient: while the machine has at least
/// a quarter of its memory (and 2 GiB) available. A large model's graphs then fall back to
/// recomputing the gradient, as the backward does without kept gradients.
fn memory_to_spare() -> bool {
    match (
        crate::units::memory_available(),
        crate::units::memory_total(),
    ) {
        (Some(available), Some(total)) => available >= (total / 4).max(2 << 30),
        _ => true,
    }
}

/// The metagradient of step `step` must be finite.
fn check_finite(w: &Tensor, step: usize) -> Result<()> {
    if w.isfinite().all().int64_value(&[]) != 0 {
        return Ok(());
    }
    Err(Error::input(format!(
        "the metagradient is not finite at step {step}; lower --lr, set --max_grad_norm, or use --precision fp64"
    )))
}

/// [`step_vjp`] by autograd through the whole traced step, the optimizer's update included
/// (Muon's Newton-Schulz has no closed form here).
fn traced_step_vjp(
    trainer: &Trainer,
    stream: &DataStream,
    state: &TrainerState,
    adjoints: Vec<Adjoint>,
) -> Result<Vec<Adjoint>> {
    let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
    let start = TrainerState {
        params: state.params.iter().map(leaf).collect(),
        opt: state
            .opt
            .with_tensors(state.opt.tensors().into_iter().map(leaf).collect()),
        batch_index: state.batch_index,
    };
    let step = start.batch_index;
    let batch = stream.batch(step);
    let (next, _) = trainer.step(&start, &batch, true)?;
    drop(batch);
    let outputs = next.differentiable_tensors();
    let mut inputs = start.differentiable_tensors();
    inputs.push(&stream.weights);
    let (num_params, num_opt) = (start.params.len(), start.opt.tensors().len());
    let count = adjoints.len();
    let mut out = Vec::with_capacity(count);
    for (q, adj) in adjoints.into_iter().enumerate() {
        // The engine seeds each root with ones: `o · ā` seeds `o` with `ā`.
        let roots: Vec<Tensor> = outputs
            .iter()
            .zip(adj.params.iter().chain(&adj.opt))
            .filter(|(o, _)| o.requires_grad())
            .map(|(o, a)| *o * a)
            .collect();
        let mut grads = Tensor::f_run_backward(&roots, &inputs, q + 1 < count, false)?;
        drop(roots);
        let defined = |g: Tensor, like: &Tensor| {
            if g.defined() {
                g
            } else {
                like.zeros_like()
            }
        };
        let w = grads
            .pop()
            .map(|g| defined(g, &adj.weights))
            .unwrap_or_default();
        check_finite(&w, step)?;
        let opt: Vec<Tensor> = grads
            .drain(num_params..num_params + num_opt)
            .zip(&adj.opt)
            .map(|(g, a)| defined(g, a))
            .collect();
        let params: Vec<Tensor> = grads
            .into_iter()
            .zip(&adj.params)
            .map(|(g, a)| defined(g, a))
            .collect();
        out.push(Adjoint {
            params,
            opt,
            weights: adj.weights + w,
        });
    }
    Ok(out)
}

/// Saves the adjoints (safetensors, `q{i}.params.{k}`, `q{i}.opt.{k}`, `q{i}.weights`) and
/// the next step to process (JSON beside it), through a temporary file.
fn save_adjoints(file: &Path, adjoints: &[Adjoint], expected: i64) -> Result<()> {
    let mut tensors = Vec::new();
    for (q, a) in adjoints.iter().enumerate() {
        for (k, t) in a.params.iter().enumerate() {
            tensors.push((format!("q{q}.params.{k}"), t.shallow_clone()));
        }
        for (k, t) in a.opt.iter().enumerate() {
            tensors.push((format!("q{q}.opt.{k}"), t.shallow_clone()));
        }
        tensors.push((format!("q{q}.weights"), a.weights.shallow_clone()));
    }
    let tmp = file.with_extension("part");
    Tensor::write_safetensors(&tensors, &tmp)?;
    let meta = meta_path(file);
    let json = serde_json::json!({"expected_idx": expected, "columns": adjoints.len()});
    std::fs::write(&meta, json.to_string()).at_path(&meta)?;
    std::fs::rename(&tmp, file).at_path(file)
}

fn meta_path(file: &Path) -> PathBuf {
    file.with_extension("json")
}

/// Loads adjoints saved by [`save_adjoints`], shaped like `like`.
fn load_adjoints(file: &Path, like: &[Adjoint]) -> Result<(Vec<Adjoint>, i64)> {
    let meta = meta_path(file);
    let bad = |why: String| {
        Error::input(format!(
            "{}: {why}; delete it to start the backward over",
            file.display()
        ))
    };
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).at_path(&meta)?)
        .map_err(|e| bad(e.to_string()))?;
    let expected = json["expected_idx"]
        .as_i64()
        .ok_or_else(|| bad("no expected_idx".into()))?;
    let tensors: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(file)?.into_iter().collect();
    let get = |name: String, like: &Tensor| -> Result<Tensor> {
        let t = tensors
            .get(&name)
            .ok_or_else(|| bad(format!("'{name}' is missing: it belongs to another run")))?;
        if t.size() != like.size() {
            return Err(bad(format!("'{name}' has another shape")));
        }
        Ok(t.to_device(like.device()).to_kind(like.kind()))
    };
    let mut out = Vec::with_capacity(like.len());
    for (q, a) in like.iter().enumerate() {
        out.push(Adjoint {
            params: (a.params.iter().enumerate())
                .map(|(k, t)| get(format!("q{q}.params.{k}"), t))
                .collect::<Result<_>>()?,
            opt: (a.opt.iter().enumerate())
                .map(|(k, t)| get(format!("q{q}.opt.{k}"), t))
                .collect::<Result<_>>()?,
            weights: get(format!("q{q}.weights"), &a.weights)?,
        });
    }
    Ok((out, expected))
}
