//! LiSSA (Agarwal et al. 2017, arXiv:1602.03943) estimates of damped Gauss-Newton
//! inverse-Hessian-vector products `(G + λI)⁻¹ q`, the influence estimator of Bae et al.
//! (2022, arXiv:2209.05364), as Bergson 2.5.1's `lissa`:
//!
//! `h₀ = q`, `h_{t+1} = h_t + q − (G_{B_t} h_t + λ h_t) / s`, estimate `h_T / s`, averaged
//! over `repeats` runs, where `G_{B_t}` is the Gauss-Newton product on a random batch `B_t` of
//! training documents ([`super::gauss_newton`]) and `s` the scale. The series converges when
//! `s` exceeds half the largest eigenvalue of `G + λI`.
//!
//! The batches are Bergson's: `torch.randperm(num_documents)[:batch_size]` from a generator
//! seeded `seed · 1000003 + row` per query row, drawn in order; libtorch's CPU generator
//! replays them exactly (see the test below).

use tch::{Device, Kind, Tensor};

use super::gauss_newton::GaussNewtonProduct;
use crate::{interrupt, Result};

/// The series' settings (Bergson's `LissaConfig` minus the query and pipeline fields).
#[derive(Debug, Clone, Copy)]
pub struct LissaSettings {
    /// `λ`, added to every eigenvalue of `G`.
    pub damping: f64,
    /// `s`, dividing the damped Hessian.
    pub scale: f64,
    /// Terms of the series.
    pub depth: usize,
    /// Independent estimates averaged.
    pub repeats: usize,
    /// Training documents per product.
    pub batch_size: usize,
    /// Seeds the batches.
    pub seed: u64,
}

/// Bergson's batch generator for query `row`: a torch CPU generator seeded
/// `seed · 1000003 + row`. It is libtorch's global CPU generator, so nothing else may draw
/// from it while a query's batches are drawn.
pub struct BatchDraw {
    num_documents: i64,
    batch_size: usize,
}

impl BatchDraw {
    /// Seeds the generator for `row` and returns the drawer.
    pub fn seeded(seed: u64, row: usize, num_documents: usize, batch_size: usize) -> Self {
        let s = seed.wrapping_mul(1_000_003).wrapping_add(row as u64);
        tch::manual_seed(s as i64);
        BatchDraw {
            num_documents: num_documents as i64,
            batch_size,
        }
    }

    /// The next batch: `randperm(num_documents)[:batch_size]`.
    pub fn next_batch(&mut self) -> Result<Vec<usize>> {
        let perm = Tensor::f_randperm(self.num_documents, (Kind::Int64, Device::Cpu))?;
        let perm: Vec<i64> = Vec::try_from(&perm)?;
        Ok(perm
            .into_iter()
            .take(self.batch_size)
            .map(|i| i as usize)
            .collect())
    }
}

/// The LiSSA estimate of `(G + λI)⁻¹ q` for query row `row` (`q`: one flat float32 tensor
/// per product module).
pub fn lissa(
    product: &GaussNewtonProduct<'_>,
    q: &[Tensor],
    cfg: &LissaSettings,
    row: usize,
) -> Result<Vec<Tensor>> {
    let mut draw = BatchDraw::seeded(cfg.seed, row, product.num_documents(), cfg.batch_size);
    let mut out: Vec<Tensor> = q
        .iter()
        .map(|t| t.f_zeros_like())
        .collect::<std::result::Result<_, _>>()?;
    for _ in 0..cfg.repeats {
        let mut h: Vec<Tensor> = q.iter().map(Tensor::copy).collect();
        for _ in 0..cfg.depth {
            interrupt::check()?;
            let batch = draw.next_batch()?;
            let gh = product.product(&h, &batch)?;
            for ((h, g), q) in h.iter_mut().zip(&gh).zip(q) {
                // h += q − (G h + λ h) / s
                let step = g
                    .f_add(&h.f_mul_scalar(cfg.damping)?)?
                    .f_div_scalar(cfg.scale)?;
                *h = h.f_add(&q.f_sub(&step)?)?;
            }
        }
        for (o, h) in out.iter_mut().zip(&h) {
            *o = o.f_add(&h.f_div_scalar(cfg.scale * cfg.repeats as f64)?)?;
        }
    }
    Ok(out)
}
