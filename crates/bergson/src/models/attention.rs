//! Causal self-attention: the one place every model computes softmax(QKᵀ)V, with an optional
//! sliding window and grouped-query heads, through either the fused SDPA kernel or the math
//! kernel (whose backward is differentiable again, which MAGIC needs).

use tch::{Device, Kind, Tensor};

/// Which scaled-dot-product-attention kernel to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKernel {
    /// `torch.nn.functional.scaled_dot_product_attention`: flash / memory-efficient / CPU-fused;
    /// for float32 on CPUs with AVX2, our own kernel ([`super::attention_kernel`]).
    #[default]
    Fused,
    /// `torch._scaled_dot_product_attention_math`: plain matmul + softmax, double-differentiable.
    Math,
}

/// Causal attention for right-padded batches without an attention mask.
///
/// `q` `[N, Hq, S, D]`, `k` and `v` `[N, Hkv, S, D]` with `Hq` a multiple of `Hkv` (GQA: query
/// head `h` reads key/value head `h / (Hq / Hkv)`). Query `i` sees keys `j <= i`, and with
/// `sliding_window = Some(w)` only `j > i - w` (transformers' `sliding_window_overlay`).
/// Returns `[N, Hq, S, D]`.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    sliding_window: Option<i64>,
    kernel: AttentionKernel,
) -> Tensor {
    let s = q.size()[2];
    let groups = q.size()[1] / k.size()[1];
    // A window at least as long as the sequence restricts nothing: keep the causal fast path.
    let mask = sliding_window
        .filter(|&w| w < s)
        .map(|w| sliding_window_mask(s, w, q.device()));
    // Native GQA avoids copying K/V, but only the flash kernel (half precision on CUDA) and the
    // CPU kernel support it without a mask; otherwise repeat the K/V heads as transformers does.
    let native_gqa = groups > 1
        && mask.is_none()
        && kernel == AttentionKernel::Fused
        && (q.device() == Device::Cpu || matches!(q.kind(), Kind::Half | Kind::BFloat16));
    let (k, v) = if groups > 1 && !native_gqa {
        (repeat_kv(k, groups), repeat_kv(v, groups))
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    let is_causal = mask.is_none();
    if kernel == AttentionKernel::Fused
        && is_causal
        && super::attention_kernel::fused_attention_applies(q, &k, &v)
    {
        match super::attention_kernel::causal_attention_fused(q, &k, &v, scale) {
            Ok(out) => return out,
            // Only a broken invariant gets here; libtorch's kernel still gives the answer.
            Err(e) => tracing::warn!("{e}; using libtorch's attention kernel"),
        }
    }
    match kernel {
        AttentionKernel::Fused => Tensor::scaled_dot_product_attention(
            q,
            &k,
            &v,
            mask.as_ref(),
            0.0,
            is_causal,
            scale,
            native_gqa,
        ),
        AttentionKernel::Math => {
            // The math kernel adds its mask to the scores (the public SDPA converts boolean
            // masks first): give it 0 / -inf.
            let additive = mask.map(|m| {
                Tensor::zeros(m.size(), (q.kind(), q.device()))
                    .masked_fill(&m.logical_not(), f64::NEG_INFINITY)
            });
            Tensor::internal_scaled_dot_product_attention_math(
                q,
                &k,
                &v,
                additive.as_ref(),
                0.0,
                is_causal,
                None::<&Tensor>,
                scale,
                false,
            )
            .0
        }
    }
}

/// Causal attention with soft-capped scores (Gemma-2's `attn_logit_softcapping`), as
/// transformers' eager attention computes it: `scores = c·tanh(scale·QKᵀ / c)`, masked (causal,
/// and `sliding_window` as in [`causal_attention`]), softmax in float32 (float64 in a float64
/// model) cast back to the query dtype, times V. No SDPA kernel caps scores, so this is always written out (and therefore
/// always double-differentiable). Shapes as in [`causal_attention`].
pub fn softcapped_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    cap: f64,
    sliding_window: Option<i64>,
) -> Tensor {
    let s = q.size()[2];
    let groups = q.size()[1] / k.size()[1];
    let (k, v) = if groups > 1 {
        (repeat_kv(k, groups), repeat_kv(v, groups))
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    let scores = q.matmul(&k.transpose(-1, -2)) * scale;
    let scores = (scores / cap).tanh() * cap;
    let allowed = match sliding_window.filter(|&w| w < s) {
        Some(w) => sliding_window_mask(s, w, q.device()),
        None => Tensor::ones([s, s], (Kind::Bool, q.device())).tril(0),
    };
    // transformers adds the dtype's minimum where masked; after the softmax both give 0.
    let scores = scores.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY);
    scores
        .softmax(-1, super::norm::compute_kind(q.kind()))
        .to_kind(q.kind())
        .matmul(&v)
}

/// Boolean `[S, S]` mask, true where query `i` may attend key `j`: `i - w < j <= i`.
pub(crate) fn sliding_window_mask(s: i64, w: i64, device: Device) -> Tensor {
    let i = Tensor::arange(s, (Kind::Int64, device)).unsqueeze(1);
    let j = Tensor::arange(s, (Kind::Int64, device)).unsqueeze(0);
    j.le_tensor(&i).logical_and(&j.gt_tensor(&(&i - w)))
}

/// `[N, Hkv, S, D]` -> `[N, Hkv * groups, S, D]`, each K/V head repeated for its query group.
fn repeat_kv(x: &Tensor, groups: i64) -> Tensor {
    let (n, h, s, d) = x.size4().unwrap_or((0, 0, 0, 0));
    x.unsqueeze(2)
        .expand([n, h, groups, s, d], false)
        .reshape([n, h * groups, s, d])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference attention written out: scores, explicit mask, softmax, weighted sum.
    fn naive(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, window: Option<i64>) -> Tensor {
        naive_capped(q, k, v, scale, None, window)
    }

    /// [`naive`] with optional score soft-capping.
    fn naive_capped(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f64,
        cap: Option<f64>,
        window: Option<i64>,
    ) -> Tensor {
        let (_, hq, s, _) = q.size4().unwrap();
        let hkv = k.size()[1];
        let mut allowed = vec![0f64; (s * s) as usize];
        for i in 0..s {
            for j in 0..s {
                let ok = j <= i && window.is_none_or(|w| j > i - w);
                allowed[(i * s + j) as usize] = if ok { 0.0 } else { f64::NEG_INFINITY };
            }
        }
        let bias = Tensor::from_slice(&allowed).reshape([s, s]);
        let idx: Vec<i64> = (0..hq).map(|h| h / (hq / hkv)).collect();
        let idx = Tensor::from_slice(&idx);
        let k = k.index_select(1, &idx);
        let v = v.index_select(1, &idx);
        let mut scores = q.matmul(&k.transpose(-1, -2)) * scale;
        if let Some(c) = cap {
            scores = (scores / c).tanh() * c;
        }
        (scores + bias).softmax(-1, Kind::Double).matmul(&v)
    }

    /// Soft-capped attention in float64 equals the written-out reference (GQA, windows), and
    /// a large cap changes nothing while a small one does.
    #[test]
    fn softcapped_matches_naive() {
        tch::manual_seed(4);
        let opts = (Kind::Double, Device::Cpu);
        let q = Tensor::randn([2, 4, 7, 8], opts) * 3.0;
        for hkv in [4, 2] {
            let k = Tensor::randn([2, hkv, 7, 8], opts) * 3.0;
            let v = Tensor::randn([2, hkv, 7, 8], opts);
            for window in [None, Some(3), Some(7)] {
                for cap in [0.5, 50.0] {
                    let want = naive_capped(&q, &k, &v, 0.3, Some(cap), window);
                    let got = softcapped_attention(&q, &k, &v, 0.3, cap, window);
                    let err = (got - &want).abs().max().double_value(&[]);
                    assert!(err < 1e-12, "hkv {hkv} window {window:?} cap {cap}: {err}");
                }
                let uncapped = naive(&q, &k, &v, 0.3, window);
                let small = softcapped_attention(&q, &k, &v, 0.3, 0.5, window);
                let diff = (small - &uncapped).abs().max().double_value(&[]);
                assert!(diff > 1e-3, "a cap of 0.5 must change the output: {diff}");
            }
        }
    }

    #[test]
    fn kernels_match_naive_attention() {
        tch::manual_seed(1);
        let opts = (Kind::Double, Device::Cpu);
        let q = Tensor::randn([2, 4, 7, 8], opts);
        for hkv in [4, 2, 1] {
            let k = Tensor::randn([2, hkv, 7, 8], opts);
            let v = Tensor::randn([2, hkv, 7, 8], opts);
            for window in [None, Some(3), Some(7), Some(1)] {
                let want = naive(&q, &k, &v, 0.3, window);
                for kernel in [AttentionKernel::Fused, AttentionKernel::Math] {
                    let got = causal_attention(&q, &k, &v, 0.3, window, kernel);
                    let err = (got - &want).abs().max().double_value(&[]);
                    assert!(err < 1e-12, "hkv {hkv} window {window:?} {kernel:?}: {err}");
                }
            }
        }
    }

    /// In float32 the fused kernel (ours where the CPU has AVX2, libtorch's with a window)
    /// matches the float64 reference, output and gradients.
    #[test]
    fn float32_fused_matches_naive_attention() {
        tch::manual_seed(5);
        let opts = (Kind::Float, Device::Cpu);
        let q = Tensor::randn([2, 4, 70, 16], opts).set_requires_grad(true);
        for hkv in [4, 2, 1] {
            let k = Tensor::randn([2, hkv, 70, 16], opts).set_requires_grad(true);
            let v = Tensor::randn([2, hkv, 70, 16], opts).set_requires_grad(true);
            for window in [None, Some(3)] {
                let got = causal_attention(&q, &k, &v, 0.3, window, AttentionKernel::Fused);
                let grads =
                    Tensor::run_backward(&[got.sum(Kind::Float)], &[&q, &k, &v], false, false);
                let leaves: Vec<Tensor> = [&q, &k, &v]
                    .iter()
                    .map(|t| t.detach().to_kind(Kind::Double).set_requires_grad(true))
                    .collect();
                let want = naive(&leaves[0], &leaves[1], &leaves[2], 0.3, window);
                let want_grads = Tensor::run_backward(
                    &[want.sum(Kind::Double)],
                    &[&leaves[0], &leaves[1], &leaves[2]],
                    false,
                    false,
                );
                let err = (got.to_kind(Kind::Double) - &want)
                    .abs()
                    .max()
                    .double_value(&[]);
                assert!(err < 2e-6, "hkv {hkv} window {window:?}: output {err}");
                for (g, w) in grads.iter().zip(&want_grads) {
                    let err = (g.to_kind(Kind::Double) - w).abs().max().double_value(&[]);
                    assert!(err < 2e-5, "hkv {hkv} window {window:?}: gradient {err}");
                }
            }
        }
    }

    /// The math kernel's backward is itself differentiable (MAGIC needs second derivatives).
    #[test]
    fn math_kernel_has_double_backward() {
        tch::manual_seed(2);
        let opts = (Kind::Double, Device::Cpu);
        let q = Tensor::randn([1, 2, 5, 4], opts).set_requires_grad(true);
        let k = Tensor::randn([1, 1, 5, 4], opts);
        let v = Tensor::randn([1, 1, 5, 4], opts);
        let out = causal_attention(&q, &k, &v, 0.5, Some(2), AttentionKernel::Math);
        let g = Tensor::run_backward(&[out.square().sum(Kind::Double)], &[&q], true, true);
        let gg = Tensor::run_backward(&[g[0].square().sum(Kind::Double)], &[&q], false, false);
        assert!(gg[0].abs().sum(Kind::Double).double_value(&[]) > 0.0);
    }
}
