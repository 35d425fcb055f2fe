//! Eigendecompositions of the Kronecker factors (Bergson's `eigenvectors._eigh` and
//! `save_uncorrected_eigenvalues`), always in float64.
//!
//! A factor summed over `T` positions is symmetrised and averaged, `(M + Mᵀ) / (2T)`, and
//! decomposed; eigenvalues and eigenvectors (columns) are stored in the factors' dtype. The
//! uncorrected K-FAC eigenvalues of the `[O, I]` weight are `outer(λ_G, λ_A) · T / N` (per
//! document, `N` the dataset's documents), and each factor's own eigenvalues are scaled by
//! `sqrt(T / N)` so that their outer product is that grid.

use tch::{Device, Kind, Tensor};

use crate::dist::{broadcast_anywhere, Collective};
use crate::{Error, Result};

/// Eigenvalues (ascending) and eigenvectors of a factor.
pub struct Eigen {
    /// `[d]`.
    pub values: Tensor,
    /// `[d, d]`, one eigenvector per column.
    pub vectors: Tensor,
}

impl Eigen {
    /// A placeholder of a `d`-dimensional factor's decomposition, for a rank that receives it
    /// from the module's owner ([`Eigen::shared`]).
    pub fn zeros(d: i64, kind: Kind, device: Device) -> Result<Eigen> {
        Ok(Eigen {
            values: Tensor::f_zeros([d], (kind, device))?,
            vectors: Tensor::f_zeros([d, d], (kind, device))?,
        })
    }

    /// `owner`'s decomposition on every rank of `job` (the others pass [`Eigen::zeros`]).
    pub fn shared(mut self, job: &dyn Collective, owner: usize) -> Result<Eigen> {
        broadcast_anywhere(job, &mut self.values, owner)?;
        broadcast_anywhere(job, &mut self.vectors, owner)?;
        Ok(self)
    }
}

/// The eigendecomposition of `matrix / count`, symmetrised, computed in float64 and returned in
/// `kind`. `count` is clamped to 1, as Bergson's for a module no position reached.
pub fn eigh_mean(name: &str, matrix: &Tensor, count: i64, kind: Kind) -> Result<Eigen> {
    let m = matrix.f_to_kind(Kind::Double)?;
    let m = m
        .f_add(&m.f_tr()?)?
        .f_div_scalar(2.0 * count.max(1) as f64)?;
    let finite = m.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0;
    if !finite {
        return Err(Error::input(format!(
            "the covariance of {name} contains NaN or infinite values; fit with --hessian_dtype \
             fp32 (or fp64), and check the model and data for non-finite losses"
        )));
    }
    let (values, vectors) = m.f_linalg_eigh("L")?;
    Ok(Eigen {
        values: values.f_to_kind(kind)?,
        vectors: vectors.f_to_kind(kind)?.f_contiguous()?,
    })
}

/// The uncorrected eigenvalues of one module: the grid `outer(λ_G, λ_A) · T/N` `[O, I]` and
/// the factor eigenvalues `λ_A·sqrt(T/N)`, `λ_G·sqrt(T/N)`. `T/N` is formed in float32, as
/// Bergson's `count / num_documents` on an int64 tensor.
pub fn uncorrected(
    values_g: &Tensor,
    values_a: &Tensor,
    count: i64,
    num_documents: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let per_document = (count as f32) / (num_documents as f32);
    let kind = values_a.kind();
    let grid = values_g
        .f_outer(values_a)?
        .f_mul(&Tensor::from(per_document))?
        .f_contiguous()?;
    let scale = Tensor::from(per_document).f_to_kind(kind)?.f_sqrt()?;
    Ok((
        grid,
        values_a.f_mul(&scale)?.f_contiguous()?,
        values_g.f_mul(&scale)?.f_contiguous()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigh_mean_reconstructs_the_averaged_symmetrised_matrix() {
        let x = Tensor::randn([20, 5], (Kind::Double, Device::Cpu));
        let m = x.tr().matmul(&x);
        // An asymmetric perturbation is averaged out by the symmetrisation.
        let skew = Tensor::randn([5, 5], (Kind::Double, Device::Cpu)) * 1e-3;
        let skew = &skew - skew.tr();
        let e = eigh_mean("m", &(&m + &skew), 20, Kind::Double).unwrap();
        let back = e.vectors.matmul(&e.values.diag(0)).matmul(&e.vectors.tr());
        let want = &m / 20.0;
        let err = f64::try_from((back - &want).abs().max()).unwrap();
        assert!(err < 1e-12, "{err}");
        assert!(eigh_mean("bad", &(m * f64::NAN), 1, Kind::Float).is_err());
    }

    #[test]
    fn uncorrected_grid_is_the_factor_outer_product() {
        let g = Tensor::from_slice(&[1.0f32, 2.0]);
        let a = Tensor::from_slice(&[3.0f32, 4.0, 5.0]);
        let (grid, fa, fg) = uncorrected(&g, &a, 142, 10).unwrap();
        let want = g.outer(&a) * 14.2;
        assert!(grid.allclose(&want, 1e-6, 0.0, false));
        assert!(fg.outer(&fa).allclose(&grid, 1e-6, 0.0, false));
    }
}
