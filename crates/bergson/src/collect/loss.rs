//! Per-document losses whose gradients the index stores (Bergson's `fwd_bwd`).

use tch::{Kind, Reduction, Tensor};

use crate::config::{LossFn, LossReduction};
use crate::{Error, Result};

/// Label of positions without a loss.
pub const IGNORE_INDEX: i64 = -100;

/// How a document's loss is formed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossSpec {
    /// Per-token loss.
    pub loss_fn: LossFn,
    /// Sum or mean over a document's labelled tokens.
    pub reduction: LossReduction,
    /// Cross-entropy label smoothing.
    pub label_smoothing: f64,
    /// Factor the LM head's logits are multiplied by before the loss (`--logit_scale`).
    pub logit_scale: f64,
    /// Cross-entropy on logits upcast to float32 (the loss of a model Bergson sets up, which
    /// `bergson query` differentiates), rather than in the logits' dtype (the build's loss).
    pub upcast_logits: bool,
}

/// Per-token losses `[N, S-1]` of `logits[:, :-1]` against `labels[:, 1:]` (0 where ignored).
/// `ce` stays in the logits' dtype (no upcast, as Bergson's build) unless `upcast_logits`;
/// `log_odds` is computed in float32.
pub fn token_losses(spec: &LossSpec, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (n, s, v) = logits.size3()?;
    match spec.loss_fn {
        LossFn::Ce => {
            let mut flat = logits.f_reshape([n * s, v])?;
            if spec.upcast_logits && flat.kind() != Kind::Double {
                flat = flat.f_to_kind(Kind::Float)?;
            }
            let tok = flat.f_cross_entropy_loss::<Tensor>(
                &labels.f_flatten(0, -1)?,
                None,
                Reduction::None,
                IGNORE_INDEX,
                spec.label_smoothing,
            )?;
            Ok(tok.f_reshape([n, s])?)
        }
        LossFn::LogOdds => {
            // TRAK's model output: -(z_y - logsumexp_{v != y} z_v), zero where ignored.
            let valid = labels.f_ne(IGNORE_INDEX)?;
            let idx = labels.f_clamp_min(0)?.f_unsqueeze(-1)?;
            let z = logits.f_to_kind(Kind::Float)?;
            let z_y = z.f_gather(-1, &idx, false)?.f_squeeze_dim(-1)?;
            let others = z.f_scatter_value(-1, &idx, f64::NEG_INFINITY)?.f_logsumexp([-1i64].as_slice(), false)?;
            Ok(z_y.f_sub(&others)?.f_neg()?.f_mul(&valid)?)
        }
        LossFn::Kl => Err(Error::input(
            "--loss_fn kl is a per-document loss of a PEFT adapter against its base model, not a per-token loss for Hessians; use --loss_fn ce",
        )),
    }
}

/// Per-token KL divergence `[N, S]` of the adapted model's next-token distribution from the
/// base model's, `Σ_v p(v) (log p(v) − log p_ref(v))` in the logits' dtype (Bergson's `kl`
/// branch of `fwd_bwd`), zero where `labels` are ignored.
pub fn kl_token_losses(logits: &Tensor, reference: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let kind = logits.kind();
    let ft = logits.f_log_softmax(-1, kind)?;
    let base = reference.f_log_softmax(-1, kind)?;
    let kl =
        ft.f_exp()?
            .f_mul(&ft.f_sub(&base)?)?
            .f_sum_dim_intlist([-1i64].as_slice(), false, kind)?;
    Ok(kl.f_mul(&labels.f_ne(IGNORE_INDEX)?)?)
}

/// Per-document losses `[N]` of a right-padded batch: token losses summed, divided by the number
/// of labelled tokens for `mean`, times the advantage when given (Dr. GRPO). `logits` `[N, S, V]`,
/// `labels` `[N, S]` (the labels of positions 1.. are the targets), `advantages` `[N]` float64.
/// `reference` is the base model's logits, which `--loss_fn kl` compares with.
pub fn document_losses(
    spec: &LossSpec,
    logits: &Tensor,
    labels: &Tensor,
    advantages: Option<&Tensor>,
    reference: Option<&Tensor>,
) -> Result<Tensor> {
    let s = logits.size()[1];
    let logits = logits.f_narrow(1, 0, s - 1)?;
    let targets = labels.f_narrow(1, 1, s - 1)?;
    let tok = match (spec.loss_fn, reference) {
        (LossFn::Kl, Some(reference)) => {
            kl_token_losses(&logits, &reference.f_narrow(1, 0, s - 1)?, &targets)?
        }
        (LossFn::Kl, None) => {
            return Err(Error::internal("the KL loss needs the base model's logits"))
        }
        _ => token_losses(spec, &logits, &targets)?,
    };
    let mut losses = tok.f_sum_dim_intlist([1i64].as_slice(), false, tok.kind())?;
    if spec.reduction == LossReduction::Mean {
        let denom = targets.f_ne(IGNORE_INDEX)?.f_sum_dim_intlist(
            [1i64].as_slice(),
            false,
            logits.kind(),
        )?;
        losses = losses.f_div(&denom)?;
    }
    if let Some(adv) = advantages {
        // In place, as Bergson's `losses *= tensor(advantage)`: computed in float64, stored in
        // the losses' dtype.
        let _ = losses.f_mul_(adv)?;
    }
    Ok(losses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_and_mean_match_a_direct_computation() {
        tch::manual_seed(0);
        let logits = Tensor::randn([2, 4, 5], (Kind::Double, tch::Device::Cpu));
        let labels = Tensor::from_slice(&[1i64, 2, 3, 4, 0, 4, -100, -100]).reshape([2, 4]);
        let lsm = logits.log_softmax(-1, Kind::Double);
        let nll = |n: i64, t: i64, y: i64| -lsm.double_value(&[n, t, y]);
        let want0 = nll(0, 0, 2) + nll(0, 1, 3) + nll(0, 2, 4);
        let want1 = nll(1, 0, 4);
        let spec = LossSpec {
            loss_fn: LossFn::Ce,
            reduction: LossReduction::Sum,
            label_smoothing: 0.0,
            logit_scale: 1.0,
            upcast_logits: false,
        };
        let got = document_losses(&spec, &logits, &labels, None, None).unwrap();
        assert!((got.double_value(&[0]) - want0).abs() < 1e-12);
        assert!((got.double_value(&[1]) - want1).abs() < 1e-12);
        let spec = LossSpec {
            reduction: LossReduction::Mean,
            ..spec
        };
        let adv = Tensor::from_slice(&[2.0f64, -1.0]);
        let got = document_losses(&spec, &logits, &labels, Some(&adv), None).unwrap();
        assert!((got.double_value(&[0]) - 2.0 * want0 / 3.0).abs() < 1e-12);
        assert!((got.double_value(&[1]) + want1).abs() < 1e-12);
    }

    #[test]
    fn log_odds_is_label_logit_against_the_rest() {
        let logits = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 0.5, 0.0, 0.0]).reshape([1, 2, 3]);
        let labels = Tensor::from_slice(&[0i64, 2]).reshape([1, 2]);
        let spec = LossSpec {
            loss_fn: LossFn::LogOdds,
            reduction: LossReduction::Sum,
            label_smoothing: 0.0,
            logit_scale: 1.0,
            upcast_logits: false,
        };
        let got = document_losses(&spec, &logits, &labels, None, None)
            .unwrap()
            .double_value(&[0]);
        let want = -(2.0f64 - (0.0f64.exp() + 1.0f64.exp()).ln());
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
}
