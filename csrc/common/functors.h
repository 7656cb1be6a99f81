// The per-element ops as functors, run unchanged by the CUDA kernels (cuda/loops.cuh) and by the
// CPU's functor path (cpu/loops.h, the same loop through common/elementwise.h). init() runs
// once per thread (on the GPU it reads hyper-parameters that live in device memory; an invalid
// one there turns the output into NaN, SPEC §7). operator()(i, x, word) is element i.
#pragma once

#include <limits>

#include "box_code.h"
#include "params.h"

namespace anacuda {

template <typename T> C10_HOST_DEVICE inline T quiet_nan() { return std::numeric_limits<T>::quiet_NaN(); }

// y = eps * g(x / eps), SPEC §4.
template <NoiseKind N, Strategy S, typename T> struct AnaForward {
  static constexpr bool kRandom = S == Strategy::Random;
  AnaParams<T> p;
  bool training;
  // Set by a caller that knows the most likely level is the hard stair's (the CPU's mode_is_hard):
  // the same value, without the walk over the levels' probabilities.
  bool hard = false;
  T mu, sigma;
  bool ok, smooth;
  uint64_t seed, stream;

  C10_HOST_DEVICE inline void init() {
    init_grid(p.grid);
    mu = p.mu.get();
    sigma = p.sigma.get();
    ok = valid_noise(mu, sigma);
    smooth = training && sigma > T(0) && !hard;
    seed = kRandom ? static_cast<uint64_t>(p.seed.get()) : 0;
    stream = kRandom ? static_cast<uint64_t>(p.stream.get()) : 0;
  }
  // x's output at scale e (`word`: its Philox word, random strategy only).
  C10_HOST_DEVICE inline T value(T x, T e, uint32_t word) const {
    if (!ok || !valid_eps(e)) return quiet_nan<T>();
    return e * ana_element<N, S>(p.grid, x / e, mu, sigma, smooth, word);
  }
  C10_HOST_DEVICE inline T operator()(int64_t i, T x, uint32_t word) const { return value(x, p.eps.at(i), word); }
};

// grad_x = grad * g'(x / eps) with the backward noise, SPEC §5.
template <NoiseKind N, typename T> struct AnaBackward {
  static constexpr bool kRandom = false;
  AnaParams<T> p;
  T mu, sigma;
  bool ok;

  C10_HOST_DEVICE inline void init() {
    init_grid(p.grid);
    mu = p.mu.get();
    sigma = p.sigma.get();
    ok = valid_noise(mu, sigma);
  }
  C10_HOST_DEVICE inline T operator()(int64_t i, T g, T x) const {
    const T e = p.eps.at(i);
    if (!ok || !valid_eps(e)) return quiet_nan<T>();
    return g * stair_derivative<N>(p.grid, x / e - mu, sigma);
  }
};

// grad_x = grad for the "identity" backward (SPEC §5: the unclipped STE), everywhere, ±inf
// included; NaN where x / eps is NaN (and for an invalid eps read on the device).
template <typename T> struct IdentityBackward {
  static constexpr bool kRandom = false;
  EpsLayout<T> eps;

  C10_HOST_DEVICE inline void init() {}
  C10_HOST_DEVICE inline T operator()(int64_t i, T g, T x) const {
    // x / eps is NaN exactly where x is, for a valid eps: no division needed.
    return valid_eps(eps.at(i)) ? (x != x ? x : g) : quiet_nan<T>();
  }
};

// The 1-byte code of a uniform backward noise (box_code.h) of x.
template <typename T> struct UniformBoxCode {
  static constexpr bool kRandom = false;
  AnaParams<T> p;  // the backward noise's mu and sigma
  T mu, sigma;
  bool ok;
  uint64_t seed = 0, stream = 0;

  C10_HOST_DEVICE inline void init() {
    mu = p.mu.get();
    sigma = p.sigma.get();
    ok = valid_noise(mu, sigma);
  }
  C10_HOST_DEVICE inline uint8_t code(T x, T e) const {
    const T a = x / e - mu;
    int passed = 0, reached = 0;
    for (int t = 0; t < p.grid.K; ++t) {
      const Box<T> box(p.grid.theta[t], sigma);
      passed += box.passed(a);
      reached += box.reached(a);
    }
    return static_cast<uint8_t>(box_code(!ok || !valid_eps(e) || a != a, passed, reached));
  }
  C10_HOST_DEVICE inline uint8_t operator()(int64_t i, T x, uint32_t) const { return code(x, p.eps.at(i)); }
};

// grad_x from the code.
template <typename T> struct UniformBoxCodeBackward {
  static constexpr bool kRandom = false;
  const T* q;
  int K;  // thresholds: levels - 1
  HostOrDevice<T> sigma_arg;
  T sigma;

  C10_HOST_DEVICE inline void init() { sigma = sigma_arg.get(); }
  C10_HOST_DEVICE inline T operator()(int64_t, T g, uint8_t code) const {
    return g * code_derivative(q, K, code, sigma);
  }
};

// An output and its code, from one read of x.
template <typename T> struct ValueAndCode {
  T value;
  uint8_t code;
};

// _ana_coded: the forward and the backward's code in one pass over x (one read of x and eps).
template <NoiseKind N, Strategy S, typename T> struct AnaCoded {
  static constexpr bool kRandom = S == Strategy::Random;
  AnaForward<N, S, T> forward;
  UniformBoxCode<T> backward_code;
  uint64_t seed, stream;

  C10_HOST_DEVICE inline void init() {
    forward.init();
    backward_code.init();
    seed = forward.seed;
    stream = forward.stream;
  }
  C10_HOST_DEVICE inline ValueAndCode<T> operator()(int64_t i, T x, uint32_t word) const {
    const T e = forward.p.eps.at(i);
    return {forward.value(x, e, word), backward_code.code(x, e)};
  }
};

// y = alpha * eps * level + (1 - alpha) * w for level = Q(w / eps) (NaN for a NaN w), SPEC §6;
// the gradient, (1 - alpha) * grad, needs no kernel of its own.
template <typename T> C10_HOST_DEVICE inline T blend(T w, T e, T level, T alpha) {
  const T q = alpha * e * level;
  return alpha < T(1) ? q + (T(1) - alpha) * w : q;  // at alpha = 1 an infinite w saturates
}

template <typename T> struct AlphaBlend {
  static constexpr bool kRandom = false;
  BlendParams<T> p;
  T alpha;
  bool ok;
  uint64_t seed = 0, stream = 0;

  C10_HOST_DEVICE inline void init() {
    init_grid(p.grid);
    alpha = p.alpha.get();
    ok = alpha >= T(0) && alpha <= T(1);
  }
  C10_HOST_DEVICE inline T operator()(int64_t i, T w, uint32_t) const {
    const T e = p.eps.at(i);
    if (!ok || !valid_eps(e)) return quiet_nan<T>();
    return blend(w, e, hard_stair(p.grid, w / e), alpha);
  }
};

}  // namespace anacuda
