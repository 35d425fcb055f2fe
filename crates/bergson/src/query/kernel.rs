//! The inner loop of exact search: the dot products of a block of index rows with every query
//! (and, when asked, each row's squared norm), in float32. A skinny GEMM (`[rows, D] x [D, Q]`
//! with a few dozen queries) is memory-bound in principle, but general GEMM libraries run it far
//! below memory bandwidth; this kernel reads each row once from memory and reuses it from L1
//! for every query, four rows at a time against three queries at a time (twelve AVX2 FMA
//! accumulators), with a portable fallback where AVX2/FMA are missing.

/// Queries laid out for [`dot_block`]: `count` rows of `dim` float32, padded with zero rows to
/// a multiple of [`QUERY_TILE`].
pub struct QueryMatrix {
    values: Vec<f32>,
    count: usize,
    padded: usize,
    dim: usize,
}

/// Queries multiplied together in the AVX2 kernel.
pub const QUERY_TILE: usize = 3;
/// Rows multiplied together in the AVX2 kernel.
const ROW_TILE: usize = 4;

impl QueryMatrix {
    /// `values` holds `count` queries of `dim` values each, row-major.
    pub fn new(values: &[f32], count: usize, dim: usize) -> Self {
        assert_eq!(values.len(), count * dim, "query matrix shape");
        let padded = count.div_ceil(QUERY_TILE) * QUERY_TILE;
        let mut v = values.to_vec();
        v.resize(padded * dim, 0.0);
        QueryMatrix {
            values: v,
            count,
            padded,
            dim,
        }
    }

    /// Number of queries.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Values per query.
    pub fn dim(&self) -> usize {
        self.dim
    }
}

/// `out[r * q.count() + j] = rows[r] · q[j]` for the `rows.len() / dim` rows of `rows`, and
/// `sq[r] = ‖rows[r]‖²` when `sq` is given.
pub fn dot_block(rows: &[f32], q: &QueryMatrix, out: &mut [f32], sq: Option<&mut [f32]>) {
    let n = rows.len() / q.dim;
    assert_eq!(out.len(), n * q.count, "score block shape");
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            unsafe { avx2::dot_block(rows, q, out) };
            if let Some(sq) = sq {
                // SAFETY: as above.
                unsafe { avx2::square_norms(rows, q.dim, sq) };
            }
            return;
        }
    }
    portable_dot_block(rows, q, out);
    if let Some(sq) = sq {
        for (r, s) in sq.iter_mut().enumerate().take(n) {
            *s = rows[r * q.dim..(r + 1) * q.dim].iter().map(|x| x * x).sum();
        }
    }
}

fn portable_dot_block(rows: &[f32], q: &QueryMatrix, out: &mut [f32]) {
    let d = q.dim;
    for (r, row) in rows.chunks_exact(d).enumerate() {
        for j in 0..q.count {
            let qj = &q.values[j * d..(j + 1) * d];
            // Eight partial sums let the compiler vectorise without reassociating one sum.
            let mut acc = [0f32; 8];
            let mut k = 0;
            while k + 8 <= d {
                for l in 0..8 {
                    acc[l] += row[k + l] * qj[k + l];
                }
                k += 8;
            }
            let mut s: f32 = acc.iter().sum();
            while k < d {
                s += row[k] * qj[k];
                k += 1;
            }
            out[r * q.count + j] = s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
// Register tiles are indexed by position on purpose: the loops unroll into fixed registers.
#[allow(clippy::needless_range_loop)]
mod avx2 {
    use super::{QueryMatrix, QUERY_TILE, ROW_TILE};
    use std::arch::x86_64::*;

    /// Sum of the eight lanes.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Adds the dot products of columns `lo..hi` of `R` rows (starting at `rows`, `d` apart)
    /// with the same columns of the `QUERY_TILE` queries at `qs` to `sums`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize>(
        rows: *const f32,
        qs: *const f32,
        d: usize,
        (lo, hi): (usize, usize),
        sums: &mut [[f32; QUERY_TILE]; R],
    ) {
        let mut acc = [[_mm256_setzero_ps(); QUERY_TILE]; R];
        let full = lo + (hi - lo) / 8 * 8;
        let mut k = lo;
        while k < full {
            // The query vectors stay in registers while the rows stream past: 12 accumulators,
            // 3 query vectors and 1 row vector fill the 16 AVX2 registers without spilling.
            let mut qv = [_mm256_setzero_ps(); QUERY_TILE];
            for (j, v) in qv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(qs.add(j * d + k));
            }
            for r in 0..R {
                let x = _mm256_loadu_ps(rows.add(r * d + k));
                for j in 0..QUERY_TILE {
                    acc[r][j] = _mm256_fmadd_ps(x, qv[j], acc[r][j]);
                }
            }
            k += 8;
        }
        for r in 0..R {
            for j in 0..QUERY_TILE {
                let mut s = hsum(acc[r][j]);
                for t in full..hi {
                    s += *rows.add(r * d + t) * *qs.add(j * d + t);
                }
                sums[r][j] += s;
            }
        }
    }

    /// Columns per pass over a tile of rows: the tile's slice of each row stays in L1 while
    /// every query group meets it.
    const COLUMN_CHUNK: usize = 512;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_block(rows: &[f32], q: &QueryMatrix, out: &mut [f32]) {
        let d = q.dim;
        let n = rows.len() / d;
        let groups = q.padded / QUERY_TILE;
        let mut sums = vec![[[0f32; QUERY_TILE]; ROW_TILE]; groups];
        let mut r = 0;
        while r < n {
            let take = (n - r).min(ROW_TILE);
            let base = rows.as_ptr().add(r * d);
            for s in sums.iter_mut() {
                *s = [[0.0; QUERY_TILE]; ROW_TILE];
            }
            let mut lo = 0;
            while lo < d {
                let hi = (lo + COLUMN_CHUNK).min(d);
                for (g, s) in sums.iter_mut().enumerate() {
                    let qs = q.values.as_ptr().add(g * QUERY_TILE * d);
                    if take == ROW_TILE {
                        tile::<ROW_TILE>(base, qs, d, (lo, hi), s);
                    } else {
                        for i in 0..take {
                            let mut one = [s[i]];
                            tile::<1>(base.add(i * d), qs, d, (lo, hi), &mut one);
                            s[i] = one[0];
                        }
                    }
                }
                lo = hi;
            }
            for (g, s) in sums.iter().enumerate() {
                for (i, vals) in s.iter().enumerate().take(take) {
                    for (j, &v) in vals.iter().enumerate() {
                        let col = g * QUERY_TILE + j;
                        if col < q.count {
                            out[(r + i) * q.count + col] = v;
                        }
                    }
                }
            }
            r += take;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn square_norms(rows: &[f32], d: usize, sq: &mut [f32]) {
        for (r, s) in sq.iter_mut().enumerate().take(rows.len() / d) {
            let p = rows.as_ptr().add(r * d);
            let mut acc = _mm256_setzero_ps();
            let full = d / 8 * 8;
            let mut k = 0;
            while k < full {
                let x = _mm256_loadu_ps(p.add(k));
                acc = _mm256_fmadd_ps(x, x, acc);
                k += 8;
            }
            let mut t = hsum(acc);
            for i in full..d {
                t += *p.add(i) * *p.add(i);
            }
            *s = t;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_equals_float64_dot_products_for_awkward_shapes() {
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for (n, qn, d) in [(1, 1, 1), (7, 5, 13), (9, 3, 64), (5, 20, 2051)] {
            let rows: Vec<f32> = (0..n * d).map(|_| next()).collect();
            let qv: Vec<f32> = (0..qn * d).map(|_| next()).collect();
            let q = QueryMatrix::new(&qv, qn, d);
            let mut out = vec![0f32; n * qn];
            let mut sq = vec![0f32; n];
            dot_block(&rows, &q, &mut out, Some(&mut sq));
            let mut portable = vec![0f32; n * qn];
            portable_dot_block(&rows, &q, &mut portable);
            for r in 0..n {
                let row = &rows[r * d..(r + 1) * d];
                let want_sq: f64 = row.iter().map(|&x| x as f64 * x as f64).sum();
                assert!((sq[r] as f64 - want_sq).abs() < 1e-4 * want_sq.max(1.0));
                for j in 0..qn {
                    let want: f64 = row
                        .iter()
                        .zip(&qv[j * d..(j + 1) * d])
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum();
                    for got in [out[r * qn + j], portable[r * qn + j]] {
                        assert!(
                            (got as f64 - want).abs() < 1e-4 * (d as f64).sqrt(),
                            "{n}x{qn}x{d}"
                        );
                    }
                }
            }
        }
    }
}
