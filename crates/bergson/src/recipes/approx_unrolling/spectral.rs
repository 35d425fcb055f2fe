//! SOURCE's spectral functions of a segment's (checkpoint-averaged) eigenvalues σ, with `ηK`
//! the segment's learning rate times its steps (Bae et al. 2024, Eqs. 16 and 20), computed in
//! the eigenvalues' dtype with Bergson's operations:
//!
//! - [`f_backward`]: `exp(−ηK σ)`, which carries a query gradient back through a segment;
//! - [`f_segment`]: `(1 − exp(−ηK σ)) / σ`, a segment's summed contribution, formed as
//!   `ηK · (−expm1(−x) / x)` with `x = ηK σ` and the ratio set to 1 where `x = 0` (its limit),
//!   so `σ → 0` or `ηK → 0` gives `ηK`;
//! - [`f_one_minus_exp`]: `1 − exp(−ηK σ)`, the numerator alone, for the Adam variant whose
//!   `1/σ` comes from the EK-FAC inverse applied afterwards.

use tch::Tensor;

use crate::Result;

/// Which function a phase applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EigenFunction {
    /// `exp(−ηK σ)` (phase 1).
    Backward,
    /// `(1 − exp(−ηK σ)) / σ` (phase 2).
    Segment,
    /// `1 − exp(−ηK σ)` (phase 2 of the Adam variant, before the EK-FAC inverse).
    OneMinusExp,
}

impl EigenFunction {
    /// The function at `sigma`.
    pub fn apply(self, sigma: &Tensor, eta_k: f64) -> Result<Tensor> {
        match self {
            EigenFunction::Backward => f_backward(sigma, eta_k),
            EigenFunction::Segment => f_segment(sigma, eta_k),
            EigenFunction::OneMinusExp => f_one_minus_exp(sigma, eta_k),
        }
    }
}

/// `exp(−ηK σ)`.
pub fn f_backward(sigma: &Tensor, eta_k: f64) -> Result<Tensor> {
    Ok(sigma.f_mul_scalar(-eta_k)?.f_exp()?)
}

/// `(1 − exp(−ηK σ)) / σ`, `ηK` where `ηK σ = 0`.
pub fn f_segment(sigma: &Tensor, eta_k: f64) -> Result<Tensor> {
    let x = sigma.f_mul_scalar(eta_k)?;
    let is_zero = x.f_eq(0.0)?;
    let x_safe = x.f_masked_fill(&is_zero, 1.0)?;
    let ratio = x_safe.f_neg()?.f_expm1()?.f_neg()?.f_div(&x_safe)?;
    Ok(ratio.f_masked_fill(&is_zero, 1.0)?.f_mul_scalar(eta_k)?)
}

/// `1 − exp(−ηK σ)`.
pub fn f_one_minus_exp(sigma: &Tensor, eta_k: f64) -> Result<Tensor> {
    Ok(sigma.f_mul_scalar(-eta_k)?.f_expm1()?.f_neg()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    const SIGMAS: [f64; 9] = [0.0, 1e-30, 1e-12, 1e-6, 1e-3, 0.5, 1.0, 30.0, 1e4];

    fn eval(f: EigenFunction, eta_k: f64, kind: Kind) -> Vec<f64> {
        let s = Tensor::from_slice(&SIGMAS).to_kind(kind);
        Vec::<f64>::try_from(f.apply(&s, eta_k).unwrap().to_kind(Kind::Double)).unwrap()
    }

    /// Direct float64 formulas (`1 − exp(−x)` as `−expm1(−x)` so that it is exact near 0), and
    /// the limits: `f_segment → ηK` as `σ → 0` (exactly `ηK` at 0), `→ 0` as `ηK → 0`.
    #[test]
    fn functions_match_float64_formulas_and_their_limits() {
        for eta_k in [0.0, 1e-8, 0.3, 2.0, 50.0] {
            for kind in [Kind::Double, Kind::Float] {
                let tol = if kind == Kind::Double { 1e-14 } else { 2e-6 };
                let (b, s, n) = (
                    eval(EigenFunction::Backward, eta_k, kind),
                    eval(EigenFunction::Segment, eta_k, kind),
                    eval(EigenFunction::OneMinusExp, eta_k, kind),
                );
                for (j, &sigma) in SIGMAS.iter().enumerate() {
                    let sigma = if kind == Kind::Float {
                        sigma as f32 as f64
                    } else {
                        sigma
                    };
                    let x = eta_k * sigma;
                    let one_minus = -(-x).exp_m1();
                    let seg = if x == 0.0 { eta_k } else { one_minus / sigma };
                    let close = |got: f64, want: f64| {
                        (got - want).abs() <= tol * want.abs().max(1e-300) + 1e-300
                    };
                    assert!(close(b[j], (-x).exp()), "backward {eta_k} {sigma}");
                    assert!(close(n[j], one_minus), "1-exp {eta_k} {sigma}: {}", n[j]);
                    assert!(close(s[j], seg), "segment {eta_k} {sigma}: {} {seg}", s[j]);
                }
                // The limits (ηK in the eigenvalues' dtype).
                let ek = if kind == Kind::Float {
                    eta_k as f32 as f64
                } else {
                    eta_k
                };
                assert_eq!(s[0], ek);
                assert!((s[1] - ek).abs() <= 1e-6 * ek);
                assert_eq!(b[0], 1.0);
                if eta_k == 0.0 {
                    assert!(s.iter().all(|&v| v == 0.0) && b.iter().all(|&v| v == 1.0));
                }
                // Large σ: the segment tends to 1/σ.
                if eta_k >= 0.3 {
                    assert!((s[8] * 1e4 - 1.0).abs() < 1e-5, "{}", s[8]);
                }
            }
        }
    }
}
