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

// The backward of a uniform backward noise needs only which boxes contain a: for K <= 15 the
// thresholds [lo, hi) whose box theta - sigma <= a < theta + sigma holds a, as one byte
// lo << 4 | hi (0xF0 marks NaN). Saving it instead of the input takes a quarter of the memory
// (PyTorch's fake_quantize cachemask does the same for the clipped STE).
constexpr int kCodeMaxK = 15;
constexpr uint8_t kNaNCode = 0xF0;

// A code describes the boxes of at most kCodeMaxK thresholds (ana_code, ana_coded) of a uniform
// backward noise (ana_coded, which is told the noise).
inline void check_code_thresholds(const at::Tensor& thresholds) {
  TORCH_CHECK(thresholds.numel() <= kCodeMaxK, "anacuda: a coded backward needs at most ", kCodeMaxK,
              " thresholds, got ", thresholds.numel());
}
inline void check_coded(c10::string_view noise_b, const at::Tensor& thresholds) {
  TORCH_CHECK(parse_noise(noise_b) == NoiseKind::Uniform, "anacuda: ana_coded needs a uniform backward noise, got '",
              noise_b, "' (call ana)");
  check_code_thresholds(thresholds);
}

template <typename T> struct UniformBoxCode {
  static constexpr bool kRandom = false;
  AnaParams<T> p;
  T mu, sigma;
  bool ok;
  uint64_t seed = 0, stream = 0;

  C10_HOST_DEVICE inline void init() {
    mu = p.mu.get();
    sigma = p.sigma.get();
    ok = valid_noise(mu, sigma);
  }
  C10_HOST_DEVICE inline uint8_t operator()(int64_t i, T x, uint32_t) const {
    const T e = p.eps.at(i);
    const T a = x / e - mu;
    if (!ok || !valid_eps(e) || a != a) return kNaNCode;
    int lo = 0, hi = 0;
    bool found = false;
    if (sigma > T(0)) {
      for (int t = 0; t < p.grid.K; ++t) {
        if (a >= p.grid.theta[t] - sigma && a < p.grid.theta[t] + sigma) {  // as in stair_derivative
          if (!found) lo = t;
          found = true;
          hi = t + 1;
        }
      }
    }
    return static_cast<uint8_t>(lo << 4 | hi);
  }
};

// The codes UniformBoxCode writes: 0 (no box), kNaNCode, or lo << 4 | hi with lo < hi <= K.
// Any other byte (only a direct call of ana_backward_code can pass one) gets a NaN gradient:
// rejecting it would cost a reduction over the codes, on a GPU a synchronisation.
C10_HOST_DEVICE inline bool valid_code(uint8_t code, int K) {
  const int lo = code >> 4, hi = code & 15;
  return code == 0 || code == kNaNCode || (lo < hi && hi <= K);
}

// grad_x from the code: the same sum, in the same order, as stair_derivative.
template <typename T> struct UniformBoxCodeBackward {
  const T* q;
  int K;  // thresholds: levels - 1
  Scalar<T> sigma_arg;
  T sigma;

  C10_HOST_DEVICE inline void init() { sigma = sigma_arg.get(); }
  C10_HOST_DEVICE inline T operator()(int64_t, T g, uint8_t code) const {
    if (!valid_code(code, K) || code == kNaNCode || !(sigma < std::numeric_limits<T>::infinity()))
      return quiet_nan<T>();
    if (!(sigma > T(0))) return g * T(0);
    T d = T(0);
    for (int t = code >> 4; t < (code & 15); ++t) d += (q[t + 1] - q[t]) * T(0.5);
    return g * Standardize<T>(sigma)(d);
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
