//! `bergson trak`: TRAK (Park et al. 2023, "TRAK: Attributing Model Behavior at Scale") as
//! Python Bergson 2.5.1's `cli/trak.py` runs it, with checkpoint ensembles.
//!
//! Features are random projections of the gradients of the negative log-odds output function
//! (`--loss_fn log_odds`) under one global projection (`--projection_target global`). Per
//! member, under its run directory:
//! 1. `train_hessian/`: the joint autocorrelation Gram `ΦᵀΦ/N` of the training features
//!    (`bergson hessian --method autocorrelation`, on the first `--stats_sample_size`
//!    documents when given).
//! 2. `query/`: the query index, built with the Gram as `--hessian_path` (whitened by its
//!    inverse, damping 0 by default: a plain inverse).
//! 3. `scores/`: the training set scored against it (`bergson score`, one-sided).
//! 4. `scores/trak_weights.npy` = `1 - p_i` (p_i: the mean label-token probability of
//!    document i) and `scores/trak_scale.npy` = the mean |entry| of the inverse Gram; a single
//!    run's scores are multiplied by `(1 - p_i) / scale` in place.
//!
//! With `--checkpoints`, member `i` runs on checkpoint `i` with projection seed
//! `(--projection_seed or 0) + i` under `checkpoint_<i>/`, its scores left unweighted, and the
//! final `scores/` holds `mean_i(score_i / scale_i) × mean_i(1 - p_i)`.
//!
//! Each step writes its directory through `<dir>.part` and a rename (steps 1-3 are the
//! commands' own run directories; step 4's files are renamed into place last), and with
//! `--resume` a step whose output exists is skipped.

pub mod scores;
pub mod weights;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::build::RunOptions;
use crate::config::run_file::BERGSON_COMPAT_VERSION;
use crate::config::{
    Aggregation, BuildConfig, HessianConfig, HessianMethod, HessianRunConfig, IndexConfig, LossFn,
    PreprocessConfig, ProjectionTarget, ScoreRunConfig, TrakConfig, TrakRunConfig,
};
use crate::data::pipeline::prepare_data;
use crate::error::IoContext;
use crate::{setup, Error, Result};

/// What a finished TRAK run did.
#[derive(Debug, Clone)]
pub struct TrakSummary {
    /// The final score directory.
    pub scores_path: PathBuf,
    /// Ensemble members (1 without `--checkpoints`).
    pub members: usize,
    /// Wall time.
    pub seconds: f64,
}

impl std::fmt::Display for TrakSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TRAK over {} member(s) in {:.1} s; scores at {}",
            self.members,
            self.seconds,
            self.scores_path.display()
        )
    }
}

/// Refuses what Bergson's `trak` refuses, and what bergson-rs does not implement, before
/// anything is written.
pub fn check_config(cfg: &TrakRunConfig) -> Result<()> {
    let (icfg, tcfg) = (&cfg.index_cfg, &cfg.trak_cfg);
    if icfg.run_path.is_empty() {
        return Err(Error::input(
            "no run path given: `bergson trak <run_path> --model ... --data.dataset ... --query.dataset ...`",
        ));
    }
    if icfg.projection_dim == 0 {
        return Err(Error::input(
            "TRAK scores random-projected gradients and needs a nonzero --projection_dim (e.g. 16, the default); got 0",
        ));
    }
    if icfg.loss_fn != LossFn::LogOdds {
        return Err(Error::input(format!(
            "TRAK's features are gradients of the log-odds output function: pass --loss_fn log_odds (got {})",
            icfg.loss_fn
        )));
    }
    if icfg.projection_target != ProjectionTarget::Global {
        return Err(Error::input(format!(
            "TRAK projects the whole gradient with one random matrix: pass --projection_target global (got {}); for per-module projections use `bergson trackstar`",
            icfg.projection_target
        )));
    }
    if icfg.attribute_tokens {
        return Err(Error::input(
            "TRAK's (1 - p) weighting needs per-sequence scores: drop --attribute_tokens",
        ));
    }
    if tcfg.query.contrast.is_some() {
        return Err(Error::input(
            "--contrast.* (a control set subtracted from the query) is not supported by bergson-rs yet; drop the --contrast flags",
        ));
    }
    if tcfg.query.path.is_empty() && tcfg.query.data.dataset.is_empty() {
        return Err(Error::input(
            "no query set: pass --query.dataset (or --path with an existing query index)",
        ));
    }
    if tcfg.stats_sample_size == Some(0) {
        return Err(Error::input(
            "--stats_sample_size must be positive, or left out to fit the Gram on every document",
        ));
    }
    setup::check_index_config(icfg)
}

/// Runs `bergson trak`.
pub fn run(cfg: &TrakRunConfig, opts: &RunOptions) -> Result<TrakSummary> {
    let start = Instant::now();
    check_config(cfg)?;
    let (icfg, tcfg) = (&cfg.index_cfg, &cfg.trak_cfg);
    let run_path = PathBuf::from(&icfg.run_path);
    write_run_config(cfg, &run_path)?;
    if tcfg.checkpoints.is_empty() {
        let scores_path = run_member(cfg, icfg, false, opts)?;
        return Ok(TrakSummary {
            scores_path,
            members: 1,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    let mut members = Vec::with_capacity(tcfg.checkpoints.len());
    for (i, model) in tcfg.checkpoints.iter().enumerate() {
        if !opts.quiet {
            eprintln!(
                "[TRAK] checkpoint {}/{}: {model}",
                i + 1,
                tcfg.checkpoints.len()
            );
        }
        let mut member = icfg.clone();
        member.model = model.clone();
        member.projection_seed = Some(icfg.projection_seed.unwrap_or(0) + i as i64);
        member.run_path = run_path
            .join(format!("checkpoint_{i}"))
            .to_string_lossy()
            .into_owned();
        members.push(run_member(cfg, &member, true, opts)?);
    }
    let scores_path = run_path.join("scores");
    scores::average_members(&members, &scores_path)?;
    Ok(TrakSummary {
        scores_path,
        members: members.len(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Bergson's `_step_complete`: with `--resume`, a step whose output exists is skipped.
fn step_complete(path: &Path, resume: bool, quiet: bool) -> bool {
    let done = resume && path.exists();
    if done && !quiet {
        eprintln!("  Skipping (output exists at {})", path.display());
    }
    done
}

/// Bergson's `_limit_split_for_hess`: the split sliced to its first `n` documents.
fn limit_split(split: &str, n: Option<usize>) -> String {
    match n {
        None => split.to_string(),
        Some(n) => format!("{}[:{n}]", split.split('[').next().unwrap_or(split)),
    }
}

/// One member (Bergson's `_trak_single`): Gram, whitened query index, scores, weights. An
/// ensemble `member` keeps its scores unweighted. Returns its score directory.
fn run_member(
    cfg: &TrakRunConfig,
    icfg: &IndexConfig,
    member: bool,
    opts: &RunOptions,
) -> Result<PathBuf> {
    let tcfg = &cfg.trak_cfg;
    let run_path = PathBuf::from(&icfg.run_path);
    let sub = |name: &str| run_path.join(name).to_string_lossy().into_owned();
    let (gram_path, scores_path) = (sub("train_hessian"), sub("scores"));
    let mut query_path = sub("query");
    let resume = tcfg.resume;
    let say = |line: &str| {
        if !opts.quiet {
            eprintln!("{line}");
        }
    };
    // TRAK whitens with the inverse Gram; unit normalisation would turn that into TrackStar's
    // split H^-1/2, which is not part of the method.
    let mut preprocess = tcfg.preprocess_cfg.clone();
    preprocess.unit_normalize = false;
    preprocess.hessian_path = Some(gram_path.clone());

    say("Step 1/4: Fitting the projected-gradient Gram...");
    if !step_complete(Path::new(&gram_path), resume, opts.quiet) {
        let mut index_cfg = icfg.clone();
        index_cfg.run_path = gram_path.clone();
        index_cfg.data.split = limit_split(&index_cfg.data.split, tcfg.stats_sample_size);
        // The Gram is over the training documents' own log-odds gradients.
        let hessian_cfg = HessianConfig {
            method: HessianMethod::Autocorrelation,
            use_dataset_labels: true,
            ..HessianConfig::default()
        };
        crate::hessians::run(
            &HessianRunConfig {
                hessian_cfg,
                index_cfg,
            },
            opts,
        )?;
    }

    say("Step 2/4: Building the Gram-whitened query index...");
    if !tcfg.query.path.is_empty() {
        query_path = tcfg.query.path.clone();
        say(&format!("  using the existing query index at {query_path}"));
    } else if !step_complete(Path::new(&query_path), resume, opts.quiet) {
        crate::build::run(
            &query_build_config(cfg, icfg, &query_path, &preprocess),
            opts,
        )?;
    }

    say("Step 3/4: Scoring the training set...");
    if !step_complete(Path::new(&scores_path), resume, opts.quiet) {
        let mut score_cfg = tcfg.score_cfg.clone();
        score_cfg.query_path = query_path.clone();
        score_cfg.higher_is_better = true;
        let mut index_cfg = icfg.clone();
        index_cfg.run_path = scores_path.clone();
        crate::score::run(
            &ScoreRunConfig {
                score_cfg,
                index_cfg,
                preprocess_cfg: preprocess.clone(),
            },
            opts,
        )?;
    }

    say("Step 4/4: Weighting training rows by (1 - p_i)...");
    let scores_dir = PathBuf::from(&scores_path);
    weight_step(
        icfg,
        tcfg,
        &scores_dir,
        Path::new(&gram_path),
        &preprocess,
        member,
        opts,
    )?;
    Ok(scores_dir)
}

/// Bergson's `build_query`: the query set's data and aggregation on the member's model and
/// projection, preconditioned with the Gram.
fn query_build_config(
    cfg: &TrakRunConfig,
    icfg: &IndexConfig,
    query_path: &str,
    preprocess: &PreprocessConfig,
) -> BuildConfig {
    let query = &cfg.trak_cfg.query;
    let mut index_cfg = icfg.clone();
    index_cfg.run_path = query_path.to_string();
    index_cfg.data = query.data.clone();
    let mut preprocess_cfg = preprocess.clone();
    preprocess_cfg.aggregation = query.aggregation;
    if query.aggregation != Aggregation::None {
        index_cfg.attribute_tokens = false;
    }
    BuildConfig {
        index_cfg,
        preprocess_cfg,
    }
}

/// Step 4: the weights `1 - p_i` and the inverse Gram's scale beside the scores, a single
/// run's scores multiplied by `(1 - p_i) / scale`. Done when `trak_weights.npy` exists; it is
/// renamed into place last, after the weighted scores, so an interruption is redone from the
/// unweighted scores (or, past the scores' rename, only the rename of the weights is left).
fn weight_step(
    icfg: &IndexConfig,
    tcfg: &TrakConfig,
    scores_dir: &Path,
    gram_path: &Path,
    preprocess: &PreprocessConfig,
    member: bool,
    opts: &RunOptions,
) -> Result<()> {
    let weights_file = scores_dir.join(scores::WEIGHTS_NPY);
    if weights_file.exists() {
        return Ok(());
    }
    let pending = scores_dir.join(format!("{}.pending", scores::WEIGHTS_NPY));
    let unfinished = scores_dir.join(format!("{}.weighted", scores::SCORES_BIN));
    if pending.exists() && !unfinished.exists() {
        // Interrupted after the weighted scores were renamed into place.
        return std::fs::rename(&pending, &weights_file).at_path(&weights_file);
    }
    scores::discard_unfinished_weighting(scores_dir)?;

    let (tokenizer, model_dir, max_positions) = setup::load_tokenizer(icfg)?;
    let data = prepare_data(icfg, &tokenizer, max_positions)?;
    let model = setup::load_model(icfg, &model_dir, opts.device)?;
    let p = weights::label_probabilities(&*model, &data.rows, tcfg.loss_batch_size)?;
    drop(model);
    let w: Vec<f64> = p.iter().map(|p| 1.0 - p).collect();
    let scale = weights::inverse_gram_scale(gram_path, &preprocess.inversion_cfg)?;
    if !scale.is_finite() {
        // Bergson 2.5.1 writes these scores without a word; say why they are not numbers.
        tracing::warn!(
            "the inverse of the Gram at {} is not finite: the Gram is singular (fewer \
             documents with gradients than --projection_dim {}, or linearly dependent ones) and \
             --damping_factor is {}, so the scores are NaN or infinite, as Bergson's are; pass \
             --damping_factor > 0 or fit the Gram on more documents",
            gram_path.display(),
            icfg.projection_dim,
            preprocess.inversion_cfg.damping_factor
        );
    }

    // The weights go to `.pending` first: once the weighted scores replace the originals, its
    // presence (with no `.weighted` left) says only the final rename remains.
    scores::write_npy(&pending, &w, &[w.len() as u64])?;
    if !member {
        let factors: Vec<f64> = w.iter().map(|w| w / scale).collect();
        scores::weight_rows(scores_dir, &factors)?;
    }
    scores::write_npy(&scores_dir.join(scores::SCALE_NPY), &[scale], &[])?;
    std::fs::rename(&pending, &weights_file).at_path(&weights_file)
}

/// The run's `config.yaml` at the top of its directory, as Bergson saves its `Trak` command.
fn write_run_config(cfg: &TrakRunConfig, run_path: &Path) -> Result<()> {
    #[derive(Serialize)]
    struct Metadata {
        bergson_version: &'static str,
        bergson_rs_version: &'static str,
        created: String,
    }
    #[derive(Serialize)]
    struct Step<'a> {
        trak: &'a TrakRunConfig,
    }
    #[derive(Serialize)]
    struct Doc<'a> {
        steps: Vec<Step<'a>>,
        metadata: Metadata,
    }
    let doc = Doc {
        steps: vec![Step { trak: cfg }],
        metadata: Metadata {
            bergson_version: BERGSON_COMPAT_VERSION,
            bergson_rs_version: env!("CARGO_PKG_VERSION"),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        },
    };
    let text = serde_saphyr::to_string(&doc)
        .map_err(|e| Error::internal(format!("cannot write config.yaml: {e}")))?;
    crate::index::run_dir::create_part(run_path)?;
    let path = run_path.join("config.yaml");
    std::fs::write(&path, text).at_path(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_limited_as_bergson_does() {
        assert_eq!(limit_split("train", None), "train");
        assert_eq!(limit_split("train", Some(8)), "train[:8]");
        assert_eq!(limit_split("train[10:]", Some(8)), "train[:8]");
    }
}
