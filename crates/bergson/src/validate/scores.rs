//! The scores under validation, read as Python Bergson 2.5.1's `load_scores_loss_signed`
//! reads them: a score directory (`scores.bin`, `info.json`), negated when the run that wrote
//! it says `higher_is_better` (its `config.yaml`'s `score_cfg`), so that a **negative score
//! is a proponent** (it lowers the query loss) whatever the method. A per-token store unpacks
//! into Bergson's zero-padded `[docs, seq_len]` grid (`Scores.to_grid`: `seq_len` is the most
//! token rows of a document plus one), whose flattened cells are the leave-out units.

use crate::config::run_file::load_subconfig;
use crate::index::score_store::{is_score_store, ScoreStore};
use crate::{Error, Result};
use std::path::Path;

/// Loss-signed scores: one row per leave-out unit (document, or grid cell of a per-token
/// store), one column per query.
#[derive(Debug, Clone)]
pub struct LossSignedScores {
    /// `[units][queries]`, row-major, as float32 values (Bergson keeps the store's float32).
    pub values: Vec<f32>,
    /// Query columns.
    pub num_queries: usize,
    /// Documents scored.
    pub num_docs: usize,
    /// Grid width of a per-token store (`None`: one unit per document).
    pub seq_len: Option<usize>,
}

impl LossSignedScores {
    /// Reads the score directory `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        if dir.extension().is_some_and(|e| e == "pt") {
            return Err(Error::input(format!(
                "--scores {}: legacy MAGIC .pt scores are not read by bergson-rs; give the score directory (scores.bin, info.json)",
                dir.display()
            )));
        }
        if !is_score_store(dir) {
            return Err(Error::input(format!(
                "--scores {}: not a score directory (no scores.bin and info.json); give the scores/ directory that magic or score wrote",
                dir.display()
            )));
        }
        let store = ScoreStore::open(dir)?;
        let negate = load_subconfig::<serde_json::Value>(dir, "score_cfg")?
            .map(|cfg| {
                cfg.get("higher_is_better")
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(true)
            })
            .unwrap_or(false);
        let q = store.num_scores();
        let sign = if negate { -1.0f32 } else { 1.0 };
        let cell = |row: usize, c: usize| store.score(row, c).map_or(0.0, |v| sign * v);
        let (values, seq_len) = match store.offsets() {
            None => {
                let mut v = Vec::with_capacity(store.num_rows() * q);
                for r in 0..store.num_rows() {
                    v.extend((0..q).map(|c| cell(r, c)));
                }
                (v, None)
            }
            Some(offsets) => {
                let widths = offsets.windows(2).map(|w| (w[1] - w[0]) as usize);
                let seq_len = widths.max().unwrap_or(0) + 1;
                let mut v = vec![0f32; store.num_items() * seq_len * q];
                for d in 0..store.num_items() {
                    for (t, r) in store.item_rows(d).enumerate() {
                        for c in 0..q {
                            v[(d * seq_len + t) * q + c] = cell(r, c);
                        }
                    }
                }
                (v, Some(seq_len))
            }
        };
        Ok(LossSignedScores {
            values,
            num_queries: q,
            num_docs: store.num_items(),
            seq_len,
        })
    }

    /// Leave-out units: documents, or grid cells.
    pub fn num_units(&self) -> usize {
        self.values.len() / self.num_queries.max(1)
    }

    /// Unit `u`'s scores.
    pub fn row(&self, u: usize) -> &[f32] {
        &self.values[u * self.num_queries..(u + 1) * self.num_queries]
    }

    /// More than one query column: per-query losses and correlations.
    pub fn multi_query(&self) -> bool {
        self.num_queries > 1
    }

    /// The eligible units: all, or (`exclude_zero_scores`) those with a nonzero score.
    pub fn eligible(&self, exclude_zero_scores: bool) -> Vec<usize> {
        (0..self.num_units())
            .filter(|&u| !exclude_zero_scores || self.row(u).iter().any(|&v| v != 0.0))
            .collect()
    }

    /// The summed scores of `units`, per query (in float64; Bergson sums the float32 tensor,
    /// which differs in the last float32 digits).
    pub fn sums(&self, units: &[usize]) -> Vec<f64> {
        (0..self.num_queries)
            .map(|c| units.iter().map(|&u| f64::from(self.row(u)[c])).sum())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(rel)
    }

    /// A `bergson score` run (`score_cfg.higher_is_better: true`) is negated; MAGIC scores (no
    /// config beside them) are read as they are.
    #[test]
    fn scores_are_loss_signed() {
        let dir = fixture("bergson_score/runs/llama");
        let store = ScoreStore::open(&dir).unwrap();
        let s = LossSignedScores::load(&dir).unwrap();
        assert_eq!(s.num_queries, store.num_scores());
        let mut written = 0;
        for r in 0..store.num_rows() {
            match store.score(r, 0) {
                Some(v) => {
                    written += 1;
                    assert_eq!(s.row(r)[0], -v);
                }
                None => assert_eq!(s.row(r)[0], 0.0),
            }
        }
        assert!(written > 0);
        let dir = fixture("bergson_validate/lds_multi_query/scores");
        let store = ScoreStore::open(&dir).unwrap();
        let s = LossSignedScores::load(&dir).unwrap();
        assert!(s.multi_query() && s.seq_len.is_none());
        assert_eq!(s.row(3)[2], store.score(3, 2).unwrap());
        let sums = s.sums(&[0, 3]);
        let want = f64::from(store.score(0, 1).unwrap()) + f64::from(store.score(3, 1).unwrap());
        assert_eq!(sums[1], want);
    }

    #[test]
    fn missing_scores_are_an_input_error() {
        let e = LossSignedScores::load(Path::new("/nonexistent/scores")).unwrap_err();
        assert!(matches!(e, Error::Input(_)), "{e}");
    }
}
