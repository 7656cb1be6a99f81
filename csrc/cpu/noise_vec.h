// The smooth noise laws of common/noise.h (the same formulas) over ATen's vectorised type, for
// the CPU loops: exp, erfc, log and log1p run as SIMD (SLEEF under AVX2) instead of one libm
// call per value.
#pragma once

#include "kernels_deps.h"

#include <ATen/cpu/vec/vec.h>

namespace anacuda {
namespace CPU_CAPABILITY {

template <typename T> using Vec = at::vec::Vectorized<T>;

// v[j] = f(v[j]) for j < n, Vec<T>::size() values at a time (the tail padded).
template <typename T, typename F> inline void map_vec(T* v, int64_t n, F f) {
  constexpr int64_t W = Vec<T>::size();
  int64_t j = 0;
  for (; j + W <= n; j += W) f(Vec<T>::loadu(v + j)).store(v + j);
  if (j < n) f(Vec<T>::loadu(v + j, static_cast<int>(n - j))).store(v + j, static_cast<int>(n - j));
}

template <NoiseKind N, typename T> struct VecNoise;

template <typename T> struct VecNoise<NoiseKind::Normal, T> {
  static Vec<T> cdf(Vec<T> v) { return Vec<T>(T(0.5)) * (v * Vec<T>(T(-0.70710678118654752440))).erfc(); }
  static Vec<T> pdf(Vec<T> v) { return Vec<T>(T(0.39894228040143267794)) * (Vec<T>(T(-0.5)) * v * v).exp(); }
};

template <typename T> struct VecNoise<NoiseKind::Logistic, T> {
  static Vec<T> cdf(Vec<T> v) { return Vec<T>(T(1)) / (Vec<T>(T(1)) + v.neg().exp()); }
  static Vec<T> pdf(Vec<T> v) {
    const Vec<T> e = v.abs().neg().exp(), d = Vec<T>(T(1)) + e;
    return e / (d * d);
  }
  static Vec<T> quantile(Vec<T> r) { return r.log() - r.neg().log1p(); }
};

}  // namespace CPU_CAPABILITY
}  // namespace anacuda
