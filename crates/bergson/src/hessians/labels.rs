//! Labels sampled from the model's own predictions (`--use_dataset_labels false`, Bergson's
//! default): the gradient outer products then estimate the true Fisher rather than the
//! empirical one. Bergson draws them with `torch.multinomial` from the global RNG, which cannot
//! be replayed; bergson-rs draws them reproducibly instead.
//!
//! The draw for document `d` (its dataset index) at position `t` (predicting token `t + 1`)
//! is the inverse CDF of `softmax(logits[d, t])` at `u = philox4x32_10([t, d_lo, d_hi, 0],
//! key)`'s first two words as a 53-bit fraction, with `key` from the MD5 of
//! [`SAMPLED_LABELS_SEED`]. A label therefore depends only on the model, the document and the
//! position, not on how documents are batched. Positions without a dataset label (padding,
//! masked prompt tokens) get none, as in Bergson.

use tch::{Kind, Tensor};

use crate::collect::loss::IGNORE_INDEX;
use crate::collect::projection::{philox4x32_10, philox_key};
use crate::models::head::{head_logits, HeadOutput};
use crate::models::Linear;
use crate::Result;

/// The identifier whose MD5 keys the draws.
pub const SAMPLED_LABELS_SEED: &str = "bergson-rs/sampled_labels/seed0";

/// Positions whose logits are formed at once while sampling (bounds the `[T, V]` float64 CDF).
const POSITIONS_PER_CHUNK: i64 = 512;

/// Draws labels from the model's predictive distribution.
pub struct LabelSampler {
    key: [u32; 2],
}

impl Default for LabelSampler {
    fn default() -> Self {
        LabelSampler {
            key: philox_key(SAMPLED_LABELS_SEED),
        }
    }
}

impl LabelSampler {
    /// The uniform draw of document `doc` at position `t`, in `[0, 1)`.
    pub fn uniform(&self, doc: usize, t: usize) -> f64 {
        let d = doc as u64;
        let x = philox4x32_10([t as u32, d as u32, (d >> 32) as u32, 0], self.key);
        let bits = (u64::from(x[0]) << 21) ^ (u64::from(x[1]) >> 11);
        (bits & ((1u64 << 53) - 1)) as f64 / (1u64 << 53) as f64
    }

    /// Labels `[N, S]` for a batch: `y` with every labelled target position (`y[:, 1:] !=
    /// -100`) replaced by a draw from `softmax(head(hidden))` (soft-capped by `softcap`) at
    /// the position before it. `docs` are the batch's dataset indices, in row order.
    pub fn sample(
        &self,
        head: &Linear,
        softcap: Option<f64>,
        hidden: &Tensor,
        y: &Tensor,
        docs: &[usize],
    ) -> Result<Tensor> {
        let (n, s, _) = hidden.size3()?;
        let device = hidden.device();
        let targets = y.f_narrow(1, 1, s - 1)?;
        let uniforms: Vec<f64> = docs
            .iter()
            .flat_map(|&d| (0..(s - 1) as usize).map(move |t| (d, t)))
            .map(|(d, t)| self.uniform(d, t))
            .collect();
        let u = Tensor::f_from_slice(&uniforms)?.f_to_device(device)?;
        let h = tch::no_grad(|| {
            hidden
                .detach()
                .f_narrow(1, 0, s - 1)?
                .f_reshape([n * (s - 1), -1])
        })?;
        let total = n * (s - 1);
        let mut draws = Vec::new();
        let mut start = 0;
        while start < total {
            let len = POSITIONS_PER_CHUNK.min(total - start);
            let drawn = tch::no_grad(|| -> Result<Tensor> {
                let out = HeadOutput {
                    divisor: 1.0,
                    softcap,
                };
                let logits = head_logits(head, out, &h.f_narrow(0, start, len)?, 1.0);
                let cdf = logits
                    .f_softmax(-1, Kind::Double)?
                    .f_cumsum(-1, Kind::Double)?;
                let vocab = cdf.size()[1];
                let last = cdf.f_narrow(1, vocab - 1, 1)?;
                let uc = u.f_narrow(0, start, len)?.f_unsqueeze(1)?.f_mul(&last)?;
                Ok(uc
                    .f_searchsorted(&cdf, false, true, "right", None::<&Tensor>)?
                    .f_clamp_max(vocab - 1)?
                    .f_squeeze_dim(1)?)
            })?;
            draws.push(drawn);
            start += len;
        }
        let drawn = if draws.is_empty() {
            Tensor::f_zeros([0], (Kind::Int64, device))?
        } else {
            Tensor::f_cat(&draws, 0)?
        };
        let drawn = drawn.f_reshape([n, s - 1])?;
        let labelled = targets.f_ne(IGNORE_INDEX)?;
        let sampled = drawn.f_where_self(&labelled, &targets)?;
        Ok(Tensor::f_cat(&[y.f_narrow(1, 0, 1)?, sampled], 1)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// A head whose logits are its input: `hidden` rows are the logits.
    fn identity_head(v: i64) -> Linear {
        Linear {
            name: "lm_head".into(),
            weight: Tensor::eye(v, (Kind::Float, Device::Cpu)),
            bias: None,
            adapter: None,
        }
    }

    #[test]
    fn draws_follow_the_softmax() {
        // 3000 documents of 2 positions with the same logits: the first position's draws are
        // multinomial with the softmax's probabilities; each count is checked to 5 sigma and
        // the whole histogram with Pearson's chi-square (3 degrees of freedom, p < 1e-4).
        let logits = [2.0f32, 0.5, -1.0, 1.0];
        let v = logits.len() as i64;
        let probs: Vec<f64> = {
            let e: Vec<f64> = logits.iter().map(|&z| f64::from(z).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.iter().map(|x| x / sum).collect()
        };
        let n = 3000i64;
        let row = Tensor::from_slice(&logits).reshape([1, 1, v]);
        let hidden = row.repeat([n, 2, 1]);
        let y = Tensor::from_slice(&[7i64, 1])
            .reshape([1, 2])
            .repeat([n, 1]);
        let docs: Vec<usize> = (0..n as usize).map(|i| 10 * i + 3).collect();
        let sampler = LabelSampler::default();
        let out = sampler
            .sample(&identity_head(v), None, &hidden, &y, &docs)
            .unwrap();
        let first: Vec<i64> = Vec::try_from(out.narrow(1, 0, 1).flatten(0, -1)).unwrap();
        assert!(first.iter().all(|&x| x == 7), "position 0 is not a target");
        let drawn: Vec<i64> = Vec::try_from(out.narrow(1, 1, 1).flatten(0, -1)).unwrap();
        let mut counts = vec![0f64; v as usize];
        for &d in &drawn {
            counts[d as usize] += 1.0;
        }
        let mut chi2 = 0.0;
        for (c, p) in counts.iter().zip(&probs) {
            let expect = p * n as f64;
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (c - expect).abs() < 5.0 * sd,
                "count {c} vs {expect} ± {sd}"
            );
            chi2 += (c - expect).powi(2) / expect;
        }
        assert!(chi2 < 21.1, "chi-square {chi2} with 3 degrees of freedom");
        // Reproducible, and independent of the batch's other documents.
        let again = sampler
            .sample(
                &identity_head(v),
                None,
                &hidden.narrow(0, 5, 1),
                &y.narrow(0, 5, 1),
                &docs[5..6],
            )
            .unwrap();
        assert!(again.equal(&out.narrow(0, 5, 1)));
    }

    #[test]
    fn unlabelled_positions_stay_unlabelled() {
        let hidden = Tensor::randn([2, 3, 5], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[1i64, -100, 4, 2, 3, -100]).reshape([2, 3]);
        let out = LabelSampler::default()
            .sample(&identity_head(5), None, &hidden, &y, &[0, 1])
            .unwrap();
        let got: Vec<i64> = Vec::try_from(out.flatten(0, -1)).unwrap();
        assert_eq!(got[1], -100);
        assert_eq!(got[5], -100);
        assert!((0..5).contains(&got[2]) && (0..5).contains(&got[4]));
    }

    #[test]
    fn uniforms_are_in_the_unit_interval_and_spread() {
        let s = LabelSampler::default();
        let u: Vec<f64> = (0..10_000).map(|i| s.uniform(i, i % 7)).collect();
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = u.iter().sum::<f64>() / u.len() as f64;
        // Mean of 10^4 uniforms: sd 0.0029.
        assert!((mean - 0.5).abs() < 0.015, "mean {mean}");
    }
}
