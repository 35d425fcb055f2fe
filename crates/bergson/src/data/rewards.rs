//! Dr. GRPO advantages (`--reward_column`) and advantage columns (`--advantage_column`), as
//! Bergson 2.5.1's `setup_data_pipeline` / `estimate_advantage` compute them.
//!
//! `advantage = reward - mean(rewards of the rows with the same prompt)` (pandas
//! `groupby(prompt).transform("mean")`; no std normalisation). The group sums follow pandas
//! 3.1's own summation order (see [`group_mean_advantages`]), so results match bit for bit.

use crate::{Error, Result};
use std::collections::BTreeMap;

/// Rows kept after the NaN check and their advantages (one per kept row, same order).
#[derive(Debug, Clone, PartialEq)]
pub struct Advantages {
    /// Dataset indices of the rows kept (all rows unless NaNs were skipped).
    pub kept: Vec<usize>,
    /// The advantage of each kept row (float64).
    pub advantages: Vec<f64>,
}

/// Checks `values` for NaN: without `skip_nan` the first NaN row is an error naming `column`
/// and the row; with it, NaN rows are left out. Returns the kept row indices.
pub fn check_nan(values: &[f64], column: &str, skip_nan: bool) -> Result<Vec<usize>> {
    if !skip_nan {
        if let Some(row) = values.iter().position(|v| v.is_nan()) {
            return Err(Error::input(format!(
                "column '{column}' is NaN (or missing) in row {row}; fix the data or pass \
                 --skip_nan_rewards to drop such rows"
            )));
        }
    }
    Ok((0..values.len()).filter(|&i| !values[i].is_nan()).collect())
}

/// Advantages from a reward column grouped by the raw prompt value (`--reward_column`):
/// NaN check (see [`check_nan`]), then [`group_mean_advantages`] over the kept rows.
pub fn advantages_from_rewards<K: Ord>(
    prompts: &[K],
    rewards: &[f64],
    column: &str,
    skip_nan: bool,
) -> Result<Advantages> {
    if prompts.len() != rewards.len() {
        return Err(Error::input(format!(
            "{} prompts but {} rewards in column '{column}'",
            prompts.len(),
            rewards.len()
        )));
    }
    let kept = check_nan(rewards, column, skip_nan)?;
    let keys: Vec<&K> = kept.iter().map(|&i| &prompts[i]).collect();
    let values: Vec<f64> = kept.iter().map(|&i| rewards[i]).collect();
    let advantages = group_mean_advantages(&keys, &values);
    Ok(Advantages { kept, advantages })
}

/// Advantages taken as they are from an advantage column (`--advantage_column`), after the
/// NaN check.
pub fn advantages_from_column(values: &[f64], column: &str, skip_nan: bool) -> Result<Advantages> {
    let kept = check_nan(values, column, skip_nan)?;
    let advantages = kept.iter().map(|&i| values[i]).collect();
    Ok(Advantages { kept, advantages })
}

/// `reward - groupby(key).transform("mean")` as pandas 3 computes it: group codes are the
/// ranks of the sorted distinct keys; when the rows are already in code order (and hold no
/// NaN) each group is summed with numpy's `add.reduceat` (first value plus numpy's pairwise
/// sum of the rest), otherwise with the Kahan-compensated Cython `group_mean`.
pub fn group_mean_advantages<K: Ord>(keys: &[K], rewards: &[f64]) -> Vec<f64> {
    let mut distinct: BTreeMap<&K, usize> = keys.iter().map(|k| (k, 0)).collect();
    for (rank, code) in distinct.values_mut().enumerate() {
        *code = rank;
    }
    let codes: Vec<usize> = keys.iter().map(|k| distinct[k]).collect();
    let groups = distinct.len();
    let monotonic = codes.windows(2).all(|w| w[0] <= w[1]);
    let mean = if monotonic && !rewards.iter().any(|r| r.is_nan()) {
        reduceat_means(&codes, rewards, groups)
    } else {
        kahan_means(&codes, rewards, groups)
    };
    codes
        .iter()
        .zip(rewards)
        .map(|(&g, &r)| r - mean[g])
        .collect()
}

/// pandas' `_reduceat_aggregate` for "mean" on rows sorted by group.
fn reduceat_means(codes: &[usize], values: &[f64], groups: usize) -> Vec<f64> {
    let mut mean = vec![f64::NAN; groups];
    let mut start = 0;
    while start < codes.len() {
        let end = start
            + codes[start..]
                .iter()
                .take_while(|&&c| c == codes[start])
                .count();
        let seg = &values[start..end];
        let sum = seg[0]
            + if seg.len() > 1 {
                pairwise_sum(&seg[1..])
            } else {
                -0.0
            };
        mean[codes[start]] = sum / seg.len() as f64;
        start = end;
    }
    mean
}

/// numpy's `pairwise_sum` for float64 (`loops_utils.h.src`): 8 accumulators in blocks of
/// up to 128 values, halving (at multiples of 8) above that.
pub(crate) fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(-0.0, |acc, &x| acc + x)
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let full = n - n % 8;
        let mut i = 8;
        while i < full {
            for (j, acc) in r.iter_mut().enumerate() {
                *acc += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[full..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// pandas' Cython `group_mean`: Kahan-compensated sums in row order, NaN skipped.
fn kahan_means(codes: &[usize], values: &[f64], groups: usize) -> Vec<f64> {
    let mut sum = vec![0.0f64; groups];
    let mut comp = vec![0.0f64; groups];
    let mut count = vec![0u64; groups];
    for (&g, &val) in codes.iter().zip(values) {
        if val.is_nan() {
            continue;
        }
        count[g] += 1;
        let y = val - comp[g];
        let t = sum[g] + y;
        comp[g] = t - sum[g] - y;
        if comp[g].is_nan() {
            // pandas GH#53606: an infinite value must not turn the sum into NaN.
            comp[g] = 0.0;
        }
        sum[g] = t;
    }
    (0..groups)
        .map(|g| {
            if count[g] == 0 {
                f64::NAN
            } else {
                sum[g] / count[g] as f64
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dr_grpo_example_from_bergson_docs() {
        // research note §8: prompts q0 with rewards 0,3,6,9 -> advantage of the first is -4.5
        let adv = group_mean_advantages(&["q0", "q0", "q0", "q0"], &[0.0, 3.0, 6.0, 9.0]);
        assert_eq!(adv, vec![-4.5, -1.5, 1.5, 4.5]);
    }

    #[test]
    fn nan_rows_error_or_are_skipped() {
        let err = advantages_from_rewards(&["a", "a", "b"], &[1.0, f64::NAN, 2.0], "reward", false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'reward'") && err.contains("row 1") && err.contains("--skip_nan_rewards")
        );
        let a = advantages_from_rewards(&["a", "a", "b"], &[1.0, f64::NAN, 2.0], "reward", true)
            .unwrap();
        assert_eq!(a.kept, vec![0, 2]);
        assert_eq!(a.advantages, vec![0.0, 0.0]);
        let c = advantages_from_column(&[0.5, f64::NAN], "adv", true).unwrap();
        assert_eq!((c.kept, c.advantages), (vec![0], vec![0.5]));
    }
}
