// SIMD for the noise formulas of common/noise.h: Math<V> for ATen's vectorised type (exp, erfc,
// log, log1p as SLEEF under AVX2), so that the CPU loops evaluate the very formulas the scalar
// path and the CUDA kernels evaluate, Vectorized<T>::size() values at a time.
#pragma once

#include "isa_headers.h"

#include <ATen/cpu/vec/vec.h>

namespace anacuda {

// Not always_inline: the formulas that call these are (see noise.h), and only then do these
// meet their caller's instruction set.
template <typename T> struct Math<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  static inline V exp(const V& x) { return x.exp(); }
  static inline V erfc(const V& x) { return x.erfc(); }
  static inline V log(const V& x) { return x.log(); }
  static inline V log1p(const V& x) { return x.log1p(); }
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
