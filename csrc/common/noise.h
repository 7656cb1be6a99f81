// The four noise laws of SPEC §3, in standardised form (v = z / sigma).
//
// Each law provides, for the compute type T (float or double):
//   cdf(v)     F(v)
//   centered(v) F(v) - 1/2, accurate near v = 0 (so a tiny |v| keeps its sign)
//   pdf(v)     the density of the standardised law (divide by sigma for f_sigma)
//   quantile(r) the inverse CDF, for r in (0, 1): the sampler of the random strategy
//   radius()   |v| beyond which F is 0 or 1 and f is 0 to the resolution of T;
//              exact (1) for the compactly supported laws.
// All laws are symmetric: F(-v) = 1 - F(v). The mode strategy relies on it.
// This header is the only place where the maths of a noise lives: the CPU loops
// and the CUDA kernels both compile it.
#pragma once

#include <c10/macros/Macros.h>
#include <cstdint>
#include <cmath>
#include <limits>
#include <type_traits>

#if !defined(__CUDA_ARCH__)
#include <ATen/native/Math.h>  // calc_erfinv: the same routine torch.erfinv uses on CPU
#endif

namespace anacuda {

enum class NoiseKind : int { Uniform = 0, Triangular = 1, Normal = 2, Logistic = 3 };
enum class Strategy : int { Expectation = 0, Mode = 1, Random = 2 };

namespace detail {
template <typename T> C10_HOST_DEVICE inline T erfc_(T x) { return ::erfc(x); }
template <> C10_HOST_DEVICE inline float erfc_(float x) { return ::erfcf(x); }
template <typename T> C10_HOST_DEVICE inline T exp_(T x) { return ::exp(x); }
template <> C10_HOST_DEVICE inline float exp_(float x) { return ::expf(x); }
template <typename T> C10_HOST_DEVICE inline T log_(T x) { return ::log(x); }
template <> C10_HOST_DEVICE inline float log_(float x) { return ::logf(x); }
template <typename T> C10_HOST_DEVICE inline T log1p_(T x) { return ::log1p(x); }
template <> C10_HOST_DEVICE inline float log1p_(float x) { return ::log1pf(x); }
template <typename T> C10_HOST_DEVICE inline T sqrt_(T x) { return ::sqrt(x); }
template <typename T> C10_HOST_DEVICE inline T erf_(T x) { return ::erf(x); }
template <> C10_HOST_DEVICE inline float erf_(float x) { return ::erff(x); }
template <typename T> C10_HOST_DEVICE inline T tanh_(T x) { return ::tanh(x); }
template <> C10_HOST_DEVICE inline float tanh_(float x) { return ::tanhf(x); }
template <> C10_HOST_DEVICE inline float sqrt_(float x) { return ::sqrtf(x); }
template <typename T> C10_HOST_DEVICE inline T erfinv_(T x) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, float>) return ::erfinvf(x); else return ::erfinv(x);
#else
  return calc_erfinv(x);
#endif
}
}  // namespace detail

template <NoiseKind N, typename T> struct Noise;

// z / sigma, the standardised distance: a multiply by 1 / sigma (computed once) while that is
// finite, else the division itself (a subnormal sigma in float), so that 0 / sigma stays 0
// instead of 0 * inf = NaN.
template <typename T> struct Standardize {
  T sigma, inv;
  C10_HOST_DEVICE inline explicit Standardize(T s) : sigma(s), inv(T(1) / s) {}
  C10_HOST_DEVICE inline T operator()(T z) const {
    return inv < std::numeric_limits<T>::infinity() ? z * inv : z / sigma;
  }
};

template <typename T> struct Noise<NoiseKind::Uniform, T> {
  static C10_HOST_DEVICE inline T cdf(T v) {
    T p = (v + T(1)) * T(0.5);
    return p < T(0) ? T(0) : (p > T(1) ? T(1) : p);
  }
  static C10_HOST_DEVICE inline T centered(T v) { return (v < T(-1) ? T(-1) : (v > T(1) ? T(1) : v)) * T(0.5); }
  // Half-open support [-1, 1): neighbouring boxes tile without overlap (SPEC §3).
  static C10_HOST_DEVICE inline T pdf(T v) { return (v >= T(-1) && v < T(1)) ? T(0.5) : T(0); }
  static C10_HOST_DEVICE inline T quantile(T r) { return T(2) * r - T(1); }
  static C10_HOST_DEVICE constexpr T radius() { return T(1); }
};

template <typename T> struct Noise<NoiseKind::Triangular, T> {
  static C10_HOST_DEVICE inline T cdf(T v) {
    if (v <= T(-1)) return T(0);
    if (v >= T(1)) return T(1);
    T a = v < T(0) ? -v : v;
    return (T(1) + v * (T(2) - a)) * T(0.5);
  }
  static C10_HOST_DEVICE inline T centered(T v) {
    if (v <= T(-1)) return T(-0.5);
    if (v >= T(1)) return T(0.5);
    return v * (T(2) - (v < T(0) ? -v : v)) * T(0.5);
  }
  static C10_HOST_DEVICE inline T pdf(T v) {
    T a = v < T(0) ? -v : v;
    return a <= T(1) ? T(1) - a : T(0);
  }
  static C10_HOST_DEVICE inline T quantile(T r) {
    return r < T(0.5) ? detail::sqrt_(T(2) * r) - T(1) : T(1) - detail::sqrt_(T(2) * (T(1) - r));
  }
  static C10_HOST_DEVICE constexpr T radius() { return T(1); }
};

template <typename T> struct Noise<NoiseKind::Normal, T> {
  // erfc keeps the lower tail accurate (no 1 - small cancellation).
  static C10_HOST_DEVICE inline T cdf(T v) {
    return T(0.5) * detail::erfc_(-v * T(0.70710678118654752440));
  }
  static C10_HOST_DEVICE inline T centered(T v) { return T(0.5) * detail::erf_(v * T(0.70710678118654752440)); }
  static C10_HOST_DEVICE inline T pdf(T v) {
    return T(0.39894228040143267794) * detail::exp_(T(-0.5) * v * v);
  }
  static C10_HOST_DEVICE inline T quantile(T r) {
    return T(1.41421356237309504880) * detail::erfinv_(T(2) * r - T(1));
  }
  // Phi(-6) = 1e-9, Phi(-9) = 1e-19: below the resolution of float / double.
  static C10_HOST_DEVICE constexpr T radius() { return std::is_same_v<T, float> ? T(6) : T(9); }
};

template <typename T> struct Noise<NoiseKind::Logistic, T> {
  static C10_HOST_DEVICE inline T cdf(T v) { return T(1) / (T(1) + detail::exp_(-v)); }
  static C10_HOST_DEVICE inline T centered(T v) { return T(0.5) * detail::tanh_(T(0.5) * v); }
  // e^{-|v|} / (1 + e^{-|v|})^2 = F(1 - F), without overflow for large |v|.
  static C10_HOST_DEVICE inline T pdf(T v) {
    T e = detail::exp_(-(v < T(0) ? -v : v));
    T d = T(1) + e;
    return e / (d * d);
  }
  static C10_HOST_DEVICE inline T quantile(T r) {
    return detail::log_(r) - detail::log1p_(-r);
  }
  // e^{-20} = 2e-9, e^{-40} = 4e-18.
  static C10_HOST_DEVICE constexpr T radius() { return std::is_same_v<T, float> ? T(20) : T(40); }
};

}  // namespace anacuda
