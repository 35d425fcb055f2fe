//! Gauss-Newton Hessian-vector products of the training loss (Bergson 2.5.1's
//! `GaussNewtonProduct`), over the modules and in the `[O, I]` (`[O, I + 1]` with a bias
//! column) layout of a query index: what LiSSA and ASTRA iterate with.
//!
//! For documents `B` and a direction `v` over the modules' weights,
//! `G_B v = Σ_n w_n J_nᵀ H_n J_n v`, where `J_n` is the Jacobian of document `n`'s logits (at
//! every position whose next token is labelled) with respect to the weights, `H_n` the
//! cross-entropy Hessian in the logits `diag(p) − p pᵀ` per position, and `w_n = 1/|B|` (also
//! divided by the document's labelled count under `--loss_reduction mean`): a mean over
//! documents, like the fitted Hessians.
//!
//! Bergson forms `J v` with forward-mode AD. Here it is the double-backward identity
//! `J v = ∂/∂u ⟨Jᵀu, v⟩`: a zero perturbation `D` of each module's weight carries the
//! gradient, `Jᵀu` is a backward pass with its graph kept, and differentiating `⟨Jᵀu, v⟩` in
//! `u` gives `J v` exactly (up to rounding); a last backward gives `Jᵀ (H J v)`.

use tch::{Kind, Tensor};

use super::capture::with_bias_column;
use crate::collect::loss::IGNORE_INDEX;
use crate::config::LossReduction;
use crate::data::batching::pad_batch;
use crate::data::tokenize::TokenizedRow;
use crate::models::{CausalLm, Linear, LinearHook};
use crate::{Error, Result};

/// One module a product runs over.
#[derive(Debug, Clone)]
pub struct ProductModule {
    /// Module name (as in the query index).
    pub name: String,
    /// Output features O.
    pub out_features: i64,
    /// Input features I.
    pub in_features: i64,
    /// Whether the direction's last column is the bias's.
    pub bias: bool,
}

/// `G_B v` for the training documents `rows` of `model`.
pub struct GaussNewtonProduct<'m> {
    model: &'m dyn CausalLm,
    rows: &'m [TokenizedRow],
    modules: Vec<ProductModule>,
    mean_reduction: bool,
    logit_scale: f64,
    micro_batch_size: usize,
}

impl<'m> GaussNewtonProduct<'m> {
    /// The product over `modules` (named in the query's layout; `include_bias` adds each
    /// biased module's bias column, as the gradients do).
    pub fn new(
        model: &'m dyn CausalLm,
        rows: &'m [TokenizedRow],
        names: &[String],
        include_bias: bool,
        reduction: LossReduction,
        logit_scale: f64,
        micro_batch_size: usize,
    ) -> Result<Self> {
        let linears = model.linear_modules();
        let modules = names
            .iter()
            .map(|name| {
                let l = linears.iter().find(|l| &l.name == name).ok_or_else(|| {
                    Error::input(format!(
                        "module '{name}' of the query index is not a Linear module of the model; \
                         build the query with the same model (and no --split_attention_modules)"
                    ))
                })?;
                Ok(ProductModule {
                    name: name.clone(),
                    out_features: l.out_features,
                    in_features: l.in_features,
                    bias: include_bias && l.has_bias,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GaussNewtonProduct {
            model,
            rows,
            modules,
            mean_reduction: reduction == LossReduction::Mean,
            logit_scale,
            micro_batch_size: micro_batch_size.max(1),
        })
    }

    /// The modules, in order.
    pub fn modules(&self) -> &[ProductModule] {
        &self.modules
    }

    /// Number of training documents.
    pub fn num_documents(&self) -> usize {
        self.rows.len()
    }

    /// `G_B v` on the documents `indices` (`v` and the result: one flat `[O·I(+1)]` float32
    /// tensor per module, in [`Self::modules`] order), accumulated over micro-batches.
    pub fn product(&self, v: &[Tensor], indices: &[usize]) -> Result<Vec<Tensor>> {
        let mut out: Vec<Tensor> = v
            .iter()
            .map(|t| t.f_zeros_like())
            .collect::<std::result::Result<_, _>>()?;
        for chunk in indices.chunks(self.micro_batch_size) {
            let part = self.chunk_product(v, chunk, indices.len())?;
            for (o, p) in out.iter_mut().zip(part) {
                *o = o.f_add(&p)?;
            }
        }
        Ok(out)
    }

    /// This chunk's share of the product over a batch of `batch_size` documents.
    fn chunk_product(
        &self,
        v: &[Tensor],
        chunk: &[usize],
        batch_size: usize,
    ) -> Result<Vec<Tensor>> {
        let device = self.model.device();
        let kind = self.model.kind();
        let ids: Vec<&[i64]> = chunk
            .iter()
            .map(|&i| self.rows[i].input_ids.as_slice())
            .collect();
        let labels: Option<Vec<&[i64]>> = self.rows[chunk[0]].labels.is_some().then(|| {
            chunk
                .iter()
                .map(|&i| self.rows[i].labels.as_deref().unwrap_or(&[]))
                .collect()
        });
        let (x, y) = pad_batch(&ids, labels.as_deref())?;
        self.model.check_input_ids(&x)?;
        let (x, y) = (x.f_to_device(device)?, y.f_to_device(device)?);
        let s = x.size()[1];
        if s < 2 {
            // No position has a next token: nothing to add.
            return v.iter().map(|t| Ok(t.f_zeros_like()?)).collect();
        }

        let deltas: Vec<Tensor> = self
            .modules
            .iter()
            .map(|m| {
                let width = m.in_features + i64::from(m.bias);
                Ok(Tensor::f_zeros([m.out_features, width], (kind, device))?
                    .set_requires_grad(true))
            })
            .collect::<Result<_>>()?;
        let mut hook = Perturbed {
            modules: &self.modules,
            deltas: &deltas,
        };
        let logits = self
            .model
            .forward_scaled_with(&x, &mut hook, self.logit_scale)
            .f_narrow(1, 0, s - 1)?;

        // J v = ∂/∂u ⟨Jᵀu, v⟩ at any u (the map is linear in u).
        let u = logits.f_zeros_like()?.set_requires_grad(true);
        let seed = logits.f_mul(&u)?.f_sum(logits.kind())?;
        let jt_u = Tensor::f_run_backward(&[&seed], &deltas, true, true)?;
        let mut inner = Tensor::f_zeros([], (logits.kind(), device))?;
        for ((g, d), m) in jt_u.iter().zip(v).zip(&self.modules) {
            let d = d
                .f_to_device(device)?
                .f_to_kind(g.kind())?
                .f_view([m.out_features, -1])?;
            inner = inner.f_add(&g.f_mul(&d)?.f_sum(g.kind())?)?;
        }
        let jvp = Tensor::f_run_backward(&[&inner], &[&u], true, false)?
            .swap_remove(0)
            .f_detach()?;

        // The cross-entropy Hessian in the logits, diag(p) − p pᵀ, per labelled position.
        let targets = y.f_narrow(1, 1, s - 1)?;
        let mask = targets.f_ne(IGNORE_INDEX)?.f_to_kind(logits.kind())?;
        let mut weight = mask.f_div_scalar(batch_size as f64)?;
        if self.mean_reduction {
            let count = mask
                .f_sum_dim_intlist([1i64].as_slice(), true, mask.kind())?
                .f_clamp_min(1.0)?;
            weight = weight.f_div(&count)?;
        }
        let probs = logits.f_detach()?.f_softmax(-1, logits.kind())?;
        let pj = probs
            .f_mul(&jvp)?
            .f_sum_dim_intlist([-1i64].as_slice(), true, probs.kind())?;
        let hjvp = probs
            .f_mul(&jvp.f_sub(&pj)?)?
            .f_mul(&weight.f_unsqueeze(-1)?)?;
        let seed = logits.f_mul(&hjvp)?.f_sum(logits.kind())?;
        let grads = Tensor::f_run_backward(&[&seed], &deltas, false, false)?;
        grads
            .into_iter()
            .map(|g| Ok(g.f_to_kind(Kind::Float)?.f_reshape([-1])?))
            .collect()
    }
}

/// The forward hook: each product module's output gets `x_aug Dᵀ` added, `D` its zero
/// perturbation (with the bias column when the module's direction has one).
struct Perturbed<'a> {
    modules: &'a [ProductModule],
    deltas: &'a [Tensor],
}

impl LinearHook for Perturbed<'_> {
    fn linear(&mut self, layer: &Linear, x: &Tensor) -> Tensor {
        let y = layer.forward(x);
        match self.modules.iter().position(|m| m.name == layer.name) {
            Some(i) => {
                let x = with_bias_column(x.shallow_clone(), self.modules[i].bias)
                    .expect("a ones column appends to any activation");
                y + x.matmul(&self.deltas[i].tr())
            }
            None => y,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Precision;
    use crate::models::load_model;
    use std::path::Path;

    fn dot(a: &[Tensor], b: &[Tensor]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| {
                x.to_kind(Kind::Double)
                    .dot(&y.to_kind(Kind::Double))
                    .double_value(&[])
            })
            .sum()
    }

    /// `G_B` is symmetric and positive semi-definite (`uᵀ G v = vᵀ G u`, `vᵀ G v ≥ 0`), linear
    /// in `v`, and the same whichever micro-batches the batch is cut into; in float64 so that
    /// rounding does not hide an error.
    #[test]
    fn product_is_a_symmetric_psd_linear_map_independent_of_micro_batches() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/gpt_neox");
        let mut model = load_model(&dir, Precision::Fp64, tch::Device::Cpu).unwrap();
        model.set_math_attention(true);
        let rows: Vec<TokenizedRow> = [
            vec![5i64, 17, 3, 99, 42],
            vec![7, 8],
            vec![1, 2, 3, 4, 5, 6, 7],
        ]
        .into_iter()
        .map(|input_ids| TokenizedRow {
            input_ids,
            labels: None,
        })
        .collect();
        let names: Vec<String> = model
            .linear_modules()
            .iter()
            .take(2)
            .map(|l| l.name.clone())
            .collect();
        let product = |micro: usize, reduction: LossReduction| {
            GaussNewtonProduct::new(&*model, &rows, &names, true, reduction, 1.0, micro).unwrap()
        };
        tch::manual_seed(0);
        let p = product(3, LossReduction::Sum);
        let rand = || -> Vec<Tensor> {
            p.modules()
                .iter()
                .map(|m| {
                    Tensor::randn(
                        [m.out_features * (m.in_features + i64::from(m.bias))],
                        (Kind::Float, tch::Device::Cpu),
                    )
                })
                .collect()
        };
        let (u, v) = (rand(), rand());
        let batch = [0usize, 1, 2];
        let gv = p.product(&v, &batch).unwrap();
        let gu = p.product(&u, &batch).unwrap();
        let (a, b) = (dot(&u, &gv), dot(&v, &gu));
        assert!((a - b).abs() <= 1e-6 * a.abs().max(b.abs()), "{a} vs {b}");
        assert!(dot(&v, &gv) > 0.0);
        let twice: Vec<Tensor> = v.iter().map(|t| t * 2.0).collect();
        let g2 = p.product(&twice, &batch).unwrap();
        for (x, y) in g2.iter().zip(&gv) {
            let err = (x - y * 2.0).abs().max().double_value(&[]);
            assert!(err <= 1e-5 * y.abs().max().double_value(&[]), "{err}");
        }
        let one_by_one = product(1, LossReduction::Sum).product(&v, &batch).unwrap();
        for (x, y) in one_by_one.iter().zip(&gv) {
            let err = (x - y).abs().max().double_value(&[]);
            assert!(err <= 1e-5 * y.abs().max().double_value(&[]), "{err}");
        }
        // Mean reduction divides each document's share by its labelled count: differs.
        let mean = product(3, LossReduction::Mean).product(&v, &batch).unwrap();
        assert!(dot(&v, &mean) < dot(&v, &gv));
    }
}
