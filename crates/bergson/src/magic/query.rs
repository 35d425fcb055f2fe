//! MAGIC's query phase (Python Bergson 2.5.1's `compute_query_gradients`): the gradient of
//! the query loss at the trained state, the cotangent the backward starts from.
//!
//! The query set streams in dataset order in batches of `--batch_size`, the last batch filled
//! with zero-weight copies whose tokens are taken out of the loss. Each batch's loss (the
//! training loss's reduction, unweighted) is scaled by its supervised token count `n_b`, so
//! `--aggregation sum` differentiates `Σ_b n_b · loss_b` (the summed token loss under the
//! `mean` reduction) and `mean` divides that by `Σ_b n_b`: the mean token loss of the whole
//! query set.

use super::super::train::loss::weighted_causal_lm_ce;
use super::super::train::{DataStream, Trainer};
use crate::data::tokenize::TokenizedRow;
use crate::models::NoHook;
use crate::{Error, Result};
use tch::{Device, Tensor};

/// The query gradient with respect to `params` and the query loss.
#[derive(Debug)]
pub struct QueryGradient {
    /// ∂(query loss)/∂θ, in the trainer's parameter order.
    pub grads: Vec<Tensor>,
    /// The query loss (Bergson's "baseline").
    pub loss: f64,
}

impl QueryGradient {
    /// `self - other` (the contrast set's gradient and loss subtracted).
    pub fn minus(self, other: &QueryGradient) -> QueryGradient {
        QueryGradient {
            grads: self
                .grads
                .iter()
                .zip(&other.grads)
                .map(|(a, b)| a - b)
                .collect(),
            loss: self.loss - other.loss,
        }
    }
}

/// The gradient of the query loss of `rows` at `params`: summed over the set with `sum`,
/// else its token mean. In a job of several processes (the trainer's), rank `r` runs batches
/// `r, r + W, ...` and the sums are added over the ranks: every rank gets the same gradient.
pub fn query_gradient(
    trainer: &Trainer,
    params: &[Tensor],
    rows: &[TokenizedRow],
    batch_size: usize,
    sum: bool,
    device: Device,
) -> Result<QueryGradient> {
    if rows.is_empty() {
        return Err(Error::input(
            "the query dataset has no rows; check --query.dataset and --query.split",
        ));
    }
    let stream = DataStream::in_order(rows, batch_size, device)?;
    let leaves: Vec<Tensor> = params
        .iter()
        .map(|p| p.detach().set_requires_grad(true))
        .collect();
    let model = trainer.model_on(&leaves)?;
    let reduction = trainer.reduction();
    let mut grads: Option<Vec<Tensor>> = None;
    let (mut loss, mut denom) = (0.0, 0i64);
    let group = trainer.group();
    let (rank, world) = (group.rank(), group.world_size());
    let mine = (rank..stream.len()).step_by(world);
    let mut phase = crate::progress::Phase::new("Query", "batches", Some(mine.len() as u64));
    for i in mine {
        crate::interrupt::check()?;
        let (batch, n) = stream.batch(i).without_padded_rows();
        let logits = trainer.logits(model.as_ref(), &batch.input_ids, &mut NoHook);
        let batch_loss = weighted_causal_lm_ce(
            &logits,
            &batch.labels,
            None,
            &batch.shift_loss_mask,
            reduction,
        );
        let value = batch_loss.double_value(&[]);
        if !value.is_finite() {
            return Err(Error::input(format!(
                "the query loss is {value} in query batch {i}; the trained model diverged: lower --lr or set --max_grad_norm"
            )));
        }
        loss += value * n as f64;
        denom += n;
        let g = Tensor::f_run_backward(&[batch_loss * n as f64], &leaves, false, false)?;
        grads = Some(match grads {
            None => g,
            Some(acc) => acc.iter().zip(&g).map(|(a, g)| a + g).collect(),
        });
        phase.inc(1);
    }
    if world > 1 {
        let parts = grads.unwrap_or_else(|| leaves.iter().map(|_| Tensor::new()).collect());
        grads = Some(trainer.sum_over_ranks(&parts, &leaves)?);
        let mut totals = Tensor::from_slice(&[loss, denom as f64]);
        group.all_reduce(&mut totals, crate::dist::ReduceOp::Sum)?;
        loss = totals.double_value(&[0]);
        denom = totals.double_value(&[1]) as i64;
    }
    let grads = grads.ok_or_else(|| Error::internal("an empty query stream"))?;
    if sum {
        return Ok(QueryGradient { grads, loss });
    }
    let d = denom as f64;
    Ok(QueryGradient {
        grads: grads.iter().map(|g| g / d).collect(),
        loss: loss / d,
    })
}
