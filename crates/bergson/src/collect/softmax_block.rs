//! One step of the LM head's online softmax, fused into a single pass per token row by a small
//! C++ kernel on libtorch's own threads (`csrc/softmax_shim.cpp`).
//!
//! libtorch spends four ops on the step (row maximum, subtract, exp, row sum), each a full trip
//! through a logits block that does not fit in L2; the kernel reads each row once for its
//! maximum and exponentiates and sums it while it is still in L1. On a 2-core AMD machine the
//! four ops were 12% of a whole build (docs/benchmarks.md).

use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

extern "C" {
    fn bd_softmax_block_vectorized() -> i32;
    fn bd_softmax_block(
        z: *mut f32,
        t: i64,
        vb: i64,
        m: *mut f32,
        s: *mut f32,
        rescale: *mut f32,
        raw_sum: *mut f32,
    );
}

/// Whether the fused step runs here: a CPU with AVX2 and FMA, unless `BERGSON_FUSED_SOFTMAX=0`
/// asks for libtorch's ops (to compare the two).
pub fn fused_softmax_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::env::var("BERGSON_FUSED_SOFTMAX").map_or(true, |v| v != "0")
            // SAFETY: a pure query of the CPU's features.
            && unsafe { bd_softmax_block_vectorized() } == 1
    })
}

/// Whether `z` (a logits block) and the running statistics can take the fused step: float32,
/// contiguous, on the CPU.
pub fn fused_softmax_applies(z: &Tensor) -> bool {
    fused_softmax_available()
        && z.kind() == Kind::Float
        && z.device() == Device::Cpu
        && z.dim() == 2
        && z.is_contiguous()
}

/// For each row `r` of the logits block `z` `[t, vb]`, in place: `m_new = max(m[r], max_j
/// z[r, j])`, `z[r, :] = exp(z[r, :] - m_new)`, `rescale[r] = exp(m[r] - m_new)`, `s[r] =
/// s[r] * rescale[r] + sum_j z[r, j]`, `m[r] = m_new`; `raw_sum[r]` (when given) gets the row's
/// sum of logits before the exponential added. `m`, `s`, `rescale` and `raw_sum` hold `t`
/// float32 values each, contiguously (`[t]` or `[t, 1]`).
pub fn softmax_block_(
    z: &mut Tensor,
    m: &mut Tensor,
    s: &mut Tensor,
    rescale: &mut Tensor,
    raw_sum: Option<&mut Tensor>,
) -> Result<()> {
    let (t, vb) = z.size2()?;
    if !fused_softmax_applies(z) {
        return Err(Error::Internal(
            "softmax_block_ called on a block it does not apply to".into(),
        ));
    }
    let mut stats = vec![&*m, &*s, &*rescale];
    if let Some(raw) = raw_sum.as_deref() {
        stats.push(raw);
    }
    for stat in &stats {
        if stat.kind() != Kind::Float
            || stat.device() != Device::Cpu
            || !stat.is_contiguous()
            || stat.numel() != t as usize
        {
            return Err(Error::Internal(format!(
                "softmax_block_: a running statistic of shape {:?} does not match {t} float32 \
                 CPU rows",
                stat.size()
            )));
        }
    }
    let raw_ptr = raw_sum.map_or(std::ptr::null_mut(), |r| r.data_ptr() as *mut f32);
    // SAFETY: every pointer is checked above to address a contiguous float32 CPU buffer of the
    // stated length; the tensors are borrowed mutably for the call, so nothing else writes
    // them, and the kernel touches nothing beyond those lengths.
    unsafe {
        bd_softmax_block(
            z.data_ptr() as *mut f32,
            t,
            vb,
            m.data_ptr() as *mut f32,
            s.data_ptr() as *mut f32,
            rescale.data_ptr() as *mut f32,
            raw_ptr,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this CPU runs the kernel; asserts that the kernel says so exactly when the CPU
    /// has AVX2 and FMA (where it does not, libtorch's ops are used and there is nothing to
    /// compare).
    fn kernel_runs_here() -> bool {
        #[cfg(target_arch = "x86_64")]
        let cpu = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        let cpu = false;
        // SAFETY: a pure query of the CPU's features.
        assert_eq!(unsafe { bd_softmax_block_vectorized() } == 1, cpu);
        cpu
    }

    /// The step in float64 with libtorch's ops: the reference.
    fn reference(z: &Tensor, m: &Tensor, s: &Tensor) -> (Tensor, Tensor, Tensor, Tensor, Tensor) {
        // The shifts z - m_new in float32 as both paths round them; exp in float64.
        let m_new32 = m.maximum(&z.amax([1i64].as_slice(), true));
        let shifted = (z - &m_new32).to_kind(Kind::Double);
        let rescale = (m - &m_new32).to_kind(Kind::Double).exp();
        let z = z.to_kind(Kind::Double);
        let (m, s) = (m.to_kind(Kind::Double), s.to_kind(Kind::Double));
        let raw = z.sum_dim_intlist([1i64].as_slice(), true, Kind::Double);
        let m_new = m.maximum(&z.amax([1i64].as_slice(), true));
        let e = shifted.exp();
        let s = s * &rescale + e.sum_dim_intlist([1i64].as_slice(), true, Kind::Double);
        (e, m_new, s, rescale, raw)
    }

    fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
        let got = got.to_kind(Kind::Double);
        ((got - want).abs() / want.abs().clamp_min(1e-30))
            .max()
            .double_value(&[])
    }

    #[test]
    fn fused_step_matches_float64() {
        if !kernel_runs_here() {
            return;
        }
        tch::manual_seed(7);
        let opts = (Kind::Float, Device::Cpu);
        // Odd widths exercise the scalar tails; a wide spread of logits the clamped range.
        for (t, vb, scale) in [(5, 1, 1.0), (7, 13, 3.0), (64, 1024, 10.0), (33, 250, 40.0)] {
            let z = Tensor::randn([t, vb], opts) * scale;
            for first in [true, false] {
                let m = if first {
                    Tensor::full([t, 1], f64::NEG_INFINITY, opts)
                } else {
                    Tensor::randn([t, 1], opts) * scale
                };
                let s = if first {
                    Tensor::zeros([t, 1], opts)
                } else {
                    Tensor::rand([t, 1], opts) * 100.0
                };
                let (want_z, want_m, want_s, want_r, want_raw) = reference(&z, &m, &s);
                let (mut gz, mut gm, mut gs) = (z.copy(), m.copy(), s.copy());
                let mut gr = Tensor::zeros([t, 1], opts);
                let mut raw = Tensor::zeros([t, 1], opts);
                softmax_block_(&mut gz, &mut gm, &mut gs, &mut gr, Some(&mut raw)).unwrap();
                // Entries whose exponential is below float32's normal range come back as 0.
                let tiny = want_z.lt(1e-37);
                let want_z_kept = want_z.where_self(&tiny.logical_not(), &want_z.zeros_like());
                let ez = rel_err(
                    &gz.where_self(&tiny.logical_not(), &gz.zeros_like()),
                    &want_z_kept,
                );
                let zero_where_tiny = gz
                    .where_self(&tiny, &gz.zeros_like())
                    .abs()
                    .max()
                    .double_value(&[]);
                // Cephes' expf is within 2 ulp (2.4e-7) of exp.
                assert!(ez < 2.4e-7, "exp off by {ez} at t={t} vb={vb}");
                assert!(zero_where_tiny < 1e-37);
                assert_eq!(rel_err(&gm, &want_m), 0.0);
                assert!(rel_err(&gs, &want_s) < 1e-6, "sum at t={t} vb={vb}");
                assert!(rel_err(&gr, &want_r) < 1e-6, "rescale at t={t} vb={vb}");
                let raw_err = (raw.to_kind(Kind::Double) - &want_raw)
                    .abs()
                    .max()
                    .double_value(&[]);
                assert!(
                    raw_err < 1e-4 * scale * vb as f64,
                    "raw sum at t={t} vb={vb}"
                );
            }
        }
    }

    #[test]
    fn non_finite_rows_propagate_as_in_libtorch() {
        if !kernel_runs_here() {
            return;
        }
        let opts = (Kind::Float, Device::Cpu);
        let mut z = Tensor::zeros([3, 20], opts);
        let _ = z.get(0).get(3).fill_(f64::NAN);
        let _ = z.get(1).get(17).fill_(f64::INFINITY);
        let _ = z.get(2).fill_(f64::NEG_INFINITY);
        let _ = z.get(2).get(19).fill_(2.0);
        let mut m = Tensor::full([3], f64::NEG_INFINITY, opts);
        let mut s = Tensor::zeros([3], opts);
        let mut r = Tensor::zeros([3], opts);
        softmax_block_(&mut z, &mut m, &mut s, &mut r, None).unwrap();
        let s: Vec<f32> = Vec::try_from(&s).unwrap();
        assert!(s[0].is_nan(), "a NaN logit makes the row's sum NaN");
        assert!(
            s[1].is_nan(),
            "an infinite logit makes inf - inf = NaN, as in libtorch"
        );
        assert_eq!(s[2], 1.0, "-inf logits contribute exp(-inf) = 0");
        assert_eq!(Vec::<f32>::try_from(&m).unwrap()[2], 2.0);
    }

    #[test]
    fn mismatched_statistics_are_an_internal_error() {
        if !kernel_runs_here() {
            return;
        }
        let opts = (Kind::Float, Device::Cpu);
        let mut z = Tensor::zeros([4, 8], opts);
        let mut m = Tensor::zeros([3], opts);
        let (mut s, mut r) = (Tensor::zeros([4], opts), Tensor::zeros([4], opts));
        let err = softmax_block_(&mut z, &mut m, &mut s, &mut r, None).unwrap_err();
        assert!(matches!(err, Error::Internal(_)), "{err}");
    }
}
