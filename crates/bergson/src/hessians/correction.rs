//! EK-FAC's eigenvalue correction (George et al. 2018, eq. 20; Bergson's `LambdaCollector`): a
//! second pass that rotates each document's weight gradient into the Kronecker eigenbasis and
//! averages its squares, `Λ = Σ_n (Q_Gᵀ G_n Q_A)² / N`, `G_n = Σ_s g_{n,s} a_{n,s}ᵀ` the
//! document's gradient. Unlike K-FAC's `outer(λ_G, λ_A)` this is the exact second moment of the
//! per-document gradients along each eigenbasis direction.
//!
//! Every position enters, as in Bergson: the output gradient of a position without a loss
//! downstream (padding, each document's last) is zero, so only the gradient-carrying positions
//! contribute. Sums run in `--hessian_dtype`.

use tch::{Kind, Tensor};

use super::capture::{with_bias_column, HessianBatch};
use crate::dist::{all_reduce_anywhere, Collective, ReduceOp};
use crate::Result;

struct ModuleCorrection {
    name: String,
    bias: bool,
    /// `Q_A` `[I(+1), I(+1)]`, in the accumulation dtype.
    q_a: Tensor,
    /// `Q_G` `[O, O]`.
    q_g: Tensor,
    /// `Σ_n (Q_Gᵀ G_n Q_A)²` `[O, I(+1)]`.
    sum: Tensor,
}

/// The corrections of every module.
pub struct EigenvalueCorrection {
    kind: Kind,
    modules: Vec<ModuleCorrection>,
}

impl EigenvalueCorrection {
    /// Zero corrections for modules `(name, collect_bias, Q_A, Q_G)`.
    pub fn new(modules: Vec<(String, bool, Tensor, Tensor)>, kind: Kind) -> Result<Self> {
        let modules = modules
            .into_iter()
            .map(|(name, bias, q_a, q_g)| {
                let sum = Tensor::f_zeros([q_g.size()[0], q_a.size()[0]], (kind, q_a.device()))?;
                Ok(ModuleCorrection {
                    name,
                    bias,
                    q_a: q_a.f_to_kind(kind)?,
                    q_g: q_g.f_to_kind(kind)?,
                    sum,
                })
            })
            .collect::<Result<_>>()?;
        Ok(EigenvalueCorrection { kind, modules })
    }

    /// Adds one batch's documents.
    pub fn add(&mut self, batch: &HessianBatch) -> Result<()> {
        for (m, captured) in self.modules.iter_mut().zip(&batch.modules) {
            let Some(c) = captured else { continue };
            let a = with_bias_column(c.a.f_to_kind(self.kind)?, m.bias)?.f_matmul(&m.q_a)?;
            let g = c.g.f_to_kind(self.kind)?.f_matmul(&m.q_g)?;
            // [N, O, I]: each document's rotated gradient.
            let rotated = g.f_transpose(1, 2)?.f_matmul(&a)?;
            let _ = m.sum.f_add_(&rotated.f_square()?.f_sum_dim_intlist(
                [0i64].as_slice(),
                false,
                self.kind,
            )?)?;
        }
        Ok(())
    }

    /// Sums the corrections over the ranks of `job` (each holds the sum over its own
    /// documents), onto every rank.
    pub fn all_reduce(&mut self, job: &dyn Collective) -> Result<()> {
        for m in &mut self.modules {
            all_reduce_anywhere(job, &mut m.sum, ReduceOp::Sum)?;
        }
        Ok(())
    }

    /// The corrected eigenvalue grids, `(module, Σ / N)`.
    pub fn finish(self, num_documents: usize) -> Result<Vec<(String, Tensor)>> {
        self.modules
            .into_iter()
            .map(|m| Ok((m.name, m.sum.f_div_scalar(num_documents as f64)?)))
            .collect()
    }
}
