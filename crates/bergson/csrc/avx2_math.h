// AVX2 + FMA helpers shared by the C++ kernels (softmax_shim.cpp, attention_shim.cpp):
// Cephes' expf for arguments <= 0, horizontal sum / maximum of a vector, and whether the CPU
// has AVX2 and FMA.
//
// The exponential: range reduction by ln 2 in two parts and a degree-6 polynomial, within 2
// ulp of exp over x <= 0 (tested against float64 through both kernels).

#pragma once

#if defined(__x86_64__)
#include <immintrin.h>
#define BD_HAVE_AVX2_KERNEL 1

namespace bd_avx2 {

__attribute__((target("avx2,fma"))) inline __m256 exp256(__m256 x) {
  // exp(x) for x <= 0.
  // Below -87.3 the exponential is subnormal or zero: 0 here, negligible beside the row's
  // exp(0) = 1 in every sum it enters.
  const __m256 lo = _mm256_set1_ps(-87.3f);
  const __m256 keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
  x = _mm256_max_ps(x, lo);
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  __m256i n = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
  return _mm256_and_ps(keep, _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(n, 23))));
}

__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
  __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_add_ps(a, _mm_movehl_ps(a, a));
  a = _mm_add_ss(a, _mm_movehdup_ps(a));
  return _mm_cvtss_f32(a);
}

__attribute__((target("avx2,fma"))) inline float hmax(__m256 v) {
  __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_max_ps(a, _mm_movehl_ps(a, a));
  a = _mm_max_ss(a, _mm_movehdup_ps(a));
  return _mm_cvtss_f32(a);
}

// Whether this CPU runs the kernels above (otherwise callers take their scalar paths).
inline bool cpu_supported() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}

}  // namespace bd_avx2

#else

namespace bd_avx2 {
inline bool cpu_supported() { return false; }
}  // namespace bd_avx2

#endif
