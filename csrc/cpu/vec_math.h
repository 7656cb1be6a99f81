// SIMD for the noise formulas of common/noise.h: Math<V> for ATen's vectorised type (exp, erfc,
// log, log1p as SLEEF under AVX2 and AVX512; float's erfc a polynomial, below), so that the CPU
// loops evaluate the very formulas the scalar path and the CUDA kernels evaluate, Vectorized<T>::size()
// values at a time.
#pragma once

#include "isa_headers.h"

#include <ATen/cpu/vec/vec.h>

#include <type_traits>

namespace anacuda {

// Not always_inline: the formulas that call these are (see noise.h), and only then do these
// meet their caller's instruction set.
template <typename T> struct Math<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  static inline V exp(const V& x) { return x.exp(); }
  static inline V erfc(const V& x) {
    if constexpr (std::is_same_v<T, float>) {
      // Abramowitz & Stegun 7.1.26: erfc(a) = t (a1 + t (a2 + ... + t a5)) exp(-a^2), t = 1 / (1 + p a),
      // a >= 0, within 1.5e-7 of erfc (absolute; a float's ulp at 1 is 1.2e-7). SLEEF's erfcf took
      // a third of a normal-noise step (13 times its expf); this takes a third of that step's
      // time. Only the CPU's SIMD CDF of the normal noise calls it: its sums of level steps need
      // absolute accuracy; the tails' relative accuracy (mode, the scalar and CUDA paths) keeps
      // libm's erfcf.
      const V a = x.abs();
      const V t = V(1.0f) / (V(1.0f) + V(0.3275911f) * a);
      V poly = V(1.061405429f);
      poly = poly * t + V(-1.453152027f);
      poly = poly * t + V(1.421413741f);
      poly = poly * t + V(-0.284496736f);
      poly = poly * t + V(0.254829592f);
      const V e = poly * t * (V(0.0f) - a * a).exp();  // erfc(|x|); NaN stays NaN
      return V::blendv(e, V(2.0f) - e, x < V(0.0f));   // erfc(-a) = 2 - erfc(a)
    } else {
      return x.erfc();
    }
  }
  static inline V log(const V& x) { return x.log(); }
  static inline V log1p(const V& x) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>) {
      // SLEEF's 512-bit log1pf runs ten times slower than its 256-bit one on AMD Zen 4 (so does
      // torch.log1p under AVX512): the two halves through the 256-bit one, the AVX2 build's results.
      const __m512 v = x;
      const __m256 lo = Sleef_log1pf8_u10(_mm512_castps512_ps256(v));
      const __m256 hi = Sleef_log1pf8_u10(_mm512_extractf32x8_ps(v, 1));
      return V(_mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1));
    }
#endif
    return x.log1p();
  }
  static inline V abs(const V& x) { return x.abs(); }
};

namespace CPU_CAPABILITY {

template <typename T> using Vec = at::vec::Vectorized<T>;

// v[j] = f(v[j]) for j < n, Vec<T>::size() values at a time (the tail padded).
template <typename T, typename F> inline void map_vec(T* v, int64_t n, F f) {
  constexpr int64_t W = Vec<T>::size();
  int64_t j = 0;
  for (; j + W <= n; j += W) f(Vec<T>::loadu(v + j)).store(v + j);
  if (j < n) f(Vec<T>::loadu(v + j, static_cast<int>(n - j))).store(v + j, static_cast<int>(n - j));
}

}  // namespace CPU_CAPABILITY
}  // namespace anacuda
