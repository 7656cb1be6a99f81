// CPU path for the smooth noises (normal, logistic) in the expectation forward and in the
// backward: each block of elements gathers the standardised distances v = (a - theta) / sigma
// of the thresholds in its elements' windows into one buffer, evaluates the noise's CDF or
// density over the buffer with SIMD (noise_vec.h), and sums the results back per element in
// threshold order. The same formulas as common/noise.h, which the scalar path and the CUDA
// kernels evaluate one by one.
#pragma once

#include "kernels_deps.h"
#include "noise_vec.h"
#include "small_grid.h"

namespace anacuda {
namespace CPU_CAPABILITY {

constexpr int64_t kSmoothBlock = 512;

// Forward (expectation) when grad == nullptr, else the backward, for normal or logistic noise.
template <NoiseKind N, typename scalar_t, typename T>
void smooth_window(const Grid<T>& grid_, const scalar_t* x, const scalar_t* grad, scalar_t* out, int64_t n,
                   const EpsLayout<T>& eps, T mu, T sigma) {
  Grid<T> g = grid_;
  init_grid(g);
  const bool backward = grad != nullptr;
  const T R = Noise<N, T>::radius() * sigma;
  const Standardize<T> z(sigma);
  at::parallel_for(0, n, kSmallGrain, [&](int64_t begin, int64_t end) {
    T a[kSmoothBlock];
    int64_t lo[kSmoothBlock], hi[kSmoothBlock];
    std::vector<T> v;
    for_each_eps_run(eps, begin, end, [&](int64_t i0, int64_t len, T e) {
      for (int64_t b = 0; b < len; b += kSmoothBlock) {
        const int64_t m = std::min(kSmoothBlock, len - b), i = i0 + b;
        shifted(x + i, m, e, mu, a);
        int64_t total = 0;
        for (int64_t j = 0; j < m; ++j) {
          if (a[j] != a[j]) lo[j] = hi[j] = 0;
          else window(g, a[j], R, lo[j], hi[j]);
          total += hi[j] - lo[j];
        }
        if (static_cast<int64_t>(v.size()) < total) v.resize(total);
        int64_t k = 0;
        for (int64_t j = 0; j < m; ++j)
          for (int64_t t = lo[j]; t < hi[j]; ++t) v[k++] = z(a[j] - g.theta[t]);
        if (backward) map_vec(v.data(), total, [](auto u) { return VecNoise<N, T>::pdf(u); });
        else map_vec(v.data(), total, [](auto u) { return VecNoise<N, T>::cdf(u); });
        k = 0;
        for (int64_t j = 0; j < m; ++j) {
          T acc = backward ? T(0) : g.q[lo[j]];
          for (int64_t t = lo[j]; t < hi[j]; ++t) acc += (g.q[t + 1] - g.q[t]) * v[k++];
          T r;
          if (a[j] != a[j]) r = a[j];
          else if (backward) r = static_cast<T>(grad[i + j]) * z(acc);
          else r = e * acc;
          out[i + j] = static_cast<scalar_t>(r);
        }
      }
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace anacuda
