// CPU fast path for quantisers with few thresholds (K <= kSmallK): every element meets every
// threshold in branch-free loops over blocks of elements that the compiler vectorises,
// instead of the per-element window walk of common/stair.h (whose data-dependent branches
// dominate on a CPU). Same maths, same noise formulas (common/noise.h, noise_vec.h); used
// where it is exact: the hard stair (eval, sigma = 0, and mode with a compact noise no wider
// than half the smallest gap, where the most likely level is the hard stair's), expectation
// and backward with every noise, the random strategy, the 1-byte code and alpha-blending.
#pragma once

#include "kernels_deps.h"
#include "noise_vec.h"

namespace anacuda {
namespace CPU_CAPABILITY {

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

// a[j] = x[j] / e - mu for a block. A power of two e (eps = 1 above all) multiplies by its
// reciprocal instead: the same correctly rounded quotient, without a division per element.
template <typename scalar_t, typename T> inline void shifted(const scalar_t* x, int64_t n, T e, T mu, T* a) {
  int exponent = 0;
  if (std::frexp(e, &exponent) == T(0.5) && std::isfinite(T(1) / e)) {
    const T r = T(1) / e;
    for (int64_t j = 0; j < n; ++j) a[j] = static_cast<T>(x[j]) * r - mu;
  } else {
    for (int64_t j = 0; j < n; ++j) a[j] = static_cast<T>(x[j]) / e - mu;
  }
}

// v[j] = Q(a[j]) = q[#{t: a[j] >= theta_t}] as a chain of selects (the thresholds are sorted),
// so no gather; a NaN a[j] gives q[0] (the callers keep the NaN).
template <typename T> inline void level_values(const SmallGrid<T>& s, const T* a, int64_t n, T* v) {
  for (int64_t j = 0; j < n; ++j) v[j] = s.q[0];
  for (int t = 0; t < s.K; ++t) {
    const T th = s.theta[t], q = s.q[t + 1];
    for (int64_t j = 0; j < n; ++j) v[j] = a[j] >= th ? q : v[j];
  }
}

// y[j] = e * Q(a[j]) (NaN stays NaN).
template <typename scalar_t, typename T>
inline void hard_block(const SmallGrid<T>& s, const T* a, int64_t n, T e, scalar_t* y) {
  T v[kBlock];
  level_values(s, a, n, v);
  for (int64_t j = 0; j < n; ++j) y[j] = static_cast<scalar_t>(a[j] != a[j] ? a[j] : e * v[j]);
}

// r[j] = the uniform number in (0, 1) of element begin + j (j < m <= kBlock): word k % 4 of the
// Philox block k / 4 (common/philox.h), the blocks computed side by side so that the rounds
// vectorise.
template <typename T> inline void uniform_block(int64_t begin, int64_t m, uint64_t seed, uint64_t stream, T* r) {
  constexpr int kMaxBlocks = kBlock / 4 + 2;
  const uint64_t b0 = static_cast<uint64_t>(begin) >> 2;
  const int nb = static_cast<int>((static_cast<uint64_t>(begin + m - 1) >> 2) - b0 + 1);
  uint32_t c0[kMaxBlocks], c1[kMaxBlocks], c2[kMaxBlocks], c3[kMaxBlocks], w[4 * kMaxBlocks];
  for (int j = 0; j < nb; ++j) {
    const uint64_t b = b0 + static_cast<uint64_t>(j);
    c0[j] = static_cast<uint32_t>(b);
    c1[j] = static_cast<uint32_t>(b >> 32);
    c2[j] = static_cast<uint32_t>(stream);
    c3[j] = static_cast<uint32_t>(stream >> 32);
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    for (int j = 0; j < nb; ++j) {
      const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0[j], p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2[j];
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[j] ^ k0, n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[j] ^ k1;
      c0[j] = n0;
      c1[j] = static_cast<uint32_t>(p1);
      c2[j] = n2;
      c3[j] = static_cast<uint32_t>(p0);
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  for (int j = 0; j < nb; ++j) {
    w[4 * j] = c0[j];
    w[4 * j + 1] = c1[j];
    w[4 * j + 2] = c2[j];
    w[4 * j + 3] = c3[j];
  }
  const uint32_t* wk = w + (begin & 3);
  for (int64_t j = 0; j < m; ++j) r[j] = uniform_open<T>(wk[j]);
}

// nu[j] = the standardised noise of element begin + j: the quantile of its uniform number.
template <NoiseKind N, typename T> inline void noise_block(int64_t begin, int64_t m, uint64_t seed, uint64_t stream, T* nu) {
  uniform_block(begin, m, seed, stream, nu);
  if constexpr (N == NoiseKind::Logistic) {
    map_vec(nu, m, [](auto r) { return VecNoise<N, T>::quantile(r); });
  } else {
    for (int64_t j = 0; j < m; ++j) nu[j] = Noise<N, T>::quantile(nu[j]);
  }
}

// The 1-byte code of a uniform backward noise (functors.h UniformBoxCode) for a block, branch-free:
// the boxes holding a are [lo, hi) with lo = #{t: a >= theta_t + sigma}, hi = #{t: theta_t - sigma <= a}.
template <typename T> inline void code_block(const SmallGrid<T>& s, const T* a, int64_t m, T sigma, uint8_t* code) {
  int32_t lo[kBlock], hi[kBlock];
  for (int64_t j = 0; j < m; ++j) lo[j] = hi[j] = 0;
  for (int t = 0; t < s.K; ++t) {
    const T below = s.theta[t] + sigma, above = s.theta[t] - sigma;
    for (int64_t j = 0; j < m; ++j) {
      lo[j] += a[j] >= below ? 1 : 0;
      hi[j] += a[j] >= above ? 1 : 0;
    }
  }
  const bool on = sigma > T(0);
  for (int64_t j = 0; j < m; ++j) {
    const int32_t c = (on && hi[j] > lo[j]) ? (lo[j] << 4 | hi[j]) : 0;
    lo[j] = a[j] != a[j] ? int32_t(kNaNCode) : c;
  }
  uint8_t* __restrict out = code;  // bytes alias everything: say these alias nothing
  for (int64_t j = 0; j < m; ++j) out[j] = static_cast<uint8_t>(lo[j]);
}

template <typename scalar_t, typename T>
void small_code(const SmallGrid<T>& s, const scalar_t* x, uint8_t* code, int64_t n, const EpsLayout<T>& eps, T mu,
                T sigma) {
  at::parallel_for(0, n, kSmallGrain, [&](int64_t begin, int64_t end) {
    T a[kBlock];
    for_each_eps_run(eps, begin, end, [&](int64_t i0, int64_t len, T e) {
      for (int64_t b = 0; b < len; b += kBlock) {
        const int64_t m = std::min(kBlock, len - b), i = i0 + b;
        shifted(x + i, m, e, mu, a);
        code_block(s, a, m, sigma, code + i);
      }
    });
  });
}

// f[j] = F(v) (or the density f(v) when kDensity) at v = (a[j] - theta) / sigma: the compact
// laws in loops the compiler vectorises, the smooth ones with SIMD exp and erfc.
template <NoiseKind N, bool kDensity, typename T>
inline void noise_values(const T* a, int64_t m, T theta, const Standardize<T>& z, T* f) {
  for (int64_t j = 0; j < m; ++j) f[j] = z(a[j] - theta);
  if constexpr (N == NoiseKind::Normal || N == NoiseKind::Logistic) {
    if constexpr (kDensity) map_vec(f, m, [](auto v) { return VecNoise<N, T>::pdf(v); });
    else map_vec(f, m, [](auto v) { return VecNoise<N, T>::cdf(v); });
  } else {
    for (int64_t j = 0; j < m; ++j) f[j] = kDensity ? Noise<N, T>::pdf(f[j]) : Noise<N, T>::cdf(f[j]);
  }
}

enum class SmallForward { Hard, Expectation, Random };

// Where the forward also writes the 1-byte code of a uniform backward noise (mu_b, sigma_b).
template <typename T> struct CodeOut {
  uint8_t* ptr = nullptr;
  T mu = T(0), sigma = T(0);
};

// The forward of the whole input on the small-grid path (`kind` chosen by the caller), and the
// backward's code with it when `code` says where.
template <NoiseKind N, typename scalar_t, typename T>
void small_forward(const SmallGrid<T>& s, SmallForward kind, const scalar_t* x, scalar_t* y, int64_t n,
                   const EpsLayout<T>& eps, T mu, T sigma, uint64_t seed, uint64_t stream,
                   CodeOut<T> code = {}) {
  const Standardize<T> z(sigma);
  at::parallel_for(0, n, kSmallGrain, [&](int64_t begin, int64_t end) {
    T a[kBlock], acc[kBlock], nu[kBlock], f[kBlock];
    for_each_eps_run(eps, begin, end, [&](int64_t i0, int64_t len, T e) {
      for (int64_t b = 0; b < len; b += kBlock) {
        const int64_t m = std::min(kBlock, len - b), i = i0 + b;
        shifted(x + i, m, e, mu, a);
        if (code.ptr != nullptr) {  // from the noise-free a, as ana_code computes it
          if (code.mu == mu) {
            code_block(s, a, m, code.sigma, code.ptr + i);
          } else {
            shifted(x + i, m, e, code.mu, f);
            code_block(s, f, m, code.sigma, code.ptr + i);
          }
        }
        if (kind == SmallForward::Random) {
          noise_block<N>(i, m, seed, stream, nu);
          for (int64_t j = 0; j < m; ++j) a[j] += sigma * nu[j];
        }
        if (kind != SmallForward::Expectation) {
          hard_block(s, a, m, e, y + i);
          continue;
        }
        for (int64_t j = 0; j < m; ++j) acc[j] = s.q[0];
        for (int t = 0; t < s.K; ++t) {
          noise_values<N, false>(a, m, s.theta[t], z, f);
          const T d = s.dq[t];
          for (int64_t j = 0; j < m; ++j) acc[j] += d * f[j];
        }
        for (int64_t j = 0; j < m; ++j) y[i + j] = static_cast<scalar_t>(a[j] != a[j] ? a[j] : e * acc[j]);
      }
    });
  });
}

// grad_x = g * sum_t dq_t f_sigma(a - theta_t) on the small-grid path.
template <NoiseKind N, typename scalar_t, typename T>
void small_backward(const SmallGrid<T>& s, const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t n,
                    const EpsLayout<T>& eps, T mu, T sigma) {
  const Standardize<T> z(sigma);
  at::parallel_for(0, n, kSmallGrain, [&](int64_t begin, int64_t end) {
    T a[kBlock], d[kBlock], f[kBlock];
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
            noise_values<N, true>(a, m, th, z, f);
            for (int64_t j = 0; j < m; ++j) d[j] += w * f[j];
          }
        }
        for (int64_t j = 0; j < m; ++j)
          gx[i + j] = static_cast<scalar_t>(a[j] != a[j] ? a[j] : static_cast<T>(g[i + j]) * z(d[j]));
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
    if (!valid_code(static_cast<uint8_t>(c), K) || c == kNaNCode) {  // and no read past the levels
      table[c] = std::numeric_limits<T>::quiet_NaN();
      continue;
    }
    T d = T(0);
    for (int t = c >> 4; t < (c & 15); ++t) d += (q[t + 1] - q[t]) * T(0.5);
    table[c] = Standardize<T>(sigma)(d);
  }
  at::parallel_for(0, n, kSmallGrain, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
#if defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<scalar_t, float>) {  // 8 table entries per gather
      for (; i + 8 <= end; i += 8) {
        const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(code + i)));
        _mm256_storeu_ps(gx + i, _mm256_mul_ps(_mm256_loadu_ps(g + i), _mm256_i32gather_ps(table, c, 4)));
      }
    }
#endif
    for (; i < end; ++i) gx[i] = static_cast<scalar_t>(static_cast<T>(g[i]) * table[code[i]]);
  });
}

// Alpha-blending on the small-grid path: the same expression as common/functors.h AlphaBlend.
template <typename scalar_t, typename T>
void small_alpha_blend(const SmallGrid<T>& s, const scalar_t* w, scalar_t* y, int64_t n, const EpsLayout<T>& eps,
                       T alpha) {
  at::parallel_for(0, n, kSmallGrain, [&](int64_t begin, int64_t end) {
    T a[kBlock], v[kBlock];
    for_each_eps_run(eps, begin, end, [&](int64_t i0, int64_t len, T e) {
      for (int64_t b = 0; b < len; b += kBlock) {
        const int64_t m = std::min(kBlock, len - b), i = i0 + b;
        shifted(w + i, m, e, T(0), a);
        level_values(s, a, m, v);
        for (int64_t j = 0; j < m; ++j) {
          const T q = a[j] != a[j] ? a[j] : alpha * e * v[j];
          y[i + j] = static_cast<scalar_t>(alpha < T(1) ? q + (T(1) - alpha) * static_cast<T>(w[i + j]) : q);
        }
      }
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace anacuda
