//! `bergson hessian`: fitting Hessian approximations of a model's loss over a dataset, exactly
//! as Python Bergson 2.5.1's `approximate_hessians`.
//!
//! The factored methods (`kfac`, `tkfac`, `shampoo`) run the model over the data once,
//! accumulating per module a Kronecker factor of the layer inputs and one of the output
//! gradients ([`covariance`]), eigendecompose both in float64 ([`eigen`]), and with
//! `--ev_correction` run a second pass for EK-FAC's corrected eigenvalues ([`correction`]).
//! The loss is Bergson's Hessian loss ([`capture`]) on the dataset's labels or on labels
//! sampled from the model ([`labels`]). `autocorrelation` instead fits the dense Gram of the
//! index's own per-example gradients ([`autocorrelation`]).
//!
//! The run directory (see [`crate::index::factor_store`]) is written to `<run_path>.part` and
//! renamed when complete; an interrupted fit starts over.
//!
//! Using a fitted Hessian: [`inversion`] turns its spectrum into the inverse (or inverse square
//! root) that InversionConfig asks for, and [`preconditioner`] applies it to gradients (dense,
//! joint or factored), as build, reduce, score, query and the Attributor do with
//! `--hessian_path`.

pub mod apply;
pub mod astra;
pub mod autocorrelation;
pub mod capture;
pub mod correction;
pub mod covariance;
pub mod eigen;
pub mod gauss_newton;
pub mod inversion;
pub mod labels;
pub mod lissa;
pub mod preconditioner;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::build::together;
use crate::build::RunOptions;
use crate::collect::{discover_targets, CollectConfig, Collection, Documents, Target};
use crate::config::run_file::{config_yaml, Step};
use crate::config::{HessianMethod, HessianRunConfig, ProjectionTarget};
use crate::data::batching::allocate_batches;
use crate::data::pipeline::prepare_data;
use crate::data::tokenize::TokenizedRow;
use crate::dist::{Collective, ReduceOp, SingleProcess};
use crate::error::IoContext;
use crate::index::factor_store::{self as store, write_store_shard};
use crate::index::run_dir;
use crate::models::CausalLm;
use crate::progress::Phase;
use crate::{interrupt, setup, Error, Result};

use capture::{HessianCapture, HessianLoss};
use correction::EigenvalueCorrection;
use covariance::FactorAccumulator;
use eigen::Eigen;
use labels::LabelSampler;

/// What a finished fit did.
#[derive(Debug, Clone)]
pub struct HessianSummary {
    /// The run directory.
    pub run_path: PathBuf,
    /// The approximation.
    pub method: HessianMethod,
    /// Documents in the dataset.
    pub documents: usize,
    /// Gradient-carrying positions (`total_processed`).
    pub positions: i64,
    /// Modules (or Gram keys) fitted.
    pub modules: usize,
    /// Wall time.
    pub seconds: f64,
}

impl std::fmt::Display for HessianSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fitted a {} Hessian of {} module(s) over {} documents ({} positions) in {:.1} s; saved at {}",
            self.method,
            self.modules,
            self.documents,
            self.positions,
            self.seconds,
            self.run_path.display()
        )
    }
}

/// Refuses settings Bergson refuses, and what bergson-rs does not implement, before anything
/// is written.
pub fn check_config(cfg: &HessianRunConfig) -> Result<()> {
    let (hcfg, icfg) = (&cfg.hessian_cfg, &cfg.index_cfg);
    if hcfg.ev_correction && icfg.projection_dim != 0 {
        return Err(Error::input(format!(
            "--ev_correction (EK-FAC) does not support gradient projection, got --projection_dim {}; pass --projection_dim 0",
            icfg.projection_dim
        )));
    }
    if hcfg.method != HessianMethod::Autocorrelation && hcfg.module_partitions < 1 {
        return Err(Error::input(format!(
            "--module_partitions must be at least 1, got {}",
            hcfg.module_partitions
        )));
    }
    setup::check_index_config(icfg)
}

/// Runs `bergson hessian` in this process alone.
pub fn run(cfg: &HessianRunConfig, opts: &RunOptions) -> Result<HessianSummary> {
    check_config(cfg)?;
    run_in(cfg, opts, &SingleProcess)
}

/// Runs `bergson hessian` as one rank of `job` (a job of one: [`run`]). Every rank takes its
/// share of the batches (bins `r, r+W, ...`, as `bergson build`); the factor sums, position
/// counts and EK-FAC's corrections are summed over the ranks, each module is eigendecomposed
/// by one rank (Bergson's `assign_module_owners`) and shared, and every rank writes its row
/// shard of each store (`shard_<rank>.safetensors`, Bergson's layout). Rank 0 writes the rest
/// and renames `<run_path>.part` once every rank succeeded.
pub fn run_in(
    cfg: &HessianRunConfig,
    opts: &RunOptions,
    job: &dyn Collective,
) -> Result<HessianSummary> {
    let start = Instant::now();
    let (hcfg, icfg) = (&cfg.hessian_cfg, &cfg.index_cfg);
    let lead = job.rank() == 0;
    let step = Step::Hessian(Box::new(cfg.clone()));
    // Rank 0 alone checks and prepares the run directory; every rank loads data and model.
    let loaded = (|| -> Result<_> {
        crate::dist::launch::check_config(&icfg.distributed)?;
        let mut local = cfg.clone();
        local.index_cfg.distributed = Default::default();
        check_config(&local)?;
        if hcfg.method == HessianMethod::Autocorrelation && icfg.projection_dim == 0 && lead {
            tracing::warn!(
                "computing an autocorrelation (dense) Hessian with --projection_dim 0 \
                 (uncompressed gradients); this scales quadratically with the gradient \
                 dimension. Set --projection_dim (e.g. 16) unless this is intentional"
            );
        }
        // Nothing resumes a fit: a `.part` of the same config has no journal and starts over.
        let (run_path, part) = if lead {
            let (run_path, part, _) = run_dir::prepare(&step, icfg.overwrite)?;
            (run_path, part)
        } else {
            (
                PathBuf::from(step.run_path()),
                PathBuf::from(format!("{}.part", step.run_path())),
            )
        };
        let (tokenizer, model_dir, max_positions) = setup::load_tokenizer(icfg)?;
        let data = prepare_data(icfg, &tokenizer, max_positions)?;
        let model = setup::load_model(icfg, &model_dir, opts.device)?;
        if data.rows.iter().all(|r| r.len() < 2) {
            return Err(Error::input(
                "every document has fewer than 2 tokens, so none has a next-token loss to fit a Hessian on; check that --prompt_column (or --completion_column / --conversation_column) names the column holding the text, and drop empty rows",
            ));
        }
        if lead {
            run_dir::create_part(&part)?;
            let path = part.join("config.yaml");
            std::fs::write(&path, config_yaml(&step, chrono::Utc::now())?).at_path(&path)?;
        }
        Ok((run_path, part, data, model))
    })();
    let (run_path, part, data, model) = together(job, loaded)?;
    let model: &dyn CausalLm = &*model;

    let documents = data.rows.len();
    let (positions, modules) = if hcfg.method == HessianMethod::Autocorrelation {
        fit_dense(icfg, model, &data, &part, opts, job)?
    } else {
        fit_factored(cfg, model, &data.rows, &part, job)?
    };
    let finished = (|| -> Result<()> {
        if lead {
            store::write_total_processed(&part, positions)?;
            interrupt::check()?;
            run_dir::finish(&part, &run_path)?;
        }
        Ok(())
    })();
    together(job, finished)?;
    Ok(HessianSummary {
        run_path,
        method: hcfg.method,
        documents,
        positions,
        modules,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The autocorrelation fit: every rank's Grams over its batches, summed onto rank 0, which
/// writes them with the processor. Returns the positions and Gram count.
fn fit_dense(
    icfg: &crate::config::IndexConfig,
    model: &dyn CausalLm,
    data: &crate::data::pipeline::PreparedData,
    part: &Path,
    opts: &RunOptions,
    job: &dyn Collective,
) -> Result<(i64, usize)> {
    let documents = data.rows.len();
    let docs = Documents {
        rows: &data.rows,
        advantages: data.advantages.as_deref(),
    };
    let local = (|| -> Result<_> {
        let processor = setup::create_processor(icfg, model)?;
        let mut collect_cfg = CollectConfig::from_index_config(icfg);
        collect_cfg.world_size = job.world_size();
        collect_cfg.rank = job.rank();
        let collection = Collection::new(model, docs, &processor, &collect_cfg)?;
        let global = icfg.projection_target == ProjectionTarget::Global && icfg.projection_dim > 0;
        let grams = autocorrelation::accumulate(&collection, docs, global, opts.device)?;
        Ok((processor, grams))
    })();
    let (processor, mut grams) = together(job, local)?;
    grams.all_reduce(job)?;
    let keys = grams.len();
    let written = (|| -> Result<_> {
        if job.rank() != 0 {
            return Ok(grams.positions);
        }
        let num_rows = if icfg.attribute_tokens {
            data.rows.iter().map(|r| r.len().saturating_sub(1)).sum()
        } else {
            documents
        };
        let positions = grams.positions;
        let fitted = grams.finish(num_rows)?;
        processor.save(part)?;
        store::write_dense_hessians(part, &fitted.hessians, &fitted.eigen)?;
        Ok(positions)
    })();
    let positions = together(job, written)?;
    Ok((positions, keys))
}

/// Bergson's `partition_modules`: `n` contiguous groups of near-equal size (the first ones one
/// larger), at most one per module.
pub fn partition_modules(targets: Vec<Target>, n: usize) -> Vec<Vec<Target>> {
    let n = n.clamp(1, targets.len().max(1));
    let (size, extra) = (targets.len() / n, targets.len() % n);
    let mut rest = targets.into_iter();
    (0..n)
        .map(|i| rest.by_ref().take(size + usize::from(i < extra)).collect())
        .collect()
}

/// Most bytes of final-hidden-state gradients kept between EK-FAC's two passes.
const HEAD_GRAD_CACHE_BYTES: usize = 2 << 30;

/// The stores of a factored fit, gathered over module groups.
#[derive(Default)]
struct Stores {
    activation: Vec<(String, tch::Tensor)>,
    gradient: Vec<(String, tch::Tensor)>,
    eigen_activation: Vec<(String, tch::Tensor)>,
    eigen_gradient: Vec<(String, tch::Tensor)>,
    eigenvalue: Vec<(String, tch::Tensor)>,
    factor_eig_a: Vec<(String, tch::Tensor)>,
    factor_eig_g: Vec<(String, tch::Tensor)>,
    correction: Vec<(String, tch::Tensor)>,
}

/// Bergson's `assign_module_owners`: each module's eigendecompositions go to one rank, largest
/// module first (by `(I+bias)² + O²` elements, then name) onto the rank holding the fewest
/// elements so far (the lowest such rank). Every rank computes the same owners; they are
/// returned in the order of `targets`.
pub fn assign_module_owners(targets: &[Target], world_size: usize) -> Vec<usize> {
    let numel = |t: &Target| {
        let width = t.in_features + i64::from(t.collect_bias);
        width * width + t.out_features * t.out_features
    };
    let mut order: Vec<usize> = (0..targets.len()).collect();
    order.sort_by(|&a, &b| {
        numel(&targets[b])
            .cmp(&numel(&targets[a]))
            .then_with(|| targets[a].name.cmp(&targets[b].name))
    });
    let mut load = vec![0i64; world_size.max(1)];
    let mut owners = vec![0; targets.len()];
    for i in order {
        let owner = (0..load.len()).min_by_key(|&r| (load[r], r)).unwrap_or(0);
        owners[i] = owner;
        load[owner] += numel(&targets[i]);
    }
    owners
}

/// The factored fit: for each module group, the factor pass, the eigendecompositions and (EK-FAC)
/// the correction pass; then every store is written (this rank's row shards). Returns the
/// positions and module count.
///
/// Each phase runs on this rank alone and ends in [`together`], so that every rank reaches the
/// collectives that follow it (or learns that another failed) in the same order.
fn fit_factored(
    cfg: &HessianRunConfig,
    model: &dyn CausalLm,
    rows: &[TokenizedRow],
    part: &Path,
    job: &dyn Collective,
) -> Result<(i64, usize)> {
    let (hcfg, icfg) = (&cfg.hessian_cfg, &cfg.index_cfg);
    let kind = hcfg.hessian_dtype.kind();
    let device = model.device();
    let (rank, world) = (job.rank(), job.world_size());
    let planned = (|| -> Result<_> {
        let targets = discover_targets(
            &model.linear_modules(),
            &icfg.modules,
            icfg.filter_modules.as_deref(),
            icfg.include_bias,
        )?;
        let lengths: Vec<usize> = rows.iter().map(TokenizedRow::len).collect();
        let batches =
            allocate_batches(&lengths, icfg.token_batch_size, icfg.max_batch_size, world)?
                .swap_remove(rank);
        Ok((targets, batches))
    })();
    let (targets, batches) = together(job, planned)?;
    let num_modules = targets.len();
    let loss = HessianLoss {
        loss_fn: icfg.loss_fn,
        reduction: icfg.loss_reduction,
        logit_scale: icfg.logit_scale,
    };
    let sampler = (!hcfg.use_dataset_labels).then(LabelSampler::default);
    let num_documents = rows.len();
    let groups = partition_modules(targets, hcfg.module_partitions as usize);
    let num_groups = groups.len();
    let mut stores = Stores::default();
    let mut total = 0i64;
    for (i, group) in groups.into_iter().enumerate() {
        if num_groups > 1 && rank == 0 {
            tracing::info!(
                "fitting module partition {}/{num_groups} ({} modules)",
                i + 1,
                group.len()
            );
        }
        // This rank's batches: the factor sums and, for EK-FAC, each batch's gradient at the
        // final hidden states (on the CPU, up to HEAD_GRAD_CACHE_BYTES), so that the second
        // pass, which sees the same losses, skips the LM head.
        let local = (|| -> Result<_> {
            let capture = HessianCapture::new(model, &group, loss)?;
            let mut factors = FactorAccumulator::new(hcfg.method, &group, kind, device)?;
            let mut positions = 0i64;
            let mut head_grads: Vec<Option<tch::Tensor>> = Vec::with_capacity(batches.len());
            let mut cached_bytes = 0usize;
            let mut phase = Phase::new(
                "fitting Hessian factors",
                "batches",
                Some(batches.len() as u64),
            );
            for batch in &batches {
                interrupt::check()?;
                let b = capture.run_batch(rows, batch, sampler.as_ref(), None)?;
                positions += b.positions;
                factors.add(&b)?;
                let grad = match &b.head_grad {
                    Some(g) if hcfg.ev_correction => {
                        let bytes = g.numel() * g.kind().elt_size_in_bytes();
                        (cached_bytes + bytes <= HEAD_GRAD_CACHE_BYTES)
                            .then(|| {
                                cached_bytes += bytes;
                                g.f_to_device(tch::Device::Cpu)
                            })
                            .transpose()?
                    }
                    _ => None,
                };
                head_grads.push(grad);
                phase.inc(1);
            }
            phase.finish();
            Ok((capture, factors, positions, head_grads))
        })();
        let (capture, mut factors, mut positions, head_grads) = together(job, local)?;
        factors.all_reduce(job)?;
        if world > 1 {
            let mut p = tch::Tensor::from_slice(&[positions]);
            job.all_reduce(&mut p, ReduceOp::Sum)?;
            positions = p.f_int64_value(&[0])?;
        }
        total = positions;
        let factors = factors.finish()?;

        // Each module's eigendecompositions on its owner, then shared with every rank.
        let owners = assign_module_owners(&group, world);
        let decomposed = (|| -> Result<Vec<Option<(Eigen, Eigen)>>> {
            let mut out = Vec::with_capacity(group.len());
            for (((name, a), (_, s)), &owner) in factors
                .activation
                .iter()
                .zip(&factors.gradient)
                .zip(&owners)
            {
                interrupt::check()?;
                out.push(if owner == rank {
                    Some((
                        eigen::eigh_mean(name, a, positions, kind)?,
                        eigen::eigh_mean(name, s, positions, kind)?,
                    ))
                } else {
                    None
                });
            }
            Ok(out)
        })();
        let decomposed = together(job, decomposed)?;

        let mut bases = Vec::with_capacity(group.len());
        for ((((name, a), (_, s)), target), (mine, &owner)) in factors
            .activation
            .into_iter()
            .zip(factors.gradient)
            .zip(&group)
            .zip(decomposed.into_iter().zip(&owners))
        {
            let (ea, eg) = match mine {
                Some(pair) => pair,
                None => (
                    Eigen::zeros(
                        target.in_features + i64::from(target.collect_bias),
                        kind,
                        device,
                    )?,
                    Eigen::zeros(target.out_features, kind, device)?,
                ),
            };
            let (ea, eg) = (ea.shared(job, owner)?, eg.shared(job, owner)?);
            let (grid, fa, fg) =
                eigen::uncorrected(&eg.values, &ea.values, positions, num_documents)?;
            // Finished stores wait on the CPU, so that only the factors of the module being
            // decomposed and the eigenvectors the correction pass needs stay on the device.
            let cpu = |t: &tch::Tensor| t.f_to_device(tch::Device::Cpu);
            stores.eigenvalue.push((name.clone(), cpu(&grid)?));
            stores.factor_eig_a.push((name.clone(), cpu(&fa)?));
            stores.factor_eig_g.push((name.clone(), cpu(&fg)?));
            stores
                .eigen_activation
                .push((name.clone(), cpu(&ea.vectors)?));
            stores
                .eigen_gradient
                .push((name.clone(), cpu(&eg.vectors)?));
            stores.activation.push((name.clone(), cpu(&a)?));
            stores.gradient.push((name.clone(), cpu(&s)?));
            if hcfg.ev_correction {
                bases.push((name, target.collect_bias, ea.vectors, eg.vectors));
            }
        }

        if hcfg.ev_correction {
            let local = (|| -> Result<_> {
                let mut correction = EigenvalueCorrection::new(bases, kind)?;
                let mut phase = Phase::new(
                    "fitting EK-FAC eigenvalue corrections",
                    "batches",
                    Some(batches.len() as u64),
                );
                for (batch, grad) in batches.iter().zip(&head_grads) {
                    interrupt::check()?;
                    let b = capture.run_batch(rows, batch, sampler.as_ref(), grad.as_ref())?;
                    correction.add(&b)?;
                    phase.inc(1);
                }
                phase.finish();
                Ok(correction)
            })();
            let mut correction = together(job, local)?;
            correction.all_reduce(job)?;
            stores.correction.extend(correction.finish(num_documents)?);
        }
    }

    let written = (|| -> Result<()> {
        for (name, tensors) in [
            (store::ACTIVATION, &stores.activation),
            (store::GRADIENT, &stores.gradient),
            (store::EIGEN_ACTIVATION, &stores.eigen_activation),
            (store::EIGEN_GRADIENT, &stores.eigen_gradient),
            (store::EIGENVALUE, &stores.eigenvalue),
            (store::FACTOR_EIG_A, &stores.factor_eig_a),
            (store::FACTOR_EIG_G, &stores.factor_eig_g),
        ] {
            write_store_shard(part, name, tensors, rank, world)?;
        }
        if hcfg.ev_correction {
            write_store_shard(
                part,
                store::EIGENVALUE_CORRECTION,
                &stores.correction,
                rank,
                world,
            )?;
        }
        Ok(())
    })();
    together(job, written)?;
    Ok((total, num_modules))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str) -> Target {
        Target {
            name: name.into(),
            in_features: 2,
            out_features: 2,
            collect_bias: false,
            heads: None,
        }
    }

    #[test]
    fn partitions_are_contiguous_and_near_equal_as_bergsons() {
        let names = |groups: Vec<Vec<Target>>| -> Vec<Vec<String>> {
            groups
                .into_iter()
                .map(|g| g.into_iter().map(|t| t.name).collect())
                .collect()
        };
        let ts: Vec<Target> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| target(n))
            .collect();
        assert_eq!(
            names(partition_modules(ts.clone(), 2)),
            vec![vec!["a", "b", "c"], vec!["d", "e"]]
        );
        assert_eq!(names(partition_modules(ts.clone(), 9)).len(), 5);
        assert_eq!(names(partition_modules(ts, 1)).len(), 1);
    }
}
