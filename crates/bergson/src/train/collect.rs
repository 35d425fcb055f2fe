//! `bergson train --collect_gradients`: Python Bergson 2.5.1's `GradientCollectorCallback`
//! (`bergson/huggingface.py`) on bergson-rs's trainer. Every micro-batch's per-example
//! gradients of its training loss (the loss the step differentiates, scaled as the step scales
//! it) are captured in the step's own backward pass by the build's collector
//! ([`GradientCollector`]), projected, and written at the documents' dataset rows:
//!
//! ```text
//! <run>/train/epoch_<e>/   one index per epoch (or <run>/train with --accumulate_grads):
//!                          info.json, gradients.bin, and at the epoch's end the processor
//!                          (processor_config.yaml, normalizers.pth, hessians*.pth)
//! <run>/order.hf           with --track_order: _idx, global_step (1-based), epoch
//! ```
//!
//! With `--use_optimizer_state`, after every step the AdamW second moments (`exp_avg_sq`,
//! without bias correction) become Adam normalizers of every collected module, divided by
//! the learning rate of the next step squared with `--scale_by_lr`; they normalise the
//! following steps' gradients, as the callback installs them in `on_step_end`.
//!
//! Bergson's quirks are kept so the outputs are equal: `order.hf` lists the rows of each step's
//! last micro-batch only (the callback reads the indices of the last forward pass), and its
//! `epoch` is `floor(rows trained so far / rows per epoch)` after the step (transformers'
//! `int(state.epoch)`), so an epoch's last step is listed under the next epoch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use tch::{Device, Kind, Tensor};

use super::optimizer::OptState;
use super::stream::DataStream;
use super::trainer::{MicroBatchTap, StepOutput, Trainer, TrainerState};
use crate::collect::{
    discover_targets, split_heads, BatchGradients, GradientCollector, GradientProcessor,
    Normalizer, ProjectionSettings,
};
use crate::config::CollectGradientsConfig;
use crate::error::IoContext;
use crate::index::gradient_file::GradientFile;
use crate::index::hf_dataset::write_hf_dataset;
use crate::index::info::IndexInfo;
use crate::{Error, Result};

/// A collected module's parameters in the trainer's state.
#[derive(Debug, Clone)]
struct ModuleParams {
    /// Module name relative to the base model (the index's column block).
    name: String,
    /// Index of `<prefix>.<name>.weight`.
    weight: Option<usize>,
    /// Index of `<prefix>.<name>.bias`.
    bias: Option<usize>,
    /// `[out, in]` of the module.
    shape: [i64; 2],
}

/// Training-time gradient collection: the collector, the per-epoch indexes and the order.
pub struct TrainingGradients {
    cfg: CollectGradientsConfig,
    processor: GradientProcessor,
    collector: GradientCollector,
    modules: Vec<ModuleParams>,
    /// HF Conv1D (GPT-2) stores weights `[in, out]`.
    transposed: bool,
    targets: Vec<crate::collect::Target>,
    kind: Kind,
    device: Device,
    rows: RowWriter,
    /// `(_idx, global_step, epoch)` with `--track_order`.
    order: Option<Vec<[i64; 3]>>,
}

/// Writes micro-batch rows into the epoch indexes.
struct RowWriter {
    run: PathBuf,
    accumulate: bool,
    store_kind: Kind,
    store_dtype: &'static str,
    grad_sizes: Vec<(String, usize)>,
    /// Rows per epoch (the dataset's rows).
    num_examples: usize,
    /// Stream positions holding real rows (`epochs × rows`); the rest is padding.
    num_real: usize,
    /// Dataset row of every stream position.
    example_ids: Vec<i64>,
    /// Open indexes by epoch (0 with accumulate_grads).
    stores: BTreeMap<usize, GradientFile>,
    /// Dataset rows of the last micro-batch written (the callback's `batch_indices`).
    last_micro: Vec<i64>,
}

impl TrainingGradients {
    /// Collection for a run of `trainer` from `initial` over `stream` (`num_examples` dataset
    /// rows per epoch), written under `run`.
    pub fn new(
        cfg: &CollectGradientsConfig,
        run: &Path,
        trainer: &Trainer,
        initial: &TrainerState,
        stream: &DataStream,
        num_examples: usize,
    ) -> Result<Self> {
        let model = trainer.model_on(&initial.params)?;
        let mut targets = discover_targets(&model.linear_modules(), &[], None, cfg.include_bias)?;
        split_heads(&mut targets, &cfg.split_attention_modules, cfg.attention)?;
        let prefix = model.base_model_prefix().to_string();
        let transposed = model.model_type() == "gpt2";
        let kind = trainer.kind();
        let device = model.device();
        drop(model);
        let names = trainer.names();
        let index_of = |param: String| names.iter().position(|n| *n == param);
        let modules = targets
            .iter()
            .map(|t| ModuleParams {
                name: t.name.clone(),
                weight: index_of(format!("{prefix}.{}.weight", t.name)),
                bias: index_of(format!("{prefix}.{}.bias", t.name)),
                shape: [t.out_features, t.in_features],
            })
            .collect();
        let settings = ProjectionSettings {
            projection_dim: (cfg.projection_dim > 0).then_some(cfg.projection_dim),
            include_bias: cfg.include_bias,
            ..ProjectionSettings::default()
        };
        let processor = GradientProcessor::new(settings);
        // Rows are formed in the model dtype (the callback's collector saves in the gradient
        // dtype) and rounded to --dtype as they are written.
        let collector =
            GradientCollector::new(targets.clone(), &processor, false, kind, kind, device)?;
        let grad_sizes = collector.grad_sizes();
        let example_ids = stream.rows().iter().map(|r| r.example_id).collect();
        let num_real = stream.rows().len() - stream.padding.num_rows;
        Ok(TrainingGradients {
            cfg: cfg.clone(),
            processor,
            collector,
            modules,
            transposed,
            targets,
            kind,
            device,
            rows: RowWriter {
                run: run.to_path_buf(),
                accumulate: cfg.accumulate_grads,
                store_kind: cfg.dtype.kind(),
                store_dtype: cfg.dtype.as_str(),
                grad_sizes,
                num_examples,
                num_real,
                example_ids,
                stores: BTreeMap::new(),
                last_micro: Vec::new(),
            },
            order: cfg.track_order.then(Vec::new),
        })
    }

    /// The index's column blocks and sizes.
    pub fn grad_sizes(&self) -> &[(String, usize)] {
        &self.rows.grad_sizes
    }

    /// Takes step `i` of `stream` from `state`, writing its rows; then records the order,
    /// installs the normalizers of the new optimizer state and closes the epochs the step
    /// finished (`on_step_end`, `on_epoch_end`).
    pub fn step(
        &mut self,
        trainer: &Trainer,
        state: &TrainerState,
        stream: &DataStream,
        i: usize,
    ) -> Result<(TrainerState, StepOutput)> {
        let batch = stream.batch(i);
        let batch_size = batch.len() as usize;
        let first = i * batch_size;
        let rows = &mut self.rows;
        let mut sink =
            |start: i64, grads: BatchGradients| rows.write(first + start as usize, grads);
        let (next, out) = trainer.step_collecting(
            state,
            &batch,
            MicroBatchTap {
                collector: &self.collector,
                sink: &mut sink,
            },
        )?;
        let trained = ((i + 1) * batch_size).min(self.rows.num_real);
        let n = self.rows.num_examples;
        if let Some(order) = &mut self.order {
            let epoch = (trained / n) as i64;
            order.extend(
                self.rows
                    .last_micro
                    .iter()
                    .map(|&idx| [idx, i as i64 + 1, epoch]),
            );
        }
        if self.cfg.use_optimizer_state {
            let lr = trainer.optimizer().schedule.lr(i + 1);
            self.processor.normalizers = self.normalizers(&next.opt, lr)?;
            self.collector = GradientCollector::new(
                self.targets.clone(),
                &self.processor,
                false,
                self.kind,
                self.kind,
                self.device,
            )?;
        }
        // The epochs whose last row this step trained.
        for e in first.min(self.rows.num_real) / n..trained / n {
            self.end_epoch(e)?;
        }
        Ok((next, out))
    }

    /// `on_epoch_end`: the processor (with the current normalizers) into the epoch's index,
    /// and its rows flushed.
    fn end_epoch(&mut self, epoch: usize) -> Result<()> {
        let key = if self.rows.accumulate { 0 } else { epoch };
        self.rows.store(key)?;
        let dir = self.rows.dir(key);
        self.processor.on_cpu().save(&dir)?;
        if let Some(store) = self.rows.stores.get(&key) {
            store.sync()?;
        }
        if !self.rows.accumulate {
            self.rows.stores.remove(&key);
        }
        Ok(())
    }

    /// `on_train_end`: flushes the indexes and writes `order.hf`.
    pub fn finish(&mut self) -> Result<()> {
        for store in self.rows.stores.values() {
            store.sync()?;
        }
        if let Some(order) = &self.order {
            write_order(&self.rows.run.join("order.hf"), order)?;
        }
        Ok(())
    }

    /// The callback's normalizers from the optimizer state: each collected module's AdamW
    /// `exp_avg_sq` in `[out, in]` orientation (and its bias's), divided by `lr²` with
    /// `--scale_by_lr`. Optimizers without second moments (SGD) give none.
    fn normalizers(&self, opt: &OptState, lr: f64) -> Result<Vec<(String, Normalizer)>> {
        let OptState::AdamW { nu, .. } = opt else {
            return Ok(Vec::new());
        };
        let scale = if self.cfg.scale_by_lr { lr * lr } else { 1.0 };
        let mut out = Vec::new();
        for m in &self.modules {
            let Some(w) = m.weight else { continue };
            let v = nu[w].detach();
            let oriented = if self.transposed {
                v.f_tr()?.f_contiguous()?
            } else {
                v.shallow_clone()
            };
            let v = if oriented.size() == m.shape {
                oriented
            } else {
                v
            };
            let bias = m
                .bias
                .map(|b| nu[b].detach().f_div_scalar(scale))
                .transpose()?;
            out.push((
                m.name.clone(),
                Normalizer::Adam {
                    weight_avg_sq: v.f_div_scalar(scale)?,
                    bias_avg_sq: bias,
                },
            ));
        }
        Ok(out)
    }
}

/// Writes `order.hf` at `path`: a `save_to_disk` dataset of `(_idx, global_step, epoch)`
/// rows, as Bergson's callback saves the training order.
pub fn write_order(path: &Path, rows: &[[i64; 3]]) -> Result<()> {
    let column = |k: usize| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r[k])))
    };
    let schema = Schema::new(vec![
        Field::new("_idx", DataType::Int64, true),
        Field::new("global_step", DataType::Int64, true),
        Field::new("epoch", DataType::Int64, true),
    ]);
    let batch = RecordBatch::try_new(Arc::new(schema), vec![column(0), column(1), column(2)])
        .map_err(|e| Error::internal(format!("order.hf: {e}")))?;
    write_hf_dataset(&batch, path)
}

impl RowWriter {
    /// The index directory of `key` (an epoch, or 0 with accumulate_grads).
    fn dir(&self, key: usize) -> PathBuf {
        let train = self.run.join("train");
        if self.accumulate {
            train
        } else {
            train.join(format!("epoch_{key}"))
        }
    }

    /// The open index of `key`, created (`create_index`: info.json and a zero-filled
    /// gradients.bin) on first use.
    fn store(&mut self, key: usize) -> Result<&GradientFile> {
        if !self.stores.contains_key(&key) {
            let dir = self.dir(key);
            std::fs::create_dir_all(&dir).at_path(&dir)?;
            IndexInfo {
                attribute_tokens: false,
                num_items: self.num_examples,
                num_grads: self.num_examples,
                grad_sizes: self.grad_sizes.clone(),
                base_dtype: self.store_dtype.to_string(),
            }
            .write(&dir)?;
            let row_len = self.grad_sizes.iter().map(|(_, s)| s).sum();
            let file =
                GradientFile::create(&dir, self.num_examples, row_len, self.store_kind, false)?;
            self.stores.insert(key, file);
        }
        Ok(&self.stores[&key])
    }

    /// Writes a micro-batch's rows (stream positions `first..`) at their dataset rows, in the
    /// index of each row's epoch; the padding rows of the last batch are skipped.
    fn write(&mut self, first: usize, grads: BatchGradients) -> Result<()> {
        let rows = grads.concat()?;
        let count = rows.size()[0] as usize;
        let mut by_key: BTreeMap<usize, (Vec<i64>, Vec<usize>)> = BTreeMap::new();
        self.last_micro.clear();
        for r in 0..count {
            let pos = first + r;
            if pos >= self.num_real {
                continue;
            }
            let example = self.example_ids[pos];
            self.last_micro.push(example);
            let key = if self.accumulate {
                0
            } else {
                pos / self.num_examples
            };
            let entry = by_key.entry(key).or_default();
            entry.0.push(r as i64);
            entry.1.push(example as usize);
        }
        for (key, (local, examples)) in by_key {
            let picked = rows.f_index_select(0, &Tensor::from_slice(&local))?;
            self.store(key)?.scatter_rows(&examples, &picked)?;
        }
        Ok(())
    }
}
