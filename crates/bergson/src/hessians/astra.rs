//! ASTRA (Wang et al. 2025, arXiv:2507.14740): each query's factored solution
//! `x₀ = (P + D)⁻¹ q` refined towards the minimiser of `xᵀ (G + D) x / 2 − xᵀ q`, where `G` is
//! the Gauss-Newton Hessian on random training batches ([`super::gauss_newton`]), `P` the
//! fitted Kronecker-factored Hessian and `D` each module's damping (`c·mean(Λ)`, or `c` for
//! `absolute_damped_inverse`), as Bergson 2.5.1's `astra.py`:
//!
//! - `sgd`: momentum SGD preconditioned by the factored inverse, a fresh batch per step:
//!   `r = G_B x + D x − q`, `b ← μ b + (P + D)⁻¹ r`, `x ← x − η b`, the step size `η` times
//!   `lr_decay` every `lr_decay_interval` steps;
//! - `cg`: preconditioned conjugate gradients on `(G_B + D) x = q` for one batch `B`.
//!
//! Batches replay Bergson's draws (see [`super::lissa::BatchDraw`]).

use tch::Tensor;

use super::gauss_newton::GaussNewtonProduct;
use super::lissa::BatchDraw;
use super::preconditioner::Preconditioner;
use crate::config::{AstraConfig, AstraSolver};
use crate::{interrupt, Result};

/// The refinement of one query's solution.
pub struct Astra<'a> {
    product: &'a GaussNewtonProduct<'a>,
    preconditioner: &'a Preconditioner,
    /// `D` per product module.
    damping: Vec<f64>,
    cfg: &'a AstraConfig,
}

impl<'a> Astra<'a> {
    /// A refinement with `product` over the modules of `preconditioner` (the factored
    /// inverse, power -1), `damping` per module in the product's order.
    pub fn new(
        product: &'a GaussNewtonProduct<'a>,
        preconditioner: &'a Preconditioner,
        damping: Vec<f64>,
        cfg: &'a AstraConfig,
    ) -> Self {
        Astra {
            product,
            preconditioner,
            damping,
            cfg,
        }
    }

    /// `(G_B + D) v`.
    fn damped_product(&self, v: &[Tensor], batch: &[usize]) -> Result<Vec<Tensor>> {
        let hv = self.product.product(v, batch)?;
        hv.iter()
            .zip(v)
            .zip(&self.damping)
            .map(|((h, v), d)| Ok(h.f_add(&v.f_mul_scalar(*d)?)?))
            .collect()
    }

    /// `(P + D)⁻¹ r` per module.
    fn precondition(&self, r: &[Tensor]) -> Result<Vec<Tensor>> {
        let named: Vec<(String, Tensor)> = self
            .product
            .modules()
            .iter()
            .zip(r)
            .map(|(m, r)| Ok((m.name.clone(), r.f_unsqueeze(0)?)))
            .collect::<Result<_>>()?;
        self.preconditioner
            .apply(&named)?
            .into_iter()
            .map(|(_, t)| Ok(t.f_squeeze_dim(0)?))
            .collect()
    }

    /// `Σ_modules uᵀ v` in float64.
    fn dot(u: &[Tensor], v: &[Tensor]) -> Result<f64> {
        let mut s = 0.0;
        for (a, b) in u.iter().zip(v) {
            s += a
                .f_to_kind(tch::Kind::Double)?
                .f_dot(&b.f_to_kind(tch::Kind::Double)?)?
                .double_value(&[]);
        }
        Ok(s)
    }

    /// Refines `x` (the factored solution of query `q`, row `row` of the query index).
    pub fn refine(&self, q: &[Tensor], x: Vec<Tensor>, row: usize) -> Result<Vec<Tensor>> {
        let mut draw = BatchDraw::seeded(
            self.cfg.seed,
            row,
            self.product.num_documents(),
            self.cfg.batch_size,
        );
        match self.cfg.solver {
            AstraSolver::Cg => {
                let batch = draw.next_batch()?;
                self.cg(q, x, row, &batch)
            }
            AstraSolver::Sgd => self.sgd(q, x, row, &mut draw),
        }
    }

    fn sgd(
        &self,
        q: &[Tensor],
        mut x: Vec<Tensor>,
        row: usize,
        draw: &mut BatchDraw,
    ) -> Result<Vec<Tensor>> {
        let mut buf: Vec<Tensor> = x
            .iter()
            .map(Tensor::f_zeros_like)
            .collect::<std::result::Result<_, _>>()?;
        let mut lr = self.cfg.lr;
        for step in 0..self.cfg.num_steps {
            interrupt::check()?;
            if step > 0 && step % self.cfg.lr_decay_interval.max(1) == 0 {
                lr *= self.cfg.lr_decay;
            }
            let batch = draw.next_batch()?;
            let ax = self.damped_product(&x, &batch)?;
            let residual: Vec<Tensor> = ax
                .iter()
                .zip(q)
                .map(|(a, q)| a.f_sub(q))
                .collect::<std::result::Result<_, _>>()?;
            if step % 50 == 0 || step + 1 == self.cfg.num_steps {
                let objective = Self::dot(&x, &ax)? / 2.0 - Self::dot(&x, q)?;
                tracing::info!("query {row} step {step}: objective {objective:.6}");
            }
            let direction = self.precondition(&residual)?;
            for ((b, d), x) in buf.iter_mut().zip(&direction).zip(x.iter_mut()) {
                *b = b.f_mul_scalar(self.cfg.momentum)?.f_add(d)?;
                *x = x.f_sub(&b.f_mul_scalar(lr)?)?;
            }
        }
        Ok(x)
    }

    fn cg(
        &self,
        q: &[Tensor],
        mut x: Vec<Tensor>,
        row: usize,
        batch: &[usize],
    ) -> Result<Vec<Tensor>> {
        let ax = self.damped_product(&x, batch)?;
        let mut r: Vec<Tensor> = q
            .iter()
            .zip(&ax)
            .map(|(q, a)| q.f_sub(a))
            .collect::<std::result::Result<_, _>>()?;
        let z = self.precondition(&r)?;
        let mut p: Vec<Tensor> = z.iter().map(Tensor::copy).collect();
        let mut rz = Self::dot(&r, &z)?;
        for step in 0..self.cfg.num_steps {
            interrupt::check()?;
            if step % 50 == 0 || step + 1 == self.cfg.num_steps {
                // With r = q − (G_B + D) x, the objective is −(q + r)ᵀ x / 2.
                let objective = -(Self::dot(q, &x)? + Self::dot(&r, &x)?) / 2.0;
                tracing::info!("query {row} step {step}: objective {objective:.6}");
            }
            let ap = self.damped_product(&p, batch)?;
            let pap = Self::dot(&p, &ap)?;
            if pap <= 0.0 {
                tracing::warn!("query {row} step {step}: curvature {pap:.3e}; stopping");
                break;
            }
            let alpha = rz / pap;
            for (((x, r), p), ap) in x.iter_mut().zip(r.iter_mut()).zip(&p).zip(&ap) {
                *x = x.f_add(&p.f_mul_scalar(alpha)?)?;
                *r = r.f_sub(&ap.f_mul_scalar(alpha)?)?;
            }
            let z = self.precondition(&r)?;
            let rz_old = rz;
            rz = Self::dot(&r, &z)?;
            for (p, z) in p.iter_mut().zip(&z) {
                *p = z.f_add(&p.f_mul_scalar(rz / rz_old)?)?;
            }
        }
        Ok(x)
    }
}
