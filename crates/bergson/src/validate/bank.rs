//! `--method lds --subsets bank`: the LDS of scores against a bank of models retrained earlier
//! (`--save_models`), without training, as Python Bergson 2.5.1's `evaluate_retrained` does:
//! the subsets come from the first bank's `subsets.json`, every banked model
//! (`<bank>/retrained/subset_<i>`, and `retrained/base` for the baseline, 0 without it: the
//! correlation does not change) is loaded and its query loss measured, averaged over the
//! `--paths` banks, and correlated with the scores as the retraining LDS is. Bergson caches the
//! losses per bank (`query_loss_cache/*.pt`); bergson-rs recomputes them.

use super::lds::{write_lds_outputs, SubsetResult};
use super::loss;
use super::scores::LossSignedScores;
use super::subsets::read_subsets;
use super::ValidateSummary;
use crate::config::ValidateConfig;
use crate::data::pipeline::prepare_data;
use crate::data::tokenize::TokenizedRow;
use crate::models::ModelSpec;
use crate::setup::load_tokenizer;
use crate::train::run::{index_config, prepare_run_dir, write_run_config};
use crate::train::{LrSchedule, Optimizer, StepSettings, Trainer};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// The parameters of the model in `dir`, in the order of `names`.
pub fn load_params(
    names: &[String],
    c: &crate::config::TrainingConfig,
    dir: &Path,
    device: Device,
) -> Result<Vec<Tensor>> {
    let precision = crate::setup::resolve_precision(c.precision, dir)?;
    let spec = ModelSpec::from_dir(dir, precision, device)?
        .with_model_kwargs(&crate::train::run::training_model_kwargs(&c.model_kwargs)?);
    let model = spec.load(dir)?;
    let mut named: std::collections::HashMap<String, Tensor> =
        model.named_parameters().into_iter().collect();
    names
        .iter()
        .map(|n| {
            named.remove(n).map(|t| t.detach().copy()).ok_or_else(|| {
                Error::input(format!(
                    "{}: has no parameter {n}; it must be the same architecture as --model",
                    dir.display()
                ))
            })
        })
        .collect()
}

/// The query losses of every banked model averaged over `banks`: the baselines
/// (`retrained/base`, zeros where a bank has none) and each of the first `n` subsets'
/// (`retrained/subset_<i>`), `nq` per model, measured by `losses_of(model dir)`.
pub fn average_bank_losses(
    banks: &[PathBuf],
    n: usize,
    nq: usize,
    mut losses_of: impl FnMut(&Path) -> Result<Vec<f64>>,
) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
    let mut baseline = vec![0.0; nq];
    let mut per_subset = vec![vec![0.0; nq]; n];
    let mut phase =
        crate::progress::Phase::new("Evaluating bank", "models", Some((banks.len() * n) as u64));
    let share = 1.0 / banks.len() as f64;
    for bank in banks {
        let root = bank.join("retrained");
        let base = root.join("base");
        if base.is_dir() {
            for (b, l) in baseline.iter_mut().zip(losses_of(&base)?) {
                *b += l * share;
            }
        }
        for (i, acc) in per_subset.iter_mut().enumerate() {
            let dir = root.join(format!("subset_{i}"));
            if !dir.is_dir() {
                return Err(Error::input(format!(
                    "{} is missing; the bank lists {n} subsets but not all were retrained and saved",
                    dir.display()
                )));
            }
            for (a, l) in acc.iter_mut().zip(losses_of(&dir)?) {
                *a += l * share;
            }
            phase.inc(1);
        }
    }
    Ok((baseline, per_subset))
}

/// The subsets of the banks in `dirs` for random controls of `k` documents (Bergson's
/// `load_and_validate_subsets_match`): every bank written with `--save_models` (it has
/// `retrained/base`), all with the same `subsets.json`, of sizes within one of `k`, and
/// written with this run's `model`, `subset_weight` and `exclude_zero_scores`.
pub fn control_bank_subsets(
    c: &ValidateConfig,
    dirs: &[PathBuf],
    k: usize,
) -> Result<Vec<Vec<usize>>> {
    let mut first: Option<Vec<Vec<usize>>> = None;
    for d in dirs {
        if !d.join("retrained").join("base").is_dir() {
            return Err(Error::input(format!(
                "retrain bank {} is not valid: no retrained/base (write banks with --save_models)",
                d.display()
            )));
        }
        let subsets = read_subsets(&d.join("subsets.json"))?;
        if first.as_ref().is_some_and(|f| f != &subsets) {
            return Err(Error::input(format!(
                "bank {} doesn't match the others (different subsets.json)",
                d.display()
            )));
        }
        if subsets.iter().any(|s| s.len().abs_diff(k) > 1) {
            let mut sizes: Vec<usize> = subsets.iter().map(Vec::len).collect();
            sizes.sort_unstable();
            sizes.dedup();
            return Err(Error::input(format!(
                "{} removes {sizes:?} docs per subset but the filter removes {k}; set --fraction to match",
                d.display()
            )));
        }
        let ours = [
            ("model", serde_json::json!(c.train.model)),
            ("subset_weight", serde_json::json!(c.subset_weight)),
            (
                "exclude_zero_scores",
                serde_json::json!(c.exclude_zero_scores),
            ),
        ];
        for (field, value) in ours {
            let theirs = crate::config::run_file::load_subconfig::<serde_json::Value>(d, field)?;
            if let Some(t) = theirs.filter(|t| {
                t != &value && t.as_f64().zip(value.as_f64()).is_none_or(|(a, b)| a != b)
            }) {
                return Err(Error::input(format!(
                    "{} was written with {field}={t} but this run uses {value}; the bank is not a comparable baseline",
                    d.display()
                )));
            }
        }
        first = Some(subsets);
    }
    first.ok_or_else(|| {
        Error::input("--controls bank needs --paths: run directories written with --save_models")
    })
}

/// Runs the bank LDS.
pub fn run_bank(c: &ValidateConfig, device: Device) -> Result<ValidateSummary> {
    if c.paths.is_empty() {
        return Err(Error::input(
            "--subsets bank needs --paths: run directories written by validate with --save_models",
        ));
    }
    let banks: Vec<PathBuf> = c.paths.iter().map(PathBuf::from).collect();
    let manifest = banks[0].join("subsets.json");
    if !manifest.is_file() {
        return Err(Error::input(format!(
            "{} not found; --paths must point at run directories written with --save_models",
            manifest.display()
        )));
    }
    let subsets = read_subsets(&manifest)?;
    for b in &banks[1..] {
        if read_subsets(&b.join("subsets.json")).ok().as_ref() != Some(&subsets) {
            return Err(Error::input(format!(
                "bank {} does not hold the subsets of {}; banks averaged together must share subsets.json",
                b.display(),
                banks[0].display()
            )));
        }
    }
    let scores = LossSignedScores::load(Path::new(&c.scores))?;
    if scores.seq_len.is_some() {
        return Err(Error::input(
            "--subsets bank validates per-document scores; these are per-token",
        ));
    }
    let units = scores.num_units();
    if let Some(bad) = subsets.iter().flatten().find(|&&u| u >= units) {
        return Err(Error::input(format!(
            "subsets.json references doc id {bad} but the scores have only {units} entries; the query must be scored against the same training set and seed used to build the bank"
        )));
    }

    let run = prepare_run_dir(&c.train)?;
    write_run_config(&run, "validate", &c.to_yaml_value())?;
    let mut icfg = index_config(&c.train);
    let (tokenizer, model_dir, max_positions) = load_tokenizer(&icfg)?;
    icfg.data = c.query.data.clone();
    let query_rows = prepare_data(&icfg, &tokenizer, max_positions)?.rows;
    let contrast_rows: Option<Vec<TokenizedRow>> = match &c.query.contrast {
        Some(d) => {
            icfg.data = d.clone();
            Some(prepare_data(&icfg, &tokenizer, max_positions)?.rows)
        }
        None => None,
    };
    if query_rows.is_empty() {
        return Err(Error::input(
            "the query dataset has no rows; check --query.dataset and --query.split",
        ));
    }
    let multi = scores.multi_query();
    if multi && scores.num_queries != query_rows.len() {
        return Err(Error::input(format!(
            "--scores has {} query columns but the query dataset has {} documents; multi-query validation requires one score column per query document",
            scores.num_queries,
            query_rows.len()
        )));
    }

    // A trainer only to run the model on loaded parameters.
    let t = &c.train;
    let precision = crate::setup::resolve_precision(t.precision, &model_dir)?;
    let spec = ModelSpec::from_dir(&model_dir, precision, device)?
        .with_model_kwargs(&crate::train::run::training_model_kwargs(&t.model_kwargs)?);
    let model = spec.load(&model_dir)?;
    let optimizer = Optimizer {
        kind: t.optimizer,
        beta1: t.adam_beta1,
        beta2: t.adam_beta2,
        eps: t.adam_eps,
        eps_root: t.eps_root,
        weight_decay: t.weight_decay,
        schedule: LrSchedule::new(&t.lr_schedule, 1),
    };
    let settings = StepSettings {
        reduction: t.loss_reduction,
        max_grad_norm: t.max_grad_norm,
        grad_accum_steps: t.grad_accum_steps,
        logit_scale: t.logit_scale,
    };
    let (trainer, _) = Trainer::new(spec, model.as_ref(), optimizer, settings)?;
    drop(model);
    let names = trainer.names().to_vec();
    let nq = if multi { scores.num_queries } else { 1 };
    let losses_of = |dir: &Path| -> Result<Vec<f64>> {
        let params = load_params(&names, t, dir, device)?;
        if multi {
            return loss::per_document_query_losses(
                &trainer,
                &params,
                &query_rows,
                t.batch_size,
                device,
            );
        }
        let mut l = loss::mean_query_loss(
            &trainer,
            &params,
            &query_rows,
            t.batch_size,
            t.grad_accum_steps,
            device,
        )?;
        if let Some(rows) = &contrast_rows {
            l -= loss::mean_query_loss(
                &trainer,
                &params,
                rows,
                t.batch_size,
                t.grad_accum_steps,
                device,
            )?;
        }
        Ok(vec![l])
    };

    let (baseline, per_subset) = average_bank_losses(&banks, subsets.len(), nq, losses_of)?;
    let results: BTreeMap<usize, SubsetResult> = subsets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let diffs = baseline
                .iter()
                .zip(&per_subset[i])
                .map(|(b, l)| b - l)
                .collect();
            let sums = scores.sums(s);
            (
                i,
                SubsetResult {
                    diffs,
                    score_sums: if multi { sums } else { vec![sums.iter().sum()] },
                },
            )
        })
        .collect();
    let n = subsets.len();
    let stop = c.stop.unwrap_or(n);
    let suffix = if (c.start, stop) != (0, n) {
        format!("_{}_{stop}", c.start)
    } else {
        String::new()
    };
    let (outputs, report) =
        write_lds_outputs(&run, &results, &baseline, multi, &suffix, n, t.seed)?;
    Ok(ValidateSummary {
        run_path: run,
        outputs,
        report,
    })
}
