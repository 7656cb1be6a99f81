// CPU fast path for quantisers with few thresholds (K <= kSmallK): every element meets every
// threshold in branch-free loops over blocks of elements that the compiler vectorises,
// instead of the per-element window walk of common/stair.h (whose data-dependent branches
// dominate on a CPU). Same maths, same noise functions (common/noise.h); used where it is
// exact: the hard stair (eval, sigma = 0, and mode with a compact noise no wider than half
// the smallest gap, where the most likely level is the hard stair's), expectation and
// backward with uniform or triangular noise, and the random strategy.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../common/functors.h"
#include "../common/philox.h"

namespace anacuda {

constexpr int kSmallK = 32;
constexpr int64_t kBlock = 256;
constexpr int64_t kSmallGrain = 32768;

template <typename T> struct SmallGrid {
  int K = 0;
  T theta[kSmallK], dq[kSmallK], q[kSmallK + 1];
  T min_gap;
};

template <typename T> bool make_small_grid(const Grid<T>& g, SmallGrid<T>& s) {
  if (g.K > kSmallK) return false;
  s.K = static_cast<int>(g.K);
  s.min_gap = std::numeric_limits<T>::infinity();
  for (int t = 0; t < s.K; ++t) {
    s.theta[t] = g.theta[t];
    s.dq[t] = g.q[t + 1] - g.q[t];
    if (t > 0) s.min_gap = std::min(s.min_gap, g.theta[t] - g.theta[t - 1]);
  }
  for (int t = 0; t <= s.K; ++t) s.q[t] = g.q[t];
  return true;
}

// Calls f(begin, length, eps) over runs of [begin, end) that share one eps.
template <typename T, typename F> void for_each_eps_run(const EpsLayout<T>& eps, int64_t begin, int64_t end, F&& f) {
  if (eps.ptr == nullptr || eps.channels == 1) {
    f(begin, end - begin, eps.ptr ? eps.ptr[0] : eps.value);
    return;
  }
  for (int64_t i = begin; i < end;) {
    const int64_t run = i / eps.inner;
    const int64_t stop = std::min(end, (run + 1) * eps.inner);
    f(i, stop - i, eps.ptr[run % eps.channels]);
    i = stop;
  }
}

// a[j] = x[j] / e - mu for a block.
template <typename scalar_t, typename T> inline void shifted(const scalar_t* x, int64_t n, T e, T mu, T* a) {
  for (int64_t j = 0; j < n; ++j) a[j] = static_cast<T>(x[j]) / e - mu;
}

// idx[j] = the level of a[j]: counted threshold by threshold.
template <typename T> inline void levels_block(const SmallGrid<T>& s, const T* a, int64_t n, int32_t* idx) {
  for (int64_t j = 0; j < n; ++j) idx[j] = 0;
  for (int t = 0; t < s.K; ++t) {
    const T th = s.theta[t];
    for (int64_t j = 0; j < n; ++j) idx[j] += a[j] >= th ? 1 : 0;
  }
}

// y[j] = e * Q(a[j]) (NaN stays NaN).
template <typename scalar_t, typename T>
inline void hard_block(const SmallGrid<T>& s, const T* a, int64_t n, T e, scalar_t* y) {
  int32_t idx[kBlock];
  levels_block(s, a, n, idx);
  for (int64_t j = 0; j < n; ++j) y[j] = static_cast<scalar_t>(a[j] != a[j] ? a[j] : e * s.q[idx[j]]);
}

enum class SmallForward { Hard, Expectation, Random };

// The standardised noise of elements [begin, end): quantile(r) with r from element i's Philox
// word (the word the CUDA kernel gives element i). The logistic quantile log(r) - log1p(-r)
// runs over the whole range with ATen's vectorised log and log1p.
template <NoiseKind N, typename T> std::vector<T> random_noise(int64_t begin, int64_t end, uint64_t seed, uint64_t stream) {
  const int64_t m = end - begin;
  std::vector<T> r(m);
  for (int64_t j = 0; j < m;) {
    const int64_t k = begin + j;
    const Philox4 blk = philox4x32_10(static_cast<uint64_t>(k) >> 2, stream, seed);
    for (int64_t w = k & 3; w < 4 && j < m; ++w, ++j) r[j] = uniform_open<T>(blk.w[w]);
  }
  if constexpr (N == NoiseKind::Logistic) {
    std::vector<T> l(m);
    const auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
    at::Tensor tr = at::from_blob(r.data(), {m}, opt), tl = at::from_blob(l.data(), {m}, opt);
    at::log_out(tl, tr);
    at::log1p_out(tr, tr.neg_());  // r <- log1p(-r)
    for (int64_t j = 0; j < m; ++j) r[j] = l[j] - r[j];
  } else {
    for (int64_t j = 0; j < m; ++j) r[j] = Noise<N, T>::quantile(r[j]);
  }
  return r;
}

// The forward of [begin, end) on the small-grid path; `kind` chosen by the caller.
template <NoiseKind N, typename scalar_t, typename T>
void small_forward(const SmallGrid<T>& s, SmallForward kind, const scalar_t* x, scalar_t* y, int64_t n,
                   const EpsLayout<T>& eps, T mu, T sigma, uint64_t seed, uint64_t stream) {
  using L = Noise<N, T>;
  const T inv_sigma = T(1) / sigma;
  at::parallel_for(0, n, kSmallGrain, [&](int64_t begin, int64_t end) {
    T a[kBlock], acc[kBlock];
    std::vector<T> nu;
    int64_t nu_begin = begin, nu_end = begin;  // the noise of [nu_begin, nu_end), refilled 4096 at a time
    for_each_eps_run(eps, begin, end, [&](int64_t i0, int64_t len, T e) {
      for (int64_t b = 0; b < len; b += kBlock) {
        const int64_t m = std::min(kBlock, len - b), i = i0 + b;
        shifted(x + i, m, e, mu, a);
        if (kind == SmallForward::Random) {
          for (int64_t j = 0; j < m; ++j) {
            if (i + j >= nu_end) {
              nu_begin = i + j;
              nu_end = std::min(end, nu_begin + 16 * kBlock);
              nu = random_noise<N, T>(nu_begin, nu_end, seed, stream);
            }
            a[j] += sigma * nu[i + j - nu_begin];
          }
        }
        if (kind != SmallForward::Expectation) {
          hard_block(s, a, m, e, y + i);
          continue;
        }
        for (int64_t j = 0; j < m; ++j) acc[j] = s.q[0];
        for (int t = 0; t < s.K; ++t) {
          const T th = s.theta[t], d = s.dq[t];
          for (int64_t j = 0; j < m; ++j) acc[j] += d * L::cdf((a[j] - th) * inv_sigma);
        }
        for (int64_t j = 0; j < m; ++j) y[i + j] = static_cast<scalar_t>(a[j] != a[j] ? a[j] : e * acc[j]);
      }
    });
  });
}

// grad_x = g * sum_t dq_t f_sigma(a - theta_t) on the small-grid path (uniform or triangular).
template <NoiseKind N, typename scalar_t, typename T>
void small_backward(const SmallGrid<T>& s, const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t n,
                    const EpsLayout<T>& eps, T mu, T sigma) {
  using L = Noise<N, T>;
  const T inv_sigma = T(1) / sigma;
  at::parallel_for(0, n, kSmallGrain, [&](int64_t begin, int64_t end) {
    T a[kBlock], d[kBlock];
    for_each_eps_run(eps, begin, end, [&](int64_t i0, int64_t len, T e) {
      for (int64_t b = 0; b < len; b += kBlock) {
        const int64_t m = std::min(kBlock, len - b), i = i0 + b;
        shifted(x + i, m, e, mu, a);
        for (int64_t j = 0; j < m; ++j) d[j] = T(0);
        for (int t = 0; t < s.K; ++t) {
          const T th = s.theta[t], w = s.dq[t];
          if constexpr (N == NoiseKind::Uniform) {
            const T lo = th - sigma, hi = th + sigma, h = w * T(0.5);  // the box by its edges
            for (int64_t j = 0; j < m; ++j) d[j] += (a[j] >= lo && a[j] < hi) ? h : T(0);
          } else {
            for (int64_t j = 0; j < m; ++j) d[j] += w * L::pdf((a[j] - th) * inv_sigma);
          }
        }
        for (int64_t j = 0; j < m; ++j)
          gx[i + j] = static_cast<scalar_t>(a[j] != a[j] ? a[j] : static_cast<T>(g[i + j]) * (d[j] * inv_sigma));
      }
    });
  });
}

// The 1-byte code of a uniform backward noise (functors.h UniformBoxCode), branch-free: the boxes
// holding a are [lo, hi) with lo = #{t: a >= theta_t + sigma}, hi = #{t: theta_t - sigma <= a}.
template <typename scalar_t, typename T>
void small_code(const SmallGrid<T>& s, const scalar_t* x, uint8_t* code, int64_t n, const EpsLayout<T>& eps, T mu,
                T sigma) {
  at::parallel_for(0, n, kSmallGrain, [&](int64_t begin, int64_t end) {
    T a[kBlock];
    int32_t lo[kBlock], hi[kBlock];
    for_each_eps_run(eps, begin, end, [&](int64_t i0, int64_t len, T e) {
      for (int64_t b = 0; b < len; b += kBlock) {
        const int64_t m = std::min(kBlock, len - b), i = i0 + b;
        shifted(x + i, m, e, mu, a);
        for (int64_t j = 0; j < m; ++j) lo[j] = hi[j] = 0;
        for (int t = 0; t < s.K; ++t) {
          const T below = s.theta[t] + sigma, above = s.theta[t] - sigma;
          for (int64_t j = 0; j < m; ++j) {
            lo[j] += a[j] >= below ? 1 : 0;
            hi[j] += a[j] >= above ? 1 : 0;
          }
        }
        for (int64_t j = 0; j < m; ++j) {
          const bool any = sigma > T(0) && hi[j] > lo[j];
          code[i + j] = a[j] != a[j] ? kNaNCode : static_cast<uint8_t>(any ? (lo[j] << 4 | hi[j]) : 0);
        }
      }
    });
  });
}

// grad_x from the code through a 256-entry table of the box sums, each summed in the order of
// UniformBoxCodeBackward (so the two agree bit for bit).
template <typename scalar_t, typename T>
void small_backward_code(const T* q, int K, const scalar_t* g, const uint8_t* code, scalar_t* gx, int64_t n,
                         T sigma) {
  T table[256];
  for (int c = 0; c < 256; ++c) {
    T d = T(0);
    const int hi = (c & 15) < K ? (c & 15) : K;
    for (int t = c >> 4; t < hi; ++t) d += (q[t + 1] - q[t]) * T(0.5);
    table[c] = d * (T(1) / sigma);
  }
  table[kNaNCode] = std::numeric_limits<T>::quiet_NaN();
  at::parallel_for(0, n, kSmallGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) gx[i] = static_cast<scalar_t>(static_cast<T>(g[i]) * table[code[i]]);
  });
}

// Alpha-blending on the small-grid path: the same expression as common/functors.h AlphaBlend.
template <typename scalar_t, typename T>
void small_alpha_blend(const SmallGrid<T>& s, const scalar_t* w, scalar_t* y, int64_t n, const EpsLayout<T>& eps,
                       T alpha) {
  at::parallel_for(0, n, kSmallGrain, [&](int64_t begin, int64_t end) {
    T a[kBlock];
    int32_t idx[kBlock];
    for_each_eps_run(eps, begin, end, [&](int64_t i0, int64_t len, T e) {
      for (int64_t b = 0; b < len; b += kBlock) {
        const int64_t m = std::min(kBlock, len - b), i = i0 + b;
        shifted(w + i, m, e, T(0), a);
        levels_block(s, a, m, idx);
        for (int64_t j = 0; j < m; ++j) {
          const T q = a[j] != a[j] ? a[j] : alpha * e * s.q[idx[j]];
          y[i + j] = static_cast<scalar_t>(alpha < T(1) ? q + (T(1) - alpha) * static_cast<T>(w[i + j]) : q);
        }
      }
    });
  });
}

}  // namespace anacuda
