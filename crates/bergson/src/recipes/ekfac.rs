//! `bergson ekfac`: Hessian-preconditioned influence end to end (Bergson 2.5.1's
//! `hessian_pipeline`), each step a sub-directory of the run path:
//!
//! 1. `query/`: the query gradients, built unprojected (the factors act on full module
//!    gradients) and combined as `--query.aggregation` says, minus a contrast set's if given;
//!    `--path` uses an existing query index instead.
//! 2. `hessian/<method>/`: the factored fit (`bergson hessian`) on the training data.
//! 3. `<method>_query/`: `H^-1 G` of each query under `--hessian_pipeline_cfg.inversion_cfg`,
//!    then projected as the scored index is (see [`crate::hessians::apply`]).
//! 4. `scores/`: the training data scored against it (`bergson score`, higher is better).
//!
//! Each step writes `<step>.part` and renames it when done. With `--resume`, a step whose
//! directory exists is skipped, and an interrupted build or score continues from its journal;
//! without it a finished step's directory is refused unless `--overwrite` (as Bergson).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::build::RunOptions;
use crate::collect::ProjectionSettings;
use crate::config::run_file::recipe_config_yaml;
use crate::config::{
    Aggregation, BuildConfig, EkfacRunConfig, HessianMethod, HessianRunConfig, IndexConfig,
    Inversion, LossFn, PreprocessConfig, QuerySetConfig, ScoreRunConfig,
};
use crate::error::IoContext;
use crate::hessians::astra::Astra;
use crate::hessians::gauss_newton::GaussNewtonProduct;
use crate::hessians::preconditioner::Preconditioner;
use crate::index::removal::remove_scratch;
use crate::index::{hessian_store, GradientFile, GradientIndex};
use crate::progress::Phase;
use crate::{build, hessians, score, setup, Error, Result};

/// What a finished pipeline did.
#[derive(Debug, Clone)]
pub struct EkfacSummary {
    /// The run directory.
    pub run_path: PathBuf,
    /// The preconditioned query the scores used.
    pub query_path: PathBuf,
    /// The score directory.
    pub scores_path: PathBuf,
    /// `(step, seconds)` of the steps run (skipped ones are absent).
    pub timings: Vec<(&'static str, f64)>,
}

impl std::fmt::Display for EkfacSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        super::write_summary(f, &self.scores_path, &self.timings)
    }
}

/// Refuses what Bergson refuses (and what bergson-rs does not run yet) before anything runs.
pub fn check_config(cfg: &EkfacRunConfig) -> Result<()> {
    let (icfg, hcfg, pipe) = (&cfg.index_cfg, &cfg.hessian_cfg, &cfg.hessian_pipeline_cfg);
    if cfg.preprocess_cfg.unit_normalize {
        return Err(Error::input(
            "--unit_normalize (cosine similarity) is not supported with Kronecker-factored \
             Hessians, which bergson ekfac fits and applies; drop --unit_normalize",
        ));
    }
    if hcfg.method == HessianMethod::Autocorrelation {
        return Err(Error::input(
            "bergson ekfac fits and applies a factored Hessian: use --method kfac, tkfac or \
             shampoo (an autocorrelation Hessian is applied with `bergson score --hessian_path`)",
        ));
    }
    if hcfg.ev_correction && icfg.projection_dim > 0 {
        return Err(Error::input(format!(
            "--hessian_cfg.ev_correction (EK-FAC) does not support a projected index, got \
             --projection_dim {}; pass --projection_dim 0 or drop the eigenvalue correction",
            icfg.projection_dim
        )));
    }
    if hcfg.ev_correction && pipe.inversion_cfg.inversion == Inversion::FactoredTikhonov {
        return Err(Error::input(
            "--hessian_pipeline_cfg.inversion_cfg.inversion factored_tikhonov cannot be combined \
             with --hessian_cfg.ev_correction: the corrected eigenvalues do not factorise as \
             λ_G ⊗ λ_A; use another inversion (e.g. damped_inverse) or drop the correction",
        ));
    }
    check_query_set(&pipe.query)?;
    if pipe.astra.num_steps > 0 {
        check_astra(cfg)?;
    }
    hessians::check_config(&HessianRunConfig {
        hessian_cfg: hcfg.clone(),
        index_cfg: IndexConfig {
            projection_dim: 0,
            ..icfg.clone()
        },
    })?;
    setup::check_index_config(icfg)
}

/// Refuses ASTRA settings Bergson refuses.
fn check_astra(cfg: &EkfacRunConfig) -> Result<()> {
    let (icfg, astra) = (&cfg.index_cfg, &cfg.hessian_pipeline_cfg.astra);
    if icfg.projection_dim > 0 {
        return Err(Error::input(format!(
            "ASTRA (--num_steps > 0) refines full query gradients, got --projection_dim {}; pass \
             --projection_dim 0 or --num_steps 0",
            icfg.projection_dim
        )));
    }
    match cfg.hessian_pipeline_cfg.inversion_cfg.inversion {
        Inversion::DampedInverse | Inversion::AbsoluteDampedInverse => {}
        other => {
            return Err(Error::input(format!(
                "ASTRA (--num_steps > 0) needs --hessian_pipeline_cfg.inversion_cfg.inversion \
                 damped_inverse or absolute_damped_inverse, got {other}"
            )))
        }
    }
    if icfg.loss_fn != LossFn::Ce {
        return Err(Error::input(format!(
            "ASTRA's Gauss-Newton products support --loss_fn ce only, got {}",
            icfg.loss_fn
        )));
    }
    if astra.batch_size == 0 || astra.micro_batch_size == 0 {
        return Err(Error::input(
            "--astra.batch_size and --micro_batch_size must be at least 1",
        ));
    }
    Ok(())
}

/// Refuses a query set Bergson's `build_query` refuses.
pub fn check_query_set(q: &QuerySetConfig) -> Result<()> {
    if q.contrast.is_some() && q.aggregation == Aggregation::None {
        return Err(Error::input(
            "a contrast set (--contrast.dataset) is subtracted from the aggregated query: pass \
             --query.aggregation mean or sum",
        ));
    }
    if !q.path.is_empty() && !Path::new(&q.path).join("info.json").exists() {
        return Err(Error::input(format!(
            "--path {} is not a finished query index (no info.json); build it first or drop \
             --path to build the query from --query.dataset",
            q.path
        )));
    }
    Ok(())
}

/// Whether the step writing `path` runs: with `resume`, a finished output is kept. A finished
/// output of a step that refuses to replace its run path (`refuses_existing`: build, hessian,
/// score) needs `--resume` or `--overwrite`.
pub(crate) fn step_runs(
    name: &str,
    path: &Path,
    resume: bool,
    overwrite: bool,
    refuses_existing: bool,
    quiet: bool,
) -> Result<bool> {
    if resume && path.is_dir() {
        if !quiet {
            eprintln!("{name}: skipping, already complete at {}", path.display());
        }
        return Ok(false);
    }
    if refuses_existing && !overwrite && path.exists() {
        return Err(Error::input(format!(
            "{} already exists (a finished step of an earlier run); pass --resume to keep the finished steps, or --overwrite to redo them",
            path.display()
        )));
    }
    if !quiet {
        eprintln!("{name}...");
    }
    Ok(true)
}

/// Writes the recipe's `config.yaml` into its run directory (created).
pub(crate) fn save_recipe_config<T: serde::Serialize>(
    command: &str,
    run_path: &Path,
    cfg: &T,
) -> Result<()> {
    std::fs::create_dir_all(run_path).map_err(|e| {
        Error::input(format!(
            "cannot create the run directory {}: {e}; choose a run path you can write to",
            run_path.display()
        ))
    })?;
    let path = run_path.join("config.yaml");
    std::fs::write(&path, recipe_config_yaml(command, cfg, chrono::Utc::now())?).at_path(&path)
}

/// Step 1: the query index at `path` (Bergson's `build_query`): `index_cfg`'s model and
/// collection, the query set's data and aggregation, no projection and no other
/// preprocessing; a contrast set's aggregated gradient built under `<path>/contrast` and
/// subtracted.
pub fn build_query(
    icfg: &IndexConfig,
    query: &QuerySetConfig,
    path: &Path,
    opts: &RunOptions,
) -> Result<()> {
    let mut qcfg = IndexConfig {
        run_path: path.to_string_lossy().into_owned(),
        projection_dim: 0,
        data: query.data.clone(),
        ..icfg.clone()
    };
    if query.aggregation != Aggregation::None && qcfg.attribute_tokens {
        tracing::warn!(
            "query aggregation does not go with per-token query rows; building a per-example \
             query instead"
        );
        qcfg.attribute_tokens = false;
    }
    let preprocess_cfg = PreprocessConfig {
        aggregation: query.aggregation,
        ..PreprocessConfig::default()
    };
    build::run(
        &BuildConfig {
            index_cfg: qcfg.clone(),
            preprocess_cfg: preprocess_cfg.clone(),
        },
        opts,
    )?;
    if let Some(contrast) = &query.contrast {
        let dir = path.join("contrast");
        build::run(
            &BuildConfig {
                index_cfg: IndexConfig {
                    run_path: dir.to_string_lossy().into_owned(),
                    data: contrast.clone(),
                    ..qcfg
                },
                preprocess_cfg,
            },
            opts,
        )?;
        subtract_control(path, &dir)?;
    }
    Ok(())
}

/// `query - control` in float32, written back over the query's one row (Bergson's
/// `subtract_control`).
fn subtract_control(query: &Path, control: &Path) -> Result<()> {
    let (q, c) = (GradientIndex::open(query)?, GradientIndex::open(control)?);
    if q.num_rows() != 1 || c.num_rows() != 1 || q.row_len() != c.row_len() {
        return Err(Error::internal(format!(
            "the aggregated query {} and its contrast {} are not one row each of the same width",
            query.display(),
            control.display()
        )));
    }
    let diff = q
        .rows(0..1)?
        .f_to_kind(tch::Kind::Float)?
        .f_sub(&c.rows(0..1)?.f_to_kind(tch::Kind::Float)?)?;
    let kind = q.kind();
    drop(q);
    let file = GradientFile::create(query, 1, diff.size()[1] as usize, kind, true)?;
    file.write_rows(0, &diff.f_to_kind(kind)?)?;
    file.sync()
}

/// A fresh, empty `<path>.part` for a step that writes its own files.
pub(crate) fn fresh_part(path: &Path) -> Result<PathBuf> {
    let part = PathBuf::from(format!("{}.part", path.display()));
    if part.exists() {
        remove_scratch(&part)?;
    }
    std::fs::create_dir_all(&part).at_path(&part)?;
    Ok(part)
}

/// Renames the finished `part` to `path`, replacing an earlier output.
pub(crate) fn promote(part: &Path, path: &Path) -> Result<()> {
    if path.exists() {
        remove_scratch(path)?;
    }
    crate::index::run_dir::finish(part, path)
}

/// Step 3's output: `H^-1 G` written to `<path>.part` and renamed over `path`.
fn apply_step(
    cfg: &EkfacRunConfig,
    hessian: &Path,
    query: &Path,
    path: &Path,
    opts: &RunOptions,
) -> Result<()> {
    let part = fresh_part(path)?;
    let summary = hessians::apply::apply_inverse_to_index(
        hessian,
        query,
        &part,
        &cfg.hessian_pipeline_cfg.inversion_cfg,
        cfg.hessian_cfg.ev_correction,
        &ProjectionSettings::from_index_config(&cfg.index_cfg),
        opts.device,
    )?;
    if !opts.quiet {
        eprintln!(
            "  preconditioned {} queries over {} modules ({} values a row)",
            summary.queries, summary.modules, summary.row_len
        );
    }
    promote(&part, path)
}

/// ASTRA's step: the factored solutions at `init` refined ([`hessians::astra`]) and written
/// to `<path>.part` in their layout, renamed to `path`.
fn astra_step(
    cfg: &EkfacRunConfig,
    hessian: &Path,
    query: &Path,
    init: &Path,
    path: &Path,
    opts: &RunOptions,
) -> Result<()> {
    let (icfg, pipe) = (&cfg.index_cfg, &cfg.hessian_pipeline_cfg);
    let inversion = &pipe.inversion_cfg;
    let ev = cfg.hessian_cfg.ev_correction;
    let device = opts.device;
    let pre = Preconditioner::load(hessian, inversion, -1.0, ev, device)?;
    // D per module: c·mean(Λ) (c for absolute damping), a float32 value as Bergson's.
    let store = hessian_store::read_factored(hessian, ev, false)?;
    let c = inversion.damping_factor as f32;
    let damping_of = |lam: &tch::Tensor| -> f64 {
        let mean = match inversion.inversion {
            Inversion::AbsoluteDampedInverse => 1.0f32,
            _ => lam.mean(tch::Kind::Float).double_value(&[]) as f32,
        };
        f64::from(c * mean)
    };
    let names: Vec<String> = pre.modules().into_iter().map(str::to_string).collect();
    let damping: Vec<f64> = names
        .iter()
        .map(|n| {
            store
                .modules
                .iter()
                .find(|(m, _)| m == n)
                .map(|(_, m)| damping_of(&m.lambdas))
                .ok_or_else(|| Error::internal(format!("no eigenvalues for '{n}'")))
        })
        .collect::<Result<_>>()?;
    drop(store);

    let (queries, starts) = (GradientIndex::open(query)?, GradientIndex::open(init)?);
    if starts
        .info
        .grad_sizes
        .iter()
        .map(|(n, _)| n)
        .ne(names.iter())
    {
        return Err(Error::input(format!(
            "{} does not hold the Hessian's modules in its order; rerun step 3 (drop --resume \
             or remove it)",
            init.display()
        )));
    }
    let (tokenizer, model_dir, max_positions) = setup::load_tokenizer(icfg)?;
    let data = build::prepare_data(icfg, &tokenizer, max_positions)?;
    let mut model = setup::load_model(icfg, &model_dir, device)?;
    // Double backward through attention needs the composite (math) kernel.
    model.set_math_attention(true);
    let product = GaussNewtonProduct::new(
        &*model,
        &data.rows,
        &names,
        icfg.include_bias,
        pipe.astra.loss_reduction.unwrap_or(icfg.loss_reduction),
        icfg.logit_scale,
        pipe.astra.micro_batch_size,
    )?;
    let astra = Astra::new(&product, &pre, damping, &pipe.astra);

    let part = fresh_part(path)?;
    let num_rows = starts.num_rows();
    let kind = starts.kind();
    let file = GradientFile::create(&part, num_rows, starts.row_len(), kind, false)?;
    let read = |index: &GradientIndex, row: usize| -> Result<Vec<tch::Tensor>> {
        names
            .iter()
            .map(|n| {
                Ok(index
                    .module_rows(n, row..row + 1)?
                    .f_to_kind(tch::Kind::Float)?
                    .f_reshape([-1])?
                    .f_to_device(device)?)
            })
            .collect()
    };
    let mut phase = Phase::new("ASTRA", "queries", Some(num_rows as u64));
    for row in 0..num_rows {
        let x = astra.refine(&read(&queries, row)?, read(&starts, row)?, row)?;
        let out = tch::Tensor::f_cat(&x, 0)?
            .f_unsqueeze(0)?
            .f_to_device(tch::Device::Cpu)?
            .f_to_kind(kind)?;
        file.write_rows(row, &out)?;
        phase.inc(1);
    }
    phase.finish();
    file.sync()?;
    starts.info.write(&part)?;
    let from = init.join("processor_config.yaml");
    let to = part.join("processor_config.yaml");
    std::fs::copy(&from, &to).at_path(&from)?;
    promote(&part, path)
}

/// Runs `bergson ekfac`.
pub fn run(cfg: &EkfacRunConfig, opts: &RunOptions) -> Result<EkfacSummary> {
    check_config(cfg)?;
    let icfg = &cfg.index_cfg;
    let pipe = &cfg.hessian_pipeline_cfg;
    if icfg.run_path.is_empty() {
        return Err(Error::input(
            "no run path given: `bergson ekfac <run_path> --method kfac --model ... --data.dataset ... --query.dataset ...`",
        ));
    }
    let run_path = PathBuf::from(&icfg.run_path);
    save_recipe_config("ekfac", &run_path, cfg)?;
    let method = cfg.hessian_cfg.method;
    let (resume, overwrite, quiet) = (pipe.resume, icfg.overwrite, opts.quiet);
    let mut timings = Vec::new();
    let mut timed = |name: &'static str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let start = Instant::now();
        f()?;
        timings.push((name, start.elapsed().as_secs_f64()));
        Ok(())
    };

    let query_path = if pipe.query.path.is_empty() {
        let path = run_path.join("query");
        if step_runs(
            "step 1/4: building the query gradients",
            &path,
            resume,
            overwrite,
            true,
            quiet,
        )? {
            timed("query", &mut || build_query(icfg, &pipe.query, &path, opts))?;
        }
        path
    } else {
        if !quiet {
            eprintln!(
                "step 1/4: using the existing query index at {}",
                pipe.query.path
            );
        }
        PathBuf::from(&pipe.query.path)
    };

    let hessian_path = run_path.join("hessian").join(method.as_str());
    if step_runs(
        &format!("step 2/4: fitting {method} factors on the training data"),
        &hessian_path,
        resume,
        overwrite,
        true,
        quiet,
    )? {
        let hcfg = HessianRunConfig {
            hessian_cfg: cfg.hessian_cfg.clone(),
            index_cfg: IndexConfig {
                run_path: hessian_path.to_string_lossy().into_owned(),
                ..icfg.clone()
            },
        };
        timed("hessian", &mut || hessians::run(&hcfg, opts).map(|_| ()))?;
    }

    // Bergson reruns this step over an existing output (no --overwrite needed).
    let transformed = run_path.join(format!("{method}_query"));
    if step_runs(
        &format!("step 3/4: applying the inverse {method} Hessian to the query"),
        &transformed,
        resume,
        overwrite,
        false,
        quiet,
    )? {
        timed("apply", &mut || {
            apply_step(cfg, &hessian_path, &query_path, &transformed, opts)
        })?;
    }

    let transformed = if pipe.astra.num_steps > 0 {
        let astra_path = run_path.join("astra_query");
        let name = format!(
            "step 3/4: refining with ASTRA ({} {} steps)",
            pipe.astra.num_steps,
            pipe.astra.solver_name()
        );
        if step_runs(&name, &astra_path, resume, overwrite, false, quiet)? {
            timed("astra", &mut || {
                astra_step(
                    cfg,
                    &hessian_path,
                    &query_path,
                    &transformed,
                    &astra_path,
                    opts,
                )
            })?;
        }
        astra_path
    } else {
        transformed
    };

    let scores_path = run_path.join("scores");
    if step_runs(
        "step 4/4: scoring the training data against the preconditioned query",
        &scores_path,
        resume,
        overwrite,
        true,
        quiet,
    )? {
        let mut score_cfg = cfg.score_cfg.clone();
        score_cfg.query_path = transformed.to_string_lossy().into_owned();
        score_cfg.higher_is_better = true;
        let scfg = ScoreRunConfig {
            score_cfg,
            index_cfg: IndexConfig {
                run_path: scores_path.to_string_lossy().into_owned(),
                ..icfg.clone()
            },
            preprocess_cfg: cfg.preprocess_cfg.clone(),
        };
        timed("scores", &mut || score::run(&scfg, opts).map(|_| ()))?;
    }
    Ok(EkfacSummary {
        run_path,
        query_path: transformed,
        scores_path,
        timings,
    })
}
