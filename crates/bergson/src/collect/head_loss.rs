//! The LM head and cross-entropy fused, for speed: per-document losses and the gradient of
//! their sum with respect to the final hidden states, computed a chunk of labelled positions
//! at a time. Logits of padding and unlabelled positions are never formed, and no `[tokens,
//! vocab]` tensor outlives its chunk or enters the autograd graph.
//!
//! Mathematically this is Bergson's loss (`F.cross_entropy(..., reduction="none",
//! label_smoothing)` summed per document, divided by the labelled count for `mean`, times the
//! advantage), with `∂CE/∂z = softmax(z) - (1-ε)·onehot(y) - ε/V`. Only float rounding differs
//! from the unfused path, which half precision keeps using to match Bergson's rounding there.

use tch::{Kind, Tensor};

use super::loss::{LossSpec, IGNORE_INDEX};
use crate::config::{LossFn, LossReduction};
use crate::models::Linear;
use crate::Result;

/// Logit entries per chunk: `BERGSON_HEAD_CHUNK` (default 2^22, 16 MiB in float32).
fn chunk_entries() -> i64 {
    std::env::var("BERGSON_HEAD_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&c: &i64| c > 0)
        .unwrap_or(1 << 22)
}

/// Whether the fused path applies: cross-entropy in float32 or float64.
pub fn fused_applies(spec: &LossSpec, kind: Kind) -> bool {
    spec.loss_fn == LossFn::Ce && matches!(kind, Kind::Float | Kind::Double)
}

/// Per-document losses `[N]` and `∂(Σ losses)/∂hidden` `[N, S, D]` for right-padded `labels`
/// `[N, S]` (position `t` predicts `labels[:, t+1]`). `hidden` is not differentiated here.
pub fn fused_head_loss(
    head: &Linear,
    hidden: &Tensor,
    labels: &Tensor,
    spec: &LossSpec,
    advantages: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let hidden = hidden.f_detach()?;
    let (n, s, d) = hidden.size3()?;
    let kind = hidden.kind();
    let device = hidden.device();
    let v = head.out_features();
    // Labelled positions t of document n: labels[n, t+1] != -100.
    let targets = labels.f_narrow(1, 1, s - 1)?;
    let valid = targets.f_ne(IGNORE_INDEX)?;
    let flat = valid.f_flatten(0, -1)?.f_nonzero()?.f_squeeze_dim(1)?; // into [N, S-1]
    let doc = flat.f_div_scalar_mode(s - 1, "floor")?;
    let pos = flat.f_remainder(s - 1)?;
    let rows = doc.f_mul_scalar(s)?.f_add(&pos)?; // into [N*S]
    let y = targets.f_flatten(0, -1)?.f_index_select(0, &flat)?;

    // Per-document weight of each token's loss: 1/denom (mean), times the advantage.
    let mut doc_weight = Tensor::f_ones([n], (kind, device))?;
    let counts = valid.f_sum_dim_intlist([1i64].as_slice(), false, kind)?;
    if spec.reduction == LossReduction::Mean {
        doc_weight = doc_weight.f_div(&counts)?;
    }
    if let Some(adv) = advantages {
        doc_weight = doc_weight
            .f_mul(&adv.f_to_kind(Kind::Double)?)?
            .f_to_kind(kind)?;
    }
    let token_weight = doc_weight.f_index_select(0, &doc)?;

    let h = hidden.f_reshape([n * s, d])?.f_index_select(0, &rows)?;
    let total = h.size()[0];
    let eps = spec.label_smoothing;
    let chunk = (chunk_entries() / v.max(1)).max(1);
    // Σ_v W_v, for the label-smoothing term of the gradient.
    let w_colsum = if eps > 0.0 {
        Some(
            head.weight
                .f_sum_dim_intlist([0i64].as_slice(), true, kind)?,
        )
    } else {
        None
    };
    let mut token_loss = Vec::new();
    let mut grad_rows = Vec::new();
    let mut start = 0;
    while start < total {
        let len = chunk.min(total - start);
        let hc = h.f_narrow(0, start, len)?;
        let yc = y.f_narrow(0, start, len)?.f_unsqueeze(1)?;
        let z = head.forward(&hc);
        // One fused softmax pass; logsumexp from its largest entry, which cannot underflow:
        // log p_k = z_k - lse at k = argmax.
        let p = z.f_softmax(1, kind)?;
        let (p_max, k) = p.f_max_dim(1, true)?;
        let lse = z.f_gather(1, &k, false)?.f_sub(&p_max.f_log()?)?;
        let mut ce = lse.f_sub(&z.f_gather(1, &yc, false)?)?;
        if eps > 0.0 {
            let mean_z = z.f_mean_dim([1i64].as_slice(), true, kind)?;
            ce = ce
                .f_mul_scalar(1.0 - eps)?
                .f_add(&lse.f_sub(&mean_z)?.f_mul_scalar(eps)?)?;
        }
        drop(z);
        token_loss.push(ce.f_squeeze_dim(1)?);
        // (softmax - (1-ε)·onehot - ε/V) W = p W - (1-ε) W_y - (ε/V) Σ_v W_v, then the token's
        // weight: the one-hot and smoothing terms never touch the [tokens, vocab] tensor.
        let mut g = p.f_matmul(&head.weight)?;
        drop(p);
        g = g.f_sub(
            &head
                .weight
                .f_index_select(0, &yc.f_squeeze_dim(1)?)?
                .f_mul_scalar(1.0 - eps)?,
        )?;
        if let Some(colsum) = &w_colsum {
            g = g.f_sub(&colsum.f_mul_scalar(eps / v as f64)?)?;
        }
        grad_rows.push(g.f_mul(&token_weight.f_narrow(0, start, len)?.f_unsqueeze(1)?)?);
        start += len;
    }
    let token_loss = if token_loss.is_empty() {
        Tensor::f_zeros([0], (kind, device))?
    } else {
        Tensor::f_cat(&token_loss, 0)?
    };
    let mut losses = Tensor::f_zeros([n], (kind, device))?.f_index_add(0, &doc, &token_loss)?;
    if spec.reduction == LossReduction::Mean {
        losses = losses.f_div(&counts)?;
    }
    if let Some(adv) = advantages {
        let _ = losses.f_mul_(adv)?;
    }
    let grad = Tensor::f_zeros([n * s, d], (kind, device))?;
    let grad = if grad_rows.is_empty() {
        grad
    } else {
        grad.f_index_copy(0, &rows, &Tensor::f_cat(&grad_rows, 0)?)?
    };
    Ok((losses, grad.f_reshape([n, s, d])?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::loss::document_losses;

    /// The fused losses and hidden-state gradients equal autograd through the unfused loss.
    #[test]
    fn fused_matches_autograd() {
        tch::manual_seed(3);
        let opts = (Kind::Double, tch::Device::Cpu);
        let (n, s, d, v) = (3, 6, 5, 11);
        let head = Linear {
            name: "lm_head".into(),
            weight: Tensor::randn([v, d], opts),
            bias: None,
        };
        let labels = Tensor::from_slice(&[
            1i64, 2, 3, 4, 5, 6, //
            -100, -100, 7, 8, -100, -100, //
            9, 10, 0, -100, -100, -100,
        ])
        .reshape([n, s]);
        let adv = Tensor::from_slice(&[0.5f64, -2.0, 1.5]);
        for (reduction, eps, with_adv) in [
            (LossReduction::Sum, 0.0, false),
            (LossReduction::Mean, 0.0, true),
            (LossReduction::Sum, 0.1, true),
            (LossReduction::Mean, 0.2, false),
        ] {
            let spec = LossSpec {
                loss_fn: LossFn::Ce,
                reduction,
                label_smoothing: eps,
            };
            let hidden = Tensor::randn([n, s, d], opts).set_requires_grad(true);
            let a = with_adv.then_some(&adv);
            let want = document_losses(&spec, &head.forward(&hidden), &labels, a).unwrap();
            let want_grad =
                Tensor::run_backward(&[want.sum(Kind::Double)], &[&hidden], false, false).remove(0);
            let (got, got_grad) = fused_head_loss(&head, &hidden, &labels, &spec, a).unwrap();
            let err = (got - want.detach()).abs().max().double_value(&[]);
            let gerr = (got_grad - want_grad).abs().max().double_value(&[]);
            assert!(
                err < 1e-12 && gerr < 1e-12,
                "{reduction:?} eps {eps}: loss err {err}, grad err {gerr}"
            );
        }
    }
}
