// A learned scale (SPEC §8, docs/semantics.md): the backward's per-element terms and their
// deterministic reduction to eps's shape, shared by the CUDA kernels (cuda/learned_scale.cu) and
// the CPU (cpu/learned_scale.cpp), which runs the very same loop structure.
//
// With y = eps * g(u), u = x / eps: grad_x = grad * g'_b(u), and the gradient of eps gathers
// grad * (g(u) - u * g'_b(u)) over the elements that share each value of eps. g is recomputed from
// x by the forward's functor (for the random strategy with the same (seed, stream) and element
// index, so it is the forward's sample). At +-inf, g'_b = 0 and the term is the saturated level.
#pragma once

#include "elementwise.h"
#include "functors.h"

namespace anacuda {

// One element's two results: grad_x and its share of eps's gradient.
template <typename T> struct EpsGrad {
  T gx, ge;
};

// The stair's derivative with the backward noise chosen at run time (one branch, the same for
// every element: the forward noise is a template parameter already).
template <typename T> C10_HOST_DEVICE inline T stair_derivative_of(NoiseKind n, const Grid<T>& g, T a, T sigma) {
  switch (n) {
    case NoiseKind::Uniform: return stair_derivative<NoiseKind::Uniform>(g, a, sigma);
    case NoiseKind::Triangular: return stair_derivative<NoiseKind::Triangular>(g, a, sigma);
    case NoiseKind::Normal: return stair_derivative<NoiseKind::Normal>(g, a, sigma);
    default: return stair_derivative<NoiseKind::Logistic>(g, a, sigma);
  }
}

// ANA with a learned eps: the forward functor (its noise, strategy, seed) and the backward noise.
template <NoiseKind N, Strategy S, typename T> struct AnaEpsGrad {
  static constexpr bool kRandom = S == Strategy::Random;
  AnaForward<N, S, T> forward;
  AnaParams<T> pb;  // the backward noise's mu and sigma (grid and eps: the forward's)
  NoiseKind noise_b;
  T mu_b, sigma_b;
  bool ok_b;
  uint64_t seed, stream;

  C10_HOST_DEVICE inline void init() {
    forward.init();
    mu_b = pb.mu.get();
    sigma_b = pb.sigma.get();
    ok_b = valid_noise(mu_b, sigma_b);
    seed = forward.seed;
    stream = forward.stream;
  }
  C10_HOST_DEVICE inline EpsGrad<T> operator()(int64_t i, T g, T x, uint32_t word) const {
    const T e = forward.p.eps.at(i);
    if (!forward.ok || !ok_b || !valid_eps(e)) return {quiet_nan<T>(), quiet_nan<T>()};
    const T u = x / e;
    const T level = ana_element<N, S>(forward.p.grid, u, forward.mu, forward.sigma, forward.smooth, word);
    const T d = stair_derivative_of(noise_b, forward.p.grid, u - mu_b, sigma_b);
    const T inf = std::numeric_limits<T>::infinity();
    const T term = (u == inf || u == -inf) ? level : level - u * d;  // never inf * 0
    return {g * d, g * term};
  }
};

// Alpha-blending with a learned eps (SPEC §6, §8): d y / d eps = alpha * Q(u); grad_x, (1 - alpha)
// * grad, is composed in anacuda/ops.py.
template <typename T> struct BlendEpsGrad {
  static constexpr bool kRandom = false;
  AlphaBlend<T> blend;  // the forward functor: its parameters and their checks
  uint64_t seed = 0, stream = 0;

  C10_HOST_DEVICE inline void init() { blend.init(); }
  C10_HOST_DEVICE inline EpsGrad<T> operator()(int64_t i, T g, T w, uint32_t) const {
    const T e = blend.p.eps.at(i), alpha = blend.alpha;
    if (!blend.ok || !valid_eps(e)) return {quiet_nan<T>(), quiet_nan<T>()};
    return {g * (T(1) - alpha), g * alpha * hard_stair(blend.p.grid, w / e)};
  }
};

// The reduction of the terms to eps's values: element i has channel c = (i / inner) % channels
// (EpsLayout); channel c's elements, j = o * inner + k for o < outer, k < inner, are element
// (o * channels + c) * inner + k. Each channel's m = outer * inner elements are cut into pieces of
// kPiece, fixed whatever the device or the thread count: task (c, p) sums piece p of channel c
// over kLanes lanes (lane l takes the piece's elements l, l + kLanes, ... in order, as thread l of
// a CUDA block does), then the lanes pairwise (tree_sum), into partials[c * pieces + p]. A second
// pass sums each channel's partials the same way. No atomics: the same bits for any thread count.
constexpr int kLanes = 256;
constexpr int kPerLane = 16;
constexpr int64_t kPiece = static_cast<int64_t>(kLanes) * kPerLane;
static_assert((kLanes & (kLanes - 1)) == 0, "the lanes' tree halves them");

struct EpsReduction {
  int64_t outer = 1, channels = 1, inner = 1;
  C10_HOST_DEVICE inline int64_t per_channel() const { return outer * inner; }
  C10_HOST_DEVICE inline int64_t pieces() const { return (per_channel() + kPiece - 1) / kPiece; }
  C10_HOST_DEVICE inline int64_t tasks() const { return channels * pieces(); }
  // The index of channel c's element j.
  C10_HOST_DEVICE inline int64_t element(int64_t c, int64_t j) const {
    if (inner == 1) return j * channels + c;
    const int64_t o = j / inner;
    return (o * channels + c) * inner + (j - o * inner);
  }
};

// a[0] = a[0] + ... + a[kLanes - 1], pairwise: the order of a CUDA block's shared-memory tree.
template <typename T> inline void tree_sum(T* a) {
  for (int s = kLanes / 2; s > 0; s >>= 1)
    for (int l = 0; l < s; ++l) a[l] += a[l + s];
}

}  // namespace anacuda
