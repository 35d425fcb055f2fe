//! Eigenvalue inversion of a Hessian (Bergson 2.5.1's `hessians/inversion.py`).
//!
//! With `c = damping_factor`, `λ` an eigenvalue and `mean(λ)` the mean over the module's whole
//! spectrum (dense: its `d` eigenvalues; factored: its `O·I` eigenvalue grid), the multiplier
//! that takes `λ` towards its inverse is:
//! - `damped_inverse`: `1 / (λ + c·mean(λ))` (relative Tikhonov damping);
//! - `absolute_damped_inverse`: `1 / (λ + c)` (the same with `mean(λ) = 1`);
//! - `tikhonov_filtered`: `λ / (λ² + (c·mean(λ))²)`, the ridge filter factor;
//! - `pseudoinverse`: `1/λ` where `λ > c·mean(λ)`, else 0;
//! - `factored_tikhonov` (factored only): the damping split across the Kronecker factors by
//!   Martens & Grosse's trace ratio `π = sqrt(mean(λ_A) / mean(λ_G))`,
//!   `1 / (λ + π·√(c·mean λ)·λ_G[o] + (√(c·mean λ)/π)·λ_A[i] + c·mean λ)`; a dense Gram has
//!   no A/G split, so it falls back to `damped_inverse` there.
//!
//! `power = -1` is the full inverse; `power = -0.5` raises the (clamped at 0) multiplier to
//! `0.5`, so that applying it on both sides gives the full inverse.

use tch::{Kind, Tensor};

use crate::config::{Inversion, InversionConfig};
use crate::Result;

/// The per-factor eigenvalues `factored_tikhonov` needs: `λ_A` `[I]`, `λ_G` `[O]`.
pub struct FactorEigenvalues<'a> {
    /// Activation-factor eigenvalues `λ_A` `[I]`.
    pub activation: &'a Tensor,
    /// Gradient-factor eigenvalues `λ_G` `[O]`.
    pub gradient: &'a Tensor,
}

/// The elementwise multiplier `m(λ)` of `eigvals` (any shape) for `inversion` at `power`
/// (Bergson's `eigenvalue_multiplier`). `mean` is `mean(λ)` (a 0-dim tensor); `factors` are
/// needed, and only used, for `factored_tikhonov` (`eigvals` is then the `[O, I]` grid).
pub fn eigenvalue_multiplier(
    inversion: Inversion,
    eigvals: &Tensor,
    mean: &Tensor,
    damping_factor: f64,
    factors: Option<&FactorEigenvalues<'_>>,
    power: f64,
) -> Result<Tensor> {
    let c = damping_factor;
    let multiplier = match inversion {
        Inversion::DampedInverse | Inversion::AbsoluteDampedInverse => {
            eigvals.f_add(&mean.f_mul_scalar(c)?)?.f_reciprocal()?
        }
        Inversion::TikhonovFiltered => {
            let alpha_sq = mean.f_mul_scalar(c)?.f_square()?;
            eigvals.f_div(&eigvals.f_mul(eigvals)?.f_add(&alpha_sq)?)?
        }
        Inversion::Pseudoinverse => {
            let tol = mean.f_mul_scalar(c)?;
            eigvals
                .f_reciprocal()?
                .f_where_self(&eigvals.f_gt_tensor(&tol)?, &eigvals.f_zeros_like()?)?
        }
        Inversion::FactoredTikhonov => {
            let f = factors.ok_or_else(|| {
                crate::Error::internal("factored_tikhonov needs the per-factor eigenvalues")
            })?;
            factored_tikhonov_damped(eigvals, f, mean, c)?.f_reciprocal()?
        }
    };
    let frac = -power;
    Ok(if frac != 1.0 {
        multiplier.f_clamp_min(0.0)?.f_pow_tensor_scalar(frac)?
    } else {
        multiplier
    })
}

/// The factored-Tikhonov damped eigenvalues `λ + π·√(c·mean λ)·λ_G ⊗ 1 + (√(c·mean λ)/π)·1 ⊗ λ_A
/// + c·mean λ` (before inversion), with `π` from the clamped factor means.
fn factored_tikhonov_damped(
    grid: &Tensor,
    f: &FactorEigenvalues<'_>,
    mean: &Tensor,
    c: f64,
) -> Result<Tensor> {
    let tiny = finfo_tiny(grid.kind());
    let lambda_abs = mean.f_mul_scalar(c)?;
    let sqrt_lambda = lambda_abs.f_clamp_min(0.0)?.f_sqrt()?;
    let mean_of = |t: &Tensor| t.f_clamp_min(0.0)?.f_mean(t.kind());
    let mean_a = mean_of(f.activation)?;
    let mean_g = mean_of(f.gradient)?;
    let pi = mean_a
        .f_div(&mean_g.f_clamp_min(tiny)?)?
        .f_clamp_min(tiny)?
        .f_sqrt()?;
    let g_term = f.gradient.f_unsqueeze(1)?.f_mul(&pi.f_mul(&sqrt_lambda)?)?;
    let a_term = f
        .activation
        .f_unsqueeze(0)?
        .f_mul(&sqrt_lambda.f_div(&pi)?)?;
    Ok(grid.f_add(&g_term)?.f_add(&a_term)?.f_add(&lambda_abs)?)
}

/// `torch.finfo(kind).tiny`, the smallest normal number.
fn finfo_tiny(kind: Kind) -> f64 {
    match kind {
        Kind::Double => f64::MIN_POSITIVE,
        Kind::Half => 6.103_515_625e-5,
        Kind::BFloat16 => 1.175_494_350_822_287_5e-38,
        _ => f32::MIN_POSITIVE as f64,
    }
}

/// `mean(λ)` for `inversion`: the spectrum's mean, or one for `absolute_damped_inverse`.
pub fn spectrum_mean(inversion: Inversion, eigvals: &Tensor) -> Result<Tensor> {
    Ok(match inversion {
        Inversion::AbsoluteDampedInverse => eigvals.f_ones_like()?.f_mean(eigvals.kind())?,
        _ => eigvals.f_mean(eigvals.kind())?,
    })
}

/// The regularised inverse power `H^power` of a p.s.d. matrix (Bergson's `invert_psd_matrix`):
/// `eigh` in float64, eigenvalues clamped at 0 (`eigh` gives small negative ones for a
/// numerically p.s.d. Gram), `V diag(m(λ)) Vᵀ`, returned in `h`'s dtype.
pub fn invert_psd_matrix(h: &Tensor, cfg: &InversionConfig, power: f64) -> Result<Tensor> {
    let kind = h.kind();
    let (eigvals, eigvecs) = h.f_to_kind(Kind::Double)?.f_linalg_eigh("L")?;
    let eigvals = eigvals.f_clamp_min(0.0)?;
    let inversion = match cfg.inversion {
        Inversion::FactoredTikhonov => Inversion::DampedInverse,
        other => other,
    };
    let mean = spectrum_mean(cfg.inversion, &eigvals)?;
    let m = eigenvalue_multiplier(inversion, &eigvals, &mean, cfg.damping_factor, None, power)?;
    Ok(eigvecs
        .f_mul(&m)?
        .f_matmul(&eigvecs.f_tr()?)?
        .f_to_kind(kind)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random p.s.d. `[d, d]` Gram in float64 with a few tiny eigenvalues.
    fn gram(d: i64, seed: i64) -> Tensor {
        tch::manual_seed(seed);
        let x = Tensor::randn([d - 2, d], (Kind::Double, tch::Device::Cpu));
        x.tr().matmul(&x) / (d as f64)
    }

    fn cfg(inversion: Inversion, damping_factor: f64) -> InversionConfig {
        InversionConfig {
            inversion,
            damping_factor,
            ..InversionConfig::default()
        }
    }

    /// The reference: the multiplier written out per eigenvalue in f64 scalar code.
    fn reference_multiplier(inversion: Inversion, lams: &[f64], c: f64, power: f64) -> Vec<f64> {
        let mean = match inversion {
            Inversion::AbsoluteDampedInverse => 1.0,
            _ => lams.iter().sum::<f64>() / lams.len() as f64,
        };
        lams.iter()
            .map(|&l| {
                let m = match inversion {
                    Inversion::DampedInverse
                    | Inversion::AbsoluteDampedInverse
                    | Inversion::FactoredTikhonov => 1.0 / (l + c * mean),
                    Inversion::TikhonovFiltered => l / (l * l + (c * mean).powi(2)),
                    Inversion::Pseudoinverse => {
                        if l > c * mean {
                            1.0 / l
                        } else {
                            0.0
                        }
                    }
                };
                if power == -1.0 {
                    m
                } else {
                    m.max(0.0).powf(-power)
                }
            })
            .collect()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn dense_inverse_matches_a_direct_float64_reference_for_every_method_and_power() {
        let h = gram(7, 3);
        let (lams, vecs) = h.linalg_eigh("L");
        let lams_v: Vec<f64> = Vec::try_from(lams.clamp_min(0.0)).unwrap();
        for inversion in [
            Inversion::DampedInverse,
            Inversion::AbsoluteDampedInverse,
            Inversion::TikhonovFiltered,
            Inversion::Pseudoinverse,
            Inversion::FactoredTikhonov,
        ] {
            for power in [-1.0, -0.5] {
                let c = 0.3;
                let got = invert_psd_matrix(&h, &cfg(inversion, c), power).unwrap();
                let m = reference_multiplier(inversion, &lams_v, c, power);
                let want = vecs
                    .matmul(&Tensor::from_slice(&m).diag(0))
                    .matmul(&vecs.tr());
                let err = max_abs_diff(&got, &want);
                assert!(err < 1e-9, "{inversion:?} power {power}: {err}");
            }
        }
    }

    #[test]
    fn half_power_applied_twice_is_the_full_inverse_and_small_damping_inverts() {
        let x = Tensor::randn([12, 5], (Kind::Double, tch::Device::Cpu));
        let h = x.tr().matmul(&x); // full rank
        let c = cfg(Inversion::AbsoluteDampedInverse, 0.0);
        let half = invert_psd_matrix(&h, &c, -0.5).unwrap();
        let full = invert_psd_matrix(&h, &c, -1.0).unwrap();
        assert!(max_abs_diff(&half.matmul(&half), &full) < 1e-9);
        let eye = Tensor::eye(5, (Kind::Double, tch::Device::Cpu));
        assert!(max_abs_diff(&full.matmul(&h), &eye) < 1e-8);
    }

    #[test]
    fn float32_input_returns_float32() {
        let h = gram(5, 1).to_kind(Kind::Float);
        let out = invert_psd_matrix(&h, &InversionConfig::default(), -1.0).unwrap();
        assert_eq!(out.kind(), Kind::Float);
    }

    #[test]
    fn factored_tikhonov_grid_matches_the_formula() {
        let a = Tensor::from_slice(&[0.5f64, 2.0, 0.0]);
        let g = Tensor::from_slice(&[1.0f64, 3.0]);
        let grid = g.unsqueeze(1).matmul(&a.unsqueeze(0)); // [2, 3]
        let mean = grid.mean(Kind::Double);
        let c = 0.2;
        let f = FactorEigenvalues {
            activation: &a,
            gradient: &g,
        };
        for power in [-1.0, -0.5] {
            let got = eigenvalue_multiplier(
                Inversion::FactoredTikhonov,
                &grid,
                &mean,
                c,
                Some(&f),
                power,
            )
            .unwrap();
            let av = [0.5, 2.0, 0.0];
            let gv = [1.0, 3.0];
            let mean_v = av.iter().sum::<f64>() * gv.iter().sum::<f64>() / 6.0;
            let pi = ((av.iter().sum::<f64>() / 3.0) / (gv.iter().sum::<f64>() / 2.0)).sqrt();
            let s = (c * mean_v).sqrt();
            for (o, gg) in gv.iter().enumerate() {
                for (i, aa) in av.iter().enumerate() {
                    let damped = gg * aa + pi * s * gg + s / pi * aa + c * mean_v;
                    let want = (1.0 / damped).powf(-power);
                    let v = got.double_value(&[o as i64, i as i64]);
                    assert!((v - want).abs() < 1e-12 * want.abs().max(1.0), "{v} {want}");
                }
            }
        }
    }
}
