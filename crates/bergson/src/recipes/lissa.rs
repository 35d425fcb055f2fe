//! `bergson lissa`: LiSSA influence end to end (Bergson 2.5.1's `lissa_pipeline`), each step a
//! sub-directory of the run path:
//!
//! 1. `query/`: the query gradients (as `bergson ekfac`'s step 1; unprojected);
//! 2. `lissa_query/`: each query's `(G + damping·I)⁻¹ q` estimated by LiSSA
//!    ([`crate::hessians::lissa`]) with Gauss-Newton products on random training batches, in
//!    the query's layout and dtype;
//! 3. `scores/`: the training data scored against it (`bergson score`, higher is better).
//!
//! Resuming works as for `bergson ekfac` (`--resume` skips finished steps).

use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{Kind, Tensor};

use super::ekfac::{
    build_query, check_query_set, fresh_part, promote, save_recipe_config, step_runs,
};
use crate::build::{prepare_data, RunOptions};
use crate::config::{IndexConfig, LissaRunConfig, LossFn, ScoreRunConfig};
use crate::error::IoContext;
use crate::hessians::gauss_newton::GaussNewtonProduct;
use crate::hessians::lissa::{lissa, LissaSettings};
use crate::index::{GradientFile, GradientIndex, IndexInfo};
use crate::progress::Phase;
use crate::{interrupt, score, setup, Error, Result};

/// What a finished pipeline did.
#[derive(Debug, Clone)]
pub struct LissaSummary {
    /// The score directory.
    pub scores_path: PathBuf,
    /// `(step, seconds)` of the steps run.
    pub timings: Vec<(&'static str, f64)>,
}

impl std::fmt::Display for LissaSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        super::write_summary(f, &self.scores_path, &self.timings)
    }
}

/// Refuses what Bergson refuses before anything runs.
pub fn check_config(cfg: &LissaRunConfig) -> Result<()> {
    let (icfg, l) = (&cfg.index_cfg, &cfg.lissa_cfg);
    if cfg.preprocess_cfg.unit_normalize {
        return Err(Error::input(
            "LiSSA does not support --unit_normalize: its solutions are scored by inner \
             products; drop --unit_normalize",
        ));
    }
    if icfg.projection_dim > 0 {
        return Err(Error::input(format!(
            "LiSSA needs full gradients, got --projection_dim {}; pass --projection_dim 0",
            icfg.projection_dim
        )));
    }
    if icfg.loss_fn != LossFn::Ce {
        return Err(Error::input(format!(
            "LiSSA's Gauss-Newton products support --loss_fn ce only, got {}",
            icfg.loss_fn
        )));
    }
    if l.batch_size == 0 || l.micro_batch_size == 0 || l.repeats == 0 {
        return Err(Error::input(
            "--lissa_cfg.batch_size, --micro_batch_size and --repeats must be at least 1",
        ));
    }
    if l.scale.is_nan() || l.scale <= 0.0 {
        return Err(Error::input(format!(
            "--scale must be positive (it divides the damped Hessian), got {}",
            l.scale
        )));
    }
    check_query_set(&l.query)?;
    setup::check_index_config(icfg)
}

/// Step 2: LiSSA solutions of every query row of `query`, written to `<path>.part` in the
/// query's layout and renamed to `path`.
fn solve_step(cfg: &LissaRunConfig, query: &Path, path: &Path, opts: &RunOptions) -> Result<()> {
    let (icfg, l) = (&cfg.index_cfg, &cfg.lissa_cfg);
    let index = GradientIndex::open(query)?;
    let names: Vec<String> = index
        .info
        .grad_sizes
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    let (tokenizer, model_dir, max_positions) = setup::load_tokenizer(icfg)?;
    let data = prepare_data(icfg, &tokenizer, max_positions)?;
    let mut model = setup::load_model(icfg, &model_dir, opts.device)?;
    // Double backward through attention needs the composite (math) kernel; Bergson runs the
    // products with eager attention too.
    model.set_math_attention(true);
    let product = GaussNewtonProduct::new(
        &*model,
        &data.rows,
        &names,
        icfg.include_bias,
        icfg.loss_reduction,
        icfg.logit_scale,
        l.micro_batch_size,
    )?;
    for (m, (_, width)) in product.modules().iter().zip(&index.info.grad_sizes) {
        let want = m.out_features * (m.in_features + i64::from(m.bias));
        if *width as i64 != want {
            return Err(Error::input(format!(
                "module '{}' has {width} values per row in the query index {} but the model's \
                 weight (with --include_bias {}) has {want}; build the query with this run's \
                 model and --include_bias",
                m.name,
                query.display(),
                icfg.include_bias
            )));
        }
    }
    let part = fresh_part(path)?;
    let num_queries = index.num_rows();
    let kind = index.kind();
    let file = GradientFile::create(&part, num_queries, index.row_len(), kind, false)?;
    let settings = LissaSettings {
        damping: l.damping,
        scale: l.scale,
        depth: l.depth,
        repeats: l.repeats,
        batch_size: l.batch_size,
        seed: l.seed,
    };
    let mut phase = Phase::new("LiSSA", "queries", Some(num_queries as u64));
    for row in 0..num_queries {
        interrupt::check()?;
        let q: Vec<Tensor> = names
            .iter()
            .map(|n| {
                Ok(index
                    .module_rows(n, row..row + 1)?
                    .f_to_kind(Kind::Float)?
                    .f_reshape([-1])?
                    .f_to_device(model.device())?)
            })
            .collect::<Result<_>>()?;
        let x = lissa(&product, &q, &settings, row)?;
        let out = Tensor::f_cat(&x, 0)?
            .f_unsqueeze(0)?
            .f_to_device(tch::Device::Cpu)?
            .f_to_kind(kind)?;
        file.write_rows(row, &out)?;
        phase.inc(1);
    }
    phase.finish();
    file.sync()?;
    IndexInfo {
        attribute_tokens: false,
        num_items: num_queries,
        num_grads: num_queries,
        grad_sizes: index.info.grad_sizes.clone(),
        base_dtype: index.info.base_dtype.clone(),
    }
    .write(&part)?;
    let from = query.join("processor_config.yaml");
    let to = part.join("processor_config.yaml");
    std::fs::copy(&from, &to).at_path(&from)?;
    promote(&part, path)
}

/// Runs `bergson lissa`.
pub fn run(cfg: &LissaRunConfig, opts: &RunOptions) -> Result<LissaSummary> {
    check_config(cfg)?;
    let (icfg, l) = (&cfg.index_cfg, &cfg.lissa_cfg);
    if icfg.run_path.is_empty() {
        return Err(Error::input(
            "no run path given: `bergson lissa <run_path> --model ... --data.dataset ... --query.dataset ...`",
        ));
    }
    let run_path = PathBuf::from(&icfg.run_path);
    save_recipe_config("lissa", &run_path, cfg)?;
    let (resume, overwrite, quiet) = (l.resume, icfg.overwrite, opts.quiet);
    let mut timings = Vec::new();
    let mut timed = |name: &'static str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let start = Instant::now();
        f()?;
        timings.push((name, start.elapsed().as_secs_f64()));
        Ok(())
    };

    let query_path = if l.query.path.is_empty() {
        let path = run_path.join("query");
        let name = "step 1/3: building the query gradients";
        if step_runs(name, &path, resume, overwrite, true, quiet)? {
            timed("query", &mut || build_query(icfg, &l.query, &path, opts))?;
        }
        path
    } else {
        PathBuf::from(&l.query.path)
    };

    let solution = run_path.join("lissa_query");
    let name = "step 2/3: estimating (G + damping I)^-1 q with LiSSA";
    if step_runs(name, &solution, resume, overwrite, false, quiet)? {
        timed("lissa", &mut || {
            solve_step(cfg, &query_path, &solution, opts)
        })?;
    }

    let scores_path = run_path.join("scores");
    let name = "step 3/3: scoring the training data against the LiSSA solutions";
    if step_runs(name, &scores_path, resume, overwrite, true, quiet)? {
        let mut score_cfg = cfg.score_cfg.clone();
        score_cfg.query_path = solution.to_string_lossy().into_owned();
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
    Ok(LissaSummary {
        scores_path,
        timings,
    })
}
