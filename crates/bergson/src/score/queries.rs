//! The query side of `bergson score` (Bergson's `get_query_grads` and
//! `normalize_and_aggregate_grads`): read the query index's gradients per module, then unit
//! normalise and aggregate them unless the query index already did (its saved
//! `preprocess_cfg` says so: nothing is applied twice).

use std::ops::Range;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::config::run_file::load_subconfig;
use crate::config::{Aggregation, PreprocessConfig};
use crate::index::GradientIndex;
use crate::{Error, Result};

/// Opens a finished query index, with errors that say what is wrong with it.
pub fn open_query_index(path: &str) -> Result<GradientIndex> {
    if path.is_empty() {
        return Err(Error::input(
            "--query_path is required: the query index (a `bergson build` or `bergson reduce` run) to score against",
        ));
    }
    let dir = Path::new(path);
    if !dir.exists() {
        let part = format!("{path}.part");
        if Path::new(&part).exists() {
            return Err(Error::input(format!(
                "query index {path} is unfinished ({part} exists): rerun the build that made it \
                 to finish it, then score"
            )));
        }
        return Err(Error::input(format!(
            "query index {path} does not exist; build one first (`bergson build {path} --model \
             ... --dataset <queries>`)"
        )));
    }
    if path.trim_end_matches('/').ends_with(".part") || !dir.join("info.json").exists() {
        return Err(Error::input(format!(
            "{path} is not a finished gradient index (no info.json, or a `.part` directory); \
             pass the run path of a completed `bergson build`"
        )));
    }
    GradientIndex::open(dir)
}

/// The preprocessing the query index applied when it was built (defaults when its config does
/// not say).
pub fn saved_preprocess(dir: &Path) -> Result<PreprocessConfig> {
    Ok(load_subconfig(dir, "preprocess_cfg")?.unwrap_or_default())
}

/// Each of `modules`' query gradients `[Q, size]` of rows `rows` (all when `None`): float32
/// for a bfloat16 index (numpy cannot hold bfloat16), the stored dtype otherwise.
pub fn read_queries(
    index: &GradientIndex,
    modules: &[String],
    rows: Option<Range<usize>>,
) -> Result<Vec<(String, Tensor)>> {
    let rows = rows.unwrap_or(0..index.num_rows());
    let all = index.rows(rows)?;
    let all = if all.kind() == Kind::BFloat16 {
        all.f_to_kind(Kind::Float)?
    } else {
        all
    };
    modules
        .iter()
        .map(|name| {
            let cols = index.module_columns(name).ok_or_else(|| {
                Error::input(format!(
                    "module '{name}' is not in the query index {}; it has: {}",
                    index.dir().display(),
                    index
                        .info
                        .grad_sizes
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            Ok((
                name.clone(),
                all.f_narrow(1, cols.start as i64, cols.len() as i64)?
                    .f_contiguous()?,
            ))
        })
        .collect()
}

/// Bergson's `normalize_and_aggregate_grads`: rows unit-normalised over all `queries` modules
/// together (no epsilon), then reduced to one row (mean or sum), then that row normalised.
/// Computed in float32 when anything is applied; otherwise the gradients pass unchanged (as in
/// Bergson, `normalize_aggregated` alone, without aggregation or unit norm, does nothing).
pub fn normalize_and_aggregate(
    queries: Vec<(String, Tensor)>,
    unit_normalize: bool,
    aggregation: Aggregation,
    normalize_aggregated: bool,
) -> Result<Vec<(String, Tensor)>> {
    if aggregation == Aggregation::None && !unit_normalize {
        return Ok(queries);
    }
    let mut q: Vec<(String, Tensor)> = queries
        .into_iter()
        .map(|(n, t)| Ok((n, t.f_to_kind(Kind::Float)?)))
        .collect::<Result<_>>()?;
    if unit_normalize {
        let parts: Vec<&Tensor> = q.iter().map(|(_, t)| t).collect();
        let norms = Tensor::f_cat(&parts, 1)?.f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?;
        q = q
            .into_iter()
            .map(|(n, t)| Ok((n, t.f_div(&norms)?)))
            .collect::<Result<_>>()?;
    }
    q = match aggregation {
        Aggregation::None => q,
        Aggregation::Mean => q
            .into_iter()
            .map(|(n, t)| Ok((n, t.f_mean_dim([0i64].as_slice(), true, Kind::Float)?)))
            .collect::<Result<_>>()?,
        Aggregation::Sum => q
            .into_iter()
            .map(|(n, t)| {
                Ok((
                    n,
                    t.f_sum_dim_intlist([0i64].as_slice(), true, Kind::Float)?,
                ))
            })
            .collect::<Result<_>>()?,
    };
    if normalize_aggregated {
        let flat: Vec<Tensor> = q
            .iter()
            .map(|(_, t)| t.f_flatten(0, -1))
            .collect::<std::result::Result<_, _>>()?;
        let norm = Tensor::f_cat(&flat, 0)?.f_norm()?;
        q = q
            .into_iter()
            .map(|(n, t)| Ok((n, t.f_div(&norm)?)))
            .collect::<Result<_>>()?;
    }
    Ok(q)
}

/// Which preprocessing still applies to the queries: the run's settings, minus what the query
/// index's own saved settings say it already did (Bergson's `create_scorer`).
pub fn remaining_preprocess(
    run: &PreprocessConfig,
    query: &PreprocessConfig,
) -> (bool, Aggregation, bool) {
    let aggregation = if query.aggregation != Aggregation::None {
        Aggregation::None
    } else {
        run.aggregation
    };
    let unit = !query.unit_normalize && run.unit_normalize;
    let normalize_aggregated = !query.normalize_aggregated_grad && run.normalize_aggregated_grad;
    (unit, aggregation, normalize_aggregated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], rows: i64) -> Tensor {
        Tensor::from_slice(v).reshape([rows, -1])
    }

    #[test]
    fn unit_normalises_over_all_modules_then_aggregates_then_normalises() {
        let q = vec![
            ("a".to_string(), t(&[3.0, 0.0, 0.0, 2.0], 2)),
            ("b".to_string(), t(&[4.0, 0.0], 2)),
        ];
        let out = normalize_and_aggregate(q, true, Aggregation::Sum, false).unwrap();
        // Row 0: (3, 0 | 4) / 5; row 1: (0, 2 | 0) / 2; summed.
        assert_eq!(
            Vec::<f32>::try_from(&out[0].1.reshape([-1])).unwrap(),
            [0.6, 1.0]
        );
        assert_eq!(
            Vec::<f32>::try_from(&out[1].1.reshape([-1])).unwrap(),
            [0.8]
        );
        let q = vec![("a".to_string(), t(&[3.0, 4.0, 1.0, 0.0], 2))];
        let out = normalize_and_aggregate(q, false, Aggregation::Mean, true).unwrap();
        let v = Vec::<f32>::try_from(&out[0].1.reshape([-1])).unwrap();
        let n = (2.0f32 * 2.0 + 2.0 * 2.0).sqrt();
        assert!((v[0] - 2.0 / n).abs() < 1e-6 && (v[1] - 2.0 / n).abs() < 1e-6);
    }

    #[test]
    fn nothing_applies_twice() {
        let run = PreprocessConfig {
            unit_normalize: true,
            aggregation: Aggregation::Mean,
            normalize_aggregated_grad: true,
            ..PreprocessConfig::default()
        };
        assert_eq!(
            remaining_preprocess(&run, &PreprocessConfig::default()),
            (true, Aggregation::Mean, true)
        );
        assert_eq!(
            remaining_preprocess(&run, &run),
            (false, Aggregation::None, false)
        );
    }
}
