// Causal self-attention for float32 CPU tensors, forward and backward, as one autograd node
// (see crates/bergson/src/models/attention_kernel.rs for the Rust side).
//
// libtorch's CPU flash-attention kernel runs at 20-25 GFLOP/s per core at small head
// dimensions (32): its per-block GEMMs are short and it makes several passes over each score
// block. Here each task is one query block (forward) or one key block (backward) of one head,
// its GEMMs are MKL's sgemm (the one libtorch exports) over every key (or query) row the block
// needs at once, and the softmax is one vectorised pass per row while the row is in L1/L2.
//
// Forward, per query block Q_b (rows i0..i1) of head h:
//   S = scale Q_b K[0:i1]^T; P = softmax over j <= i; O_b = P V[0:i1]; lse_i = log sum_j exp(S_ij)
// Backward, per key block K_b (rows j0..j1) of key/value head g, for each query head h of the
// group and each chunk of query rows i >= j0 (P recomputed from lse, as flash attention does):
//   dP = dO V_b^T; dS = P (dP - delta_i), delta_i = dO_i . O_i;
//   dV_b += P^T dO; dK_b += scale dS^T Q; dQ += scale dS K_b
// With enough key/value heads to share out evenly, a task is a whole head and adds into dQ
// directly; otherwise a task is one key block, several of which add into the same dQ rows, so
// each thread accumulates into its own buffer, summed at the end. Tasks are handed out
// heaviest first from a shared counter on libtorch's OpenMP workers (at::parallel_for),
// because causal blocks differ in cost.
//
// The backward is not itself differentiable: asking for a graph of it is an error (the math
// kernel serves second derivatives).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include "avx2_math.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n,
                       const int* k, const float* alpha, const float* a, const int* lda,
                       const float* b, const int* ldb, const float* beta, float* c,
                       const int* ldc);

namespace {

constexpr int64_t kQueryBlock = 64;   // forward: query rows per task
constexpr int64_t kKeyBlock = 64;     // backward: key rows per task
constexpr int64_t kQueryChunk = 256;  // backward: query rows per GEMM within a task
// (16/32/64/128-row blocks and 64-512-row chunks measured within noise of these on a 2-core
// AMD machine, `cargo bench -p bergson-cli --bench attention`.)

// Row-major C[m, n] = alpha op(A) op(B) + beta C, through column-major sgemm: the row-major
// product is the column-major product of the transposes, so the operands swap places.
void gemm_rm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
             int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  const char tA = tb ? 'T' : 'N';
  const char tB = ta ? 'T' : 'N';
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int LDA = static_cast<int>(ldb), LDB = static_cast<int>(lda), LDC = static_cast<int>(ldc);
  sgemm_(&tA, &tB, &M, &N, &K, &alpha, b, &LDA, a, &LDB, &beta, c, &LDC);
}

// A [N, H, S, D] view: element (n, h, i, d) at base + n*s0 + h*s1 + i*s2 + d.
struct View {
  float* base;
  int64_t s0, s1, s2;
  float* row(int64_t n, int64_t h, int64_t i) const { return base + n * s0 + h * s1 + i * s2; }
};

View view_of(const at::Tensor& t) {
  return View{t.data_ptr<float>(), t.stride(0), t.stride(1), t.stride(2)};
}

// Rows of D contiguous floats, rows at least D apart: what sgemm can read in place.
at::Tensor gemm_ready(const at::Tensor& t) {
  const int64_t d = t.size(3);
  if (t.stride(3) == 1 && t.stride(2) >= d) return t;
  return t.contiguous();
}

// Empty [N, H, S, D] tensor laid out as [N, S, H, D], the layout the models' next reshape
// ([N, S, H * D]) reads without a copy.
at::Tensor empty_nshd(const at::Tensor& like, bool zero) {
  auto t = zero ? at::zeros({like.size(0), like.size(2), like.size(1), like.size(3)},
                            like.options())
                : at::empty({like.size(0), like.size(2), like.size(1), like.size(3)},
                            like.options());
  return t.transpose(1, 2);
}

// Shares `tasks` out over libtorch's workers, heaviest first (task 0), from a shared counter.
// `run(task, thread)` gets the worker's index in [0, threads).
template <typename F>
void for_each_task(int64_t tasks, int threads, const F& run) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t slot = begin; slot < end; ++slot) {
      for (int64_t t = next.fetch_add(1); t < tasks; t = next.fetch_add(1)) {
        run(t, static_cast<int>(slot));
      }
    }
  });
}

// --- per-row softmax pieces ---------------------------------------------------------------

// row[0..n) = exp(row - max), row[n..len) = 0; returns (max, sum of the exponentials).
void softmax_row_scalar(float* row, int64_t n, int64_t len, float* mx_out, float* sum_out) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, row[j]);
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    row[j] = std::exp(row[j] - mx);
    sum += row[j];
  }
  for (int64_t j = n; j < len; ++j) row[j] = 0.0f;
  *mx_out = mx;
  *sum_out = sum;
}

// row[0..n) = exp(row - lse), row[n..len) = 0.
void exp_shift_row_scalar(float* row, int64_t n, int64_t len, float lse) {
  for (int64_t j = 0; j < n; ++j) row[j] = std::exp(row[j] - lse);
  for (int64_t j = n; j < len; ++j) row[j] = 0.0f;
}

// dp[0..len) = p * (dp - delta).
void softmax_grad_row_scalar(const float* p, float* dp, int64_t len, float delta) {
  for (int64_t j = 0; j < len; ++j) dp[j] = p[j] * (dp[j] - delta);
}

float dot_scalar(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
  for (int64_t d = 0; d < n; ++d) s += a[d] * b[d];
  return s;
}

#ifdef BD_HAVE_AVX2_KERNEL
using bd_avx2::exp256;
using bd_avx2::hmax;
using bd_avx2::hsum;

__attribute__((target("avx2,fma"))) void softmax_row_avx2(float* row, int64_t n, int64_t len,
                                                           float* mx_out, float* sum_out) {
  const int64_t nv = n - n % 8;
  __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < nv; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(row + j));
  float mx = hmax(vmax);
  for (int64_t j = nv; j < n; ++j) mx = std::max(mx, row[j]);
  if (!std::isfinite(mx)) {
    softmax_row_scalar(row, n, len, mx_out, sum_out);
    return;
  }
  const __m256 vm = _mm256_set1_ps(mx);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t j = 0; j < nv; j += 8) {
    __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(row + j), vm));
    _mm256_storeu_ps(row + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = hsum(acc);
  for (int64_t j = nv; j < n; ++j) {
    row[j] = std::exp(row[j] - mx);
    sum += row[j];
  }
  std::memset(row + n, 0, sizeof(float) * (len - n));
  *mx_out = mx;
  *sum_out = sum;
}

__attribute__((target("avx2,fma"))) void exp_shift_row_avx2(float* row, int64_t n, int64_t len,
                                                             float lse) {
  if (!std::isfinite(lse)) {
    exp_shift_row_scalar(row, n, len, lse);
    return;
  }
  const int64_t nv = n - n % 8;
  const __m256 vl = _mm256_set1_ps(lse);
  for (int64_t j = 0; j < nv; j += 8) {
    _mm256_storeu_ps(row + j, exp256(_mm256_sub_ps(_mm256_loadu_ps(row + j), vl)));
  }
  for (int64_t j = nv; j < n; ++j) row[j] = std::exp(row[j] - lse);
  std::memset(row + n, 0, sizeof(float) * (len - n));
}

__attribute__((target("avx2,fma"))) void softmax_grad_row_avx2(const float* p, float* dp,
                                                                int64_t len, float delta) {
  const int64_t nv = len - len % 8;
  const __m256 vd = _mm256_set1_ps(delta);
  for (int64_t j = 0; j < nv; j += 8) {
    __m256 g = _mm256_sub_ps(_mm256_loadu_ps(dp + j), vd);
    _mm256_storeu_ps(dp + j, _mm256_mul_ps(_mm256_loadu_ps(p + j), g));
  }
  for (int64_t j = nv; j < len; ++j) dp[j] = p[j] * (dp[j] - delta);
}

#else
void softmax_row_avx2(float* row, int64_t n, int64_t len, float* mx, float* sum) {
  softmax_row_scalar(row, n, len, mx, sum);
}
void exp_shift_row_avx2(float* row, int64_t n, int64_t len, float lse) {
  exp_shift_row_scalar(row, n, len, lse);
}
void softmax_grad_row_avx2(const float* p, float* dp, int64_t len, float delta) {
  softmax_grad_row_scalar(p, dp, len, delta);
}
#endif

// --- forward ----------------------------------------------------------------------------

// Returns (out [N, H, S, D] in [N, S, H, D] memory, lse [N, H, S] float32).
std::pair<at::Tensor, at::Tensor> attention_forward(const at::Tensor& q_in,
                                                    const at::Tensor& k_in,
                                                    const at::Tensor& v_in, double scale) {
  const at::Tensor q = gemm_ready(q_in), k = gemm_ready(k_in), v = gemm_ready(v_in);
  const int64_t N = q.size(0), H = q.size(1), S = q.size(2), D = q.size(3);
  const int64_t groups = H / k.size(1);
  at::Tensor out = empty_nshd(q, false);
  at::Tensor lse = at::empty({N, H, S}, q.options());
  if (N * H * S * D == 0) return {out, lse};
  const View Q = view_of(q), K = view_of(k), V = view_of(v), O = view_of(out);
  float* LSE = lse.data_ptr<float>();
  const int64_t blocks = (S + kQueryBlock - 1) / kQueryBlock;
  const int threads = std::max(1, at::get_num_threads());
  std::vector<std::vector<float>> scratch(threads);
  const bool vec = bd_avx2::cpu_supported();
  // Task t: the heaviest blocks (last query rows) of every head first.
  for_each_task(N * H * blocks, threads, [&](int64_t t, int slot) {
    const int64_t b = blocks - 1 - t / (N * H);
    const int64_t nh = t % (N * H), n = nh / H, h = nh % H, g = h / groups;
    const int64_t i0 = b * kQueryBlock, i1 = std::min(S, i0 + kQueryBlock), m = i1 - i0;
    const int64_t len = i1;  // keys 0..i1
    std::vector<float>& sc = scratch[slot];
    sc.resize(static_cast<size_t>(m * len + 2 * m));
    float* scores = sc.data();
    float* inv = scores + m * len;
    gemm_rm(false, true, m, len, D, static_cast<float>(scale), Q.row(n, h, i0), Q.s2,
            K.row(n, g, 0), K.s2, 0.0f, scores, len);
    float* lse_row = LSE + (n * H + h) * S;
    for (int64_t r = 0; r < m; ++r) {
      float mx, sum;
      float* row = scores + r * len;
      if (vec) {
        softmax_row_avx2(row, i0 + r + 1, len, &mx, &sum);
      } else {
        softmax_row_scalar(row, i0 + r + 1, len, &mx, &sum);
      }
      inv[r] = 1.0f / sum;
      lse_row[i0 + r] = mx + std::log(sum);
    }
    float* o = O.row(n, h, i0);
    gemm_rm(false, false, m, D, len, 1.0f, scores, len, V.row(n, g, 0), V.s2, 0.0f, o, O.s2);
    for (int64_t r = 0; r < m; ++r) {
      float* orow = o + r * O.s2;
      for (int64_t d = 0; d < D; ++d) orow[d] *= inv[r];
    }
  });
  return {out, lse};
}

// --- backward ---------------------------------------------------------------------------

struct Grads {
  at::Tensor dq, dk, dv;
};

Grads attention_backward(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                         const at::Tensor& out_in, const at::Tensor& lse,
                         const at::Tensor& dout_in, double scale) {
  const at::Tensor q = gemm_ready(q_in), k = gemm_ready(k_in), v = gemm_ready(v_in);
  const at::Tensor out = gemm_ready(out_in), dout = gemm_ready(dout_in.to(at::kFloat));
  const int64_t N = q.size(0), H = q.size(1), S = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), groups = H / Hkv;
  Grads grads{empty_nshd(q, true), empty_nshd(k, true), empty_nshd(v, true)};
  if (N * H * S * D == 0) return grads;
  const int threads = std::max(1, at::get_num_threads());
  // delta_i = dO_i . O_i, one per query row.
  at::Tensor delta_t = at::empty({N, H, S}, q.options());
  float* delta = delta_t.data_ptr<float>();
  const View Q = view_of(q), K = view_of(k), V = view_of(v), O = view_of(out), dO = view_of(dout);
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      for (int64_t i = 0; i < S; ++i) {
        delta[nh * S + i] = dot_scalar(dO.row(n, h, i), O.row(n, h, i), D);
      }
    }
  });
  const View dK = view_of(grads.dk), dV = view_of(grads.dv);
  const float* LSE = lse.data_ptr<float>();
  const int64_t blocks = (S + kKeyBlock - 1) / kKeyBlock;
  std::vector<std::vector<float>> scratch(threads);
  const bool vec = bd_avx2::cpu_supported();
  const float fscale = static_cast<float>(scale);
  // Key block b of key/value head g of sequence n, its dQ share added through dQ.
  auto key_block = [&](int64_t n, int64_t g, int64_t b, const View& dQ, int slot) {
    const int64_t j0 = b * kKeyBlock, j1 = std::min(S, j0 + kKeyBlock), w = j1 - j0;
    std::vector<float>& sc = scratch[slot];
    sc.resize(static_cast<size_t>(2 * kQueryChunk * w));
    float* p = sc.data();
    float* dp = p + kQueryChunk * w;
    for (int64_t h = g * groups; h < (g + 1) * groups; ++h) {
      const float* lse_row = LSE + (n * H + h) * S;
      const float* delta_row = delta + (n * H + h) * S;
      for (int64_t r0 = j0; r0 < S; r0 += kQueryChunk) {
        const int64_t r1 = std::min(S, r0 + kQueryChunk), m = r1 - r0;
        gemm_rm(false, true, m, w, D, fscale, Q.row(n, h, r0), Q.s2, K.row(n, g, j0), K.s2,
                0.0f, p, w);
        for (int64_t r = 0; r < m; ++r) {
          // Query r0 + r sees keys j0 .. min(j1, r0 + r + 1).
          const int64_t valid = std::min(w, r0 + r - j0 + 1);
          if (vec) {
            exp_shift_row_avx2(p + r * w, valid, w, lse_row[r0 + r]);
          } else {
            exp_shift_row_scalar(p + r * w, valid, w, lse_row[r0 + r]);
          }
        }
        gemm_rm(false, true, m, w, D, 1.0f, dO.row(n, h, r0), dO.s2, V.row(n, g, j0), V.s2,
                0.0f, dp, w);
        for (int64_t r = 0; r < m; ++r) {
          if (vec) {
            softmax_grad_row_avx2(p + r * w, dp + r * w, w, delta_row[r0 + r]);
          } else {
            softmax_grad_row_scalar(p + r * w, dp + r * w, w, delta_row[r0 + r]);
          }
        }
        gemm_rm(true, false, w, D, m, 1.0f, p, w, dO.row(n, h, r0), dO.s2, 1.0f,
                dV.row(n, g, j0), dV.s2);
        gemm_rm(true, false, w, D, m, fscale, dp, w, Q.row(n, h, r0), Q.s2, 1.0f,
                dK.row(n, g, j0), dK.s2);
        gemm_rm(false, false, m, D, w, fscale, dp, w, K.row(n, g, j0), K.s2, 1.0f,
                dQ.row(n, h, r0), dQ.s2);
      }
    }
  };
  const int64_t heads = N * Hkv;
  if (heads % threads == 0 || heads >= 4 * threads) {
    // Enough key/value heads to share out evenly: one task per head, whose dQ rows no other
    // task writes, so every task adds into dQ directly.
    const View dQ = view_of(grads.dq);
    for_each_task(heads, threads, [&](int64_t t, int slot) {
      for (int64_t b = 0; b < blocks; ++b) key_block(t / Hkv, t % Hkv, b, dQ, slot);
    });
    return grads;
  }
  // Otherwise one task per key block, heaviest (first) blocks first. Several tasks add into
  // the same dQ rows: thread 0 into dQ itself, the others into zeroed buffers summed at the end.
  std::vector<at::Tensor> dq_parts{grads.dq};
  for (int t = 1; t < threads; ++t) dq_parts.push_back(empty_nshd(q, true));
  std::vector<View> dq_views;
  for (const auto& part : dq_parts) dq_views.push_back(view_of(part));
  for_each_task(heads * blocks, threads, [&](int64_t t, int slot) {
    const int64_t b = t / heads, ng = t % heads;
    key_block(ng / Hkv, ng % Hkv, b, dq_views[slot], slot);
  });
  for (size_t t = 1; t < dq_parts.size(); ++t) grads.dq.add_(dq_parts[t]);
  return grads;
}

// --- autograd node ----------------------------------------------------------------------

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct CausalAttention : public torch::autograd::Function<CausalAttention> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, double scale) {
    auto [out, lse] = attention_forward(q, k, v, scale);
    ctx->save_for_backward({q, k, v, out, lse});
    ctx->saved_data["scale"] = scale;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "bergson's fused CPU attention has no second derivative; use the math "
                "attention kernel where gradients of gradients are taken");
    const auto saved = ctx->get_saved_variables();
    const double scale = ctx->saved_data["scale"].toDouble();
    Grads g = attention_backward(saved[0], saved[1], saved[2], saved[3], saved[4],
                                 grad_outputs[0], scale);
    return {g.dq, g.dk, g.dv, at::Tensor()};
  }
};

void set_error(char* err, size_t cap, const char* msg) {
  if (err == nullptr || cap == 0) return;
  std::strncpy(err, msg, cap - 1);
  err[cap - 1] = '\0';
}

}  // namespace

extern "C" {

// Whether the kernel's vectorised paths run on this CPU (AVX2 and FMA).
int bd_attention_vectorized() { return bd_avx2::cpu_supported() ? 1 : 0; }

// Causal self-attention out = softmax(scale q k^T, j <= i) v for float32 CPU tensors q
// [N, H, S, D], k and v [N, H / groups, S, D], as an autograd node when any input requires a
// gradient. Returns a new tensor handle, or null with the reason in err.
at::Tensor* bd_causal_attention(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                                double scale, char* err, size_t err_cap) {
  try {
    return new at::Tensor(CausalAttention::apply(*q, *k, *v, scale));
  } catch (const std::exception& e) {
    set_error(err, err_cap, e.what());
    return nullptr;
  }
}

}  // extern "C"
