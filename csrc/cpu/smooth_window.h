// CPU fast path for the smooth noises (normal, logistic) on many thresholds, in the expectation
// forward and in the backward: each block of elements gathers the standardised distances
// v = (a - theta) / sigma of the thresholds in its elements' windows (common/stair.h) into one
// buffer, evaluates the noise's CDF or density (common/noise.h) over the buffer as SIMD vectors
// (vec_math.h), and sums the results back per element in threshold order.
#pragma once

#include "all_thresholds.h"
#include "isa_headers.h"
#include "vec_math.h"

namespace anacuda {
namespace CPU_CAPABILITY {

constexpr int64_t kWindowBlock = 512;

// Forward (expectation) when grad == nullptr, else the backward, for normal or logistic noise.
template <NoiseKind N, typename scalar_t, typename T>
void smooth_window(const Grid<T>& grid_, const scalar_t* x, const scalar_t* grad, scalar_t* out, int64_t n,
                   const EpsLayout<T>& eps, T mu, T sigma) {
  Grid<T> g = grid_;
  init_grid(g);
  const bool backward = grad != nullptr;
  const T R = Noise<N, T>::radius() * sigma;
  const Standardize<T> z(sigma);
  at::parallel_for(0, n, kBlockGrain, [&](int64_t begin, int64_t end) {
    T a[kWindowBlock];
    int64_t lo[kWindowBlock], hi[kWindowBlock];
    std::vector<T> v;
    for_each_eps_block<kWindowBlock>(eps, begin, end, [&](int64_t i, int64_t m, auto e) {
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
      if (backward) map_vec(v.data(), total, [](const auto& u) { return Noise<N, T>::pdf(u); });
      else map_vec(v.data(), total, [](const auto& u) { return Noise<N, T>::cdf(u); });
      k = 0;
      for (int64_t j = 0; j < m; ++j) {
        T acc = backward ? T(0) : g.q[lo[j]];
        for (int64_t t = lo[j]; t < hi[j]; ++t) acc += level_step(g.q, t) * v[k++];
        T r;
        if (a[j] != a[j]) r = a[j];
        else if (backward) r = static_cast<T>(grad[i + j]) * z(acc);
        else r = e[j] * acc;
        out[i + j] = static_cast<scalar_t>(r);
      }
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace anacuda
