//! The leave-k-out subsets, drawn exactly as Python Bergson 2.5.1 draws them
//! (`validate.py::validate_scores` and `_baseline_subsets`), so one seed gives the same
//! subsets in both tools:
//!
//! * the draws come from `torch.Generator().manual_seed(seed)` through `torch.randperm`,
//!   replayed here: PyTorch's CPU generator is MT19937 seeded with `init_genrand` (the
//!   seed's low 32 bits), and `randperm(n)` for `n < 2^32 / 20` swaps `r[i]` with
//!   `r[i + next_u32() % (n - i)]` for `i` in `0..n-1` (`random64()` beyond);
//! * `fraction > 0`: `count` independent draws of `max(1, round(fraction * pool))` documents;
//! * `fraction == 0`: one permutation cut by `torch.chunk(count)` (pieces of
//!   `ceil(pool / count)`, so possibly fewer than `count`), their order shuffled by
//!   `random.Random(seed).shuffle`.
//!
//! `subsets.json` holds them as Bergson writes it (`json.dump` of a list of lists).

use crate::data::pyrandom::PyRandom;
use crate::error::IoContext;
use crate::{Error, Result};
use std::path::Path;

/// `torch.randperm(n, generator=g)` on the CPU, advancing `g`.
pub fn torch_randperm(g: &mut PyRandom, n: usize) -> Vec<usize> {
    let mut r: Vec<usize> = (0..n).collect();
    let small = (n as u64) < u64::from(u32::MAX) / 20;
    for i in 0..n.saturating_sub(1) {
        let left = (n - i) as u64;
        let z = if small {
            u64::from(g.next_u32()) % left
        } else {
            // `make64BitsFrom32Bits(hi, lo)`: the first draw is the high word.
            let hi = u64::from(g.next_u32());
            let lo = u64::from(g.next_u32());
            ((hi << 32) | lo) % left
        };
        r.swap(i, i + z as usize);
    }
    r
}

/// `torch.chunk(count)` of `items`: pieces of `ceil(len / count)`, the last one shorter.
pub fn torch_chunk<T: Clone>(items: &[T], count: usize) -> Vec<Vec<T>> {
    if items.is_empty() || count == 0 {
        return Vec::new();
    }
    let size = items.len().div_ceil(count);
    items.chunks(size).map(<[T]>::to_vec).collect()
}

/// Python's `round` (half to even) of a non-negative float, as an integer.
fn round_half_even(x: f64) -> usize {
    let r = x.round_ties_even();
    r.max(0.0) as usize
}

/// Documents per draw for `fraction` of `pool` (`max(1, round(fraction * pool))`).
pub fn draw_size(fraction: f64, pool: usize) -> usize {
    round_half_even(fraction * pool as f64).max(1)
}

/// LDS's subsets of `valid` (the eligible document ids), as Bergson draws them with `seed`.
pub fn lds_subsets(valid: &[usize], count: usize, fraction: f64, seed: u64) -> Vec<Vec<usize>> {
    let mut g = PyRandom::torch_seeded(seed);
    if fraction > 0.0 {
        let k = draw_size(fraction, valid.len());
        return (0..count)
            .map(|_| {
                torch_randperm(&mut g, valid.len())
                    .into_iter()
                    .take(k)
                    .map(|i| valid[i])
                    .collect()
            })
            .collect();
    }
    let perm: Vec<usize> = torch_randperm(&mut g, valid.len())
        .into_iter()
        .map(|i| valid[i])
        .collect();
    let mut subsets = torch_chunk(&perm, count);
    PyRandom::new(i128::from(seed)).shuffle(&mut subsets);
    subsets
}

/// The filter's random controls: `count` draws of `k` documents of `valid` (Bergson's
/// `_baseline_subsets`).
pub fn control_subsets(valid: &[usize], k: usize, count: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut g = PyRandom::torch_seeded(seed);
    (0..count)
        .map(|_| {
            torch_randperm(&mut g, valid.len())
                .into_iter()
                .take(k)
                .map(|i| valid[i])
                .collect()
        })
        .collect()
}

/// `subsets` as Python's `json.dump` writes them (`[[1, 2], [3]]`).
pub fn subsets_json(subsets: &[Vec<usize>]) -> String {
    let rows: Vec<String> = subsets
        .iter()
        .map(|s| {
            let ids: Vec<String> = s.iter().map(usize::to_string).collect();
            format!("[{}]", ids.join(", "))
        })
        .collect();
    format!("[{}]", rows.join(", "))
}

/// Reads a `subsets.json` (a list of lists of document ids).
pub fn read_subsets(path: &Path) -> Result<Vec<Vec<usize>>> {
    let text = std::fs::read_to_string(path).at_path(path)?;
    serde_json::from_str(&text).map_err(|e| {
        Error::input(format!(
            "{}: not a subsets.json ({e}); it must be a list of lists of document ids",
            path.display()
        ))
    })
}

/// Writes `subsets.json` atomically (a temporary file renamed into place).
pub fn write_subsets(path: &Path, subsets: &[Vec<usize>]) -> Result<()> {
    super::journal::write_atomic(path, subsets_json(subsets).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from PyTorch 2.11:
    /// `g = torch.Generator().manual_seed(42); torch.randperm(16, generator=g).tolist();
    /// torch.randperm(5, generator=g).tolist()`, and seed 2**32 + 3 (low word 3).
    #[test]
    fn randperm_replays_torch() {
        let mut g = PyRandom::torch_seeded(42);
        assert_eq!(
            torch_randperm(&mut g, 16),
            [6, 3, 0, 7, 10, 15, 2, 12, 14, 9, 8, 5, 4, 13, 11, 1]
        );
        assert_eq!(torch_randperm(&mut g, 5), [2, 4, 3, 1, 0]);
        let mut g = PyRandom::torch_seeded((1 << 32) + 3);
        assert_eq!(torch_randperm(&mut g, 10), [6, 0, 3, 7, 8, 5, 1, 9, 2, 4]);
    }

    /// `tch::manual_seed` + `Tensor::randperm` (libtorch's own generator) draws the same.
    #[test]
    fn randperm_matches_libtorch() {
        let _guard = tch::no_grad_guard();
        let got: Vec<i64> = torch_randperm(&mut PyRandom::torch_seeded(11), 37)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        // libtorch's generator is global: a test running beside this one may draw between the
        // seeding and the permutation, so a mismatch is retried; a wrong replay never matches.
        let mut want: Vec<i64> = Vec::new();
        for _ in 0..20 {
            tch::manual_seed(11);
            let t = tch::Tensor::randperm(37, (tch::Kind::Int64, tch::Device::Cpu));
            want = Vec::try_from(t).unwrap();
            if want == got {
                break;
            }
        }
        assert_eq!(got, want);
    }

    /// `perm = torch.randperm(10, generator=torch.Generator().manual_seed(3));
    /// s = list(perm.chunk(4)); random.Random(3).shuffle(s)` and `torch.arange(10).chunk(6)`.
    #[test]
    fn partition_replays_chunk_and_shuffle() {
        let valid: Vec<usize> = (0..10).collect();
        assert_eq!(
            lds_subsets(&valid, 4, 0.0, 3),
            [vec![4], vec![6, 0, 3], vec![1, 9, 2], vec![7, 8, 5]]
        );
        // Six pieces asked, five made (ceil(10 / 6) = 2 per piece).
        assert_eq!(torch_chunk(&valid, 6).len(), 5);
        // Draws map through the eligible ids.
        let valid = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100];
        assert_eq!(lds_subsets(&valid, 4, 0.0, 3)[0], [50]);
    }

    #[test]
    fn draw_sizes_round_half_to_even() {
        assert_eq!(draw_size(0.1, 16), 2);
        assert_eq!(draw_size(0.125, 20), 2); // round(2.5) = 2
        assert_eq!(draw_size(0.175, 20), 4); // round(3.5) = 4
        assert_eq!(draw_size(0.001, 16), 1);
    }

    #[test]
    fn subsets_json_is_pythons_json_dump() {
        assert_eq!(subsets_json(&[vec![1, 2], vec![3]]), "[[1, 2], [3]]");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("subsets.json");
        write_subsets(&p, &[vec![4, 5], vec![]]).unwrap();
        assert_eq!(read_subsets(&p).unwrap(), [vec![4, 5], vec![]]);
    }
}
