//! Fused causal self-attention for float32 CPU tensors: forward and backward in one autograd
//! node of libtorch's C++ API (`csrc/attention_shim.cpp`), since tch cannot define one.
//!
//! libtorch's CPU flash-attention kernel runs at 20-25 GFLOP/s per core at the small head
//! dimensions of the models we index on CPUs; this kernel runs each query block (forward) or
//! key block (backward) of a head as a few MKL GEMMs over every row it needs, with the softmax
//! in one vectorised pass per row (docs/benchmarks.md, step 8). Its backward is not itself
//! differentiable; the math kernel serves second derivatives.

use std::ffi::{c_char, CStr};

use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

extern "C" {
    fn bd_attention_vectorized() -> i32;
    fn bd_causal_attention(
        q: *const torch_sys::C_tensor,
        k: *const torch_sys::C_tensor,
        v: *const torch_sys::C_tensor,
        scale: f64,
        err: *mut c_char,
        err_cap: usize,
    ) -> *mut torch_sys::C_tensor;
}

/// Whether the kernel runs here: a CPU with AVX2 and FMA, unless `BERGSON_FUSED_ATTENTION=0`
/// asks for libtorch's kernel (to compare the two).
pub fn fused_attention_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::env::var("BERGSON_FUSED_ATTENTION").map_or(true, |v| v != "0")
            // SAFETY: a pure query of the CPU's features.
            && unsafe { bd_attention_vectorized() } == 1
    })
}

/// Whether [`causal_attention_fused`] takes these inputs: float32 CPU tensors `q` `[N, H, S,
/// D]`, `k` and `v` `[N, H / g, S, D]` for a whole `g`.
pub fn fused_attention_applies(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    let (qs, ks, vs) = (q.size(), k.size(), v.size());
    fused_attention_available()
        && [q, k, v]
            .iter()
            .all(|t| t.kind() == Kind::Float && t.device() == Device::Cpu && t.dim() == 4)
        && ks == vs
        && qs[0] == ks[0]
        && qs[2] == ks[2]
        && qs[3] == ks[3]
        && ks[1] > 0
        && qs[1] % ks[1] == 0
}

/// `softmax(scale · q kᵀ)` over keys `j <= i`, times `v`: `[N, H, S, D]` (laid out as `[N, S,
/// H, D]`), with query head `h` reading key/value head `h / (H / Hkv)`. Differentiable once
/// with respect to `q`, `k` and `v`.
pub fn causal_attention_fused(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    if !fused_attention_applies(q, k, v) {
        return Err(Error::internal(format!(
            "the fused attention kernel does not take q {:?}, k {:?}, v {:?}",
            q.size(),
            k.size(),
            v.size()
        )));
    }
    let mut err = [0 as c_char; 512];
    // SAFETY: the handles are live tensors borrowed for the call; the shim copies them into
    // its autograd node and returns a new owned handle (or null with a message in `err`).
    let ptr = unsafe {
        bd_causal_attention(
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            scale,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if ptr.is_null() {
        // SAFETY: the shim always NUL-terminates what it writes into `err`.
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
        return Err(Error::internal(format!("fused attention: {msg}")));
    }
    // SAFETY: a fresh heap tensor handle the caller now owns.
    Ok(unsafe { Tensor::from_ptr(ptr) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Float64 reference: scores, causal mask, softmax, weighted sum (GQA by repeating heads).
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
        let (_, hq, s, _) = q.size4().unwrap();
        let groups = hq / k.size()[1];
        let idx: Vec<i64> = (0..hq).map(|h| h / groups).collect();
        let idx = Tensor::from_slice(&idx);
        let (k, v) = (k.index_select(1, &idx), v.index_select(1, &idx));
        let allowed = Tensor::ones([s, s], (Kind::Bool, Device::Cpu)).tril(0);
        let scores = (q.matmul(&k.transpose(-1, -2)) * scale)
            .masked_fill(&allowed.logical_not(), f64::NEG_INFINITY);
        scores.softmax(-1, Kind::Double).matmul(&v)
    }

    fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
        let got = got.to_kind(Kind::Double);
        let diff = (&got - want).abs().max().double_value(&[]);
        diff / want.abs().max().double_value(&[]).max(1e-30)
    }

    /// `[N, S, H, D]` random data seen as `[N, H, S, D]`, the layout the models hand over.
    fn heads(n: i64, h: i64, s: i64, d: i64, std: f64) -> Tensor {
        (Tensor::randn([n, s, h, d], (Kind::Float, Device::Cpu)) * std).transpose(1, 2)
    }

    /// Where the kernel does not run (no AVX2/FMA, or `BERGSON_FUSED_ATTENTION=0`), checks that
    /// it refuses every input, which sends the models to libtorch's kernel, and says so: the
    /// caller then has nothing of the kernel's own to test.
    fn unavailable_and_refused() -> bool {
        if fused_attention_available() {
            return false;
        }
        let t = heads(1, 2, 5, 4, 1.0);
        assert!(causal_attention_fused(&t, &t, &t, 0.5).is_err());
        true
    }

    /// Output and all three gradients match the float64 reference across block boundaries
    /// (S around 64 and 256), odd head dims, grouped-query heads and both memory layouts.
    #[test]
    fn matches_float64_reference_with_gradients() {
        if unavailable_and_refused() {
            return;
        }
        tch::manual_seed(7);
        let cases = [
            (2, 4, 4, 1, 8),
            (3, 4, 2, 7, 8),
            (2, 4, 4, 63, 32),
            (1, 4, 1, 65, 16),
            (2, 2, 2, 130, 33),
            (1, 6, 2, 300, 32),
        ];
        // Large scores (hundreds, past exp's float32 range) check the max-subtraction on every
        // row; there the tolerances grow with the scores' float32 rounding (the inputs come
        // from the global generator, drawn from by the tests running beside this one too).
        let spreads = [1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 20.0];
        let cases = cases.iter().copied().chain([(2, 2, 1, 70, 4)]).zip(spreads);
        // 1 and 3 threads as well as the default: the backward shares out whole heads when
        // N * Hkv divides evenly among the threads and key blocks otherwise, so every case
        // meets both.
        let threads = tch::get_num_threads();
        let runs = [threads, 1, 3].map(|t| cases.clone().map(move |c| (t, c)));
        for (t, ((n, hq, hkv, s, d), spread)) in runs.into_iter().flatten() {
            tch::set_num_threads(t);
            for contiguous in [false, true] {
                let mut q = heads(n, hq, s, d, spread);
                let mut k = heads(n, hkv, s, d, spread);
                let mut v = heads(n, hkv, s, d, 1.0);
                if contiguous {
                    (q, k, v) = (q.contiguous(), k.contiguous(), v.contiguous());
                }
                let scale = 1.0 / (d as f64).sqrt();
                let (q, k, v) = (
                    q.set_requires_grad(true),
                    k.set_requires_grad(true),
                    v.set_requires_grad(true),
                );
                let out = causal_attention_fused(&q, &k, &v, scale).unwrap();
                let g_out = Tensor::randn(out.size(), (Kind::Float, Device::Cpu));
                let grads = Tensor::run_backward(
                    &[(&out * &g_out).sum(Kind::Float)],
                    &[&q, &k, &v],
                    false,
                    false,
                );
                let (qd, kd, vd) = (
                    q.detach().to_kind(Kind::Double).set_requires_grad(true),
                    k.detach().to_kind(Kind::Double).set_requires_grad(true),
                    v.detach().to_kind(Kind::Double).set_requires_grad(true),
                );
                let want = reference(&qd, &kd, &vd, scale);
                let want_grads = Tensor::run_backward(
                    &[(&want * g_out.to_kind(Kind::Double)).sum(Kind::Double)],
                    &[&qd, &kd, &vd],
                    false,
                    false,
                );
                // A float32 score carries an error of about |score| ulp, and so does every
                // probability the softmax makes of it, whatever the kernel.
                let score_max = (qd.matmul(
                    &kd.repeat_interleave_self_int(hq / hkv, 1, None)
                        .transpose(-1, -2),
                ) * scale)
                    .abs()
                    .max()
                    .double_value(&[]);
                let rounding = 4.0 * score_max * f64::from(f32::EPSILON);
                let case = format!(
                    "{t} threads: n {n} hq {hq} hkv {hkv} s {s} d {d} contiguous {contiguous}"
                );
                assert_eq!(out.size(), want.size(), "{case}");
                let err = rel_err(&out, &want);
                let tol = 2e-6_f64.max(rounding);
                assert!(err < tol, "{case}: output {err} (tolerance {tol})");
                for (i, name) in ["dq", "dk", "dv"].iter().enumerate() {
                    let (got, want) = (&grads[i], &want_grads[i]);
                    assert_eq!(got.size(), want.size(), "{case} {name}");
                    let err = rel_err(got, want);
                    let tol = 1e-5_f64.max(rounding);
                    assert!(err < tol, "{case}: {name} {err} (tolerance {tol})");
                }
            }
        }
        tch::set_num_threads(threads);
    }

    /// Without autograd the node is not built, and the output is the same.
    #[test]
    fn no_grad_forward_matches() {
        if unavailable_and_refused() {
            return;
        }
        tch::manual_seed(3);
        let (q, k, v) = (
            heads(2, 4, 40, 16, 1.0),
            heads(2, 2, 40, 16, 1.0),
            heads(2, 2, 40, 16, 1.0),
        );
        let q = q.set_requires_grad(true);
        let with_grad = causal_attention_fused(&q, &k, &v, 0.25).unwrap();
        assert!(with_grad.requires_grad());
        let without = {
            let _guard = tch::no_grad_guard();
            causal_attention_fused(&q, &k, &v, 0.25).unwrap()
        };
        assert!(!without.requires_grad());
        assert_eq!(
            (with_grad.detach() - without).abs().max().double_value(&[]),
            0.0
        );
    }

    /// Asking for a graph of the backward (second derivatives) is an error naming the math
    /// kernel, never silently wrong gradients.
    #[test]
    fn second_derivatives_are_refused() {
        if unavailable_and_refused() {
            return;
        }
        let q = heads(1, 2, 9, 8, 1.0).set_requires_grad(true);
        let (k, v) = (heads(1, 2, 9, 8, 1.0), heads(1, 2, 9, 8, 1.0));
        let out = causal_attention_fused(&q, &k, &v, 0.3).unwrap();
        let err = Tensor::f_run_backward(&[out.square().sum(Kind::Float)], &[&q], true, true)
            .expect_err("create_graph through the fused kernel must fail");
        assert!(err.to_string().contains("math attention kernel"), "{err}");
    }

    /// Inputs the kernel does not take are refused as an internal error (callers check
    /// [`fused_attention_applies`] first).
    #[test]
    fn refuses_inputs_it_does_not_take() {
        let f = |shape: [i64; 4], kind| Tensor::zeros(shape, (kind, Device::Cpu));
        let q = f([1, 4, 5, 8], Kind::Float);
        let cases = [
            (f([1, 4, 5, 8], Kind::Double), f([1, 4, 5, 8], Kind::Double)),
            (f([1, 3, 5, 8], Kind::Float), f([1, 3, 5, 8], Kind::Float)),
            (f([1, 4, 6, 8], Kind::Float), f([1, 4, 6, 8], Kind::Float)),
            (f([1, 4, 5, 8], Kind::Float), f([1, 4, 5, 4], Kind::Float)),
        ];
        for (k, v) in cases {
            assert!(
                !fused_attention_applies(&q, &k, &v),
                "{:?} {:?}",
                k.size(),
                v.size()
            );
            let err = causal_attention_fused(&q, &k, &v, 1.0).unwrap_err();
            assert!(matches!(err, Error::Internal(_)), "{err}");
        }
    }
}
