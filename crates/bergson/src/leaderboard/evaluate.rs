//! The leaderboard's two measures of a method's scores, from retrains shared by every method:
//!
//! - **LDS**: for each query, Spearman's ρ over the leave-k-out subsets between the measured
//!   loss change (`baseline − retrained`) and the subset's summed loss-signed scores, averaged
//!   over the queries; its 95% interval is a percentile bootstrap over the subsets (the mean
//!   recomputed on each resample), as Bergson's leaderboard reports it.
//! - **Proponent QLD**: the query-loss increase after retraining without the query's top
//!   proponents, averaged over the queries, with a bootstrap interval over the queries.

use crate::data::pyrandom::PyRandom;
use crate::validate::stats::{percentile, spearman, BOOTSTRAP_RESAMPLES};

/// A mean with its 95% percentile-bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The statistic on all the data.
    pub value: f64,
    /// 2.5th percentile of the resampled statistic.
    pub low: f64,
    /// 97.5th percentile of the resampled statistic.
    pub high: f64,
}

/// The mean over the finite values of `xs` (NaN when none).
fn finite_mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs
        .filter(|x| x.is_finite())
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

/// The mean over queries of Spearman's ρ between `diffs[s][q]` and `sums[s][q]` over the
/// subsets `rows` (queries whose ρ is undefined, e.g. all sums equal, are left out).
fn mean_spearman(diffs: &[Vec<f64>], sums: &[Vec<f64>], rows: &[usize]) -> f64 {
    let queries = diffs.first().map_or(0, Vec::len);
    finite_mean((0..queries).map(|q| {
        let d: Vec<f64> = rows.iter().map(|&s| diffs[s][q]).collect();
        let x: Vec<f64> = rows.iter().map(|&s| sums[s][q]).collect();
        spearman(&d, &x).statistic
    }))
}

/// Per-query Spearman's ρ over all subsets.
pub fn per_query_lds(diffs: &[Vec<f64>], sums: &[Vec<f64>]) -> Vec<f64> {
    let queries = diffs.first().map_or(0, Vec::len);
    (0..queries)
        .map(|q| {
            let d: Vec<f64> = diffs.iter().map(|r| r[q]).collect();
            let x: Vec<f64> = sums.iter().map(|r| r[q]).collect();
            spearman(&d, &x).statistic
        })
        .collect()
}

/// The LDS of score sums `sums[subset][query]` against the measured `diffs[subset][query]`,
/// with a bootstrap over the subsets (`random.Random(seed)` draws, 10,000 resamples).
pub fn lds(diffs: &[Vec<f64>], sums: &[Vec<f64>], seed: u64) -> Estimate {
    let n = diffs.len().min(sums.len());
    let all: Vec<usize> = (0..n).collect();
    let value = mean_spearman(diffs, sums, &all);
    let mut rng = PyRandom::new(i128::from(seed));
    let mut stats = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    let mut rows = vec![0; n];
    for _ in 0..BOOTSTRAP_RESAMPLES {
        for r in rows.iter_mut() {
            *r = rng.randbelow(n.max(1) as u64) as usize;
        }
        let v = mean_spearman(diffs, sums, &rows);
        if v.is_finite() {
            stats.push(v);
        }
    }
    interval(value, stats)
}

/// The mean of `values` with a bootstrap over them (`random.Random(seed)`, 10,000 resamples).
pub fn mean_with_ci(values: &[f64], seed: u64) -> Estimate {
    let value = finite_mean(values.iter().copied());
    let n = values.len();
    let mut rng = PyRandom::new(i128::from(seed));
    let mut stats = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    for _ in 0..BOOTSTRAP_RESAMPLES {
        let v = finite_mean((0..n).map(|_| values[rng.randbelow(n.max(1) as u64) as usize]));
        if v.is_finite() {
            stats.push(v);
        }
    }
    interval(value, stats)
}

fn interval(value: f64, mut stats: Vec<f64>) -> Estimate {
    if stats.len() < 2 {
        return Estimate {
            value,
            low: f64::NAN,
            high: f64::NAN,
        };
    }
    stats.sort_by(f64::total_cmp);
    Estimate {
        value,
        low: percentile(&stats, 2.5),
        high: percentile(&stats, 97.5),
    }
}

/// The `k` units with the most negative loss-signed scores in `column` (the strongest
/// proponents: removing them should raise the query loss), ties broken by the lower index.
pub fn top_proponents(column: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..column.len()).collect();
    order.sort_by(|&a, &b| column[a].total_cmp(&column[b]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_scores_give_lds_one_and_reversed_minus_one() {
        // 30 subsets, 2 queries; the score sums a monotone function of the diffs.
        let diffs: Vec<Vec<f64>> = (0..30)
            .map(|s| vec![(s as f64 * 0.37).sin(), (s as f64 * 1.3).cos()])
            .collect();
        let good: Vec<Vec<f64>> = diffs
            .iter()
            .map(|r| r.iter().map(|x| x.powi(3)).collect())
            .collect();
        let bad: Vec<Vec<f64>> = good
            .iter()
            .map(|r| r.iter().map(|x| -x).collect())
            .collect();
        let e = lds(&diffs, &good, 0);
        assert!((e.value - 1.0).abs() < 1e-12 && e.low > 0.99, "{e:?}");
        assert!((lds(&diffs, &bad, 0).value + 1.0).abs() < 1e-12);
        // Noise: the interval contains the value and is wider.
        let noisy: Vec<Vec<f64>> = diffs
            .iter()
            .enumerate()
            .map(|(s, r)| {
                r.iter()
                    .map(|x| x + ((s * 7919) % 13) as f64 * 0.1)
                    .collect()
            })
            .collect();
        let e = lds(&diffs, &noisy, 3);
        assert!(
            e.low < e.value && e.value < e.high && e.value < 0.95,
            "{e:?}"
        );
        assert_eq!(e, lds(&diffs, &noisy, 3), "seeded");
    }

    #[test]
    fn mean_interval_and_proponents() {
        let v = [1.0, 2.0, 3.0, 4.0, f64::NAN];
        let e = mean_with_ci(&v, 1);
        assert_eq!(e.value, 2.5);
        assert!(e.low >= 1.0 && e.high <= 4.0 && e.low < e.high);
        assert_eq!(
            top_proponents(&[0.5, -2.0, -2.0, 3.0, -1.0], 3),
            vec![1, 2, 4]
        );
    }
}
