//! The Kronecker factors of the factored methods, accumulated batch by batch from the raw
//! layer inputs `a` and output gradients `g` at the gradient-carrying positions (with a ones
//! column appended to `a` when the bias is collected, so `A` matches the `[O, I+1]` gradient):
//!
//! * `kfac` (Bergson's `CovarianceCollector`): `A = Σ a aᵀ`, `S = Σ g gᵀ` over positions.
//! * `tkfac` (`TraceCovarianceCollector`): per batch `A += (XᵀX)·tr(GᵀG)`,
//!   `S += (GᵀG)·tr(XᵀX)` (X, G the batch's positions stacked).
//! * `shampoo` (`ShampooCollector`): per batch `W = GᵀX` (the batch's summed weight gradient),
//!   `A += WᵀW`, `S += W Wᵀ`; at the end `A /= tr(A)`.
//!
//! All sums run in `--hessian_dtype`, as Bergson's.

use tch::{Device, Kind, Tensor};

use super::capture::{at_positions, with_bias_column, HessianBatch};
use crate::collect::Target;
use crate::config::HessianMethod;
use crate::dist::{all_reduce_anywhere, Collective, ReduceOp};
use crate::{Error, Result};

/// One module's factors.
struct ModuleFactors {
    name: String,
    bias: bool,
    /// `[I(+1), I(+1)]`.
    a: Tensor,
    /// `[O, O]`.
    s: Tensor,
}

/// The factors of every target module.
pub struct FactorAccumulator {
    method: HessianMethod,
    kind: Kind,
    modules: Vec<ModuleFactors>,
}

/// The finished factors, `(module, matrix)` in target order.
pub struct Factors {
    /// Activation factors `A`.
    pub activation: Vec<(String, Tensor)>,
    /// Gradient factors `S`.
    pub gradient: Vec<(String, Tensor)>,
}

impl FactorAccumulator {
    /// Zero factors for `targets`, accumulating in `kind` on `device`.
    pub fn new(
        method: HessianMethod,
        targets: &[Target],
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        if method == HessianMethod::Autocorrelation {
            return Err(Error::internal(
                "the autocorrelation Hessian has no Kronecker factors",
            ));
        }
        let modules = targets
            .iter()
            .map(|t| {
                let width = t.in_features + i64::from(t.collect_bias);
                Ok(ModuleFactors {
                    name: t.name.clone(),
                    bias: t.collect_bias,
                    a: Tensor::f_zeros([width, width], (kind, device))?,
                    s: Tensor::f_zeros([t.out_features, t.out_features], (kind, device))?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(FactorAccumulator {
            method,
            kind,
            modules,
        })
    }

    /// Adds one batch.
    pub fn add(&mut self, batch: &HessianBatch) -> Result<()> {
        for (m, captured) in self.modules.iter_mut().zip(&batch.modules) {
            let Some(c) = captured else { continue };
            let x =
                with_bias_column(at_positions(&c.a, &batch.mask)?, m.bias)?.f_to_kind(self.kind)?;
            let g = at_positions(&c.g, &batch.mask)?.f_to_kind(self.kind)?;
            match self.method {
                HessianMethod::Kfac => {
                    let _ = m.a.f_addmm_(&x.f_tr()?, &x)?;
                    let _ = m.s.f_addmm_(&g.f_tr()?, &g)?;
                }
                HessianMethod::Tkfac => {
                    let xx = x.f_tr()?.f_matmul(&x)?;
                    let gg = g.f_tr()?.f_matmul(&g)?;
                    let (tr_x, tr_g) = (xx.f_trace()?, gg.f_trace()?);
                    let _ = m.a.f_add_(&xx.f_mul(&tr_g)?)?;
                    let _ = m.s.f_add_(&gg.f_mul(&tr_x)?)?;
                }
                HessianMethod::Shampoo => {
                    let w = g.f_tr()?.f_matmul(&x)?; // [O, I]
                    let _ = m.a.f_addmm_(&w.f_tr()?, &w)?;
                    let _ = m.s.f_addmm_(&w, &w.f_tr()?)?;
                }
                HessianMethod::Autocorrelation => unreachable!("refused in new"),
            }
        }
        Ok(())
    }

    /// Sums the factors over the ranks of `job`, onto every rank (each rank's share is a sum
    /// over its own positions or batches, so the job's factors are their sum).
    pub fn all_reduce(&mut self, job: &dyn Collective) -> Result<()> {
        for m in &mut self.modules {
            all_reduce_anywhere(job, &mut m.a, ReduceOp::Sum)?;
            all_reduce_anywhere(job, &mut m.s, ReduceOp::Sum)?;
        }
        Ok(())
    }

    /// The factors (Shampoo's activation factor divided by its trace).
    pub fn finish(self) -> Result<Factors> {
        let mut activation = Vec::with_capacity(self.modules.len());
        let mut gradient = Vec::with_capacity(self.modules.len());
        for m in self.modules {
            let a = if self.method == HessianMethod::Shampoo {
                m.a.f_div(&m.a.f_trace()?)?
            } else {
                m.a
            };
            activation.push((m.name.clone(), a));
            gradient.push((m.name, m.s));
        }
        Ok(Factors {
            activation,
            gradient,
        })
    }
}
