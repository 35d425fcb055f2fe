//! Merging the results of several FAISS shards into one ranking (Bergson's re-rank of the
//! concatenated shard results): shard-local labels are offset to index rows, results are
//! sorted by score (highest first, or lowest first for a reverse search; ties keep shard
//! order), and the first `k` are kept.
//!
//! FAISS marks a result it did not find with label -1 (and score -FLT_MAX). Those never rank
//! above a found row, in either direction; they only pad a ranking with fewer than `k` rows.
//! (Bergson's reverse search sorts them first, so an IVF index's bottom results are all
//! missing: a deliberate difference.)

use tch::Tensor;

use super::faiss::MISSING_SCORE;
use crate::query::search::Hits;
use crate::Result;

/// One shard's answer: `k` results per query (scores and shard-local labels, row-major
/// `[Q, k]`), and the index row of the shard's first vector.
pub struct ShardResults {
    /// Scores, `[Q * k]`.
    pub scores: Vec<f32>,
    /// Shard-local labels (-1: missing), `[Q * k]`.
    pub labels: Vec<i64>,
    /// Results per query.
    pub k: usize,
    /// Index row of the shard's label 0.
    pub offset: usize,
}

/// The best `k` rows per query over all shards: highest scores first, or lowest first with
/// `reverse`. Rankings shorter than `k` are padded with label -1 and score -FLT_MAX.
pub fn merge(shards: &[ShardResults], queries: usize, k: usize, reverse: bool) -> Result<Hits> {
    let mut scores = Vec::with_capacity(queries * k);
    let mut rows = Vec::with_capacity(queries * k);
    let mut found: Vec<(f32, i64)> = Vec::new();
    for q in 0..queries {
        found.clear();
        for shard in shards {
            let at = q * shard.k..(q + 1) * shard.k;
            for (&s, &l) in shard.scores[at.clone()].iter().zip(&shard.labels[at]) {
                if l >= 0 {
                    found.push((s, l + shard.offset as i64));
                }
            }
        }
        // A stable sort: equal scores keep FAISS's order within a shard, then shard order.
        if reverse {
            found.sort_by(|a, b| a.0.total_cmp(&b.0));
        } else {
            found.sort_by(|a, b| b.0.total_cmp(&a.0));
        }
        let kept = found.len().min(k);
        scores.extend(found[..kept].iter().map(|&(s, _)| s));
        rows.extend(found[..kept].iter().map(|&(_, r)| r));
        scores.extend(std::iter::repeat_n(MISSING_SCORE, k - kept));
        rows.extend(std::iter::repeat_n(-1i64, k - kept));
    }
    let shape = [queries as i64, k as i64];
    Ok(Hits {
        scores: Tensor::f_from_slice(&scores)?.f_reshape(shape)?,
        indices: Tensor::f_from_slice(&rows)?.f_reshape(shape)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(scores: &[f32], labels: &[i64], k: usize, offset: usize) -> ShardResults {
        ShardResults {
            scores: scores.to_vec(),
            labels: labels.to_vec(),
            k,
            offset,
        }
    }

    /// The reference: every found (score, row) of a query, fully sorted, first `k`.
    fn by_sorting(all: &[(f32, i64)], k: usize, reverse: bool) -> Vec<(i64, f32)> {
        let mut v = all.to_vec();
        v.sort_by(|a, b| {
            let o = a.0.partial_cmp(&b.0).unwrap();
            if reverse {
                o
            } else {
                o.reverse()
            }
        });
        v.into_iter().take(k).map(|(s, r)| (r, s)).collect()
    }

    #[test]
    fn shards_merge_by_score_with_offsets() {
        // Two queries; shard 0 holds rows 0..3, shard 1 rows 3..5 (2 results each).
        let a = shard(&[0.9, 0.1, 0.5, 0.4], &[2, 0, 1, 2], 2, 0);
        let b = shard(&[0.7, -0.2, 0.6, 0.3], &[1, 0, 0, 1], 2, 3);
        let hits = merge(&[a, b], 2, 3, false).unwrap();
        let want0 = by_sorting(&[(0.9, 2), (0.1, 0), (0.7, 4), (-0.2, 3)], 3, false);
        let want1 = by_sorting(&[(0.5, 1), (0.4, 2), (0.6, 3), (0.3, 4)], 3, false);
        assert_eq!(hits.of_query(0).unwrap(), want0);
        assert_eq!(hits.of_query(1).unwrap(), want1);
        let low = merge(
            &[
                shard(&[0.9, 0.1], &[2, 0], 2, 0),
                shard(&[0.7, -0.2], &[1, 0], 2, 3),
            ],
            1,
            2,
            true,
        )
        .unwrap();
        let want = by_sorting(&[(0.9, 2), (0.1, 0), (0.7, 4), (-0.2, 3)], 2, true);
        assert_eq!(low.of_query(0).unwrap(), want);
    }

    #[test]
    fn missing_results_never_outrank_found_rows() {
        // One shard, a reverse search over an IVF index that found only two of four rows.
        let s = shard(
            &[0.8, 0.3, MISSING_SCORE, MISSING_SCORE],
            &[1, 3, -1, -1],
            4,
            0,
        );
        let hits = merge(&[s], 1, 3, true).unwrap();
        assert_eq!(
            hits.of_query(0).unwrap(),
            [(3, 0.3), (1, 0.8), (-1, MISSING_SCORE)]
        );
    }
}
