//! Phase 3 of SOURCE (Bergson 2.5.1's `score_per_segment_and_aggregate`): each segment's
//! transformed query scored against the training data at every checkpoint of the segment
//! (`segment_<l>/scores_ckpt_<c>/`, `bergson score`, higher is better), and the SOURCE scores
//! `−Σ_l mean_c` of them in `scores/`, saved lower-is-better.

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::build::RunOptions;
use crate::config::{
    ApproxUnrollingRunConfig, IndexConfig, PreprocessConfig, ScoreConfig, ScoreRunConfig,
};
use crate::index::score_store::{ScoreStore, ScoreWriter};
use crate::recipes::ekfac::{fresh_part, promote, save_recipe_config};
use crate::{score, Error, Result};

/// Phase 3: each segment's query scored at its checkpoints, negated (the scores are saved
/// higher-is-better), averaged over the checkpoints and summed over the segments, in float32
/// as Bergson's; written to `out` with a lower-is-better score config.
pub fn score_segments(
    cfg: &ApproxUnrollingRunConfig,
    segment_queries: &[PathBuf],
    segment_checkpoints: &[Vec<String>],
    out: &Path,
    opts: &RunOptions,
) -> Result<()> {
    let icfg = &cfg.index_cfg;
    let s = &cfg.approx_unrolling_cfg;
    let run_path = PathBuf::from(&icfg.run_path);
    let quiet = opts.quiet;
    let mut total: Option<Tensor> = None;
    let mut first_dir = None;
    for (l, (query, ckpts)) in segment_queries.iter().zip(segment_checkpoints).enumerate() {
        let mut seg_total: Option<Tensor> = None;
        for (c, ckpt) in ckpts.iter().enumerate() {
            let dir = run_path
                .join(format!("segment_{l}"))
                .join(format!("scores_ckpt_{c}"));
            if !quiet {
                eprintln!(
                    "step 8/8: phase 3, scoring the training data for segment {l} at checkpoint \
                     {}/{}...",
                    c + 1,
                    ckpts.len()
                );
            }
            for p in [
                dir.clone(),
                PathBuf::from(format!("{}.part", dir.display())),
            ] {
                if p.exists() {
                    crate::index::removal::remove_scratch(&p)?;
                }
            }
            let scfg = ScoreRunConfig {
                score_cfg: ScoreConfig {
                    query_path: query.to_string_lossy().into_owned(),
                    higher_is_better: true,
                    query_batch_size: s.query_batch_size,
                    ..ScoreConfig::default()
                },
                index_cfg: IndexConfig {
                    model: ckpt.clone(),
                    run_path: dir.to_string_lossy().into_owned(),
                    projection_dim: 0,
                    ..icfg.clone()
                },
                preprocess_cfg: PreprocessConfig::default(),
            };
            score::run(&scfg, opts)?;
            let scores = read_scores(&dir)?.f_neg()?;
            seg_total = Some(match seg_total {
                None => scores,
                Some(t) => t.f_add(&scores)?,
            });
            first_dir.get_or_insert(dir);
        }
        let seg = seg_total
            .ok_or_else(|| Error::internal("a segment without checkpoints"))?
            .f_div_scalar(ckpts.len() as f64)?;
        total = Some(match total {
            None => seg,
            Some(t) => t.f_add(&seg)?,
        });
    }
    let total = total.ok_or_else(|| Error::internal("no segments"))?;
    let first = ScoreStore::open(first_dir.as_ref().expect("scored at least once"))?;
    let part = fresh_part(out)?;
    let (rows, cols) = total.size2()?;
    let mut writer = ScoreWriter::create(
        &part,
        first.num_items(),
        rows as usize,
        cols as usize,
        Kind::Float,
        first.attribute_tokens(),
        false,
    )?;
    let all: Vec<usize> = (0..rows as usize).collect();
    writer.write(&all, &total, 0)?;
    writer.sync()?;
    if first.attribute_tokens() {
        let from = first.dir().join("offsets.npy");
        let to = part.join("offsets.npy");
        std::fs::copy(&from, &to).map_err(|e| Error::io(&from, e))?;
    }
    let saved = ScoreRunConfig {
        score_cfg: ScoreConfig {
            higher_is_better: false,
            ..ScoreConfig::default()
        },
        index_cfg: IndexConfig {
            run_path: out.to_string_lossy().into_owned(),
            ..icfg.clone()
        },
        preprocess_cfg: PreprocessConfig::default(),
    };
    save_recipe_config("score", &part, &saved)?;
    promote(&part, out)
}

/// A score store's values `[rows, scores]` as float32 (unwritten entries 0).
fn read_scores(dir: &Path) -> Result<Tensor> {
    let store = ScoreStore::open(dir)?;
    let (rows, cols) = (store.num_rows(), store.num_scores());
    let mut values = vec![0f32; rows * cols];
    for c in 0..cols {
        for (r, v) in store.column(c).into_iter().enumerate() {
            values[r * cols + c] = v.unwrap_or(0.0);
        }
    }
    Ok(Tensor::f_from_slice(&values)?.f_reshape([rows as i64, cols as i64])?)
}
