// The four noise laws of SPEC §3 (docs/semantics.md), in standardised form (v = z / sigma).
//
// Each law provides, for the compute type T (float or double):
//   cdf(v)      F(v)
//   centered(v) F(v) - 1/2, accurate near v = 0 (so a tiny |v| keeps its sign)
//   pdf(v)      the density of the standardised law (divide by sigma for f_sigma)
//   quantile(r) the inverse CDF, for r in (0, 1): the sampler of the random strategy
//   radius()    |v| beyond which F is 0 or 1 and f is 0 to the resolution of T;
//               exact (1) for the compactly supported laws.
// All laws are symmetric: F(-v) = 1 - F(v). The mode strategy relies on it.
//
// Every formula is written once, here. The smooth laws' cdf, pdf and quantile are generic over
// the value type V: T itself (the CUDA kernels and the CPU's scalar loops) or a SIMD vector of T
// (cpu/vec_math.h gives Math<V> for at::vec::Vectorized). The compact laws' branchy formulas
// are scalar only: the CPU loops that call them vectorise as they are.
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

enum class NoiseKind : int { Uniform = 0, Triangular = 1, Normal = 2, Logistic = 3,
  // The "identity" backward of SPEC §5 (the unclipped STE): not a law, so no Noise<> below; it is
  // valid only as a backward noise and never reaches dispatch_noise (IdentityBackward, functors.h).
  Identity = 4 };
enum class Strategy : int { Expectation = 0, Mode = 1, Random = 2 };

// The elementary functions the formulas call, for a value type V: float and double here (libm on
// the host, CUDA's maths on the device), SIMD vectors in cpu/vec_math.h.
template <typename V> struct Math;

template <> struct Math<float> {
  static C10_HOST_DEVICE float exp(float x) { return ::expf(x); }
  static C10_HOST_DEVICE float erf(float x) { return ::erff(x); }
  static C10_HOST_DEVICE float erfc(float x) { return ::erfcf(x); }
  static C10_HOST_DEVICE float log(float x) { return ::logf(x); }
  static C10_HOST_DEVICE float log1p(float x) { return ::log1pf(x); }
  static C10_HOST_DEVICE float sqrt(float x) { return ::sqrtf(x); }
  static C10_HOST_DEVICE float tanh(float x) { return ::tanhf(x); }
  static C10_HOST_DEVICE float abs(float x) { return x < 0.f ? -x : x; }
  static C10_HOST_DEVICE float erfinv(float x) {
#if defined(__CUDA_ARCH__)
    return ::erfinvf(x);
#else
    return calc_erfinv(x);
#endif
  }
};

template <> struct Math<double> {
  static C10_HOST_DEVICE double exp(double x) { return ::exp(x); }
  static C10_HOST_DEVICE double erf(double x) { return ::erf(x); }
  static C10_HOST_DEVICE double erfc(double x) { return ::erfc(x); }
  static C10_HOST_DEVICE double log(double x) { return ::log(x); }
  static C10_HOST_DEVICE double log1p(double x) { return ::log1p(x); }
  static C10_HOST_DEVICE double sqrt(double x) { return ::sqrt(x); }
  static C10_HOST_DEVICE double tanh(double x) { return ::tanh(x); }
  static C10_HOST_DEVICE double abs(double x) { return x < 0. ? -x : x; }
  static C10_HOST_DEVICE double erfinv(double x) {
#if defined(__CUDA_ARCH__)
    return ::erfinv(x);
#else
    return calc_erfinv(x);
#endif
  }
};

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
    return r < T(0.5) ? Math<T>::sqrt(T(2) * r) - T(1) : T(1) - Math<T>::sqrt(T(2) * (T(1) - r));
  }
  static C10_HOST_DEVICE constexpr T radius() { return T(1); }
};

// The generic formulas are always inlined: a SIMD instantiation then compiles in its caller's
// instruction set (cpu/isa_avx2.cpp includes this header ahead of its target pragma).
template <typename T> struct Noise<NoiseKind::Normal, T> {
  // erfc keeps the lower tail accurate (no 1 - small cancellation).
  template <typename V> static C10_HOST_DEVICE C10_ALWAYS_INLINE V cdf(const V& v) {
    return V(T(0.5)) * Math<V>::erfc(-v * V(T(0.70710678118654752440)));
  }
  static C10_HOST_DEVICE inline T centered(T v) { return T(0.5) * Math<T>::erf(v * T(0.70710678118654752440)); }
  template <typename V> static C10_HOST_DEVICE C10_ALWAYS_INLINE V pdf(const V& v) {
    return V(T(0.39894228040143267794)) * Math<V>::exp(V(T(-0.5)) * v * v);
  }
  static C10_HOST_DEVICE inline T quantile(T r) {
    return T(1.41421356237309504880) * Math<T>::erfinv(T(2) * r - T(1));
  }
  // Phi(-6) = 1e-9, Phi(-9) = 1e-19: below the resolution of float / double.
  static C10_HOST_DEVICE constexpr T radius() { return std::is_same_v<T, float> ? T(6) : T(9); }
};

template <typename T> struct Noise<NoiseKind::Logistic, T> {
  template <typename V> static C10_HOST_DEVICE C10_ALWAYS_INLINE V cdf(const V& v) {
    return V(T(1)) / (V(T(1)) + Math<V>::exp(-v));
  }
  static C10_HOST_DEVICE inline T centered(T v) { return T(0.5) * Math<T>::tanh(T(0.5) * v); }
  // e^{-|v|} / (1 + e^{-|v|})^2 = F(1 - F), without overflow for large |v|.
  template <typename V> static C10_HOST_DEVICE C10_ALWAYS_INLINE V pdf(const V& v) {
    const V e = Math<V>::exp(-Math<V>::abs(v));
    const V d = V(T(1)) + e;
    return e / (d * d);
  }
  template <typename V> static C10_HOST_DEVICE C10_ALWAYS_INLINE V quantile(const V& r) {
    return Math<V>::log(r) - Math<V>::log1p(-r);
  }
  // e^{-20} = 2e-9, e^{-40} = 4e-18.
  static C10_HOST_DEVICE constexpr T radius() { return std::is_same_v<T, float> ? T(20) : T(40); }
};

}  // namespace anacuda
