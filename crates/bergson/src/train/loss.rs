//! The weighted causal-LM cross-entropy of Python Bergson 2.5.1 (`utils/math.py::
//! weighted_causal_lm_ce`), the loss its trainer differentiates.
//!
//! Position `t`'s logits predict label `t + 1`; a per-token weight `[B, T]` at input position
//! `t` scales that prediction's loss, a per-row weight `[B]` scales the whole row. The `mean`
//! reduction divides by the number of supervised label tokens of the batch (not by the sum
//! of the weights): a zero-weighted row still counts in the denominator.

use crate::config::TrainLossReduction;
use tch::{Kind, Reduction, Tensor};

/// The label that takes no loss.
pub const IGNORE_INDEX: i64 = -100;

/// The weighted loss of `logits` `[B, T, V]` against `labels` `[B, T]` (-100 = none).
/// `shift_loss_mask` `[B, T]` marks input positions whose next label is supervised (its last
/// column is false). Logits are computed with in float32 (float64 stays float64).
pub fn weighted_causal_lm_ce(
    logits: &Tensor,
    labels: &Tensor,
    example_weight: Option<&Tensor>,
    shift_loss_mask: &Tensor,
    reduction: TrainLossReduction,
) -> Tensor {
    let (b, t, v) = logits.size3().expect("logits are [B, T, V]");
    let shift = logits.narrow(1, 0, t - 1);
    let shift = if shift.kind() == Kind::Double {
        shift
    } else {
        shift.to_kind(Kind::Float)
    };
    let shift_labels = labels.narrow(1, 1, t - 1);
    let tok = shift
        .reshape([-1, v])
        .cross_entropy_loss::<Tensor>(
            &shift_labels.reshape([-1]),
            None,
            Reduction::None,
            IGNORE_INDEX,
            0.0,
        )
        .reshape([b, t - 1]);
    let w = match example_weight {
        Some(w) if w.dim() == 2 => w.narrow(1, 0, t - 1).to_kind(tok.kind()),
        Some(w) => w.to_kind(tok.kind()).reshape([b, 1]),
        None => Tensor::ones([b, 1], (tok.kind(), tok.device())),
    };
    let weighted = tok * w;
    match reduction {
        TrainLossReduction::Mean => {
            let denom = shift_loss_mask.sum(Kind::Int64).clamp_min(1);
            weighted.sum(weighted.kind()) / denom
        }
        TrainLossReduction::SumOfMeans => {
            let counts = shift_loss_mask
                .narrow(1, 0, t - 1)
                .to_kind(weighted.kind())
                .sum_dim_intlist(1, false, weighted.kind())
                .clamp_min(1.0);
            (weighted.sum_dim_intlist(1, false, weighted.kind()) / counts).sum(weighted.kind())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the loss written out token by token.
    #[test]
    fn matches_a_direct_sum() {
        tch::manual_seed(1);
        let logits = Tensor::randn([2, 4, 5], (Kind::Double, tch::Device::Cpu));
        let labels = Tensor::from_slice(&[1i64, 2, 3, -100, 0, 4, -100, -100]).reshape([2, 4]);
        let mask = labels.narrow(1, 1, 3).ne(IGNORE_INDEX);
        let mask = Tensor::cat(
            &[mask, Tensor::zeros([2, 1], (Kind::Bool, tch::Device::Cpu))],
            1,
        );
        let w = Tensor::from_slice(&[0.5f64, 2.0, 1.0, 7.0, 3.0, 0.25, 1.0, 1.0]).reshape([2, 4]);
        let logp = logits.log_softmax(-1, Kind::Double);
        let lab: Vec<i64> = Vec::try_from(labels.reshape([-1])).unwrap();
        let (mut total, mut count) = (0.0, 0.0);
        let mut rows = [0.0f64; 2];
        let mut row_counts = [0.0f64; 2];
        for r in 0..2 {
            for t in 0..3 {
                let y = lab[(r * 4 + t + 1) as usize];
                if y == IGNORE_INDEX {
                    continue;
                }
                let l = -logp.double_value(&[r, t, y]) * w.double_value(&[r, t]);
                total += l;
                rows[r as usize] += l;
                row_counts[r as usize] += 1.0;
                count += 1.0;
            }
        }
        let mean =
            weighted_causal_lm_ce(&logits, &labels, Some(&w), &mask, TrainLossReduction::Mean);
        assert!((mean.double_value(&[]) - total / count).abs() < 1e-12);
        let som = weighted_causal_lm_ce(
            &logits,
            &labels,
            Some(&w),
            &mask,
            TrainLossReduction::SumOfMeans,
        );
        let want = rows[0] / row_counts[0] + rows[1] / row_counts[1];
        assert!((som.double_value(&[]) - want).abs() < 1e-12);
        // A per-row weight scales the row.
        let rw = Tensor::from_slice(&[2.0f64, 0.0]);
        let l = weighted_causal_lm_ce(&logits, &labels, Some(&rw), &mask, TrainLossReduction::Mean);
        let ones = Tensor::ones([2, 4], (Kind::Double, tch::Device::Cpu));
        let first = weighted_causal_lm_ce(
            &logits.narrow(0, 0, 1),
            &labels.narrow(0, 0, 1),
            Some(&ones.narrow(0, 0, 1)),
            &mask.narrow(0, 0, 1),
            TrainLossReduction::Mean,
        );
        // Row 1 has zero weight but its token still counts in the denominator (2 + 1).
        let want = 2.0 * first.double_value(&[]) * 2.0 / 3.0;
        assert!((l.double_value(&[]) - want).abs() < 1e-12);
    }
}
