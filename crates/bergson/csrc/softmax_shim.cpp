// One step of the LM head's online softmax over a block of logits, fused into one pass per
// token row (see crates/bergson/src/collect/softmax_block.rs for the Rust side).
//
// libtorch runs the step as four ops (row maximum, subtract, exp, row sum), each a fork and
// join of its OpenMP workers and a trip through the whole block (8 MiB, past L2). Here each
// row is read once for its maximum and once more, while it is still in L1, to exponentiate
// it in place and sum it. The rows are shared out with at::parallel_for, i.e. on libtorch's
// own OpenMP workers: a second thread pool would fight libtorch's spinning workers for the
// cores.
//
// The vectorised exponential (AVX2 + FMA, chosen at run time) is Cephes' expf: range
// reduction by ln 2 in two parts and a degree-6 polynomial, within 2 ulp of exp over the
// range used here (arguments <= 0). Rows holding a NaN or an infinite maximum take the scalar
// path, which follows libtorch's arithmetic (NaN and inf - inf propagate as they do there).

#include <ATen/Parallel.h>

#include "avx2_math.h"

#include <cmath>
#include <cstdint>
#include <limits>

namespace {

// Scalar step for one row: the reference arithmetic, also the tail of the vectorised rows.
float exp_sum_scalar(float* row, int64_t n, float m) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    row[i] = std::exp(row[i] - m);
    sum += row[i];
  }
  return sum;
}

void row_step_scalar(float* row, int64_t n, float* m, float* s, float* rescale,
                     float* raw_sum) {
  float mx = -std::numeric_limits<float>::infinity();
  float raw = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    // NaN wins, as in torch.amax.
    if (std::isnan(row[i]) || row[i] > mx) mx = std::isnan(mx) ? mx : row[i];
    raw += row[i];
  }
  if (raw_sum != nullptr) *raw_sum += raw;
  float m_new = (std::isnan(mx) || std::isnan(*m)) ? std::numeric_limits<float>::quiet_NaN()
                                                   : std::max(*m, mx);
  float r = std::exp(*m - m_new);
  *rescale = r;
  *s = *s * r + exp_sum_scalar(row, n, m_new);
  *m = m_new;
}

#ifdef BD_HAVE_AVX2_KERNEL
using bd_avx2::exp256;
using bd_avx2::hmax;
using bd_avx2::hsum;

__attribute__((target("avx2,fma"))) void row_step_avx2(float* row, int64_t n, float* m,
                                                       float* s, float* rescale,
                                                       float* raw_sum) {
  const int64_t nv = n - n % 8;
  __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 vraw = _mm256_setzero_ps();
  __m256 unordered = _mm256_setzero_ps();
  for (int64_t i = 0; i < nv; i += 8) {
    __m256 z = _mm256_loadu_ps(row + i);
    vmax = _mm256_max_ps(vmax, z);
    vraw = _mm256_add_ps(vraw, z);
    unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(z, z, _CMP_UNORD_Q));
  }
  float mx = hmax(vmax);
  bool nan = _mm256_movemask_ps(unordered) != 0;
  float raw = hsum(vraw);
  for (int64_t i = nv; i < n; ++i) {
    nan = nan || std::isnan(row[i]);
    mx = std::max(mx, row[i]);
    raw += row[i];
  }
  float m_new = std::max(*m, mx);
  if (nan || std::isnan(*m) || !std::isfinite(m_new)) {
    row_step_scalar(row, n, m, s, rescale, raw_sum);
    return;
  }
  if (raw_sum != nullptr) *raw_sum += raw;
  const __m256 vm = _mm256_set1_ps(m_new);
  __m256 acc0 = _mm256_setzero_ps();
  __m256 acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= nv; i += 16) {
    __m256 e0 = exp256(_mm256_sub_ps(_mm256_loadu_ps(row + i), vm));
    __m256 e1 = exp256(_mm256_sub_ps(_mm256_loadu_ps(row + i + 8), vm));
    _mm256_storeu_ps(row + i, e0);
    _mm256_storeu_ps(row + i + 8, e1);
    acc0 = _mm256_add_ps(acc0, e0);
    acc1 = _mm256_add_ps(acc1, e1);
  }
  for (; i < nv; i += 8) {
    __m256 e0 = exp256(_mm256_sub_ps(_mm256_loadu_ps(row + i), vm));
    _mm256_storeu_ps(row + i, e0);
    acc0 = _mm256_add_ps(acc0, e0);
  }
  float sum = hsum(_mm256_add_ps(acc0, acc1)) + exp_sum_scalar(row + nv, n - nv, m_new);
  float r = std::exp(*m - m_new);
  *rescale = r;
  *s = *s * r + sum;
  *m = m_new;
}

#else
void row_step_avx2(float* row, int64_t n, float* m, float* s, float* rescale, float* raw_sum) {
  row_step_scalar(row, n, m, s, rescale, raw_sum);
}
#endif

}  // namespace

extern "C" {

// Whether the vectorised kernel runs on this CPU (otherwise callers keep libtorch's ops).
int bd_softmax_block_vectorized() { return bd_avx2::cpu_supported() ? 1 : 0; }

// For each of the t rows of the row-major block z [t, vb] (float32, in place): with m_old the
// running maximum m[r], m_new = max(m_old, max_j z[r, j]); z[r, :] = exp(z[r, :] - m_new);
// rescale[r] = exp(m_old - m_new); s[r] = s[r] * rescale[r] + sum_j z[r, j]; m[r] = m_new.
// raw_sum (may be null) gets the row sums of the logits before the exponential added to it.
void bd_softmax_block(float* z, int64_t t, int64_t vb, float* m, float* s, float* rescale,
                      float* raw_sum) {
  const bool vec = bd_avx2::cpu_supported();
  // About 64 KiB of logits per task: enough work to pay for a fork, fine enough to balance.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(vb, 1));
  at::parallel_for(0, t, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* raw = raw_sum == nullptr ? nullptr : raw_sum + r;
      if (vec) {
        row_step_avx2(z + r * vb, vb, m + r, s + r, rescale + r, raw);
      } else {
        row_step_scalar(z + r * vb, vb, m + r, s + r, rescale + r, raw);
      }
    }
  });
}

}  // extern "C"
