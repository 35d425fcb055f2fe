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
use super::softmax_block::{fused_softmax_applies, softmax_block_};
use crate::config::{LossFn, LossReduction};
use crate::models::Linear;
use crate::Result;

/// Logit entries of one block: `BERGSON_HEAD_BLOCK` (default 2^21, 8 MiB in float32, which
/// stays in cache; a `[tokens, vocab]` tensor of fresh pages runs at half the GEMM rate).
fn block_entries() -> i64 {
    std::env::var("BERGSON_HEAD_BLOCK")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&c: &i64| c > 0)
        .unwrap_or(1 << 21)
}

/// Tokens per chunk: the vocabulary is swept in blocks of `block_entries() / TOKENS_PER_CHUNK`
/// rows for each chunk of this many labelled positions.
const TOKENS_PER_CHUNK: i64 = 2048;

/// Whether the fused path applies: cross-entropy in float32 or float64.
pub fn fused_applies(spec: &LossSpec, kind: Kind) -> bool {
    spec.loss_fn == LossFn::Ce && matches!(kind, Kind::Float | Kind::Double)
}

/// Per-document losses `[N]` and `∂(Σ losses)/∂hidden` `[N, S, D]` for right-padded `labels`
/// `[N, S]` (position `t` predicts `labels[:, t+1]`). `hidden` is not differentiated here.
/// `softcap`: the model's final logit soft-capping, applied to the head's output.
pub fn fused_head_loss(
    head: &Linear,
    softcap: Option<f64>,
    hidden: &Tensor,
    labels: &Tensor,
    spec: &LossSpec,
    advantages: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    fused_head_loss_blocked(
        head,
        softcap,
        hidden,
        labels,
        spec,
        advantages,
        block_entries(),
    )
}

/// [`fused_head_loss`] with logit blocks of `block_entries` entries.
fn fused_head_loss_blocked(
    head: &Linear,
    softcap: Option<f64>,
    hidden: &Tensor,
    labels: &Tensor,
    spec: &LossSpec,
    advantages: Option<&Tensor>,
    block_entries: i64,
) -> Result<(Tensor, Tensor)> {
    let hidden = hidden.f_detach()?;
    let (n, s, d) = hidden.size3()?;
    let kind = hidden.kind();
    let device = hidden.device();
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
    // Σ_v W_v [1, D], for the label-smoothing term of the gradient (per token when capped).
    let w_sum = if eps > 0.0 && softcap.is_none() {
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
        let len = TOKENS_PER_CHUNK.min(total - start);
        let hc = h.f_narrow(0, start, len)?;
        let yc = y.f_narrow(0, start, len)?;
        let sweep = Sweep {
            head,
            softcap,
            eps,
            w_sum: w_sum.as_ref(),
            block_entries,
        };
        let (ce, g) = sweep.loss_grad(&hc, &yc)?;
        token_loss.push(ce);
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

/// One vocabulary sweep's settings: the head, its soft-capping, label smoothing.
struct Sweep<'a> {
    head: &'a Linear,
    softcap: Option<f64>,
    eps: f64,
    /// `Σ_v W_v` `[1, D]` when label smoothing is on and the logits are not capped.
    w_sum: Option<&'a Tensor>,
    block_entries: i64,
}

impl Sweep<'_> {
    /// Cross-entropy `[T]` and `∂CE/∂h` `[T, D]` (unweighted) for hidden states `hc` `[T, D]`
    /// and targets `yc` `[T]`.
    ///
    /// The vocabulary is swept in cache-sized blocks with an online softmax: a running maximum
    /// `m`, `s = Σ exp(z - m)` and `acc = Σ exp(z - m) W` are rescaled whenever `m` grows, so
    /// `lse = m + log s` and `softmax(z) W = acc / s` come out without any `[T, V]` tensor.
    /// With soft-capping (`z = c·tanh(u / c)`, `u` the head's output) every `W_v` is weighted
    /// by `∂z_v/∂u_v = 1 - tanh²(u_v / c)`, and the label-smoothing term is accumulated per
    /// token (`dacc = Σ_v (1 - tanh²) W_v`).
    fn loss_grad(&self, hc: &Tensor, yc: &Tensor) -> Result<(Tensor, Tensor)> {
        let head = self.head;
        let eps = self.eps;
        let (t, d) = hc.size2()?;
        let v = head.out_features();
        let kind = hc.kind();
        let opts = (kind, hc.device());
        let block = (self.block_entries / t).clamp(1, v.max(1));
        let buffer = Tensor::f_empty([t * block], opts)?;
        // The cap's slopes get a buffer of their own too: a fresh [T, block] tensor per block
        // would fault in new pages every time.
        let slope_buffer = match self.softcap {
            Some(_) => Some(Tensor::f_empty([t * block], opts)?),
            None => None,
        };
        let mut m = Tensor::f_full([t, 1], f64::NEG_INFINITY, opts)?;
        let mut rescale_buffer = Tensor::f_empty([t, 1], opts)?;
        let mut s = Tensor::f_zeros([t, 1], opts)?;
        let mut acc = Tensor::f_zeros([t, d], opts)?;
        let mut sum_z = Tensor::f_zeros([t, 1], opts)?;
        let mut dacc = match (self.softcap, eps > 0.0) {
            (Some(_), true) => Some(Tensor::f_zeros([t, d], opts)?),
            _ => None,
        };
        let mut v0 = 0;
        while v0 < v {
            let vb = block.min(v - v0);
            let wb = head.weight.f_narrow(0, v0, vb)?;
            let mut z = buffer.f_narrow(0, 0, t * vb)?.f_view([t, vb])?;
            let _ = hc.f_mm_out(&z, &wb.f_transpose(0, 1)?)?;
            if let Some(bias) = &head.bias {
                let _ = z.f_add_(&bias.f_narrow(0, v0, vb)?)?;
            }
            // z <- c·tanh(z / c), keeping the derivative 1 - tanh².
            let slope = match (self.softcap, &slope_buffer) {
                (Some(c), Some(slopes)) => {
                    let _ = z.f_div_scalar_(c)?.f_tanh_()?;
                    let mut slope = slopes.f_narrow(0, 0, t * vb)?.f_view([t, vb])?;
                    let _ = z.f_square_out(&slope)?;
                    let _ = slope.f_neg_()?.f_add_scalar_(1.0)?;
                    let _ = z.f_mul_scalar_(c)?;
                    Some(slope)
                }
                _ => None,
            };
            let rescale = if fused_softmax_applies(&z) {
                let raw_sum = if eps > 0.0 { Some(&mut sum_z) } else { None };
                softmax_block_(&mut z, &mut m, &mut s, &mut rescale_buffer, raw_sum)?;
                rescale_buffer.shallow_clone()
            } else {
                if eps > 0.0 {
                    let _ = sum_z.f_add_(&z.f_sum_dim_intlist([1i64].as_slice(), true, kind)?)?;
                }
                let m_new = m.f_maximum(&z.f_amax([1i64].as_slice(), true)?)?;
                let rescale = m.f_sub(&m_new)?.f_exp()?;
                let _ = z.f_sub_(&m_new)?.f_exp_()?;
                let _ = s.f_mul_(&rescale)?.f_add_(&z.f_sum_dim_intlist(
                    [1i64].as_slice(),
                    true,
                    kind,
                )?)?;
                m = m_new;
                rescale
            };
            if let Some(slope) = &slope {
                if let Some(dacc) = dacc.as_mut() {
                    let _ = dacc.f_addmm_(slope, &wb)?;
                }
                let _ = z.f_mul_(slope)?;
            }
            let _ = acc.f_mul_(&rescale)?.f_addmm_(&z, &wb)?;
            v0 += vb;
        }
        let lse = m.f_add(&s.f_log()?)?.f_squeeze_dim(1)?;
        // The target's logit, h·W_y (+ b_y), without the [T, V] logits.
        let w_y = head.weight.f_index_select(0, yc)?;
        let mut z_y = hc
            .f_mul(&w_y)?
            .f_sum_dim_intlist([1i64].as_slice(), false, kind)?;
        if let Some(bias) = &head.bias {
            z_y = z_y.f_add(&bias.f_index_select(0, yc)?)?;
        }
        // The onehot term's W_y, times the target's cap slope.
        let mut w_y = w_y.f_mul_scalar(1.0 - eps)?;
        if let Some(c) = self.softcap {
            let t_y = z_y.f_div_scalar(c)?.f_tanh()?;
            let slope_y = t_y.f_square()?.f_neg()?.f_add_scalar(1.0)?;
            w_y = w_y.f_mul(&slope_y.f_unsqueeze(1)?)?;
            z_y = t_y.f_mul_scalar(c)?;
        }
        let mut ce = lse.f_sub(&z_y)?;
        // ∂CE/∂h = (softmax - (1-ε)·onehot - ε/V) W = acc/s - (1-ε) W_y - (ε/V) Σ_v W_v.
        let mut g = acc.f_div(&s)?.f_sub(&w_y)?;
        if eps > 0.0 {
            // Smoothed CE = (1-ε)·CE + ε·(lse - mean_v z).
            let mean_z = sum_z.f_squeeze_dim(1)?.f_div_scalar(v as f64)?;
            ce = ce
                .f_mul_scalar(1.0 - eps)?
                .f_add(&lse.f_sub(&mean_z)?.f_mul_scalar(eps)?)?;
            if let Some(w_sum) = dacc.as_ref().or(self.w_sum) {
                g = g.f_sub(&w_sum.f_mul_scalar(eps / v as f64)?)?;
            }
        }
        Ok((ce, g))
    }
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
        let weight = Tensor::randn([v, d], opts);
        let heads = [
            Linear {
                name: "lm_head".into(),
                weight: weight.shallow_clone(),
                bias: None,
                adapter: None,
            },
            Linear {
                name: "lm_head".into(),
                weight: weight.shallow_clone(),
                bias: Some(Tensor::randn([v], opts)),
                adapter: None,
            },
            // Logits spread over hundreds: exp without the running maximum would overflow.
            Linear {
                name: "lm_head".into(),
                weight: &weight * 100.0,
                bias: None,
                adapter: None,
            },
        ];
        let labels = Tensor::from_slice(&[
            1i64, 2, 3, 4, 5, 6, //
            -100, -100, 7, 8, -100, -100, //
            9, 10, 0, -100, -100, -100,
        ])
        .reshape([n, s]);
        let adv = Tensor::from_slice(&[0.5f64, -2.0, 1.5]);
        // Blocks of 1, 4 (uneven) and all vocabulary rows per labelled token.
        let cases = [
            (LossReduction::Sum, 0.0, false, 0, 1),
            (LossReduction::Mean, 0.0, true, 1, 4),
            (LossReduction::Sum, 0.1, true, 1, 1 << 20),
            (LossReduction::Mean, 0.2, false, 0, 4),
            (LossReduction::Sum, 0.0, false, 2, 4),
            (LossReduction::Mean, 0.1, true, 2, 1),
        ];
        // Soft-capped logits too (Gemma-2): 2.0 bends most of these logits, 0.5 all of them.
        let capped = [None, Some(2.0), Some(0.5)];
        for ((reduction, eps, with_adv, h, block), cap) in cases
            .into_iter()
            .flat_map(|case| capped.map(|cap| (case, cap)))
        {
            let head = &heads[h];
            let spec = LossSpec {
                loss_fn: LossFn::Ce,
                reduction,
                label_smoothing: eps,
                logit_scale: 1.0,
                upcast_logits: false,
            };
            let hidden = Tensor::randn([n, s, d], opts).set_requires_grad(true);
            let a = with_adv.then_some(&adv);
            let out = crate::models::head::HeadOutput {
                divisor: 1.0,
                softcap: cap,
            };
            let logits = crate::models::head::head_logits(head, out, &hidden, 1.0);
            let want = document_losses(&spec, &logits, &labels, a, None).unwrap();
            let want_grad =
                Tensor::run_backward(&[want.sum(Kind::Double)], &[&hidden], false, false).remove(0);
            let labelled = 9; // non-ignored targets in `labels`
            let (got, got_grad) =
                fused_head_loss_blocked(head, cap, &hidden, &labels, &spec, a, block * labelled)
                    .unwrap();
            let err = (got - want.detach()).abs().max().double_value(&[]);
            let gerr = (got_grad - &want_grad).abs().max().double_value(&[]);
            assert!(
                err < 1e-12 && gerr < 1e-12,
                "{reduction:?} eps {eps} block {block} cap {cap:?}: loss err {err}, grad err {gerr}"
            );

            // In float32 the sweep takes the fused softmax step (on CPUs with AVX2): the same
            // values to float32's precision.
            let head32 = Linear {
                name: "lm_head".into(),
                weight: head.weight.to_kind(Kind::Float),
                bias: head.bias.as_ref().map(|b| b.to_kind(Kind::Float)),
                adapter: None,
            };
            let a32 = a.map(|t| t.to_kind(Kind::Float));
            let hidden32 = hidden.detach().to_kind(Kind::Float);
            let (got, got_grad) = fused_head_loss_blocked(
                &head32,
                cap,
                &hidden32,
                &labels,
                &spec,
                a32.as_ref(),
                block * labelled,
            )
            .unwrap();
            // Logits in the hundreds through a cap of 0.5 leave `1 - tanh²` to float32's
            // rounding of the logits, whatever computes them, so the tolerance is also 16x the
            // error of libtorch's own float32 autograd on the same inputs (over 100 seeds ours
            // came to at most 7x: the same large products summed in another order).
            // The inputs come from the global generator, which tests running beside this one
            // draw from too.
            let hidden32 = hidden32.set_requires_grad(true);
            let logits32 = crate::models::head::head_logits(&head32, out, &hidden32, 1.0);
            let plain = document_losses(&spec, &logits32, &labels, a32.as_ref(), None).unwrap();
            let plain_grad =
                Tensor::run_backward(&[plain.sum(Kind::Float)], &[&hidden32], false, false)
                    .remove(0);
            let err_of = |t: &Tensor, want: &Tensor| {
                (t.to_kind(Kind::Double) - want)
                    .abs()
                    .max()
                    .double_value(&[])
            };
            let scale = want.abs().max().double_value(&[]).max(1.0);
            let gscale = want_grad.abs().max().double_value(&[]).max(1.0);
            let tol = (1e-5 * scale).max(16.0 * err_of(&plain, &want.detach()));
            let gtol = (1e-5 * gscale).max(16.0 * err_of(&plain_grad, &want_grad));
            let err = err_of(&got, &want.detach());
            let gerr = err_of(&got_grad, &want_grad);
            assert!(
                err < tol && gerr < gtol,
                "float32 {reduction:?} eps {eps} block {block} cap {cap:?}: loss err {err} \
                 (tolerance {tol}), grad err {gerr} (tolerance {gtol})"
            );
        }
    }
}
