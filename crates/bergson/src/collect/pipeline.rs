//! Collecting a dataset's gradients batch by batch (Bergson's `collect_gradients` /
//! `CollectorComputer`): pack documents into token batches, run forward and backward once per
//! batch, and hand each batch's per-document (or per-token) gradients to a sink.

use std::time::Instant;

use tch::{Kind, Tensor};

use super::collector::{BatchGradients, BlockGradient, CaptureHook, GradientCollector};
use super::head_loss::{fused_applies, fused_head_loss};
use super::loss::{document_losses, LossSpec};
use super::processor::GradientProcessor;
use super::targets::{discover_targets, split_heads, Target};
use crate::config::{AttentionConfig, IndexConfig, LossFn};
use crate::data::batching::{allocate_batches, collection_mask, pad_batch};
use crate::data::tokenize::TokenizedRow;
use crate::models::head::head_logits;
use crate::models::{BaseOnly, CausalLm, Linear};
use crate::{Error, Result};

/// What to collect, besides the model and the documents.
#[derive(Debug, Clone)]
pub struct CollectConfig {
    /// Collect exactly these modules (fnmatch globs); empty = every Linear of the base model.
    pub modules: Vec<String>,
    /// Comma-separated globs of modules to exclude.
    pub filter_modules: Option<String>,
    /// Modules split into heads, with one shared layout.
    pub split_attention_modules: Vec<String>,
    /// The head layout.
    pub attention: AttentionConfig,
    /// The per-document loss.
    pub loss: LossSpec,
    /// Padded-token budget per batch.
    pub token_batch_size: usize,
    /// Cap on documents per batch.
    pub max_batch_size: Option<usize>,
    /// One row per token instead of per document.
    pub attribute_tokens: bool,
    /// Number of workers the documents are split over, and this worker's rank.
    pub world_size: usize,
    /// This worker's rank.
    pub rank: usize,
}

impl CollectConfig {
    /// The collection settings of a build config.
    pub fn from_index_config(cfg: &IndexConfig) -> Self {
        CollectConfig {
            modules: cfg.modules.clone(),
            filter_modules: cfg.filter_modules.clone(),
            split_attention_modules: cfg.split_attention_modules.clone(),
            attention: cfg.attention,
            loss: LossSpec {
                loss_fn: cfg.loss_fn,
                reduction: cfg.loss_reduction,
                label_smoothing: cfg.label_smoothing,
                logit_scale: cfg.logit_scale,
                upcast_logits: false,
            },
            token_batch_size: cfg.token_batch_size,
            max_batch_size: cfg.max_batch_size,
            attribute_tokens: cfg.attribute_tokens,
            world_size: 1,
            rank: 0,
        }
    }
}

/// The documents to collect: token ids, labels (chat rows) and optional advantages.
#[derive(Debug, Clone, Copy)]
pub struct Documents<'a> {
    /// One tokenised row per document.
    pub rows: &'a [TokenizedRow],
    /// Dr. GRPO advantage per document.
    pub advantages: Option<&'a [f64]>,
}

/// Where one batch's time went.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchTimings {
    /// Forward pass through the base model (with input capture and forward projection).
    pub forward: std::time::Duration,
    /// LM head and loss (with their gradient, when fused).
    pub loss: std::time::Duration,
    /// Autograd through the model to every captured Linear output.
    pub backward: std::time::Duration,
    /// Forming, normalising and projecting per-example gradients, and moving them to the CPU.
    pub gradients: std::time::Duration,
}

impl std::ops::AddAssign for BatchTimings {
    fn add_assign(&mut self, o: Self) {
        self.forward += o.forward;
        self.loss += o.loss;
        self.backward += o.backward;
        self.gradients += o.gradients;
    }
}

/// One processed batch.
#[derive(Debug)]
pub struct BatchOutput {
    /// Dataset indices of the batch's documents, in row order.
    pub indices: Vec<usize>,
    /// Per-document (or per-token, documents in `indices` order) gradients.
    pub gradients: BatchGradients,
    /// Per-document losses (float32), advantage-weighted when advantages are given.
    pub losses: Vec<f32>,
    /// Positions that carry a gradient (every real position but each document's last).
    pub positions: usize,
    /// Where the time went.
    pub timings: BatchTimings,
}

/// One processed batch with each block's gradients kept as factors
/// ([`Collection::run_batch_blocks`]).
pub struct BlockBatch {
    /// Dataset indices of the batch's documents, in row order.
    pub indices: Vec<usize>,
    /// `(block name, gradients)` in index column order.
    pub blocks: Vec<(String, BlockGradient)>,
    /// Per-document losses (float32), advantage-weighted when advantages are given.
    pub losses: Vec<f32>,
    /// Positions that carry a gradient (every real position but each document's last).
    pub positions: usize,
    /// Where the time went.
    pub timings: BatchTimings,
}

/// A model and documents ready to collect, batch by batch.
pub struct Collection<'m> {
    model: &'m dyn CausalLm,
    collector: GradientCollector,
    cfg: CollectConfig,
    batches: Vec<Vec<usize>>,
    /// The LM head with `logit_scale` (and the model's logit divisor) folded into its weight
    /// and bias, for the fused loss.
    scaled_head: Option<Linear>,
}

impl<'m> Collection<'m> {
    /// Selects the targets, builds the collector (projection matrices) and packs the documents
    /// into this rank's batches, in Bergson's processing order.
    pub fn new(
        model: &'m dyn CausalLm,
        docs: Documents<'_>,
        processor: &GradientProcessor,
        cfg: &CollectConfig,
    ) -> Result<Self> {
        let targets = select_targets(model, processor, cfg)?;
        let kind = model.kind();
        let collector = GradientCollector::new(
            targets,
            processor,
            cfg.attribute_tokens,
            kind,
            kind,
            model.device(),
        )?;
        let lengths: Vec<usize> = docs.rows.iter().map(TokenizedRow::len).collect();
        if lengths.iter().all(|&l| l < 2) {
            return Err(Error::input(
                "every document has fewer than 2 tokens, so none has a next-token loss to index; check that --prompt_column (or --completion_column / --conversation_column) names the column holding the text, and drop empty rows",
            ));
        }
        let mut allocation = allocate_batches(
            &lengths,
            cfg.token_batch_size,
            cfg.max_batch_size,
            cfg.world_size,
        )?;
        let batches = std::mem::take(&mut allocation[cfg.rank]);
        let scale = model.head_output().linear_factor(cfg.loss.logit_scale);
        let scaled_head = if scale != 1.0 && fused_applies(&cfg.loss, model.kind()) {
            Some(model.lm_head().scaled(scale)?)
        } else {
            None
        };
        Ok(Collection {
            model,
            collector,
            cfg: cfg.clone(),
            batches,
            scaled_head,
        })
    }

    /// This rank's batches of dataset indices, in processing order.
    pub fn batches(&self) -> &[Vec<usize>] {
        &self.batches
    }

    /// The index's column blocks and sizes.
    pub fn grad_sizes(&self) -> Vec<(String, usize)> {
        self.collector.grad_sizes()
    }

    /// The collector.
    pub fn collector(&self) -> &GradientCollector {
        &self.collector
    }

    /// Runs forward and backward on one batch of dataset indices and forms its rows.
    pub fn run_batch(&self, docs: Documents<'_>, indices: &[usize]) -> Result<BatchOutput> {
        let (gradients, losses, positions, timings) =
            self.forward_backward(docs, indices, |hook, seed, mask| {
                self.collector.backward_timed(hook, seed, mask)
            })?;
        Ok(BatchOutput {
            indices: indices.to_vec(),
            gradients,
            losses,
            positions,
            timings,
        })
    }

    /// Runs forward and backward on one batch and returns each block's gradients as factors
    /// on the model's device (the seam for consumers that contract gradients rather than store
    /// them, such as scoring).
    pub fn run_batch_blocks(&self, docs: Documents<'_>, indices: &[usize]) -> Result<BlockBatch> {
        let (blocks, losses, positions, timings) =
            self.forward_backward(docs, indices, |hook, seed, mask| {
                self.collector.backward_blocks(hook, seed, mask)
            })?;
        Ok(BlockBatch {
            indices: indices.to_vec(),
            blocks,
            losses,
            positions,
            timings,
        })
    }

    /// The forward pass, the loss and `backward` for one batch; returns what `backward` made,
    /// the per-document losses, the gradient-carrying positions and the timings.
    fn forward_backward<T>(
        &self,
        docs: Documents<'_>,
        indices: &[usize],
        backward: impl FnOnce(CaptureHook<'_>, &Tensor, &Tensor) -> Result<(T, std::time::Duration)>,
    ) -> Result<(T, Vec<f32>, usize, BatchTimings)> {
        let model = self.model;
        let device = model.device();
        let ids: Vec<&[i64]> = indices
            .iter()
            .map(|&i| docs.rows[i].input_ids.as_slice())
            .collect();
        let labels: Option<Vec<&[i64]>> = docs.rows[indices[0]].labels.is_some().then(|| {
            indices
                .iter()
                .map(|&i| docs.rows[i].labels.as_deref().unwrap_or(&[]))
                .collect()
        });
        let (x, y) = pad_batch(&ids, labels.as_deref())?;
        model.check_input_ids(&x)?;
        let lengths: Vec<usize> = ids.iter().map(|d| d.len()).collect();
        let seq_len = x.size()[1] as usize;
        let mask = collection_mask(&lengths, seq_len)?.f_to_device(device)?;
        let (x, y) = (x.f_to_device(device)?, y.f_to_device(device)?);
        let advantages = docs
            .advantages
            .map(|a| {
                Tensor::f_from_slice(&indices.iter().map(|&i| a[i]).collect::<Vec<f64>>())?
                    .f_to_device(device)
            })
            .transpose()?;

        let mut hook = self.collector.hook();
        let mut timings = BatchTimings::default();
        let clock = Instant::now();
        let hidden = model.hidden_with(&x, &mut hook);
        timings.forward = clock.elapsed();
        let (losses, seed) = if fused_applies(&self.cfg.loss, model.kind()) {
            // The head and loss fused: backward from the final hidden states with their
            // gradient as the seed, so the logits never enter the graph.
            // Bergson multiplies the head's output by logit_scale (before any soft-capping);
            // folded into the head here.
            let head = self.scaled_head.as_ref().unwrap_or(model.lm_head());
            let (losses, grad) = fused_head_loss(
                head,
                model.head_output().softcap,
                &hidden,
                &y,
                &self.cfg.loss,
                advantages.as_ref(),
            )?;
            let seed = hidden.f_mul(&grad)?.f_sum(hidden.kind())?;
            (losses, seed)
        } else {
            let logits = head_logits(
                model.lm_head(),
                model.head_output(),
                &hidden,
                self.cfg.loss.logit_scale,
            );
            let reference = (self.cfg.loss.loss_fn == LossFn::Kl)
                .then(|| base_logits(model, &x, self.cfg.loss.logit_scale))
                .transpose()?;
            let losses = document_losses(
                &self.cfg.loss,
                &logits,
                &y,
                advantages.as_ref(),
                reference.as_ref(),
            )?;
            let total = losses.f_sum(losses.kind())?;
            (losses, total)
        };
        timings.loss = clock.elapsed() - timings.forward;
        let (made, autograd) = backward(hook, &seed, &mask)?;
        timings.backward = autograd;
        timings.gradients = clock.elapsed() - timings.forward - timings.loss - autograd;
        let losses: Vec<f32> = Vec::<f32>::try_from(
            losses
                .f_detach()?
                .f_to_kind(Kind::Float)?
                .f_to_device(tch::Device::Cpu)?,
        )?;
        let positions = lengths.iter().map(|&l| l.saturating_sub(1)).sum();
        Ok((made, losses, positions, timings))
    }
}

/// The base model's logits, adapters off and no autograd (the reference of `--loss_fn kl`).
fn base_logits(model: &dyn CausalLm, x: &Tensor, logit_scale: f64) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    Ok(model.forward_scaled_with(x, &mut BaseOnly, logit_scale))
}

/// The collected modules of `model` under `cfg`.
pub fn select_targets(
    model: &dyn CausalLm,
    processor: &GradientProcessor,
    cfg: &CollectConfig,
) -> Result<Vec<Target>> {
    let mut targets = discover_targets(
        &model.linear_modules(),
        &cfg.modules,
        cfg.filter_modules.as_deref(),
        processor.settings.include_bias,
    )?;
    split_heads(&mut targets, &cfg.split_attention_modules, cfg.attention)?;
    Ok(targets)
}

/// Collects every batch of `docs` and hands each to `sink` as it is produced (the library's
/// one-call API; `bergson build` drives [`Collection`] itself to resume and show progress).
pub fn collect_gradients(
    model: &dyn CausalLm,
    docs: Documents<'_>,
    processor: &GradientProcessor,
    cfg: &CollectConfig,
    mut sink: impl FnMut(BatchOutput) -> Result<()>,
) -> Result<Vec<(String, usize)>> {
    let collection = Collection::new(model, docs, processor, cfg)?;
    for batch in collection.batches() {
        sink(collection.run_batch(docs, batch)?)?;
    }
    Ok(collection.grad_sizes())
}

/// Collects every batch and returns the gradients per module, `[rows, size]` in dataset order
/// (documents with fewer than 2 tokens get zero rows, as in the index).
pub fn collect_gradients_in_memory(
    model: &dyn CausalLm,
    docs: Documents<'_>,
    processor: &GradientProcessor,
    cfg: &CollectConfig,
) -> Result<Vec<(String, Tensor)>> {
    let collection = Collection::new(model, docs, processor, cfg)?;
    let sizes = collection.grad_sizes();
    let rows_of = |i: usize| {
        if cfg.attribute_tokens {
            docs.rows[i].len().saturating_sub(1)
        } else {
            1
        }
    };
    let offsets: Vec<usize> = std::iter::once(0)
        .chain(docs.rows.iter().enumerate().scan(0, |acc, (i, _)| {
            *acc += rows_of(i);
            Some(*acc)
        }))
        .collect();
    let total = offsets[docs.rows.len()] as i64;
    let kind = model.kind();
    let out: Vec<(String, Tensor)> = sizes
        .iter()
        .map(|(name, size)| {
            Ok((
                name.clone(),
                Tensor::f_zeros([total, *size as i64], (kind, tch::Device::Cpu))?,
            ))
        })
        .collect::<Result<_>>()?;
    for batch in collection.batches() {
        let output = collection.run_batch(docs, batch)?;
        for ((_, dest), (_, rows)) in out.iter().zip(&output.gradients.blocks) {
            let mut r = 0i64;
            for &i in &output.indices {
                let n = rows_of(i) as i64;
                dest.f_narrow(0, offsets[i] as i64, n)?
                    .f_copy_(&rows.f_narrow(0, r, n)?)?;
                r += n;
            }
        }
    }
    Ok(out)
}
