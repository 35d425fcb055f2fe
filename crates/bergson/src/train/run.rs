//! `bergson train`: Python Bergson 2.5.1's `run_magic` for a `TrainingConfig` (training only).
//! Prepares the data as every command does, builds the stream, trains with the functional
//! trainer, and writes the run directory:
//!
//! ```text
//! <run_path>/config.yaml                       the run config (steps: [{train: ...}])
//! <run_path>/checkpoints/log_history.json      learning rate per step
//! <run_path>/checkpoints/step_{i}.ckpt/        trainer states on the --save_mode schedule
//! <run_path>/optimizer.pt                      AdamW second moments (--save_optimizer_state)
//! <run_path>/model/                            the trained model (--save_models)
//! ```

use super::checkpoint::{
    checkpoint_dir, complete_checkpoints, load_state, next_save_index, save_optimizer_pt,
    save_state, write_lr_history,
};
use super::collect::TrainingGradients;
use super::optimizer::Optimizer;
use super::schedule::LrSchedule;
use super::stream::{DataStream, WeightShape};
use super::trainer::{StepSettings, Trainer, TrainerState};
use crate::config::{
    CollectGradientsConfig, IndexConfig, OptimizerKind, SaveMode, SaveOptimizerState,
    TrainingConfig,
};
use crate::data::pipeline::prepare_data;
use crate::dist::{Collective, SingleProcess};
use crate::error::IoContext;
use crate::models::ModelSpec;
use crate::setup::load_tokenizer;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tch::{Device, Tensor};

/// What a training run produced.
#[derive(Debug)]
pub struct TrainSummary {
    /// The run directory.
    pub run_path: PathBuf,
    /// Training loss of each step taken by this process (resumed runs: from the resume point).
    pub losses: Vec<(usize, f64)>,
    /// Steps in the run.
    pub num_steps: usize,
    /// The final trainer state.
    pub state: TrainerState,
    /// Parameter names, in the state's order.
    pub names: Vec<String>,
}

/// Refuses settings bergson-rs does not implement, and impossible values.
pub fn check_training_config(c: &TrainingConfig) -> Result<()> {
    let unsupported = |flag: &str, why: &str| {
        Err(Error::input(format!(
            "{flag} is not supported by bergson train yet; {why}"
        )))
    };
    check_run_path(c, "train")?;
    if c.batch_size == 0 {
        return Err(Error::input("--batch_size must be at least 1"));
    }
    if c.num_epochs == 0 {
        return Err(Error::input("--num_epochs must be at least 1"));
    }
    if c.grad_accum_steps == 0 {
        return Err(Error::input("--grad_accum_steps must be at least 1"));
    }
    if c.save_mode == SaveMode::Interval && c.save_interval == 0 {
        return Err(Error::input(
            "--save_mode interval needs --save_interval of at least 1",
        ));
    }
    if c.optimizer != OptimizerKind::Adamw && c.save_optimizer_state != SaveOptimizerState::None {
        return Err(Error::input(format!(
            "--save_optimizer_state needs --optimizer adamw ({} keeps no second moment per parameter)",
            c.optimizer
        )));
    }
    if c.optimizer == OptimizerKind::Muon {
        // Bergson's `muon` refuses these when it is built.
        if c.adam_beta1 <= 0.0 {
            return Err(Error::input(format!(
                "--adam_beta1 {} is Muon's Nesterov momentum, which must be positive",
                c.adam_beta1
            )));
        }
        if c.weight_decay < 0.0 || c.lr_schedule.lr < 0.0 {
            return Err(Error::input(
                "--optimizer muon needs a non-negative --lr and --weight_decay",
            ));
        }
    }
    if c.fsdp {
        return unsupported("--fsdp", "run without it");
    }
    training_model_kwargs(&c.model_kwargs)?;
    if !c.logit_scale.is_finite() {
        return Err(Error::input(format!(
            "--logit_scale {} must be a finite number (1.0 leaves the logits as they are)",
            c.logit_scale
        )));
    }
    let world = c.distributed.nnode * c.distributed.nproc_per_node;
    if world > 1 {
        check_data_parallel(c, world)?;
    }
    for (flag, v) in [
        ("--lr", c.lr_schedule.lr),
        ("--adam_beta1", c.adam_beta1),
        ("--adam_beta2", c.adam_beta2),
        ("--eps_root", c.eps_root),
        ("--adam_eps", c.adam_eps),
        ("--weight_decay", c.weight_decay),
    ] {
        if !v.is_finite() {
            return Err(Error::input(format!("{flag} {v} must be a finite number")));
        }
    }
    check_optimizer_settings(c)
}

/// Refuses a missing run path, naming `command` in the usage it shows.
pub(crate) fn check_run_path(c: &TrainingConfig, command: &str) -> Result<()> {
    if c.run_path.is_empty() {
        return Err(Error::input(format!(
            "give the run directory: bergson {command} <run_path> --model ... --dataset ..."
        )));
    }
    Ok(())
}

/// The optimizer settings torchopt refuses when Bergson builds the optimizer (`adamw`, `sgd`;
/// Muon's are checked above). The learning rate is not checked: it is a schedule there.
fn check_optimizer_settings(c: &TrainingConfig) -> Result<()> {
    let bad = |flag: &str, v: f64, what: &str| {
        Err(Error::input(format!("{flag} {v} is invalid: {what}")))
    };
    if c.weight_decay < 0.0 {
        return bad("--weight_decay", c.weight_decay, "it must be 0 or more");
    }
    match c.optimizer {
        OptimizerKind::Adamw => {
            for (flag, v) in [
                ("--adam_beta1", c.adam_beta1),
                ("--adam_beta2", c.adam_beta2),
            ] {
                if !(0.0..1.0).contains(&v) {
                    return bad(flag, v, "Adam's betas must be in [0, 1)");
                }
            }
            if c.adam_eps < 0.0 {
                return bad("--adam_eps", c.adam_eps, "it must be 0 or more");
            }
        }
        OptimizerKind::Sgd if c.adam_beta1 < 0.0 => {
            return bad(
                "--adam_beta1",
                c.adam_beta1,
                "it is SGD's momentum, which must be 0 or more",
            );
        }
        _ => {}
    }
    if c.max_grad_norm
        .is_some_and(|m| !(m >= 0.0 && m.is_finite()))
    {
        return Err(Error::input(format!(
            "--max_grad_norm {} is invalid: the clipping norm must be a positive number (0 turns clipping off)",
            c.max_grad_norm.unwrap_or_default()
        )));
    }
    Ok(())
}

/// Refuses what a data-parallel run of `world` processes cannot do.
pub(crate) fn check_data_parallel(c: &TrainingConfig, world: usize) -> Result<()> {
    if !c.batch_size.is_multiple_of(world) {
        return Err(Error::input(format!(
            "--batch_size {} does not divide among {world} processes; use a multiple of {world}",
            c.batch_size
        )));
    }
    if c.optimizer == OptimizerKind::Muon {
        return Err(Error::input(
            "--optimizer muon runs in one process only here (its update is differentiated whole); use --nproc_per_node 1 or --optimizer adamw",
        ));
    }
    Ok(())
}

/// The settings that fix the training trajectory; a checkpoint written under others cannot
/// be resumed.
fn trajectory(c: &TrainingConfig) -> serde_json::Value {
    serde_json::json!({
        "model": c.model,
        "precision": c.precision.as_str(),
        "dataset": c.data.dataset,
        "split": c.data.split,
        "batch_size": c.batch_size,
        "num_epochs": c.num_epochs,
        "seed": c.seed,
        "lr": c.lr_schedule.lr,
        "lr_scheduler_type": c.lr_schedule.lr_scheduler_type.as_str(),
        "warmup_steps": c.lr_schedule.warmup_steps,
        "optimizer": c.optimizer.as_str(),
        "adam_beta1": c.adam_beta1,
        "adam_beta2": c.adam_beta2,
        "eps_root": c.eps_root,
        "adam_eps": c.adam_eps,
        "weight_decay": c.weight_decay,
        "loss_reduction": c.loss_reduction.as_str(),
        "max_grad_norm": c.max_grad_norm,
        "grad_accum_steps": c.grad_accum_steps,
    })
}

/// The data side of `c` as the shared pipeline takes it (no token budget: Bergson's trainer
/// truncates, with `--truncation`, at the model's maximum length only).
pub(crate) fn index_config(c: &TrainingConfig) -> IndexConfig {
    IndexConfig {
        run_path: c.run_path.clone(),
        model: c.model.clone(),
        precision: c.precision,
        revision: c.revision.clone(),
        data: c.data.clone(),
        tokenizer: c.tokenizer.clone(),
        drop_columns: c.drop_columns,
        max_tokens: c.max_tokens,
        token_batch_size: usize::MAX,
        ..IndexConfig::default()
    }
}

/// Prepares `<run_path>`: refuses an existing one unless `--overwrite` or `--resume`.
pub(crate) fn prepare_run_dir(c: &TrainingConfig) -> Result<PathBuf> {
    let run = PathBuf::from(&c.run_path);
    if run.exists() && !c.resume {
        if c.overwrite {
            crate::index::removal::remove_run(&run)?;
        } else {
            return Err(crate::index::removal::already_exists(
                &run,
                "use --overwrite to replace it or --resume to continue it",
            ));
        }
    }
    std::fs::create_dir_all(&run).at_path(&run)?;
    Ok(run)
}

/// Writes `<run>/config.yaml`: `steps: [{<command>: config}]` and who wrote it.
pub fn write_run_config<T: serde::Serialize>(run: &Path, command: &str, c: &T) -> Result<()> {
    #[derive(serde::Serialize)]
    struct Metadata {
        bergson_version: &'static str,
        bergson_rs_version: &'static str,
        created: String,
    }
    #[derive(serde::Serialize)]
    struct Doc<'a, T: serde::Serialize> {
        steps: Vec<std::collections::BTreeMap<&'a str, &'a T>>,
        metadata: Metadata,
    }
    let doc = Doc {
        steps: vec![[(command, c)].into_iter().collect()],
        metadata: Metadata {
            bergson_version: crate::config::run_file::BERGSON_COMPAT_VERSION,
            bergson_rs_version: env!("CARGO_PKG_VERSION"),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        },
    };
    let text = serde_saphyr::to_string(&doc)
        .map_err(|e| Error::internal(format!("cannot write config.yaml: {e}")))?;
    let path = run.join("config.yaml");
    std::fs::write(&path, text).at_path(&path)
}

/// A prepared training run: the trainer and its initial state, the data stream with its
/// weights, and where the run writes.
pub struct TrainingRun {
    /// The functional trainer.
    pub trainer: Trainer,
    /// The initial state (zero optimizer state, the model's parameters).
    pub initial: TrainerState,
    /// The training stream (shuffled epochs, padded) and its data weights.
    pub stream: DataStream,
    /// The learning-rate schedule.
    pub schedule: LrSchedule,
    /// Parameter names, in the state's order.
    pub names: Vec<String>,
    /// The run directory.
    pub run: PathBuf,
    /// `<run>/checkpoints`.
    pub checkpoints: PathBuf,
    /// The settings that fix the trajectory (checkpoints of other settings are refused).
    pub trajectory: serde_json::Value,
    /// The model directory.
    pub model_dir: PathBuf,
    /// The tokenizer, for other data sets of the run (the query set).
    pub tokenizer: crate::data::tokenize::Tokenizer,
    /// The model's maximum length.
    pub max_positions: Option<i64>,
    /// The tokenised training rows, in dataset order.
    pub rows: Vec<crate::data::tokenize::TokenizedRow>,
    /// Per-token document ids of chunked data.
    pub doc_ids: Option<Vec<Vec<i64>>>,
}

/// The data weights of a run: per document, or per token (`attribute_tokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightChoice {
    /// One weight per document.
    PerDocument,
    /// One weight per (example, position), as wide as `--chunk_length` or the longest row.
    PerToken,
}

/// Prepares a run of `c`: checks, the run directory (with `config.yaml` written by
/// `write_config`), data, stream, model and trainer.
pub fn prepare_training(
    c: &TrainingConfig,
    device: Device,
    weights: WeightChoice,
    write_config: impl FnOnce(&Path) -> Result<()>,
) -> Result<TrainingRun> {
    if c.distributed.nnode * c.distributed.nproc_per_node > 1 {
        return Err(Error::input(
            "this command runs in one process (--nnode/--nproc_per_node 1); bergson train and bergson magic run on several",
        ));
    }
    prepare_training_in(c, device, weights, write_config, Rc::new(SingleProcess))
}

/// [`prepare_training`] as one rank of `group`'s job (data parallel): rank 0 prepares the
/// run directory and writes its config while the others wait; every rank then prepares the
/// same data and trainer.
pub fn prepare_training_in(
    c: &TrainingConfig,
    device: Device,
    weights: WeightChoice,
    write_config: impl FnOnce(&Path) -> Result<()>,
    group: Rc<dyn Collective>,
) -> Result<TrainingRun> {
    check_training_config(c)?;
    if group.world_size() > 1 {
        check_data_parallel(c, group.world_size())?;
    }
    let icfg = index_config(c);
    let (tokenizer, model_dir, max_positions) = load_tokenizer(&icfg)?;
    let run = if group.rank() == 0 {
        prepare_run_dir(c).and_then(|run| write_config(&run).map(|()| run))
    } else {
        Ok(PathBuf::from(&c.run_path))
    };
    let run = crate::build::together(&*group, run)?;
    let prepared = prepare_data(&icfg, &tokenizer, max_positions)?;
    if prepared.rows.iter().all(|r| r.next_token_targets() == 0) {
        // Nothing to train on: every step's loss would be 0 (or 0/0).
        return Err(Error::input(
            "no training row has a next-token target (every one has fewer than 2 tokens, or \
             every label masked), so there is nothing to train on; check the dataset and \
             --prompt_column (or --completion_column / --conversation_column)",
        ));
    }
    let doc_ids = chunk_doc_ids(&prepared.table)?;
    let shape = match weights {
        WeightChoice::PerDocument => WeightShape::PerDocument,
        WeightChoice::PerToken => {
            let longest = prepared.rows.iter().map(|r| r.len()).max().unwrap_or(0);
            let seq_len = if c.data.chunk_length > 0 {
                c.data.chunk_length
            } else {
                longest
            };
            WeightShape::PerToken { seq_len }
        }
    };
    let stream = DataStream::new(
        &prepared.rows,
        doc_ids.clone(),
        c.batch_size,
        c.num_epochs,
        c.seed,
        shape,
        device,
    )?;
    let num_steps = stream.len();
    let precision = crate::setup::resolve_precision(c.precision, &model_dir)?;
    let mut spec = ModelSpec::from_dir(&model_dir, precision, device)?
        .with_model_kwargs(&training_model_kwargs(&c.model_kwargs)?);
    if !c.peft_init_kwargs.is_empty() {
        // Bergson's trainer draws a fresh adapter unseeded; ours is seeded per module.
        spec = spec.with_fresh_adapter(&c.peft_init_kwargs, false)?;
    }
    let mut model = spec.load(&model_dir)?;
    if !c.moe_experts.is_empty() {
        // Refuses a pattern matching no fused experts here, before training starts.
        model.expand_moe(&c.moe_experts)?;
    }
    let schedule = LrSchedule::new(&c.lr_schedule, num_steps);
    let optimizer = Optimizer {
        kind: c.optimizer,
        beta1: c.adam_beta1,
        beta2: c.adam_beta2,
        eps: c.adam_eps,
        eps_root: c.eps_root,
        weight_decay: c.weight_decay,
        schedule: schedule.clone(),
    };
    let settings = StepSettings {
        reduction: c.loss_reduction,
        max_grad_norm: c.max_grad_norm,
        grad_accum_steps: c.grad_accum_steps,
        logit_scale: c.logit_scale,
    };
    let (trainer, initial) = Trainer::new(spec, model.as_ref(), optimizer, settings)?;
    let trainer = trainer.with_moe_experts(&c.moe_experts).with_group(group);
    drop(model);
    let names = trainer.names().to_vec();
    let checkpoints = run.join("checkpoints");
    Ok(TrainingRun {
        trainer,
        initial,
        stream,
        schedule,
        names,
        checkpoints,
        trajectory: trajectory(c),
        run,
        model_dir,
        tokenizer,
        max_positions,
        rows: prepared.rows,
        doc_ids,
    })
}

impl TrainingRun {
    /// Steps in the run.
    pub fn num_steps(&self) -> usize {
        self.stream.len()
    }

    /// Trains to the end (resuming from the newest checkpoint with `--resume`), writing the
    /// checkpoints on `--save_mode`'s schedule, `log_history.json`, `optimizer.pt` and the
    /// model as `c` asks. Returns the final state and the losses of the steps taken.
    pub fn train(&self, c: &TrainingConfig) -> Result<(TrainerState, Vec<(usize, f64)>)> {
        self.train_collecting(c, None)
    }

    /// [`train`](Self::train), collecting the per-example training gradients with `collect`
    /// (`--collect_gradients`) as the steps run.
    pub fn train_collecting(
        &self,
        c: &TrainingConfig,
        collect: Option<&mut TrainingGradients>,
    ) -> Result<(TrainerState, Vec<(usize, f64)>)> {
        let (trainer, names, checkpoints) = (&self.trainer, &self.names, &self.checkpoints);
        let num_steps = self.num_steps();
        let device = self.stream.weights.device();
        // Every rank holds the same states: rank 0 writes them.
        let lead = trainer.group().rank() == 0;
        if lead {
            write_lr_history(checkpoints, &self.schedule, num_steps)?;
        }
        let traj = &self.trajectory;
        let mut state = self.initial.detach();
        let mut next_save = if c.save_mode == SaveMode::Final {
            num_steps
        } else {
            0
        };
        if c.resume {
            if let Some((_, dir)) = complete_checkpoints(checkpoints)?.pop() {
                state = load_state(&dir, names, &state, traj, device)?;
                tracing::info!(
                    "resuming from {} (step {})",
                    dir.display(),
                    state.batch_index
                );
                while next_save < state.batch_index {
                    next_save =
                        next_save_index(next_save, num_steps, c.save_mode, c.save_interval)?;
                }
            }
        }
        // Every rank starts from the same step, read before rank 0 writes another.
        let (lo, hi) = crate::dist::range_over_ranks(trainer.group(), state.batch_index as i64)?;
        if lo != hi {
            return Err(Error::input(format!(
                "the ranks resumed from different checkpoints in {}; resume again once no other run writes there",
                checkpoints.display()
            )));
        }
        let tagged = (c.save_optimizer_state == SaveOptimizerState::All).then_some((
            c.adam_beta1,
            c.adam_beta2,
            c.adam_eps,
            c.eps_root,
        ));
        let save = |state: &TrainerState| -> Result<()> {
            if !lead {
                return Ok(());
            }
            let dir = checkpoint_dir(checkpoints, state.batch_index);
            if tagged.is_some() {
                save_optimizer_pt(&dir.join("optimizer.pt"), names, state, tagged)?;
            }
            save_state(checkpoints, names, state, traj)?;
            Ok(())
        };
        let mut losses = Vec::new();
        let mut phase = crate::progress::Phase::new(
            "Training",
            "steps",
            Some((num_steps - state.batch_index.min(num_steps)) as u64),
        );
        let mut before_step = |s: &TrainerState| -> Result<()> {
            if s.batch_index == next_save {
                save(s)?;
                next_save = next_save_index(next_save, num_steps, c.save_mode, c.save_interval)?;
            }
            Ok(())
        };
        let mut on_step = |i: usize, loss: f64| -> Result<()> {
            tracing::debug!("step {i}: loss {loss}");
            losses.push((i, loss));
            phase.inc(1);
            Ok(())
        };
        let state = match collect {
            None => trainer.train(state, &self.stream, &mut before_step, &mut on_step)?,
            Some(tap) => {
                let mut state = state;
                while state.batch_index < num_steps {
                    before_step(&state)?;
                    let i = state.batch_index;
                    let (next, out) = tap.step(trainer, &state, &self.stream, i)?;
                    state = next;
                    on_step(i, out.loss)?;
                }
                tap.finish()?;
                state
            }
        };
        drop(phase);
        if matches!(c.save_mode, SaveMode::Interval | SaveMode::Final) && next_save == num_steps {
            save(&state)?;
        }
        // The checkpoints rank 0 wrote are complete before any rank reads them back.
        let written = if lead {
            self.write_final(c, &state)
        } else {
            Ok(())
        };
        crate::build::together(trainer.group(), written)?;
        Ok((state, losses))
    }

    /// Writes what the run keeps of its final state: `optimizer.pt` and the model, as `c`
    /// asks.
    fn write_final(&self, c: &TrainingConfig, state: &TrainerState) -> Result<()> {
        let names = &self.names;
        if c.save_optimizer_state != SaveOptimizerState::None {
            let path = self.run.join("optimizer.pt");
            let n = save_optimizer_pt(&path, names, state, None)?;
            tracing::info!("Saved {n} optimizer second moments to '{}'", path.display());
        }
        if c.save_models {
            let out = self.run.join("model");
            if let Some(adapter) = self.trainer.adapter() {
                let tokenizer = Some(Path::new(&c.tokenizer)).filter(|t| t.is_dir());
                let source = AdapterSource {
                    adapter,
                    dir: &self.model_dir,
                    base_model: &c.model,
                    tokenizer,
                };
                save_adapter(&source, &out, names, &state.params)?;
            } else {
                save_hf_model(&self.model_dir, &out, names, &state.params)?;
            }
        }
        Ok(())
    }
}

/// Runs `bergson train` with config `c` on `device`.
pub fn train(c: &TrainingConfig, device: Device) -> Result<TrainSummary> {
    train_collecting(c, None, device)
}

/// Runs `bergson train`, collecting the training gradients when `collect` asks for them
/// (`--collect_gradients`: Bergson's `GradientCollectorCallback`, see [`super::collect`]).
pub fn train_collecting(
    c: &TrainingConfig,
    collect: Option<&CollectGradientsConfig>,
    device: Device,
) -> Result<TrainSummary> {
    if c.distributed.nnode * c.distributed.nproc_per_node > 1 {
        return Err(Error::input(
            "this run has several processes: start it with bergson train --nproc_per_node, or as a torchrun rank",
        ));
    }
    train_in(c, collect, device, Rc::new(SingleProcess))
}

/// [`train_collecting`] as one rank of `group`'s job: data parallel, rank 0 writing the run.
/// Gradient collection runs in a job of one only.
pub fn train_in(
    c: &TrainingConfig,
    collect: Option<&CollectGradientsConfig>,
    device: Device,
    group: Rc<dyn Collective>,
) -> Result<TrainSummary> {
    let collect = collect.filter(|g| g.collect_gradients);
    if collect.is_some() && group.world_size() > 1 {
        return Err(Error::input(
            "--collect_gradients runs in one process; drop --nproc_per_node, or collect with bergson build on the trained model",
        ));
    }
    if collect.is_some() && c.resume {
        return Err(Error::input(
            "--collect_gradients with --resume is not supported: the gradients of the steps before the checkpoint would be missing; train from the start (--overwrite)",
        ));
    }
    let run = prepare_training_in(
        c,
        device,
        WeightChoice::PerDocument,
        |dir| write_run_config(dir, "train", c),
        group,
    )?;
    let mut gradients = collect
        .map(|g| {
            TrainingGradients::new(
                g,
                &run.run,
                &run.trainer,
                &run.initial,
                &run.stream,
                run.rows.len(),
            )
        })
        .transpose()?;
    let (state, losses) = run.train_collecting(c, gradients.as_mut())?;
    Ok(TrainSummary {
        run_path: run.run.clone(),
        losses,
        num_steps: run.num_steps(),
        state,
        names: run.names.clone(),
    })
}

/// Per-token document ids of chunked data (the `doc_ids` column), if the data has them.
fn chunk_doc_ids(table: &arrow::record_batch::RecordBatch) -> Result<Option<Vec<Vec<i64>>>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;
    let Some(col) = table.column_by_name("doc_ids") else {
        return Ok(None);
    };
    let list = col
        .as_list_opt::<i32>()
        .ok_or_else(|| Error::internal("the doc_ids column is not a list"))?;
    let mut out = Vec::with_capacity(list.len());
    for i in 0..list.len() {
        let v = list.value(i);
        let ids = v
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| Error::internal("doc_ids are not int64"))?;
        out.push(ids.values().to_vec());
    }
    Ok(Some(out))
}

/// Where a trained adapter came from, for [`save_adapter`].
pub struct AdapterSource<'a> {
    /// The adapter's settings.
    pub adapter: &'a crate::models::lora::Adapter,
    /// `--model`: the adapter's directory, or the base model's for a fresh adapter.
    pub dir: &'a Path,
    /// `--model` as given (a fresh adapter's `base_model_name_or_path`).
    pub base_model: &'a str,
    /// `--tokenizer`, when it is a directory.
    pub tokenizer: Option<&'a Path>,
}

/// Writes a trained PEFT adapter as peft's `save_pretrained` does: `adapter_config.json`
/// (the source adapter's, or a fresh adapter's settings) and `adapter_model.safetensors` with
/// the LoRA weights under their saved keys (the adapter name dropped), plus the tokenizer
/// files of `--tokenizer` (or of `--model`), as Bergson saves its tokenizer next to the model.
pub fn save_adapter(
    source: &AdapterSource<'_>,
    out: &Path,
    names: &[String],
    params: &[Tensor],
) -> Result<()> {
    std::fs::create_dir_all(out).at_path(out)?;
    let tensors: Vec<(String, Tensor)> = names
        .iter()
        .zip(params)
        .map(|(n, t)| {
            (
                crate::models::lora::saved_key(n),
                t.detach().to_device(Device::Cpu).contiguous(),
            )
        })
        .collect();
    Tensor::write_safetensors(&tensors, out.join(crate::models::lora::ADAPTER_WEIGHTS))?;
    let config = out.join(crate::models::lora::ADAPTER_CONFIG);
    if crate::models::lora::is_adapter_dir(source.dir) {
        let from = source.dir.join(crate::models::lora::ADAPTER_CONFIG);
        std::fs::copy(&from, &config).at_path(&config)?;
    } else {
        let modules: Vec<String> = names
            .iter()
            .filter_map(|n| crate::models::lora::adapted_module(n))
            .collect();
        let json = source.adapter.peft_config(source.base_model, &modules);
        let text = serde_json::to_string_pretty(&json)
            .map_err(|e| Error::internal(format!("cannot write adapter_config.json: {e}")))?;
        std::fs::write(&config, text).at_path(&config)?;
    }
    copy_tokenizer_files(source.tokenizer.unwrap_or(source.dir), out)
}

/// Copies the tokenizer files `dir` has into `out`.
fn copy_tokenizer_files(dir: &Path, out: &Path) -> Result<()> {
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "vocab.json",
        "merges.txt",
    ] {
        let from = dir.join(file);
        if from.is_file() {
            let to = out.join(file);
            std::fs::copy(&from, &to).at_path(&to)?;
        }
    }
    Ok(())
}

/// Writes `params` as a Hugging Face checkpoint in `out`: `model.safetensors` under the names
/// the source checkpoint used (GPT-NeoX's `embed_out.weight` for transformers' `lm_head`), and
/// the source's config, generation config and tokenizer files.
pub fn save_hf_model(source: &Path, out: &Path, names: &[String], params: &[Tensor]) -> Result<()> {
    std::fs::create_dir_all(out).at_path(out)?;
    let stored = crate::models::checkpoint::Checkpoint::open(source)?;
    let tensors: Vec<(String, Tensor)> = names
        .iter()
        .zip(params)
        .map(|(n, t)| {
            let name = if !stored.contains(n)
                && n == "lm_head.weight"
                && stored.contains("embed_out.weight")
            {
                "embed_out.weight".to_string()
            } else {
                n.clone()
            };
            (name, t.detach().to_device(Device::Cpu).contiguous())
        })
        .collect();
    Tensor::write_safetensors(&tensors, out.join("model.safetensors"))?;
    for file in ["config.json", "generation_config.json"] {
        let from = source.join(file);
        if from.is_file() {
            let to = out.join(file);
            std::fs::copy(&from, &to).at_path(&to)?;
        }
    }
    copy_tokenizer_files(source, out)
}

/// `--model_kwargs` of a training run. Bergson trains with `attn_implementation="eager"`,
/// which is our math kernel, the one whose backward is differentiable again; `sdpa` is
/// refused because MAGIC's double backward cannot go through the fused kernel.
pub fn training_model_kwargs(text: &str) -> Result<crate::models::kwargs::ModelKwargs> {
    let kwargs = crate::models::kwargs::ModelKwargs::parse(text)?;
    if kwargs.attention == Some(crate::models::AttentionKernel::Fused) {
        return Err(Error::input(
            "--model_kwargs attn_implementation=sdpa: bergson-rs trains with eager attention (the kernel a double backward can go through); drop it",
        ));
    }
    Ok(kwargs)
}
