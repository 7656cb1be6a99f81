// The per-element ops as functors, run unchanged by the CPU loops (cpu/loops.h) and the CUDA
// kernels (cuda/loops.cuh). init() runs once per thread (on the GPU it reads hyper-parameters
// that live in device memory; an invalid one there turns the output into NaN, SPEC §7).
#pragma once

#include <limits>

#include "args.h"

namespace anacuda {

template <typename T> C10_HOST_DEVICE inline T quiet_nan() { return std::numeric_limits<T>::quiet_NaN(); }

// y = eps * g(x / eps), SPEC §4.
template <NoiseKind N, Strategy S, typename T> struct AnaForward {
  static constexpr bool kRandom = S == Strategy::Random;
  AnaParams<T> p;
  bool training;
  T mu, sigma;
  bool ok, smooth;
  uint64_t seed, stream;

  C10_HOST_DEVICE inline void init() {
    init_grid(p.grid);
    mu = p.mu.get();
    sigma = p.sigma.get();
    ok = valid_noise(mu, sigma);
    smooth = training && sigma > T(0);
    seed = kRandom ? static_cast<uint64_t>(p.seed.get()) : 0;
    stream = kRandom ? static_cast<uint64_t>(p.stream.get()) : 0;
  }
  C10_HOST_DEVICE inline T operator()(int64_t i, T x, uint32_t word) const {
    const T e = p.eps.at(i);
    if (!ok || !valid_eps(e)) return quiet_nan<T>();
    return e * ana_element<N, S>(p.grid, x / e, mu, sigma, smooth, word);
  }
};

// grad_x = grad * g'(x / eps) with the backward noise, SPEC §5.
template <NoiseKind N, typename T> struct AnaBackward {
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

// y = alpha * eps * Q(w / eps) + (1 - alpha) * w, SPEC §6 (the gradient, (1 - alpha) * grad,
// needs no kernel of its own).
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
    const T q = alpha * e * hard_stair(p.grid, w / e);
    return alpha < T(1) ? q + (T(1) - alpha) * w : q;  // at alpha = 1 an infinite w saturates
  }
};

}  // namespace anacuda
