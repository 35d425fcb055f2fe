//! `bergson approxunrolling`: SOURCE (Bae et al. 2024, "Training Data Attribution via
//! Approximate Unrolled Differentiation"), as Bergson 2.5.1's `approx_unrolling_pipeline`.
//!
//! The training trajectory's checkpoints are split into `L` segments of equal count; within a
//! segment the Hessian is taken as stationary (EK-FAC factors averaged over its checkpoints)
//! and the segment's optimizer steps as one `ηK_l` (learning rate times steps,
//! [`schedule`]). Each step is a sub-directory of the run path:
//!
//! 1. `segment_<l>/ckpt_<i>/<method>/`: each checkpoint's factor sums ([`factors`]);
//! 2. `segment_<l>/<method>/`: the segment's pooled factors and eigenvectors;
//! 3. `segment_<l>/ckpt_<i>/<method>/averaged_ev_correct_sharded/`: each checkpoint's
//!    squared gradients in its segment's eigenbasis;
//! 4. `segment_<l>/<method>/eigenvalue_correction_sharded/`: the segment's eigenvalues σ;
//! 5. `query/`: the query gradients at the final checkpoint (unprojected; `--path` uses an
//!    existing query index);
//!    (Adam variant: `segment_<l>/preconditioner.safetensors`, [`adam`]);
//! 6. phase 1, `segment_<l>/query_grad_backward/`: the query carried back through the later
//!    segments, `q_{l-1} = F_backward(segment l) q_l`, `q_{L-1}` the query ([`apply`],
//!    [`spectral`]);
//! 7. phase 2, `segment_<l>/query_grad_segment/`: `F_segment(segment l) q_l`;
//! 8. phase 3, `segment_<l>/scores_ckpt_<c>/`: the training data scored against phase 2's
//!    query at each of the segment's checkpoints (`bergson score`, higher is better); `scores/`:
//!    `−Σ_l mean_c` of them, saved lower-is-better as Bergson's.
//!
//! Steps 1 to 5 keep a finished output (a rerun after an interrupt continues) unless
//! `--overwrite`; phases 1 to 3 are cheap next to them and always rerun, as in Bergson.

pub mod adam;
pub mod apply;
pub mod export;
pub mod factors;
pub mod schedule;
pub mod scores;
pub mod spectral;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::build::RunOptions;
use crate::config::{ApproxUnrollingRunConfig, HessianMethod, HessianRunConfig, IndexConfig};
use crate::recipes::ekfac::{
    build_query, check_query_set, fresh_part, promote, save_recipe_config,
};
use crate::{Error, Result};

use apply::{apply_to_index, SegmentApply};
use spectral::EigenFunction;

/// What a finished pipeline did.
#[derive(Debug, Clone)]
pub struct ApproxUnrollingSummary {
    /// The run directory.
    pub run_path: PathBuf,
    /// The summed scores.
    pub scores_path: PathBuf,
    /// Segments.
    pub segments: usize,
    /// Checkpoints.
    pub checkpoints: usize,
    /// `ηK` of each segment (momentum-scaled).
    pub lr_times_steps: Vec<f64>,
    /// `(step, seconds)` of the steps run.
    pub timings: Vec<(&'static str, f64)>,
}

impl std::fmt::Display for ApproxUnrollingSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SOURCE over {} checkpoints in {} segments (lr·steps {:?}): ",
            self.checkpoints, self.segments, self.lr_times_steps
        )?;
        super::write_summary(f, &self.scores_path, &self.timings)
    }
}

/// Refuses what Bergson refuses, before anything is written.
pub fn check_config(cfg: &ApproxUnrollingRunConfig) -> Result<()> {
    let s = &cfg.approx_unrolling_cfg;
    let n = s.checkpoints.len();
    if cfg.index_cfg.run_path.is_empty() {
        return Err(Error::input(
            "no run path given: `bergson approxunrolling <run_path> --method kfac \
             --ev_correction true --checkpoints ... --data.dataset ... --query.dataset ...`",
        ));
    }
    if n == 0 {
        return Err(Error::input(
            "no checkpoints given: pass --checkpoints with the training checkpoints in order",
        ));
    }
    if s.segments < 1 {
        return Err(Error::input(format!(
            "--segments must be at least 1, got {}",
            s.segments
        )));
    }
    if !n.is_multiple_of(s.segments) {
        return Err(Error::input(format!(
            "--checkpoints ({n}) must be divisible by --segments ({}); got {:.3} per segment",
            s.segments,
            n as f64 / s.segments as f64
        )));
    }
    if !cfg.hessian_cfg.ev_correction {
        return Err(Error::input(
            "SOURCE needs EK-FAC's eigenvalue correction: pass --ev_correction true",
        ));
    }
    if cfg.hessian_cfg.method == HessianMethod::Autocorrelation {
        return Err(Error::input(
            "SOURCE needs a factored Hessian: pass --method kfac (or tkfac, shampoo)",
        ));
    }
    check_query_set(&s.query)
}

/// Refuses a checkpoint that is not a model directory, or lacks the Adam variant's optimizer
/// state (after [`export::ensure_exported`]).
fn check_checkpoints(checkpoints: &[String], adam: bool) -> Result<()> {
    for c in checkpoints {
        if !Path::new(c).join("config.json").is_file() {
            return Err(Error::input(format!(
                "checkpoint {c} is not a model directory (no config.json); pass the training \
                 checkpoints (HF model directories or `bergson train`'s step_<n>.ckpt) to \
                 --checkpoints"
            )));
        }
        if adam {
            let state = Path::new(c).join(adam::OPTIMIZER_STATE);
            if !state.is_file() {
                return Err(adam::missing_state(&state));
            }
        }
    }
    Ok(())
}

/// Whether a checkpoint's model stores its linear weights `[in, out]` (GPT-2's Conv1D).
fn weights_transposed(checkpoint: &str) -> bool {
    std::fs::read_to_string(Path::new(checkpoint).join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v.get("model_type")
                .and_then(|m| m.as_str())
                .map(|m| m == "gpt2")
        })
        .unwrap_or(false)
}

/// Runs a step unless its output exists (kept unless `overwrite`).
fn step<F: FnMut() -> Result<()>>(
    name: &str,
    out: &Path,
    overwrite: bool,
    quiet: bool,
    mut f: F,
) -> Result<bool> {
    if out.is_dir() && !overwrite {
        if !quiet {
            eprintln!("{name}: skipping, already complete at {}", out.display());
        }
        return Ok(false);
    }
    if !quiet {
        eprintln!("{name}...");
    }
    f()?;
    Ok(true)
}

/// Runs `bergson approxunrolling`.
pub fn run(cfg: &ApproxUnrollingRunConfig, opts: &RunOptions) -> Result<ApproxUnrollingSummary> {
    check_config(cfg)?;
    let run_path = PathBuf::from(&cfg.index_cfg.run_path);
    // The config as given, before the training run fills it in (as Bergson saves it).
    save_recipe_config("approxunrolling", &run_path, cfg)?;
    let mut cfg = cfg.clone();
    let s = &mut cfg.approx_unrolling_cfg;
    s.checkpoints = export::ensure_exported(&s.checkpoints)?;
    check_checkpoints(&s.checkpoints, s.use_adam_preconditioner)?;
    schedule::resolve(s);
    let s = &cfg.approx_unrolling_cfg;
    let eta_k = schedule::lr_times_steps(s)?;
    let icfg = &cfg.index_cfg;
    let (overwrite, quiet, device) = (icfg.overwrite, opts.quiet, opts.device);
    let method = cfg.hessian_cfg.method.as_str();
    let n_segments = s.segments;
    let per_segment = s.checkpoints.len() / n_segments;
    let segment_dir = |l: usize| run_path.join(format!("segment_{l}"));
    let ckpt_dir = |c: usize| {
        segment_dir(c / per_segment)
            .join(format!("ckpt_{}", c % per_segment))
            .join(method)
    };
    let segment_factors = |l: usize| segment_dir(l).join(method);
    let hcfg = HessianRunConfig {
        hessian_cfg: cfg.hessian_cfg.clone(),
        index_cfg: icfg.clone(),
    };
    let mut timings = Vec::new();
    // A stage's time is recorded when one of its steps ran (a resumed stage is absent).
    let mut timed = |name: &'static str, start: Instant, ran: bool| {
        if ran {
            timings.push((name, start.elapsed().as_secs_f64()));
        }
    };

    let start = Instant::now();
    let mut ran = false;
    for (c, ckpt) in s.checkpoints.iter().enumerate() {
        let name = format!(
            "step 1/8: fitting {method} factors at checkpoint {}/{} ({ckpt})",
            c + 1,
            s.checkpoints.len()
        );
        ran |= step(&name, &ckpt_dir(c), overwrite, quiet, || {
            factors::fit_checkpoint_covariances(&hcfg, ckpt, &ckpt_dir(c), device)
        })?;
    }
    timed("checkpoint factors", start, ran);

    let start = Instant::now();
    let mut ran = false;
    for l in 0..n_segments {
        let name = format!("step 2/8: pooling and eigendecomposing segment {l}'s factors");
        let dirs: Vec<PathBuf> = (0..per_segment)
            .map(|i| ckpt_dir(l * per_segment + i))
            .collect();
        ran |= step(&name, &segment_factors(l), overwrite, quiet, || {
            factors::aggregate_segment_covariances(&dirs, &segment_factors(l))
        })?;
    }
    timed("segment eigenvectors", start, ran);

    let start = Instant::now();
    let mut ran = false;
    let lambdas_of = |c: usize| ckpt_dir(c).join(factors::CHECKPOINT_LAMBDAS);
    for (c, ckpt) in s.checkpoints.iter().enumerate() {
        let name = format!(
            "step 3/8: EK-FAC eigenvalues at checkpoint {}/{} in its segment's eigenbasis",
            c + 1,
            s.checkpoints.len()
        );
        let seg = segment_factors(c / per_segment);
        ran |= step(&name, &lambdas_of(c), overwrite, quiet, || {
            factors::fit_checkpoint_lambdas(&hcfg, ckpt, &seg, &lambdas_of(c), device)
        })?;
    }
    timed("checkpoint eigenvalues", start, ran);

    let start = Instant::now();
    let mut ran = false;
    for l in 0..n_segments {
        let name = format!("step 4/8: averaging segment {l}'s eigenvalues");
        let dirs: Vec<PathBuf> = (0..per_segment)
            .map(|i| lambdas_of(l * per_segment + i))
            .collect();
        let out = segment_factors(l).join(crate::index::factor_store::EIGENVALUE_CORRECTION);
        ran |= step(&name, &out, overwrite, quiet, || {
            factors::aggregate_segment_lambdas(&dirs, &out)
        })?;
    }
    timed("segment eigenvalues", start, ran);

    let start = Instant::now();
    let mut ran = false;
    let last = s.checkpoints.last().expect("checked non-empty").clone();
    let query_path = if s.query.path.is_empty() {
        let path = run_path.join("query");
        let qcfg = IndexConfig {
            model: last.clone(),
            projection_dim: 0,
            overwrite: true,
            ..icfg.clone()
        };
        ran |= step(
            "step 5/8: building the query gradients at the final checkpoint",
            &path,
            overwrite,
            quiet,
            || {
                if path.exists() {
                    crate::index::removal::remove_scratch(&path)?;
                }
                build_query(&qcfg, &s.query, &path, opts)
            },
        )?;
        path
    } else {
        if !quiet {
            eprintln!(
                "step 5/8: using the existing query index at {}",
                s.query.path
            );
        }
        PathBuf::from(&s.query.path)
    };
    timed("query", start, ran);

    let segment_checkpoints: Vec<Vec<String>> = (0..n_segments)
        .map(|l| s.checkpoints[l * per_segment..(l + 1) * per_segment].to_vec())
        .collect();
    let preconditioners = if s.use_adam_preconditioner {
        if !quiet {
            eprintln!("building the segments' Adam preconditioners...");
        }
        let dirs: Vec<PathBuf> = (0..n_segments).map(segment_factors).collect();
        // Unnamed entries (HF Trainer's) are mapped through the first checkpoint's model,
        // loaded on the CPU only when needed.
        let reference = IndexConfig {
            model: s.checkpoints[0].clone(),
            ..icfg.clone()
        };
        let mut model: Option<Box<dyn crate::models::CausalLm>> = None;
        let mut index_names = |state: &crate::pickle::Value| {
            if model.is_none() {
                let (_, dir, _) = crate::setup::load_tokenizer(&reference)?;
                model = Some(crate::setup::load_model(
                    &reference,
                    &dir,
                    tch::Device::Cpu,
                )?);
            }
            let m = model.as_deref().expect("loaded above");
            crate::collect::optimizer_state::index_to_name(m, state)
        };
        adam::build_segment_preconditioners(
            &dirs,
            &segment_checkpoints,
            weights_transposed(&s.checkpoints[0]),
            &mut index_names,
        )?
    } else {
        Vec::new()
    };
    let adam_of = |l: usize| preconditioners.get(l).map(PathBuf::as_path);
    let batch_size = s.inversion_cfg.apply_batch_size;

    let start = Instant::now();
    if !quiet {
        eprintln!(
            "step 6/8: phase 1, carrying the query back through the segments (F_backward)..."
        );
    }
    let mut query_grads = vec![PathBuf::new(); n_segments];
    query_grads[n_segments - 1] = query_path.clone();
    for k in (1..n_segments).rev() {
        let dst = segment_dir(k - 1).join("query_grad_backward");
        let part = fresh_part(&dst)?;
        let a = SegmentApply {
            segment: &segment_factors(k),
            eta_k: eta_k[k],
            function: EigenFunction::Backward,
            adam: adam_of(k),
            inversion: None,
            batch_size,
        };
        apply_to_index(&a, &query_grads[k], &part, device)?;
        promote(&part, &dst)?;
        query_grads[k - 1] = dst;
    }
    if !quiet {
        eprintln!("step 7/8: phase 2, each segment's contribution (F_segment)...");
    }
    let mut segment_queries = Vec::with_capacity(n_segments);
    for (l, src) in query_grads.iter().enumerate() {
        let dst = segment_dir(l).join("query_grad_segment");
        let part = fresh_part(&dst)?;
        let adam = adam_of(l);
        let a = SegmentApply {
            segment: &segment_factors(l),
            eta_k: eta_k[l],
            function: EigenFunction::Segment,
            adam,
            inversion: adam.map(|_| &s.inversion_cfg),
            batch_size,
        };
        apply_to_index(&a, src, &part, device)?;
        promote(&part, &dst)?;
        segment_queries.push(dst);
    }
    timed("phases 1-2", start, true);

    let start = Instant::now();
    let scores_path = run_path.join("scores");
    scores::score_segments(
        &cfg,
        &segment_queries,
        &segment_checkpoints,
        &scores_path,
        opts,
    )?;
    timed("scores", start, true);
    Ok(ApproxUnrollingSummary {
        run_path,
        scores_path,
        segments: n_segments,
        checkpoints: s.checkpoints.len(),
        lr_times_steps: eta_k,
        timings,
    })
}
