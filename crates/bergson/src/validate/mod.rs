//! `bergson validate`: leave-k-out validation of attribution scores, as Python Bergson 2.5.1's
//! `Validate` command runs it (`run_magic(..., validate=True)` then
//! `validate.py::validate_scores`):
//!
//! 1. read the scores loss-signed ([`scores`]: negative = proponent);
//! 2. **train the baseline** exactly as the run that was scored (same data order, schedule,
//!    checkpoints; or load `--baseline_model`), and measure its query loss;
//! 3. **retrain** from the initial model with some documents' data weights changed, for each
//!    unit of the method, and measure the query loss again:
//!    * `lds` ([`lds`]): leave-k-out subsets ([`subsets`]), the loss change correlated with the
//!      subsets' summed scores (Spearman and Pearson, [`stats`]);
//!    * `filter` ([`filter`]): the top proponents (or detractors) of each query removed,
//!      against random removals of as many documents;
//!    * `weight_step` ([`weight_step`]): weights `1 - lr * score`, against the first-order
//!      prediction.
//!
//! Every retrain's result is journaled as soon as it ends ([`journal`]), so `--resume`
//! continues a killed validation at the next retrain; the final CSVs are written atomically.
//!
//! ```text
//! <run_path>/config.yaml                    the run config (steps: [{validate: ...}])
//! <run_path>/checkpoints/                   the baseline training's checkpoints
//! <run_path>/subsets.json                   lds: the subsets (document ids), as Bergson
//! <run_path>/validation.csv, summary.csv    lds (validation_{start}_{stop}.csv when sliced)
//! <run_path>/bootstrap.csv                  lds: 95% bootstrap intervals (bergson-rs only)
//! <run_path>/filter_{direction}.csv         filter, + random_filter.csv, filter_summary.csv
//! <run_path>/weight_step.csv                weight_step
//! <run_path>/retrained/{base,subset_i}/     --save_models (what `--subsets bank` reads, [`bank`])
//! ```

pub mod bank;
pub mod filter;
pub mod journal;
pub mod lds;
pub mod loss;
pub mod scores;
pub mod stats;
pub mod subsets;
pub mod weight_step;

use crate::config::{
    Aggregation, ControlsKind, SubsetSource, TrainingConfig, ValidateConfig, ValidationMethod,
};
use crate::data::tokenize::TokenizedRow;
use crate::magic::prepare_rows;
use crate::train::run::{save_hf_model, write_run_config};
use crate::train::{prepare_training, TrainerState, TrainingRun, WeightChoice};
use crate::{Error, Result};
use scores::LossSignedScores;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// What a validation produced.
#[derive(Debug)]
pub struct ValidateSummary {
    /// The run directory.
    pub run_path: PathBuf,
    /// The files written.
    pub outputs: Vec<PathBuf>,
    /// The result in a few lines (Bergson's printed report).
    pub report: Vec<String>,
}

/// Refuses what `validate` cannot run, before anything is written.
pub fn check_validate_config(c: &ValidateConfig) -> Result<()> {
    if c.train.run_path.is_empty() {
        return Err(Error::input(
            "give the run directory: bergson validate <run_path> --scores <dir> ...",
        ));
    }
    if c.scores.is_empty() {
        return Err(Error::input(
            "--scores is required: the score directory to validate (magic's <run>/scores, or a score run)",
        ));
    }
    if c.ckpt_avg_k != 1 {
        return Err(Error::input(
            "--ckpt_avg_k other than 1 is not supported by bergson validate yet; drop it",
        ));
    }
    if !c.query.path.is_empty() {
        return Err(Error::input(
            "--path (an existing query index) does not apply to bergson validate, which measures the query loss itself; give --query.dataset",
        ));
    }
    if !c.subset_weight.is_finite() {
        return Err(Error::input("--subset_weight must be a finite number"));
    }
    match c.method {
        ValidationMethod::Lds => {
            if c.count() == Some(0) {
                return Err(Error::input("--count must be at least 1"));
            }
            let f = c.fraction();
            if !(0.0..=1.0).contains(&f) {
                return Err(Error::input(format!(
                    "--fraction {f} must be in [0, 1] (0: partition the documents into --count subsets)"
                )));
            }
            if c.stop.is_some_and(|s| s <= c.start) {
                return Err(Error::input(format!(
                    "LDS requires 0 <= start < stop; got --start {} --stop {}",
                    c.start,
                    c.stop.unwrap_or_default()
                )));
            }
        }
        ValidationMethod::Filter => {
            let f = c.fraction();
            if !(f > 0.0 && f <= 1.0) {
                return Err(Error::input(format!(
                    "--fraction {f}: the filter fraction must be in (0, 1]"
                )));
            }
            if c.controls == ControlsKind::Bank && c.paths.is_empty() {
                return Err(Error::input(
                    "--controls bank needs --paths: run directories written by validate with --save_models",
                ));
            }
        }
        ValidationMethod::WeightStep => {
            if c.lrs.is_empty() || c.lrs.iter().any(|l| !l.is_finite()) {
                return Err(Error::input(
                    "weight_step requires at least one finite --lrs value",
                ));
            }
        }
    }
    Ok(())
}

/// A validation in progress: the training run every retrain repeats, the query set, the
/// scores and the baseline.
pub struct Validation<'a> {
    /// The config.
    pub config: &'a ValidateConfig,
    /// The prepared training run (its stream's weights are set per retrain).
    pub run: TrainingRun,
    /// The scores under validation.
    pub scores: LossSignedScores,
    /// The query set.
    pub query_rows: Vec<TokenizedRow>,
    /// The contrast set, whose loss is subtracted (single query).
    pub contrast_rows: Option<Vec<TokenizedRow>>,
    /// The baseline's query loss (Bergson's `baseline`: the summed token loss with
    /// `--aggregation sum`, else the mean; minus the contrast's).
    pub baseline: f64,
    /// The baseline's per-document query losses (multi-query scores).
    pub baseline_per_doc: Vec<f64>,
    /// The stream's weights before any change (ones, zero for padding).
    base_weights: Tensor,
    pub(crate) device: Device,
}

impl Validation<'_> {
    /// The run directory.
    pub fn run_path(&self) -> &Path {
        &self.run.run
    }

    /// Query columns the method reports on: the query documents, or 1.
    pub fn num_queries(&self) -> usize {
        if self.scores.multi_query() {
            self.scores.num_queries
        } else {
            1
        }
    }

    /// The baseline's losses per reported query.
    pub fn baseline_losses(&self) -> Vec<f64> {
        if self.scores.multi_query() {
            self.baseline_per_doc.clone()
        } else {
            vec![self.baseline]
        }
    }

    /// Each of score units `units` (a document id, or a per-token grid cell
    /// `doc * seq_len + t`) with its flat index into the stream's weights. Cells past a row's
    /// weight width (none when the widths agree, as in Bergson) are dropped.
    fn weight_cells(&self, units: &[usize]) -> Vec<(usize, i64)> {
        let size = self.base_weights.size();
        match (self.scores.seq_len, size.as_slice()) {
            (Some(s), [_, w]) => units
                .iter()
                .filter(|&&u| ((u % s) as i64) < *w)
                .map(|&u| (u, (u / s) as i64 * w + (u % s) as i64))
                .collect(),
            _ => units.iter().map(|&u| (u, u as i64)).collect(),
        }
    }

    /// Retrains from the initial model with the data weights `weights` (flat, the stream's
    /// shape), without checkpoints. Returns the final state.
    fn retrain_with(&mut self, weights: Tensor) -> Result<TrainerState> {
        let shape = self.base_weights.size();
        self.run
            .stream
            .set_weights(weights.reshape(shape.as_slice()))?;
        let state = self.run.initial.detach();
        self.run
            .trainer
            .train(state, &self.run.stream, |_| Ok(()), |_, _| Ok(()))
    }

    /// Retrains with the units `units` weighted `--subset_weight` (the rest 1).
    pub fn retrain_without(&mut self, units: &[usize]) -> Result<TrainerState> {
        let mut w = self.base_weights.copy().reshape([-1]);
        let idx: Vec<i64> = self.weight_cells(units).iter().map(|c| c.1).collect();
        if !idx.is_empty() {
            let idx = Tensor::from_slice(&idx).to(self.device);
            let _ = w.index_fill_(0, &idx, self.config.subset_weight);
        }
        self.retrain_with(w)
    }

    /// Retrains with each unit `u`'s weight lowered by `step[u]` (weight_step).
    pub fn retrain_stepped(&mut self, step: &[f64]) -> Result<TrainerState> {
        let mut w = self.base_weights.copy().reshape([-1]);
        let units: Vec<usize> = (0..step.len()).collect();
        let (kept, idx): (Vec<f64>, Vec<i64>) = self
            .weight_cells(&units)
            .into_iter()
            .map(|(u, i)| (step[u], i))
            .unzip();
        if !idx.is_empty() {
            let idx = Tensor::from_slice(&idx).to(self.device);
            let delta = Tensor::from_slice(&kept).to_kind(w.kind()).to(self.device);
            let _ = w.index_add_(0, &idx, &(-delta));
        }
        self.retrain_with(w)
    }

    /// The query losses of `params`, one per reported query: per query document
    /// (multi-query scores) or the mean query loss (minus the contrast's).
    pub fn query_losses(&self, params: &[Tensor]) -> Result<Vec<f64>> {
        let c = &self.config.train;
        let trainer = &self.run.trainer;
        if self.scores.multi_query() {
            return loss::per_document_query_losses(
                trainer,
                params,
                &self.query_rows,
                c.batch_size,
                self.device,
            );
        }
        let mut l = loss::mean_query_loss(
            trainer,
            params,
            &self.query_rows,
            c.batch_size,
            c.grad_accum_steps,
            self.device,
        )?;
        if let Some(rows) = &self.contrast_rows {
            l -= loss::mean_query_loss(
                trainer,
                params,
                rows,
                c.batch_size,
                c.grad_accum_steps,
                self.device,
            )?;
        }
        Ok(vec![l])
    }

    /// Saves `params` as `<run>/retrained/<name>` (`--save_models`).
    pub fn save_model(&self, name: &str, params: &[Tensor]) -> Result<()> {
        if !self.config.train.save_models {
            return Ok(());
        }
        let out = self.run.run.join("retrained").join(name);
        save_hf_model(&self.run.model_dir, &out, &self.run.names, params)
    }
}

/// Runs `bergson validate` with config `c` on `device`.
pub fn validate(c: &ValidateConfig, device: Device) -> Result<ValidateSummary> {
    crate::train::run::check_run_path(&c.train, "validate")?;
    check_validate_config(c)?;
    if c.method == ValidationMethod::Lds && c.subsets == SubsetSource::Bank {
        return bank::run_bank(c, device);
    }
    let mut v = prepare_validation(c, device)?;
    let (outputs, report) = match c.method {
        ValidationMethod::Lds => lds::run_lds(&mut v)?,
        ValidationMethod::Filter => filter::run_filter(&mut v)?,
        ValidationMethod::WeightStep => weight_step::run_weight_step(&mut v)?,
    };
    Ok(ValidateSummary {
        run_path: v.run.run.clone(),
        outputs,
        report,
    })
}

/// Prepares the retraining of a validation: the run directory, the training run, the query
/// set and the baseline (trained as the scored run was, or `--baseline_model`), without
/// retraining anything yet. The leaderboard drives its own retrains through it.
pub fn prepare_validation(c: &ValidateConfig, device: Device) -> Result<Validation<'_>> {
    check_validate_config(c)?;
    let scores = LossSignedScores::load(Path::new(&c.scores))?;
    let weights = if scores.seq_len.is_some() {
        WeightChoice::PerToken
    } else {
        WeightChoice::PerDocument
    };
    let yaml = c.to_yaml_value();
    let run = prepare_training(&c.train, device, weights, |dir| {
        write_run_config(dir, "validate", &yaml)
    })?;
    let real_docs = run.stream.num_docs - usize::from(run.stream.padding.num_rows > 0);
    if scores.num_docs != real_docs {
        return Err(Error::input(format!(
            "--scores {} scores {} documents but the training set has {real_docs}; validate the scores with the training data they were computed on",
            c.scores, scores.num_docs
        )));
    }
    let query_rows = prepare_rows(&run, &c.train, c.query.data.clone(), "query")?;
    if query_rows.is_empty() {
        return Err(Error::input(
            "the query dataset has no rows; check --query.dataset and --query.split",
        ));
    }
    if scores.multi_query() && scores.num_queries != query_rows.len() {
        return Err(Error::input(format!(
            "--scores has {} query columns but the query dataset has {} documents; multi-query validation requires one score column per query document",
            scores.num_queries,
            query_rows.len()
        )));
    }
    let contrast_rows = match c.query.contrast.clone() {
        Some(d) => Some(prepare_rows(&run, &c.train, d, "contrast")?),
        None => None,
    };

    // The baseline: the scored run's training, repeated (or the given model).
    let baseline_params = if c.baseline_model.is_empty() {
        let train_cfg = TrainingConfig {
            save_models: false,
            ..c.train.clone()
        };
        run.train(&train_cfg)?.0.params
    } else {
        bank::load_params(&run.names, &c.train, Path::new(&c.baseline_model), device)?
    };
    let base_weights = run.stream.weights.detach().to_kind(Kind::Float).copy();
    let mut v = Validation {
        config: c,
        run,
        scores,
        query_rows,
        contrast_rows,
        baseline: 0.0,
        baseline_per_doc: Vec::new(),
        base_weights,
        device,
    };
    let trails_slice = c.method == ValidationMethod::Lds && c.start != 0;
    if !trails_slice {
        v.save_model("base", &baseline_params)?;
    }
    let (total, tokens) = loss::query_loss_total(
        &v.run.trainer,
        &baseline_params,
        &v.query_rows,
        c.train.batch_size,
        c.train.grad_accum_steps,
        device,
    )?;
    v.baseline = if c.query.aggregation == Aggregation::Sum {
        total
    } else {
        total / tokens
    };
    if let Some(rows) = &v.contrast_rows {
        let (t, n) = loss::query_loss_total(
            &v.run.trainer,
            &baseline_params,
            rows,
            c.train.batch_size,
            c.train.grad_accum_steps,
            device,
        )?;
        v.baseline -= if c.query.aggregation == Aggregation::Sum {
            t
        } else {
            t / n
        };
    }
    if v.scores.multi_query() {
        v.baseline_per_doc = loss::per_document_query_losses(
            &v.run.trainer,
            &baseline_params,
            &v.query_rows,
            c.train.batch_size,
            device,
        )?;
    }
    drop(baseline_params);
    tracing::info!("baseline query loss: {}", v.baseline);
    Ok(v)
}
