//! The matrix half of Python Bergson 2.5.1's functional Muon (`magic/optim.py`): Nesterov
//! momentum whose update is orthogonalised by a quintic Newton-Schulz iteration (Keller
//! Jordan's constants, <https://kellerjordan.github.io/posts/muon/>), scaled to match AdamW's
//! update RMS. Written with plain differentiable tensor ops (matmuls, a norm, a clamp), so a
//! traced step can be differentiated through the iteration (MAGIC).

use tch::Tensor;

/// Floor of the Frobenius norm the input is divided by.
const EPS: f64 = 1e-7;
/// The quintic's coefficients `X ← a X + (b A + c A²) X`, `A = X Xᵀ`.
const A: f64 = 3.4445;
const B: f64 = -4.7750;
const C: f64 = 2.0315;
/// Newton-Schulz iterations.
const NS_STEPS: usize = 5;

/// Approximately orthogonalises the 2-D `g` (`U S' Vᵀ` with `S'` near 1, `U S Vᵀ = g`): divides
/// by the Frobenius norm (so the spectral norm is at most 1), then five quintic iterations, on
/// the wide orientation (transposed when `g` has more rows than columns), in `g`'s dtype.
pub fn orthogonalize(g: &Tensor) -> Tensor {
    let tall = g.size()[0] > g.size()[1];
    let x = if tall { g.tr() } else { g.shallow_clone() };
    let mut x = &x / x.norm().clamp_min(EPS);
    for _ in 0..NS_STEPS {
        let gram = x.matmul(&x.tr());
        // torch.addmm(gram, gram, gram, beta=b, alpha=c) and addmm(x, poly, x, beta=a).
        let poly = (&gram * B).addmm(&(&gram * C), &gram);
        x = (&x * A).addmm(&poly, &x);
    }
    if tall {
        x.tr()
    } else {
        x
    }
}

/// Muon's per-matrix scale of the orthogonalised update (`_adjust_lr(1, "match_rms_adamw")`):
/// `0.2 · sqrt(max(rows, cols))`, which gives the update about the RMS of an AdamW step.
pub fn rms_ratio(shape: &[i64]) -> f64 {
    0.2 * (shape[0].max(shape[1]) as f64).sqrt()
}

/// One Muon update direction of a weight matrix: with momentum `β`, the new buffer
/// `m' = β m + g`, then `ratio · NS(g + β m')` (Nesterov). Returns the direction (before weight
/// decay and the learning rate) and `m'`.
pub fn direction(g: &Tensor, trace: &Tensor, momentum: f64) -> (Tensor, Tensor) {
    let trace = trace * momentum + g;
    let nesterov = g + &trace * momentum;
    let update = orthogonalize(&nesterov) * rms_ratio(&g.size());
    (update, trace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The quintic written out on a 2×3 matrix in float64 with explicit loops, against
    /// [`orthogonalize`] on it and on its transpose (which must give the transpose).
    #[test]
    fn newton_schulz_matches_the_iteration_written_out() {
        let g = [[0.3f64, -1.2, 0.5], [2.0, 0.1, -0.7]];
        let norm = g.iter().flatten().map(|v| v * v).sum::<f64>().sqrt();
        let mut x: Vec<Vec<f64>> = g
            .iter()
            .map(|r| r.iter().map(|v| v / norm).collect())
            .collect();
        let mm = |a: &Vec<Vec<f64>>, b: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
            (0..a.len())
                .map(|i| {
                    (0..b[0].len())
                        .map(|j| (0..b.len()).map(|k| a[i][k] * b[k][j]).sum())
                        .collect()
                })
                .collect()
        };
        for _ in 0..5 {
            let xt: Vec<Vec<f64>> = (0..3).map(|j| (0..2).map(|i| x[i][j]).collect()).collect();
            let gram = mm(&x, &xt);
            let gram2 = mm(&gram, &gram);
            let poly: Vec<Vec<f64>> = (0..2)
                .map(|i| (0..2).map(|j| B * gram[i][j] + C * gram2[i][j]).collect())
                .collect();
            let px = mm(&poly, &x);
            x = (0..2)
                .map(|i| (0..3).map(|j| A * x[i][j] + px[i][j]).collect())
                .collect();
        }
        let t = Tensor::from_slice(&g.concat()).reshape([2, 3]);
        let got = orthogonalize(&t);
        let got_t = orthogonalize(&t.tr().contiguous());
        for (i, row) in x.iter().enumerate() {
            for (j, &want) in row.iter().enumerate() {
                let (i, j) = (i as i64, j as i64);
                assert!((got.double_value(&[i, j]) - want).abs() < 1e-14);
                assert!((got_t.double_value(&[j, i]) - want).abs() < 1e-14);
            }
        }
        assert_eq!(got.kind(), Kind::Double);
    }

    /// The iteration pushes every singular value into roughly [0.5, 1.5] (Keller Jordan's
    /// note): the result is close to orthogonal, whatever the input's scale.
    #[test]
    fn singular_values_land_near_one() {
        tch::manual_seed(0);
        let g = Tensor::randn([8, 5], (Kind::Double, Device::Cpu)) * 1e3;
        let (_, s, _) = orthogonalize(&g).svd(true, true);
        let (lo, hi) = (s.min().double_value(&[]), s.max().double_value(&[]));
        assert!(lo > 0.5 && hi < 1.5, "singular values in [{lo}, {hi}]");
    }

    #[test]
    fn rms_ratio_uses_the_longer_side() {
        assert!((rms_ratio(&[64, 16]) - 1.6).abs() < 1e-15);
        assert!((rms_ratio(&[16, 64]) - 1.6).abs() < 1e-15);
    }
}
