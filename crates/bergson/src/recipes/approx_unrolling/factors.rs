//! SOURCE's EK-FAC factors averaged over each segment's checkpoints (Bergson 2.5.1's
//! `precompute_checkpoints.py` and `segment_aggregation.py`), steps 1 to 4 of the pipeline:
//!
//! 1. at each checkpoint, the Kronecker factors' raw sums (`activation_sharded`,
//!    `gradient_sharded`, `total_processed.pt`) under `segment_<l>/ckpt_<i>/<method>/`;
//! 2. per segment, the checkpoints' sums added and eigendecomposed (over the pooled
//!    positions) into `segment_<l>/<method>/`;
//! 3. at each checkpoint, EK-FAC's squared rotated per-document gradients, summed, in its
//!    segment's eigenbasis (`ckpt_<i>/<method>/averaged_ev_correct_sharded/`, with the
//!    documents counted in `documents_processed.pt`);
//! 4. per segment, those sums added and divided by the pooled documents
//!    (`segment_<l>/<method>/eigenvalue_correction_sharded/`).
//!
//! Each output is written as `<dir>.part` and renamed when complete.

use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use crate::collect::discover_targets;
use crate::config::{HessianRunConfig, IndexConfig};
use crate::data::batching::allocate_batches;
use crate::data::pipeline::prepare_data;
use crate::data::tokenize::TokenizedRow;
use crate::hessians::capture::{HessianCapture, HessianLoss};
use crate::hessians::correction::EigenvalueCorrection;
use crate::hessians::covariance::FactorAccumulator;
use crate::hessians::eigen::eigh_mean;
use crate::hessians::labels::LabelSampler;
use crate::index::factor_store::{self as store, read_store, write_store};
use crate::pickle::{load_scalar_i64, save_scalar_i64};
use crate::progress::Phase;
use crate::recipes::ekfac::{fresh_part, promote};
use crate::{interrupt, setup, Error, Result};

/// Per-checkpoint lambda sums, beside their document count.
pub const CHECKPOINT_LAMBDAS: &str = "averaged_ev_correct_sharded";
/// The documents a checkpoint's lambda sums are over.
pub const DOCUMENTS_PROCESSED: &str = "documents_processed.pt";

/// A model at one checkpoint with the data and batches every pass over it uses.
struct Checkpoint {
    model: Box<dyn crate::models::CausalLm>,
    rows: Vec<TokenizedRow>,
    batches: Vec<Vec<usize>>,
}

/// `cfg`'s index config with `model` swapped for the checkpoint's.
fn at_checkpoint(icfg: &IndexConfig, checkpoint: &str) -> IndexConfig {
    IndexConfig {
        model: checkpoint.to_string(),
        ..icfg.clone()
    }
}

fn load_checkpoint(icfg: &IndexConfig, device: Device) -> Result<Checkpoint> {
    let (tokenizer, model_dir, max_positions) = setup::load_tokenizer(icfg)?;
    let data = prepare_data(icfg, &tokenizer, max_positions)?;
    if data.rows.iter().all(|r| r.len() < 2) {
        return Err(Error::input(
            "every training document has fewer than 2 tokens, so none has a next-token loss to \
             fit a Hessian on; check --data.prompt_column and drop empty rows",
        ));
    }
    let model = setup::load_model(icfg, &model_dir, device)?;
    let lengths: Vec<usize> = data.rows.iter().map(TokenizedRow::len).collect();
    let batches =
        allocate_batches(&lengths, icfg.token_batch_size, icfg.max_batch_size, 1)?.swap_remove(0);
    Ok(Checkpoint {
        model,
        rows: data.rows,
        batches,
    })
}

fn loss_of(icfg: &IndexConfig) -> HessianLoss {
    HessianLoss {
        loss_fn: icfg.loss_fn,
        reduction: icfg.loss_reduction,
        logit_scale: icfg.logit_scale,
    }
}

/// Step 1 at one checkpoint: the factors' raw sums and positions into `out`.
pub fn fit_checkpoint_covariances(
    cfg: &HessianRunConfig,
    checkpoint: &str,
    out: &Path,
    device: Device,
) -> Result<()> {
    let icfg = at_checkpoint(&cfg.index_cfg, checkpoint);
    let hcfg = &cfg.hessian_cfg;
    let ck = load_checkpoint(&icfg, device)?;
    let model = &*ck.model;
    let targets = discover_targets(
        &model.linear_modules(),
        &icfg.modules,
        icfg.filter_modules.as_deref(),
        icfg.include_bias,
    )?;
    let capture = HessianCapture::new(model, &targets, loss_of(&icfg))?;
    let mut factors =
        FactorAccumulator::new(hcfg.method, &targets, hcfg.hessian_dtype.kind(), device)?;
    let sampler = (!hcfg.use_dataset_labels).then(LabelSampler::default);
    let mut positions = 0i64;
    let mut phase = Phase::new(
        "fitting Hessian factors",
        "batches",
        Some(ck.batches.len() as u64),
    );
    for batch in &ck.batches {
        interrupt::check()?;
        let b = capture.run_batch(&ck.rows, batch, sampler.as_ref(), None)?;
        positions += b.positions;
        factors.add(&b)?;
        phase.inc(1);
    }
    phase.finish();
    let factors = factors.finish()?;
    let part = fresh_part(out)?;
    write_store(&part, store::ACTIVATION, &factors.activation)?;
    write_store(&part, store::GRADIENT, &factors.gradient)?;
    store::write_total_processed(&part, positions)?;
    promote(&part, out)
}

/// `Σ_c tensors_c` by module, added in checkpoint order.
fn sum_stores(dirs: &[PathBuf], name: &str) -> Result<Vec<(String, Tensor)>> {
    let mut acc: Option<Vec<(String, Tensor)>> = None;
    for dir in dirs {
        let t = read_store(dir, name)?.ok_or_else(|| {
            Error::input(format!(
                "{} has no {name}/; rerun without --resume (or remove it) to refit that \
                 checkpoint",
                dir.display()
            ))
        })?;
        acc = Some(match acc {
            None => t,
            Some(a) => {
                if a.len() != t.len() || a.iter().zip(&t).any(|(x, y)| x.0 != y.0) {
                    return Err(Error::input(format!(
                        "the checkpoints' {name} hold different modules ({}); fit every \
                         checkpoint with the same --filter_modules and models",
                        dir.display()
                    )));
                }
                a.into_iter()
                    .zip(t)
                    .map(|((n, x), (_, y))| Ok((n, x.f_add(&y)?)))
                    .collect::<Result<_>>()?
            }
        });
    }
    acc.ok_or_else(|| Error::internal("a segment without checkpoints"))
}

/// Step 2 for one segment: the checkpoints' factor sums pooled and eigendecomposed into `out`.
pub fn aggregate_segment_covariances(ckpt_dirs: &[PathBuf], out: &Path) -> Result<()> {
    let activation = sum_stores(ckpt_dirs, store::ACTIVATION)?;
    let gradient = sum_stores(ckpt_dirs, store::GRADIENT)?;
    let mut total = 0i64;
    for d in ckpt_dirs {
        total += store::read_total_processed(d)?;
    }
    let mut eigen_a = Vec::with_capacity(activation.len());
    let mut eigen_g = Vec::with_capacity(gradient.len());
    for ((name, a), (_, s)) in activation.iter().zip(&gradient) {
        interrupt::check()?;
        eigen_a.push((name.clone(), eigh_mean(name, a, total, a.kind())?.vectors));
        eigen_g.push((name.clone(), eigh_mean(name, s, total, s.kind())?.vectors));
    }
    let part = fresh_part(out)?;
    write_store(&part, store::ACTIVATION, &activation)?;
    write_store(&part, store::GRADIENT, &gradient)?;
    write_store(&part, store::EIGEN_ACTIVATION, &eigen_a)?;
    write_store(&part, store::EIGEN_GRADIENT, &eigen_g)?;
    store::write_total_processed(&part, total)?;
    promote(&part, out)
}

/// Step 3 at one checkpoint: the summed squared rotated gradients in the segment's eigenbasis
/// (at `segment`), and the documents, into `out`.
pub fn fit_checkpoint_lambdas(
    cfg: &HessianRunConfig,
    checkpoint: &str,
    segment: &Path,
    out: &Path,
    device: Device,
) -> Result<()> {
    let icfg = at_checkpoint(&cfg.index_cfg, checkpoint);
    let hcfg = &cfg.hessian_cfg;
    let kind = hcfg.hessian_dtype.kind();
    let ck = load_checkpoint(&icfg, device)?;
    let model = &*ck.model;
    let targets = discover_targets(
        &model.linear_modules(),
        &icfg.modules,
        icfg.filter_modules.as_deref(),
        icfg.include_bias,
    )?;
    let missing = || {
        Error::input(format!(
            "{} has no eigenvectors; rerun without --resume (or remove it)",
            segment.display()
        ))
    };
    let q_a = read_store(segment, store::EIGEN_ACTIVATION)?.ok_or_else(missing)?;
    let q_g = read_store(segment, store::EIGEN_GRADIENT)?.ok_or_else(missing)?;
    let bases = targets
        .iter()
        .map(|t| {
            let find = |v: &[(String, Tensor)]| {
                v.iter()
                    .find(|(n, _)| n == &t.name)
                    .map(|(_, x)| x.f_to_device(device))
                    .transpose()?
                    .ok_or_else(|| {
                        Error::input(format!(
                            "module '{}' of checkpoint {checkpoint} has no eigenvectors in {}; \
                             fit every checkpoint on the same modules",
                            t.name,
                            segment.display()
                        ))
                    })
            };
            Ok((t.name.clone(), t.collect_bias, find(&q_a)?, find(&q_g)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let capture = HessianCapture::new(model, &targets, loss_of(&icfg))?;
    let sampler = (!hcfg.use_dataset_labels).then(LabelSampler::default);
    let mut correction = EigenvalueCorrection::new(bases, kind)?;
    let mut phase = Phase::new(
        "fitting EK-FAC eigenvalue corrections",
        "batches",
        Some(ck.batches.len() as u64),
    );
    for batch in &ck.batches {
        interrupt::check()?;
        let b = capture.run_batch(&ck.rows, batch, sampler.as_ref(), None)?;
        correction.add(&b)?;
        phase.inc(1);
    }
    phase.finish();
    // Sums (a divisor of 1): step 4 divides by the segment's pooled documents.
    let mut sums = correction.finish(1)?;
    sums.sort_by(|a, b| a.0.cmp(&b.0));
    let part = fresh_part(out)?;
    let dir = part.join("shard_0.safetensors");
    let cpu: Vec<(String, Tensor)> = sums
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.f_to_device(Device::Cpu)?.f_contiguous()?)))
        .collect::<Result<_>>()?;
    Tensor::write_safetensors(&cpu, &dir)
        .map_err(|e| Error::io(&dir, std::io::Error::other(e.to_string())))?;
    save_scalar_i64(&part.join(DOCUMENTS_PROCESSED), ck.rows.len() as i64)?;
    promote(&part, out)
}

/// Step 4 for one segment: the checkpoints' lambda sums (`ckpt_lambdas`, each a
/// [`CHECKPOINT_LAMBDAS`] folder) added and divided by their pooled documents, into `out`
/// (the segment's `eigenvalue_correction_sharded/`).
pub fn aggregate_segment_lambdas(ckpt_lambdas: &[PathBuf], out: &Path) -> Result<()> {
    let mut documents = 0i64;
    for d in ckpt_lambdas {
        let path = d.join(DOCUMENTS_PROCESSED);
        if !path.exists() {
            return Err(Error::input(format!(
                "missing {}; rerun without --resume (or remove {}) to redo that checkpoint's \
                 lambdas",
                path.display(),
                d.display()
            )));
        }
        documents += load_scalar_i64(&path)?;
    }
    // The folders are stores themselves: read them from their parents.
    let parents: Vec<PathBuf> = ckpt_lambdas
        .iter()
        .map(|d| d.parent().map(Path::to_path_buf).unwrap_or_default())
        .collect();
    let sums = sum_stores(&parents, CHECKPOINT_LAMBDAS)?;
    let mean = sums
        .into_iter()
        .map(|(n, t)| Ok((n, t.f_div_scalar(documents as f64)?.f_to_kind(t.kind())?)))
        .collect::<Result<Vec<_>>>()?;
    let part = fresh_part(out)?;
    let path = part.join("shard_0.safetensors");
    Tensor::write_safetensors(&mean, &path)
        .map_err(|e| Error::io(&path, std::io::Error::other(e.to_string())))?;
    promote(&part, out)
}
