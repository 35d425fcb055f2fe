//! `bergson trackstar`: the TrackStar recipe of Chang et al. 2024 ("Scalable influence and fact
//! tracing for large language model pretraining"), as Bergson 2.5.1's `trackstar` runs it.
//!
//! Five steps, each a sub-directory of the run path:
//! 1. `value_hessian/`: the autocorrelation (Gram) Hessian of the projected training gradients,
//!    fitted on the first `stats_sample_size` training examples;
//! 2. `query_hessian/`: the same over the query dataset;
//! 3. `mixed_hessian/`: `λ·H_query + (1 − λ)·H_value`, λ chosen so the sorted spectra cross at
//!    `target_downweight_components` (§A.1.3), as `bergson mix`;
//! 4. `query/`: the query index built with that Hessian as preconditioner (applied at build
//!    time only when the queries are aggregated; otherwise score time applies it);
//! 5. `scores/`: the training data scored against the query index (`higher_is_better`).
//!
//! `--mix_hessians false` skips 2 and 3 and preconditions with the value Hessian. Each step
//! writes `<step>.part` and renames it when complete; `--resume` reuses finished steps of a run
//! of the same config and redoes (or, for build and score, continues) a half-written one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::build::{self, RunOptions};
use crate::config::run_file::{config_yaml, read_run_file, Step};
use crate::config::{
    Aggregation, BuildConfig, DataConfig, HessianConfig, HessianMethod, HessianRunConfig,
    MixConfig, ScoreRunConfig, TrackstarRunConfig,
};
use crate::data::formats::Format;
use crate::error::IoContext;
use crate::hub::is_repo_id;
use crate::index::removal::remove_scratch;
use crate::index::run_dir;
use crate::{hessians, interrupt, mix, score, setup, Error, Result};

/// Sub-directory of the value (training data) Hessian.
pub const VALUE_HESSIAN: &str = "value_hessian";
/// Sub-directory of the query Hessian.
pub const QUERY_HESSIAN: &str = "query_hessian";
/// Sub-directory of the mixed Hessian.
pub const MIXED_HESSIAN: &str = "mixed_hessian";
/// Sub-directory of the query index.
pub const QUERY: &str = "query";
/// Sub-directory of the scores.
pub const SCORES: &str = "scores";

/// What happened to one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// Computed by this run.
    Ran,
    /// Finished by an earlier run and reused (`--resume`).
    Reused,
    /// Not part of this run (`--mix_hessians false`, or `--path` for the query index).
    Skipped,
}

/// What a finished TrackStar run did.
#[derive(Debug, Clone)]
pub struct TrackstarSummary {
    /// The run directory.
    pub run_path: PathBuf,
    /// Each step's directory name and outcome, in order.
    pub steps: Vec<(&'static str, StepOutcome)>,
    /// λ, the query Hessian's weight in the mix (when this run mixed).
    pub mixing_coefficient: Option<f64>,
    /// The query index scored against.
    pub query_path: PathBuf,
    /// The score directory.
    pub scores_path: PathBuf,
    /// Wall time.
    pub seconds: f64,
}

impl std::fmt::Display for TrackstarSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|(name, outcome)| {
                let how = match outcome {
                    StepOutcome::Ran => "done",
                    StepOutcome::Reused => "reused",
                    StepOutcome::Skipped => "skipped",
                };
                format!("{name} {how}")
            })
            .collect();
        write!(f, "trackstar: {}", steps.join(", "))?;
        if let Some(l) = self.mixing_coefficient {
            write!(f, "; mixed with λ = {l:.6}")?;
        }
        write!(
            f,
            " in {:.1} s; scores at {}",
            self.seconds,
            self.scores_path.display()
        )
    }
}

/// Bergson's `_limit_split_for_hess`: the split cut to its first `n` examples, replacing any
/// slice it had (`train[10:]` becomes `train[:n]`, as in Bergson).
pub fn limit_split(split: &str, n: Option<usize>) -> String {
    match n {
        None => split.to_string(),
        Some(n) => {
            let base = split.split('[').next().unwrap_or(split);
            format!("{base}[:{n}]")
        }
    }
}

/// Refuses a dataset that is neither a local path nor a possible hub id before hours of work
/// on the other one.
fn check_dataset(flag: &str, data: &DataConfig) -> Result<()> {
    let path = Path::new(&data.dataset);
    if path.exists() {
        return Ok(());
    }
    if Format::of(path).is_some() || !is_repo_id(&data.dataset) {
        return Err(Error::input(format!(
            "{flag} {} does not exist; give a .jsonl/.json/.csv/.parquet file, a save_to_disk \
             directory or a hub dataset id",
            data.dataset
        )));
    }
    Ok(())
}

/// Refuses settings Bergson refuses, and what bergson-rs does not implement, before anything
/// is written.
pub fn check_config(cfg: &TrackstarRunConfig) -> Result<()> {
    let (icfg, tcfg) = (&cfg.index_cfg, &cfg.trackstar_cfg);
    if icfg.run_path.is_empty() {
        return Err(Error::input(
            "no run path given: `bergson trackstar <run_path> --model ... --data.dataset ... --query.dataset ...`",
        ));
    }
    if icfg.projection_dim == 0 {
        return Err(Error::input(
            "trackstar scores random-projected gradients and needs a nonzero --projection_dim; \
             leave it out for the default of 16, or set it",
        ));
    }
    if tcfg.stats_sample_size == Some(0) {
        return Err(Error::input(
            "--stats_sample_size 0 leaves no examples to fit the Hessians on; give a positive \
             number, or None for the whole split",
        ));
    }
    if tcfg.query.contrast.is_some() {
        return Err(Error::input(
            "query.contrast (a control dataset subtracted from the query) is not supported by \
             bergson-rs yet; remove it from the config",
        ));
    }
    if !tcfg.query.path.is_empty() && !Path::new(&tcfg.query.path).exists() {
        return Err(Error::input(format!(
            "--path {} does not exist; give an existing query index (a `bergson build` run) or \
             leave --path out to build one from --query.dataset",
            tcfg.query.path
        )));
    }
    check_dataset("--data.dataset", &icfg.data)?;
    if tcfg.query.path.is_empty() || tcfg.mix_hessians {
        check_dataset("--query.dataset", &tcfg.query.data)?;
    }
    hessians::check_config(&hessian_step(cfg, VALUE_HESSIAN, &icfg.data))
}

/// The autocorrelation fit of `data` (sliced to `stats_sample_size`) into `<run_path>/<dir>`.
fn hessian_step(cfg: &TrackstarRunConfig, dir: &str, data: &DataConfig) -> HessianRunConfig {
    let mut index_cfg = cfg.index_cfg.clone();
    index_cfg.run_path = sub_path(cfg, dir);
    index_cfg.data = data.clone();
    index_cfg.data.split = limit_split(&data.split, cfg.trackstar_cfg.stats_sample_size);
    HessianRunConfig {
        hessian_cfg: HessianConfig {
            method: HessianMethod::Autocorrelation,
            ..HessianConfig::default()
        },
        index_cfg,
    }
}

fn sub_path(cfg: &TrackstarRunConfig, dir: &str) -> String {
    Path::new(&cfg.index_cfg.run_path)
        .join(dir)
        .to_string_lossy()
        .into_owned()
}

/// The run's settings with the flags that do not change its outputs cleared.
fn identity(cfg: &TrackstarRunConfig) -> TrackstarRunConfig {
    let mut c = cfg.clone();
    c.index_cfg.overwrite = false;
    c.trackstar_cfg.resume = false;
    c
}

/// Checks the run directory against an earlier run's `config.yaml` and writes ours.
fn prepare_run_dir(cfg: &TrackstarRunConfig) -> Result<PathBuf> {
    let (icfg, tcfg) = (&cfg.index_cfg, &cfg.trackstar_cfg);
    let run_path = PathBuf::from(&icfg.run_path);
    if run_path.exists() && !run_path.is_dir() {
        return Err(Error::input(format!(
            "run path {} is a file, not a run directory; choose another run path",
            run_path.display()
        )));
    }
    let saved = run_path.join("config.yaml");
    if saved.exists() {
        if tcfg.resume {
            let earlier = match read_run_file(&run_path).map(|f| f.steps) {
                Ok(steps) => match steps.as_slice() {
                    [Step::Trackstar(c)] => Some(identity(c)),
                    _ => None,
                },
                Err(_) => None,
            };
            match earlier {
                Some(c) if c == identity(cfg) => {}
                Some(_) => {
                    return Err(Error::input(format!(
                        "{} holds a trackstar run of a different config; rerun it with the \
                         same flags to resume, or pass --overwrite without --resume to start over",
                        run_path.display()
                    )))
                }
                None => {
                    return Err(Error::input(format!(
                        "{} holds a config.yaml that is not a trackstar run; choose another run \
                         path",
                        run_path.display()
                    )))
                }
            }
        } else if !icfg.overwrite {
            return Err(Error::input(format!(
                "run path {} already holds a run (its config.yaml); pass --resume to reuse the \
                 finished steps of the same trackstar run, --overwrite to redo them, or choose \
                 another path",
                run_path.display()
            )));
        }
    }
    run_dir::create_part(&run_path)?;
    let text = config_yaml(&Step::Trackstar(Box::new(cfg.clone())), chrono::Utc::now())?;
    std::fs::write(&saved, text).at_path(&saved)?;
    Ok(run_path)
}

/// Whether a step's output is reused: with `--resume`, a finished step directory (a
/// half-written one is still `<step>.part`).
fn reuse(path: &Path, resume: bool, quiet: bool) -> bool {
    let done = resume && path.is_dir();
    if done && !quiet {
        eprintln!("  reusing the finished step at {}", path.display());
    }
    done
}

/// Runs `bergson trackstar`.
pub fn run(cfg: &TrackstarRunConfig, opts: &RunOptions) -> Result<TrackstarSummary> {
    let start = Instant::now();
    check_config(cfg)?;
    setup::check_index_config(&cfg.index_cfg)?;
    let (icfg, tcfg) = (&cfg.index_cfg, &cfg.trackstar_cfg);
    let resume = tcfg.resume;
    // As in Bergson, the recipe sets these itself; say so rather than ignore them silently.
    if let Some(h) = &tcfg.preprocess_cfg.hessian_path {
        tracing::warn!(
            "--hessian_path {h} is ignored: trackstar preconditions with the Hessian it fits"
        );
    }
    if !tcfg.score_cfg.query_path.is_empty() {
        tracing::warn!(
            "--query_path {} is ignored: trackstar scores against its own query index (use --path for an existing one)",
            tcfg.score_cfg.query_path
        );
    }
    if !tcfg.score_cfg.higher_is_better {
        tracing::warn!("--higher_is_better false is ignored: TrackStar scores are influences (higher is more supportive)");
    }
    let run_path = prepare_run_dir(cfg)?;
    let say = |line: &str| {
        if !opts.quiet {
            eprintln!("{line}");
        }
    };
    let mut steps = Vec::new();

    // 1. The value Hessian, on the first stats_sample_size training examples.
    say("Step 1/5: computing the Hessian of the value (training) dataset");
    let value_hessian = run_path.join(VALUE_HESSIAN);
    if reuse(&value_hessian, resume, opts.quiet) {
        steps.push((VALUE_HESSIAN, StepOutcome::Reused));
    } else {
        hessians::run(&hessian_step(cfg, VALUE_HESSIAN, &icfg.data), opts)?;
        steps.push((VALUE_HESSIAN, StepOutcome::Ran));
    }
    interrupt::check()?;

    // 2-3. The query Hessian, mixed with the value Hessian.
    let mut mixing_coefficient = None;
    let precondition_with = if !tcfg.mix_hessians {
        say("Steps 2-3/5: skipped (--mix_hessians false); preconditioning with the value Hessian");
        steps.push((QUERY_HESSIAN, StepOutcome::Skipped));
        steps.push((MIXED_HESSIAN, StepOutcome::Skipped));
        value_hessian.clone()
    } else {
        say("Step 2/5: computing the Hessian of the query dataset");
        let query_hessian = run_path.join(QUERY_HESSIAN);
        if reuse(&query_hessian, resume, opts.quiet) {
            steps.push((QUERY_HESSIAN, StepOutcome::Reused));
        } else {
            hessians::run(&hessian_step(cfg, QUERY_HESSIAN, &tcfg.query.data), opts)?;
            steps.push((QUERY_HESSIAN, StepOutcome::Ran));
        }
        interrupt::check()?;

        say("Step 3/5: mixing the Hessians");
        let mixed = run_path.join(MIXED_HESSIAN);
        if reuse(&mixed, resume, opts.quiet) {
            steps.push((MIXED_HESSIAN, StepOutcome::Reused));
        } else {
            let mix_cfg = MixConfig {
                query_path: path_string(&query_hessian),
                index_path: path_string(&value_hessian),
                output_path: path_string(&mixed),
                target_downweight_components: tcfg.target_downweight_components,
            };
            mixing_coefficient = Some(mix_step(&mix_cfg, &mixed, icfg.overwrite)?);
            steps.push((MIXED_HESSIAN, StepOutcome::Ran));
        }
        mixed
    };
    interrupt::check()?;

    // The Hessian preconditions the query rows at build time when they are aggregated, and
    // at score time otherwise (score sees that the query index was not preconditioned).
    let mut preprocess_cfg = tcfg.preprocess_cfg.clone();
    preprocess_cfg.hessian_path = Some(path_string(&precondition_with));
    preprocess_cfg.aggregation = tcfg.query.aggregation;

    // 4. The query index.
    say("Step 4/5: building the query gradient index");
    let query_path = if !tcfg.query.path.is_empty() {
        say(&format!(
            "  using the existing query index at {}",
            tcfg.query.path
        ));
        steps.push((QUERY, StepOutcome::Skipped));
        PathBuf::from(&tcfg.query.path)
    } else {
        let query_path = run_path.join(QUERY);
        if reuse(&query_path, resume, opts.quiet) {
            steps.push((QUERY, StepOutcome::Reused));
        } else {
            let mut index_cfg = icfg.clone();
            index_cfg.run_path = path_string(&query_path);
            index_cfg.data = tcfg.query.data.clone();
            if tcfg.query.aggregation != Aggregation::None && index_cfg.attribute_tokens {
                // An aggregated query collapses its tokens into one target gradient anyway.
                say("  query aggregation is not compatible with query-side token attribution; building a per-example query instead");
                index_cfg.attribute_tokens = false;
            }
            build::run(
                &BuildConfig {
                    index_cfg,
                    preprocess_cfg: preprocess_cfg.clone(),
                },
                opts,
            )?;
            steps.push((QUERY, StepOutcome::Ran));
        }
        query_path
    };
    interrupt::check()?;

    // 5. The training data scored against the query index.
    say("Step 5/5: scoring the value dataset");
    let scores_path = run_path.join(SCORES);
    if reuse(&scores_path, resume, opts.quiet) {
        steps.push((SCORES, StepOutcome::Reused));
    } else {
        let mut score_cfg = tcfg.score_cfg.clone();
        score_cfg.query_path = path_string(&query_path);
        score_cfg.higher_is_better = true;
        let mut index_cfg = icfg.clone();
        index_cfg.run_path = path_string(&scores_path);
        score::run(
            &ScoreRunConfig {
                score_cfg,
                index_cfg,
                preprocess_cfg,
            },
            opts,
        )?;
        steps.push((SCORES, StepOutcome::Ran));
    }

    Ok(TrackstarSummary {
        run_path,
        steps,
        mixing_coefficient,
        query_path,
        scores_path,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Step 3: `bergson mix` into `<mixed_hessian>.part`, renamed when complete.
fn mix_step(mix_cfg: &MixConfig, mixed: &Path, overwrite: bool) -> Result<f64> {
    let part = PathBuf::from(format!("{}.part", mixed.display()));
    if mixed.exists() {
        if !overwrite {
            return Err(Error::input(format!(
                "{} already exists; pass --resume to reuse it or --overwrite to redo it",
                mixed.display()
            )));
        }
        remove_scratch(mixed)?;
    }
    // A mix is quick and has no journal: a half-written one is redone.
    if part.exists() {
        remove_scratch(&part)?;
    }
    let summary = mix::mix_into(mix_cfg, &part)?;
    run_dir::finish(&part, mixed)?;
    Ok(summary.mixing_coefficient)
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hessian_split_is_cut_as_bergson_cuts_it() {
        assert_eq!(limit_split("train", Some(10)), "train[:10]");
        assert_eq!(limit_split("train[5:]", Some(10)), "train[:10]");
        assert_eq!(limit_split("validation[:3]", Some(7)), "validation[:7]");
        assert_eq!(limit_split("train[:3]", None), "train[:3]");
    }

    #[test]
    fn projection_dim_zero_and_contrast_are_refused() {
        let mut cfg = TrackstarRunConfig::default();
        cfg.index_cfg.run_path = "/tmp/x".into();
        cfg.index_cfg.projection_dim = 0;
        let e = check_config(&cfg).unwrap_err().to_string();
        assert!(e.contains("--projection_dim"), "{e}");
        cfg.index_cfg.projection_dim = 4;
        cfg.trackstar_cfg.query.contrast = Some(DataConfig::default());
        let e = check_config(&cfg).unwrap_err().to_string();
        assert!(e.contains("contrast"), "{e}");
    }
}
