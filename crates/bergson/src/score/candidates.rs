//! Scoring only the rows an earlier run ranked highest (Bergson's `select_candidates`): the
//! sorted union over the earlier run's query columns of each column's best `top_k` (or
//! `fraction`) rows, or the rows a `bergson query --record` CSV lists.

use std::collections::BTreeSet;
use std::path::Path;

use crate::config::run_file::load_subconfig;
use crate::config::{CandidateConfig, CandidateDirection, ScoreConfig};
use crate::index::score_store::ScoreStore;
use crate::{Error, Result};

/// Python's `round` (halves to even).
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// Rows kept per query column.
pub fn candidate_count(cfg: &CandidateConfig, num_rows: usize) -> Result<usize> {
    // 0 is the flag's "unset"; any other value outside (0, 1] (NaN too) is named as such.
    if cfg.fraction != 0.0 && !(cfg.fraction > 0.0 && cfg.fraction <= 1.0) {
        return Err(Error::input(format!(
            "--fraction must be in (0, 1]; got {}",
            cfg.fraction
        )));
    }
    if (cfg.top_k > 0) == (cfg.fraction > 0.0) {
        return Err(Error::input(
            "with --scores (candidates), set exactly one of --top_k and --fraction",
        ));
    }
    if cfg.top_k > 0 {
        return Ok(cfg.top_k.min(num_rows));
    }
    Ok((round_half_even(cfg.fraction * num_rows as f64) as usize).max(1))
}

/// The sorted training rows to score, out of `num_rows`.
pub fn select_candidates(cfg: &CandidateConfig, num_rows: usize) -> Result<Vec<usize>> {
    if cfg.scores.ends_with(".csv") {
        return from_query_record(cfg, num_rows);
    }
    let dir = Path::new(&cfg.scores);
    if !dir.join("scores.bin").exists() {
        return Err(Error::input(format!(
            "--scores {}: not a score run directory (no scores.bin) nor a `query --record` .csv",
            cfg.scores
        )));
    }
    let store = ScoreStore::open(dir)?;
    if store.offsets().is_some() {
        return Err(Error::input(format!(
            "--scores {} holds per-token scores; candidates need per-document scores",
            cfg.scores
        )));
    }
    let rows = store.info.num_rows;
    if rows != num_rows {
        return Err(Error::input(format!(
            "--scores {} has {rows} rows; this run's dataset has {num_rows}; use the same \
             dataset and split",
            cfg.scores
        )));
    }
    let (values, written) = store.values()?;
    if written.iter().any(|w| !w) {
        return Err(Error::input(format!(
            "--scores {} is incomplete (some scores were never written)",
            cfg.scores
        )));
    }
    let count = candidate_count(cfg, num_rows)?;
    if count >= num_rows {
        return Ok((0..num_rows).collect());
    }
    let higher_is_better = match cfg.higher_is_better {
        Some(h) => h,
        None => load_subconfig::<ScoreConfig>(dir, "score_cfg")?
            .map(|s| s.higher_is_better)
            .ok_or_else(|| {
                Error::input(format!(
                    "{} has no saved score_cfg; set --candidates.higher_is_better",
                    cfg.scores
                ))
            })?,
    };
    let keep_high = higher_is_better == (cfg.direction == CandidateDirection::Proponents);
    let cols = store.info.num_scores;
    let mut kept = BTreeSet::new();
    for c in 0..cols {
        let mut order: Vec<usize> = (0..num_rows).collect();
        let key = |r: usize| {
            let v = values[r * cols + c];
            if keep_high {
                -v
            } else {
                v
            }
        };
        order.sort_by(|&a, &b| key(a).total_cmp(&key(b)).then(a.cmp(&b)));
        kept.extend(order.into_iter().take(count));
    }
    Ok(kept.into_iter().collect())
}

/// The rows each recorded query kept in the wanted direction (`top_k` per query, or all).
fn from_query_record(cfg: &CandidateConfig, num_rows: usize) -> Result<Vec<usize>> {
    if cfg.fraction > 0.0 {
        return Err(Error::input(
            "--fraction does not apply to a `query --record` CSV; use --top_k",
        ));
    }
    let wanted = match cfg.direction {
        CandidateDirection::Proponents => "Top",
        CandidateDirection::Detractors => "Bottom",
    };
    let mut reader = csv::Reader::from_path(&cfg.scores)
        .map_err(|e| Error::input(format!("--scores {}: {e}", cfg.scores)))?;
    let headers = reader
        .headers()
        .map_err(|e| Error::input(format!("--scores {}: {e}", cfg.scores)))?
        .clone();
    let col = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            Error::input(format!(
                "--scores {}: no `{name}` column; pass the CSV `bergson query --record` writes",
                cfg.scores
            ))
        })
    };
    let (q, d, idx) = (col("query")?, col("direction")?, col("result_index")?);
    // Queries in first-seen order, each with its rows in file order.
    let mut per_query: Vec<(String, Vec<usize>)> = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| Error::input(format!("--scores {}: {e}", cfg.scores)))?;
        if record.get(d) != Some(wanted) {
            continue;
        }
        let row: usize = record
            .get(idx)
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                Error::input(format!(
                    "--scores {}: result_index '{}' is not a row number",
                    cfg.scores,
                    record.get(idx).unwrap_or("")
                ))
            })?;
        let query = record.get(q).unwrap_or("").to_string();
        match per_query.iter_mut().find(|(k, _)| *k == query) {
            Some((_, rows)) => rows.push(row),
            None => per_query.push((query, vec![row])),
        }
    }
    if per_query.is_empty() {
        return Err(Error::input(format!(
            "--scores {} has no {wanted} rows",
            cfg.scores
        )));
    }
    let take = if cfg.top_k > 0 { cfg.top_k } else { usize::MAX };
    let kept: BTreeSet<usize> = per_query
        .iter()
        .flat_map(|(_, rows)| rows.iter().copied().take(take))
        .collect();
    if let Some(&last) = kept.iter().next_back() {
        if last >= num_rows {
            return Err(Error::input(format!(
                "--scores {} refers to row {last}; this run's dataset has {num_rows} rows",
                cfg.scores
            )));
        }
    }
    Ok(kept.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_like_python() {
        let cfg = |top_k, fraction| CandidateConfig {
            top_k,
            fraction,
            ..CandidateConfig::default()
        };
        assert_eq!(candidate_count(&cfg(3, 0.0), 10).unwrap(), 3);
        assert_eq!(candidate_count(&cfg(30, 0.0), 10).unwrap(), 10);
        assert_eq!(candidate_count(&cfg(0, 0.25), 10).unwrap(), 2); // round(2.5) = 2
        assert_eq!(candidate_count(&cfg(0, 0.35), 10).unwrap(), 4); // round(3.5) = 4
        assert_eq!(candidate_count(&cfg(0, 0.01), 10).unwrap(), 1);
        assert!(candidate_count(&cfg(0, 0.0), 10).is_err());
        assert!(candidate_count(&cfg(2, 0.5), 10).is_err());
        for bad in [1.5, -0.5, f64::NAN] {
            let e = candidate_count(&cfg(0, bad), 10).unwrap_err().to_string();
            assert!(e.contains("--fraction must be in (0, 1]"), "{bad}: {e}");
        }
    }

    #[test]
    fn query_records_keep_each_querys_first_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        std::fs::write(
            &path,
            "query,direction,result,result_index,score\n\
             a,Top,x,4,1.0\na,Top,\"y, z\",2,0.5\na,Bottom,w,0,-1\nb,Top,x,4,2\nb,Top,v,7,1\n",
        )
        .unwrap();
        let cfg = CandidateConfig {
            scores: path.display().to_string(),
            top_k: 1,
            ..CandidateConfig::default()
        };
        assert_eq!(select_candidates(&cfg, 10).unwrap(), [4]);
        let all = CandidateConfig {
            top_k: 0,
            ..cfg.clone()
        };
        assert_eq!(select_candidates(&all, 10).unwrap(), [2, 4, 7]);
        assert!(select_candidates(&all, 5).is_err());
        let bottom = CandidateConfig {
            direction: CandidateDirection::Detractors,
            ..all
        };
        assert_eq!(select_candidates(&bottom, 10).unwrap(), [0]);
    }
}
