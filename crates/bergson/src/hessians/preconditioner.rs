//! Preconditioners: an inverse Hessian power `H^p` applied to per-module gradients
//! (Bergson 2.5.1's `hessians/preconditioner.py`).
//!
//! - [`Preconditioner::Dense`]: per-module `[d, d]` matrices `H^p` (autocorrelation Grams);
//!   `apply` is `g @ H^p` (symmetric, so the row-vector form).
//! - [`Preconditioner::JointDense`]: one `H^p` over all modules concatenated in the given order
//!   (TRAK's global projection, the `"joint"` key).
//! - [`Preconditioner::Factored`]: a Kronecker-factored Hessian kept as eigenvectors Q_A, Q_G
//!   and an eigenvalue grid Λ; `apply` views each flat gradient as `[n, O, I]`, rotates it into
//!   the eigenbasis (`Q_Gᵀ G Q_A`), scales elementwise by `m(Λ)` and rotates back
//!   (`Q_G G' Q_Aᵀ`), never forming the `[O·I, O·I]` matrix.
//!
//! Modules absent from the Hessian pass through unchanged. Where preconditioning applies
//! (Bergson's rule everywhere): `H^-1` on the query only (one-sided) without unit norm,
//! `H^-1/2` on both sides (two-sided) with it, see [`power_for`].

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::inversion::{
    eigenvalue_multiplier, invert_psd_matrix, spectrum_mean, FactorEigenvalues,
};
use crate::collect::ProjectionSettings;
use crate::config::{Inversion, InversionConfig};
use crate::index::hessian_store::{self, JOINT};
use crate::{Error, Result};

/// The matrix power each side gets: `-0.5` (two-sided) with unit norm, `-1` (query only)
/// without.
pub fn power_for(unit_normalize: bool) -> f64 {
    if unit_normalize {
        -0.5
    } else {
        -1.0
    }
}

/// One module's factored inverse: eigenvectors and the multiplier grid `m(Λ)` `[O, I]`.
pub struct FactoredInverse {
    eigen_a: Tensor,
    eigen_g: Tensor,
    multiplier: Tensor,
}

/// An inverse Hessian power, ready to apply.
pub enum Preconditioner {
    /// `(module, H^p)`, float32.
    Dense(Vec<(String, Tensor)>),
    /// `H^p` over every module's columns concatenated, float32.
    JointDense(Tensor),
    /// `(module, factored inverse)`.
    Factored(Vec<(String, FactoredInverse)>),
}

impl Preconditioner {
    /// Loads the Hessian at `path` as `H^power` under `cfg` (Bergson's `load_preconditioner`):
    /// factored when `path` has `eigen_activation_sharded/`, else a dense processor (joint when
    /// it has the `"joint"` key). `ev_correction` selects the EK-FAC corrected eigenvalues.
    pub fn load(
        path: &Path,
        cfg: &InversionConfig,
        power: f64,
        ev_correction: bool,
        device: Device,
    ) -> Result<Preconditioner> {
        if hessian_store::is_factored(path) {
            let tikhonov = cfg.inversion == Inversion::FactoredTikhonov;
            if tikhonov && ev_correction {
                return Err(Error::input(
                    "--inversion factored_tikhonov cannot be combined with --ev_correction: the \
                     EK-FAC corrected eigenvalues do not factorise as λ_G ⊗ λ_A; use another \
                     --inversion (e.g. damped_inverse) or drop --ev_correction",
                ));
            }
            let store = hessian_store::read_factored(path, ev_correction, tikhonov)?;
            let modules = store
                .modules
                .into_iter()
                .map(|(name, m)| {
                    let inv = factored_inverse(m, cfg, power, device)?;
                    Ok((name, inv))
                })
                .collect::<Result<_>>()?;
            return Ok(Preconditioner::Factored(modules));
        }
        if ev_correction {
            tracing::warn!(
                "--ev_correction applies only to factored (EK-FAC) Hessians; {} is dense, so it is ignored",
                path.display()
            );
        }
        let dense = hessian_store::read_dense(path)?;
        let invert = |h: &Tensor| -> Result<Tensor> {
            invert_psd_matrix(&h.f_to_kind(Kind::Float)?, cfg, power)?
                .f_to_device(device)
                .map_err(Into::into)
        };
        if let Some((_, h)) = dense.hessians.iter().find(|(n, _)| n == JOINT) {
            return Ok(Preconditioner::JointDense(invert(h)?));
        }
        Ok(Preconditioner::Dense(
            dense
                .hessians
                .iter()
                .map(|(n, h)| Ok((n.clone(), invert(h)?)))
                .collect::<Result<_>>()?,
        ))
    }

    /// Whether the Hessian is factored.
    pub fn is_factored(&self) -> bool {
        matches!(self, Preconditioner::Factored(_))
    }

    /// The module names the Hessian covers (none for a joint one, which covers whatever it is
    /// given).
    pub fn modules(&self) -> Vec<&str> {
        match self {
            Preconditioner::Dense(m) => m.iter().map(|(n, _)| n.as_str()).collect(),
            Preconditioner::Factored(m) => m.iter().map(|(n, _)| n.as_str()).collect(),
            Preconditioner::JointDense(_) => Vec::new(),
        }
    }

    /// `(O, I)` of a factored module's gradient `[O, I]` (the bias column included in `I`);
    /// `None` for a module the Hessian lacks or a dense Hessian.
    pub fn factor_shape(&self, name: &str) -> Option<(i64, i64)> {
        match self {
            Preconditioner::Factored(m) => m
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, f)| (f.eigen_g.size()[0], f.eigen_a.size()[0])),
            _ => None,
        }
    }

    /// The gradient width each covered module needs (`d`, or `O·I`).
    fn module_width(&self, name: &str) -> Option<i64> {
        match self {
            Preconditioner::Dense(m) => m.iter().find(|(n, _)| n == name).map(|(_, h)| h.size()[0]),
            Preconditioner::Factored(m) => m
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, f)| f.eigen_g.size()[0] * f.eigen_a.size()[0]),
            Preconditioner::JointDense(_) => None,
        }
    }

    /// Refuses a Hessian that does not fit gradients with `grad_sizes` (`(module, width)`),
    /// naming the first module that differs and, when known, the model it was fitted on.
    /// Modules the Hessian lacks pass through (as in Bergson), with a warning; a Hessian that
    /// covers none of them was fitted on another module set and is refused.
    pub fn check_fits(
        &self,
        grad_sizes: &[(String, usize)],
        hessian: &Path,
        fitted_on: Option<&str>,
    ) -> Result<()> {
        let on = fitted_on
            .map(|m| format!(" (it was fitted on model {m})"))
            .unwrap_or_default();
        if let Preconditioner::JointDense(h) = self {
            let total: usize = grad_sizes.iter().map(|(_, s)| s).sum();
            if h.size()[0] as usize != total {
                return Err(Error::input(format!(
                    "the joint Hessian at {} is {} wide but the gradients have {total} values per \
                     row{on}; fit it with this run's model, modules and projection",
                    hessian.display(),
                    h.size()[0]
                )));
            }
            return Ok(());
        }
        let mut missing = Vec::new();
        for (name, size) in grad_sizes {
            match self.module_width(name) {
                None => missing.push(name.as_str()),
                Some(w) if w as usize != *size => {
                    return Err(Error::input(format!(
                        "the Hessian at {} has module '{name}' with {w} values but the gradients \
                         have {size}{on}; fit the Hessian with this run's model, --projection_dim \
                         and --include_bias",
                        hessian.display()
                    )))
                }
                Some(_) => {}
            }
        }
        if missing.len() == grad_sizes.len() && !grad_sizes.is_empty() {
            return Err(Error::input(format!(
                "the Hessian at {} covers none of the gradients' modules ({}); it has {}{on}; fit \
                 it on this run's model and modules",
                hessian.display(),
                grad_sizes
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.modules().join(", ")
            )));
        }
        if !missing.is_empty() {
            tracing::warn!(
                "the Hessian at {} has no factors for {}; those modules are not preconditioned",
                hessian.display(),
                missing.join(", ")
            );
        }
        Ok(())
    }

    /// `g ↦ g H^p` per module (the joint one over all of `grads` concatenated in order).
    /// Dense results are float32, factored and joint ones keep each gradient's dtype (as in
    /// Bergson); uncovered modules come back unchanged.
    pub fn apply(&self, grads: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        match self {
            Preconditioner::Dense(h_inv) => grads
                .iter()
                .map(|(name, g)| {
                    let out = match h_inv.iter().find(|(n, _)| n == name) {
                        Some((_, h)) => g
                            .f_to_device(h.device())?
                            .f_to_kind(h.kind())?
                            .f_matmul(h)?
                            .f_to_device(g.device())?,
                        None => g.shallow_clone(),
                    };
                    Ok((name.clone(), out))
                })
                .collect(),
            Preconditioner::JointDense(h) => {
                let sizes: Vec<i64> = grads.iter().map(|(_, g)| g.size()[1]).collect();
                let total: i64 = sizes.iter().sum();
                if total != h.size()[0] {
                    return Err(Error::input(format!(
                        "the joint Hessian is {} wide but the gradients have {total} values per row",
                        h.size()[0]
                    )));
                }
                let parts: Vec<Tensor> = grads
                    .iter()
                    .map(|(_, g)| g.f_to_device(h.device())?.f_to_kind(h.kind()))
                    .collect::<std::result::Result<_, _>>()?;
                let out = Tensor::f_cat(&parts, 1)?.f_matmul(h)?;
                let mut at = 0;
                grads
                    .iter()
                    .zip(sizes)
                    .map(|((name, g), s)| {
                        let part = out
                            .f_narrow(1, at, s)?
                            .f_to_device(g.device())?
                            .f_to_kind(g.kind())?;
                        at += s;
                        Ok((name.clone(), part))
                    })
                    .collect()
            }
            Preconditioner::Factored(modules) => grads
                .iter()
                .map(|(name, flat)| {
                    let Some((_, f)) = modules.iter().find(|(n, _)| n == name) else {
                        return Ok((name.clone(), flat.shallow_clone()));
                    };
                    Ok((name.clone(), f.apply(flat)?))
                })
                .collect(),
        }
    }
}

impl FactoredInverse {
    /// A factored operator from its eigenvectors (`Q_A` `[I, I]`, `Q_G` `[O, O]`, columns) and
    /// a multiplier grid `[O, I]` the caller computed from the eigenvalues (SOURCE's spectral
    /// functions, say), all on one device.
    pub fn new(eigen_a: Tensor, eigen_g: Tensor, multiplier: Tensor) -> Self {
        FactoredInverse {
            eigen_a,
            eigen_g,
            multiplier,
        }
    }

    /// `Q_G (m ⊙ (Q_Gᵀ G Q_A)) Q_Aᵀ` for each row of `flat` `[n, O·I]`, in float32, returned
    /// in `flat`'s dtype and device; the products in Bergson's order.
    fn apply(&self, flat: &Tensor) -> Result<Tensor> {
        let (o, i) = (self.eigen_g.size()[0], self.eigen_a.size()[0]);
        let n = flat.size()[0];
        let g = flat
            .f_to_device(self.eigen_a.device())?
            .f_to_kind(Kind::Float)?
            .f_view([n, o, i])?;
        let g = g.f_matmul(&self.eigen_a)?;
        let g = g
            .f_transpose(-2, -1)?
            .f_matmul(&self.eigen_g)?
            .f_transpose(-2, -1)?;
        let g = g.f_mul(&self.multiplier)?;
        let g = g
            .f_transpose(-2, -1)?
            .f_matmul(&self.eigen_g.f_tr()?)?
            .f_transpose(-2, -1)?;
        let g = g.f_matmul(&self.eigen_a.f_tr()?)?;
        Ok(g.f_reshape([n, -1])?
            .f_to_kind(flat.kind())?
            .f_to_device(flat.device())?)
    }
}

/// A module's factored inverse under `cfg` at `power`: `mean(Λ)` over the whole `O·I` grid
/// (unclamped), and for `factored_tikhonov` the clamped means of λ_A and λ_G.
fn factored_inverse(
    m: hessian_store::FactoredModule,
    cfg: &InversionConfig,
    power: f64,
    device: Device,
) -> Result<FactoredInverse> {
    let lam = &m.lambdas;
    let mean = spectrum_mean(cfg.inversion, lam)?;
    let factors = m.factor_eigs.as_ref().map(|(a, g)| FactorEigenvalues {
        activation: a,
        gradient: g,
    });
    let multiplier = eigenvalue_multiplier(
        cfg.inversion,
        lam,
        &mean,
        cfg.damping_factor,
        factors.as_ref(),
        power,
    )?;
    Ok(FactoredInverse {
        eigen_a: m.eigen_a.f_to_device(device)?,
        eigen_g: m.eigen_g.f_to_device(device)?,
        multiplier: multiplier.f_to_device(device)?,
    })
}

/// Refuses a dense Hessian projected differently from `ours` (Bergson's
/// `check_saved_projection(hessian_path, "The Hessian")`); factored Hessians hold unprojected
/// factors and need `projection_dim = 0`, checked by the caller with its own message.
pub fn check_projection(path: &Path, ours: &ProjectionSettings) -> Result<()> {
    if hessian_store::is_factored(path) {
        return Ok(());
    }
    ours.check_saved(path, "The Hessian")
}

/// Refuses a factored Hessian for projected gradients (its factors act on full gradients), as
/// Bergson's score does; `projection_dim` is the run's.
pub fn check_factored_unprojected(
    path: &Path,
    projection_dim: usize,
    unit_normalize: bool,
) -> Result<()> {
    if projection_dim == 0 || !hessian_store::is_factored(path) {
        return Ok(());
    }
    let why = if unit_normalize {
        " (two-sided H^-1/2 preconditioning with unit norm needs full index gradients)"
    } else {
        ""
    };
    Err(Error::input(format!(
        "the factored (K-FAC/EK-FAC) Hessian at {} needs --projection_dim 0, but this run \
         projects to {projection_dim}{why}; rebuild the indexes with --projection_dim 0, or use a \
         dense (autocorrelation) Hessian",
        path.display()
    )))
}

/// The model a Hessian directory was fitted on, from its `config.yaml`.
pub fn fitted_model(path: &Path) -> Option<String> {
    crate::config::run_file::load_subconfig::<crate::config::IndexConfig>(path, "index_cfg")
        .ok()
        .flatten()
        .map(|c| c.model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn randn(shape: &[i64]) -> Tensor {
        Tensor::randn(shape, (Kind::Double, Device::Cpu))
    }

    /// An orthogonal matrix from a QR factorisation.
    fn orthogonal(n: i64) -> Tensor {
        Tensor::linalg_qr(&randn(&[n, n]), "reduced").0
    }

    #[test]
    fn factored_apply_equals_the_dense_kronecker_inverse() {
        tch::manual_seed(7);
        let (o, i) = (3i64, 4i64);
        let (qa, qg) = (orthogonal(i), orthogonal(o));
        let (la, lg) = (randn(&[i]).abs(), randn(&[o]).abs());
        let grid = lg.unsqueeze(1).matmul(&la.unsqueeze(0));
        for (inversion, power) in [
            (Inversion::DampedInverse, -1.0),
            (Inversion::DampedInverse, -0.5),
            (Inversion::Pseudoinverse, -1.0),
        ] {
            let cfg = InversionConfig {
                inversion,
                damping_factor: 0.1,
                ..InversionConfig::default()
            };
            let inv = factored_inverse(
                hessian_store::FactoredModule {
                    eigen_a: qa.to_kind(Kind::Float),
                    eigen_g: qg.to_kind(Kind::Float),
                    lambdas: grid.to_kind(Kind::Float),
                    factor_eigs: None,
                },
                &cfg,
                power,
                Device::Cpu,
            )
            .unwrap();
            // Dense reference: H = (Q_G ⊗ Q_A) diag(vec Λ) (Q_G ⊗ Q_A)ᵀ on row-major vec(G),
            // inverted by the same spectral function in float64.
            let kron = qg.unsqueeze(1).unsqueeze(3) * qa.unsqueeze(0).unsqueeze(2);
            let kron = kron.reshape([o * i, o * i]);
            let h = kron.matmul(&grid.reshape([-1]).diag(0)).matmul(&kron.tr());
            let want_inv = invert_psd_matrix(&h, &cfg, power).unwrap();
            let g = randn(&[2, o * i]);
            let got = inv
                .apply(&g.to_kind(Kind::Float))
                .unwrap()
                .to_kind(Kind::Double);
            let want = g.matmul(&want_inv);
            let err = (&got - &want).abs().max().double_value(&[]);
            let scale = want.abs().max().double_value(&[]);
            assert!(
                err < 1e-4 * scale,
                "{inversion:?} {power}: {err} of {scale}"
            );
        }
    }

    #[test]
    fn uncovered_modules_pass_through_and_joint_splits_back() {
        let h = Tensor::eye(2, (Kind::Float, Device::Cpu)) * 2.0;
        let p = Preconditioner::Dense(vec![("a".into(), h.shallow_clone())]);
        let g = Tensor::ones([1, 2], (Kind::Float, Device::Cpu));
        let out = p
            .apply(&[
                ("a".into(), g.shallow_clone()),
                ("b".into(), g.shallow_clone()),
            ])
            .unwrap();
        assert_eq!(
            Vec::<f32>::try_from(out[0].1.reshape([-1])).unwrap(),
            [2.0, 2.0]
        );
        assert_eq!(
            Vec::<f32>::try_from(out[1].1.reshape([-1])).unwrap(),
            [1.0, 1.0]
        );
        let joint = Preconditioner::JointDense(Tensor::eye(3, (Kind::Float, Device::Cpu)) * 3.0);
        let one = Tensor::ones([1, 1], (Kind::Float, Device::Cpu));
        let out = joint
            .apply(&[("a".into(), g.shallow_clone()), ("b".into(), one)])
            .unwrap();
        assert_eq!(out[1].1.size(), [1, 1]);
        assert_eq!(out[1].1.double_value(&[0, 0]), 3.0);
        let e = p
            .check_fits(&[("a".into(), 3)], Path::new("h"), Some("m1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'a'") && e.contains("m1"), "{e}");
        let e = p
            .check_fits(&[("z".into(), 2)], Path::new("h"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("none of"), "{e}");
    }
}
