//! The query losses a retrained model is judged by (Python Bergson 2.5.1's
//! `validate.py::mean_query_loss` and `per_doc_query_losses`), without gradients:
//!
//! * the **mean query loss**: the query set streamed in dataset order in batches of
//!   `--batch_size` (zero-weight copies filling the last batch taken out of the loss), each
//!   micro-batch's training-reduction loss times its supervised token count, summed and
//!   divided by the set's supervised tokens: the token mean over the whole set;
//! * **per-document losses**: each query document's own token mean (multi-query scores).

use crate::data::tokenize::TokenizedRow;
use crate::models::NoHook;
use crate::train::loss::{weighted_causal_lm_ce, IGNORE_INDEX};
use crate::train::{DataStream, Trainer};
use crate::{Error, Result};
use tch::{Device, Kind, Reduction, Tensor};

fn finite(value: f64, what: &str) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Error::input(format!(
            "the {what} is {value} after a retrain; the model diverged: lower --lr or set --max_grad_norm"
        )))
    }
}

/// The mean token loss of `rows` under `params` (Bergson's `mean_query_loss`).
pub fn mean_query_loss(
    trainer: &Trainer,
    params: &[Tensor],
    rows: &[TokenizedRow],
    batch_size: usize,
    grad_accum_steps: usize,
    device: Device,
) -> Result<f64> {
    let (total, tokens) =
        query_loss_total(trainer, params, rows, batch_size, grad_accum_steps, device)?;
    finite(total / tokens, "query loss")
}

/// The summed token loss of `rows` under `params` and its supervised token count (at least
/// 1): the two halves of [`mean_query_loss`], and with `--aggregation sum` the first is
/// Bergson's baseline.
pub fn query_loss_total(
    trainer: &Trainer,
    params: &[Tensor],
    rows: &[TokenizedRow],
    batch_size: usize,
    grad_accum_steps: usize,
    device: Device,
) -> Result<(f64, f64)> {
    let _guard = tch::no_grad_guard();
    let stream = DataStream::in_order(rows, batch_size, device)?;
    let model = trainer.model_on(params)?;
    let (mut total, mut tokens) = (0.0, 0i64);
    for i in 0..stream.len() {
        crate::interrupt::check()?;
        let (batch, n) = stream.batch(i).without_padded_rows();
        tokens += n;
        let b = batch.len();
        let parts = (grad_accum_steps as i64).clamp(1, b.max(1));
        let mut start = 0;
        for p in 0..parts {
            let size = b / parts + i64::from(p < b % parts);
            let micro = batch.rows(start, size);
            start += size;
            if micro.shift_loss_mask.sum(Kind::Int64).int64_value(&[]) == 0 {
                continue;
            }
            let logits = trainer.logits(model.as_ref(), &micro.input_ids, &mut NoHook);
            let loss = weighted_causal_lm_ce(
                &logits,
                &micro.labels,
                None,
                &micro.shift_loss_mask,
                trainer.reduction(),
            );
            total += loss.double_value(&[]) * micro.loss_denom();
        }
    }
    Ok((finite(total, "query loss")?, (tokens as f64).max(1.0)))
}

/// Each row's mean token loss under `params` (Bergson's `per_doc_query_losses` for one
/// document per row: a row without a supervised token has loss 0).
pub fn per_document_query_losses(
    trainer: &Trainer,
    params: &[Tensor],
    rows: &[TokenizedRow],
    batch_size: usize,
    device: Device,
) -> Result<Vec<f64>> {
    let _guard = tch::no_grad_guard();
    let stream = DataStream::in_order(rows, batch_size, device)?;
    let model = trainer.model_on(params)?;
    let mut out = Vec::with_capacity(rows.len());
    for i in 0..stream.len() {
        crate::interrupt::check()?;
        let batch = stream.batch(i);
        let logits = trainer.logits(model.as_ref(), &batch.input_ids, &mut NoHook);
        let (b, t, v) = logits.size3()?;
        let shift = logits.narrow(1, 0, t - 1);
        let shift = if shift.kind() == Kind::Double {
            shift
        } else {
            shift.to_kind(Kind::Float)
        };
        let labels = batch.labels.narrow(1, 1, t - 1);
        let tok = shift
            .reshape([-1, v])
            .cross_entropy_loss::<Tensor>(
                &labels.reshape([-1]),
                None,
                Reduction::None,
                IGNORE_INDEX,
                0.0,
            )
            .reshape([b, t - 1])
            .to_kind(Kind::Double);
        let mask = labels.ne(IGNORE_INDEX).to_kind(Kind::Double);
        let sums: Vec<f64> = Vec::try_from((tok * &mask).sum_dim_intlist(1, false, Kind::Double))?;
        let counts: Vec<f64> = Vec::try_from(mask.sum_dim_intlist(1, false, Kind::Double))?;
        for (s, c) in sums.iter().zip(&counts) {
            if out.len() < rows.len() {
                out.push(finite(s / c.max(1.0), "query loss")?);
            }
        }
    }
    Ok(out)
}
