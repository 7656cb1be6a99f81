// CPU path for the smooth noises (normal, logistic) in the expectation forward and in the
// backward: each block of elements gathers the standardised distances v = (a - theta) / sigma
// of the thresholds in its elements' windows into one buffer, evaluates the noise's CDF or
// density over the whole buffer with ATen's vectorised kernels (erfc, sigmoid, exp: SIMD on
// every CPU that torch supports), and sums the results back per element. The same formulas
// as common/noise.h, which the scalar path and the CUDA kernels evaluate one by one.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../common/args.h"
#include "small_grid.h"

namespace anacuda {

constexpr int64_t kBatchBlock = 2048;

// In place over v: F(v) (forward) or the standardised density f(v) (backward).
template <NoiseKind N, typename T> void noise_batch(std::vector<T>& v, int64_t k, bool density) {
  if (k == 0) return;
  at::Tensor t = at::from_blob(v.data(), {k}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  if constexpr (N == NoiseKind::Normal) {
    if (!density) {  // 0.5 * erfc(-v / sqrt(2))
      t.mul_(-0.70710678118654752440);
      at::special_erfc_out(t, t);
      t.mul_(0.5);
    } else {  // exp(-v^2 / 2) / sqrt(2 pi)
      t.mul_(t).mul_(-0.5);
      at::exp_out(t, t);
      t.mul_(0.39894228040143267794);
    }
  } else {
    static_assert(N == NoiseKind::Logistic, "batched path: normal or logistic noise");
    at::sigmoid_out(t, t);
    if (density) t.mul_(1 - t);  // F (1 - F)
  }
}

// Forward (expectation) when grad == nullptr, else the backward, for normal or logistic noise.
template <NoiseKind N, typename scalar_t, typename T>
void batched_window(const Grid<T>& grid_, const scalar_t* grad, const scalar_t* x, scalar_t* out, int64_t n,
                    const EpsLayout<T>& eps, T mu, T sigma) {
  Grid<T> g = grid_;
  init_grid(g);
  const bool backward = grad != nullptr;
  const T R = Noise<N, T>::radius() * sigma, inv_sigma = T(1) / sigma;
  at::parallel_for(0, n, kSmallGrain, [&](int64_t begin, int64_t end) {
    T a[kBatchBlock];
    int64_t lo[kBatchBlock], hi[kBatchBlock];
    std::vector<T> v;
    for_each_eps_run(eps, begin, end, [&](int64_t i0, int64_t len, T e) {
      for (int64_t b = 0; b < len; b += kBatchBlock) {
        const int64_t m = std::min(kBatchBlock, len - b), i = i0 + b;
        shifted(x + i, m, e, mu, a);
        v.clear();
        for (int64_t j = 0; j < m; ++j) {
          if (a[j] != a[j]) {
            lo[j] = hi[j] = 0;
            continue;
          }
          window(g, a[j], R, lo[j], hi[j]);
          for (int64_t t = lo[j]; t < hi[j]; ++t) v.push_back((a[j] - g.theta[t]) * inv_sigma);
        }
        noise_batch<N>(v, static_cast<int64_t>(v.size()), backward);
        int64_t k = 0;
        for (int64_t j = 0; j < m; ++j) {
          T acc = backward ? T(0) : g.q[lo[j]];
          for (int64_t t = lo[j]; t < hi[j]; ++t) acc += (g.q[t + 1] - g.q[t]) * v[k++];
          T r;
          if (a[j] != a[j]) r = a[j];
          else if (backward) r = static_cast<T>(grad[i + j]) * (acc * inv_sigma);
          else r = e * acc;
          out[i + j] = static_cast<scalar_t>(r);
        }
      }
    });
  });
}

}  // namespace anacuda
