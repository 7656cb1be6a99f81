// CPU fast path for quantisers with few thresholds (K <= kTableMaxK): every element meets every
// threshold, in branch-free loops over blocks of elements that the compiler vectorises, instead
// of the per-element window walk of common/stair.h (whose data-dependent branches dominate on a
// CPU). The formulas are common/'s (the noises through vec_math.h, Philox rounds, boxes and their
// code, blending); what differs is the order of the work, and Q(a) found by a chain of selects.
// Used where it is exact: the hard stair (eval, sigma = 0, and mode with a compact noise no wider
// than half the smallest gap, where the most likely level is the hard stair's), expectation and
// backward with every noise, the random strategy, the 1-byte code and alpha-blending.
// tests/test_cpu_paths.py compares it with the functor path element for element.
#pragma once

#include "arithmetic_grid.h"
#include "isa_headers.h"
#include "vec_math.h"

namespace anacuda {
namespace CPU_CAPABILITY {

constexpr int kTableMaxK = 32;
constexpr int64_t kBlock = 256;
constexpr int64_t kBlockGrain = 32768;
// Runs of one eps (one channel) at least this long are processed as runs; shorter ones (a
// per-channel eps on a channels_last input) with each element's own eps.
constexpr int64_t kMinRun = 64;

// An arithmetic grid of at least this many thresholds finds its levels by arithmetic (a dozen
// operations) rather than by a chain of selects (a few per threshold).
constexpr int kArithmeticMinK = 4;

// The quantiser as a small table: thresholds, steps, levels, and the smallest gap.
template <typename T> struct ThresholdTable {
  int K = 0;
  T theta[kTableMaxK], dq[kTableMaxK], q[kTableMaxK + 1];
  T min_gap;
  bool arithmetic = false;  // levels by ag (arithmetic_grid.h)
  ArithmeticGrid<T> ag;
};

template <typename T> bool make_threshold_table(const Grid<T>& g, ThresholdTable<T>& s) {
  if (g.K > kTableMaxK) return false;
  s.K = static_cast<int>(g.K);
  s.min_gap = std::numeric_limits<T>::infinity();
  for (int t = 0; t < s.K; ++t) {
    s.theta[t] = g.theta[t];
    s.dq[t] = level_step(g.q, t);
    if (t > 0) s.min_gap = std::min(s.min_gap, g.theta[t] - g.theta[t - 1]);
  }
  for (int t = 0; t <= s.K; ++t) s.q[t] = g.q[t];
  s.arithmetic = s.K >= kArithmeticMinK && make_arithmetic_grid(g, s.ag);
  return true;
}

// eps over a block: one value for all its elements, or each element's own. Passed by value: a
// reference could alias the outputs, which would keep the loops from vectorising.
template <typename T> struct OneEps {
  T e;
  T operator[](int64_t) const { return e; }
};
template <typename T> struct EachEps {
  const T* e;
  T operator[](int64_t j) const { return e[j]; }
};

// Calls f(i, m, e) over blocks [i, i + m) of [begin, end), m <= B, e their eps (OneEps or EachEps;
// one call of f for each, so that it inlines).
template <int64_t B, typename T, typename F>
void for_each_eps_block(const EpsLayout<T>& eps, int64_t begin, int64_t end, F&& f) {
  const bool one = eps.ptr == nullptr || eps.channels == 1;
  if (one || eps.inner >= kMinRun) {  // runs of one eps (the whole range when eps is one value)
    for (int64_t i = begin; i < end;) {
      const int64_t run = one ? 0 : i / eps.inner;
      const int64_t stop = one ? end : std::min(end, (run + 1) * eps.inner);
      const OneEps<T> e{one ? eps.at(0) : eps.ptr[run % eps.channels]};
      for (int64_t m; i < stop; i += m) {
        m = std::min(B, stop - i);
        f(i, m, e);
      }
    }
    return;
  }
  T ev[B];
  int64_t k = begin % eps.inner, c = (begin / eps.inner) % eps.channels;  // element begin: channel c, k-th in its run
  for (int64_t i = begin, m; i < end; i += m) {
    m = std::min(B, end - i);
    for (int64_t j = 0; j < m; ++j) {
      ev[j] = eps.ptr[c];
      if (++k == eps.inner) {
        k = 0;
        c = c + 1 == eps.channels ? 0 : c + 1;
      }
    }
    f(i, m, EachEps<T>{ev});
  }
}

// a[j] = x[j] / e - mu for a block. A power of two e (eps = 1 above all) multiplies by its
// reciprocal instead: the same correctly rounded quotient, without a division per element.
template <typename scalar_t, typename T>
inline void shifted(const scalar_t* x, int64_t n, OneEps<T> eps, T mu, T* a) {
  const T e = eps.e;
  int exponent = 0;
  if (std::frexp(e, &exponent) == T(0.5) && std::isfinite(T(1) / e)) {
    const T r = T(1) / e;
    for (int64_t j = 0; j < n; ++j) a[j] = static_cast<T>(x[j]) * r - mu;
  } else {
    for (int64_t j = 0; j < n; ++j) a[j] = static_cast<T>(x[j]) / e - mu;
  }
}
template <typename scalar_t, typename T>
inline void shifted(const scalar_t* x, int64_t n, EachEps<T> e, T mu, T* a) {
  for (int64_t j = 0; j < n; ++j) a[j] = static_cast<T>(x[j]) / e[j] - mu;
}

// v[j] = Q(a[j]) = q[#{t: a[j] >= theta_t}] as a chain of selects (the thresholds are sorted),
// so no gather, or by arithmetic; a NaN a[j] gives some level (the callers keep the NaN). The
// chain runs in registers, a vector at a time: as a loop over thresholds of loops over the block,
// v[j] = a[j] >= th ? q : v[j] became masked stores in GCC's AVX-512 code, which the next
// threshold's loads wait on (three times slower than AVX2 on AMD Zen 4).
template <typename T> inline void level_values(const ThresholdTable<T>& s, const T* a, int64_t n, T* v) {
  if (s.arithmetic) return arithmetic_levels(s.ag, a, n, v);
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const int K = s.K;
  for (int64_t j = 0; j < n; j += W) {
    const int m = static_cast<int>(std::min(W, n - j));
    const V x = m == W ? V::loadu(a + j) : V::loadu(a + j, m);
    V level(s.q[0]);
    for (int t = 0; t < K; ++t) level = V::blendv(level, V(s.q[t + 1]), x >= V(s.theta[t]));
    if (m == W) level.store(v + j);
    else level.store(v + j, m);
  }
}

// y[j] = e * Q(a[j]) (NaN stays NaN).
template <typename scalar_t, typename T, typename E>
inline void hard_block(const ThresholdTable<T>& s, const T* a, int64_t n, E e, scalar_t* y) {
  T v[kBlock];
  level_values(s, a, n, v);
  for (int64_t j = 0; j < n; ++j) y[j] = static_cast<scalar_t>(a[j] != a[j] ? a[j] : e[j] * v[j]);
}

// y = eps * Q(x / eps - mu) over the whole input (NaN stays NaN).
template <typename scalar_t, typename T>
void arithmetic_hard_forward(const ArithmeticGrid<T>& s, const scalar_t* x, scalar_t* y, int64_t n,
                             const EpsLayout<T>& eps, T mu) {
  at::parallel_for(0, n, kBlockGrain, [&](int64_t begin, int64_t end) {
    T a[kBlock], v[kBlock];
    for_each_eps_block<kBlock>(eps, begin, end, [&](int64_t i, int64_t m, auto e) {
      if constexpr (std::is_same_v<decltype(e), OneEps<T>>) {
        if (s.exact) return exact_hard_block(s, x + i, y + i, m, e.e, mu);
      }
      shifted(x + i, m, e, mu, a);
      arithmetic_levels(s, a, m, v);
      scalar_t* out = y + i;  // a local, not the capture: the loop vectorises
      for (int64_t j = 0; j < m; ++j) out[j] = static_cast<scalar_t>(a[j] != a[j] ? a[j] : e[j] * v[j]);
    });
  });
}

// r[j] = the uniform number in (0, 1) of element begin + j (j < m <= kBlock): its word of its
// Philox block (common/philox.h), the blocks computed side by side so that the rounds vectorise.
template <typename T> inline void uniform_block(int64_t begin, int64_t m, uint64_t seed, uint64_t stream, T* r) {
  constexpr int kMaxBlocks = kBlock / 4 + 2;
  const uint64_t b0 = philox_block_of(begin);
  const int nb = static_cast<int>(philox_block_of(begin + m - 1) - b0 + 1);
  uint32_t c0[kMaxBlocks], c1[kMaxBlocks], c2[kMaxBlocks], c3[kMaxBlocks], w[4 * kMaxBlocks];
  uint32_t k0 = 0, k1 = 0;
  for (int j = 0; j < nb; ++j)
    philox_start(b0 + static_cast<uint64_t>(j), stream, seed, c0[j], c1[j], c2[j], c3[j], k0, k1);
  for (int round = 0; round < kPhiloxRounds; ++round) {
    for (int j = 0; j < nb; ++j) philox_round(c0[j], c1[j], c2[j], c3[j], k0, k1);
    philox_next_key(k0, k1);
  }
  for (int j = 0; j < nb; ++j) {
    w[4 * j] = c0[j];
    w[4 * j + 1] = c1[j];
    w[4 * j + 2] = c2[j];
    w[4 * j + 3] = c3[j];
  }
  const uint32_t* wk = w + philox_lane_of(begin);
  for (int64_t j = 0; j < m; ++j) r[j] = uniform_open<T>(wk[j]);
}

// nu[j] = the standardised noise of element begin + j: the quantile of its uniform number.
template <NoiseKind N, typename T>
inline void noise_block(int64_t begin, int64_t m, uint64_t seed, uint64_t stream, T* nu) {
  uniform_block(begin, m, seed, stream, nu);
  if constexpr (N == NoiseKind::Logistic) {
    map_vec(nu, m, [](const auto& r) { return Noise<N, T>::quantile(r); });
  } else {
    for (int64_t j = 0; j < m; ++j) nu[j] = Noise<N, T>::quantile(nu[j]);
  }
}

// The 1-byte codes (common/box_code.h) of a block, branch-free: the boxes passed and reached by
// each a[j], counted over every threshold. AVX-512, float: 16 elements at a time, the counts
// incremented under comparison masks and the bytes packed by vpmovdb, all in registers (the
// loops below keep the counts in arrays on the stack, and cost as much as the forward).
template <typename T> inline void code_block(const ThresholdTable<T>& s, const T* a, int64_t m, T sigma, uint8_t* code) {
  int64_t j0 = 0;
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    float lower[kTableMaxK], upper[kTableMaxK];
    const int K = s.K;
    for (int t = 0; t < K; ++t) {
      const Box<T> box(s.theta[t], sigma);
      lower[t] = box.lower;
      upper[t] = box.upper;
    }
    const __m512i one = _mm512_set1_epi32(1), nan_code = _mm512_set1_epi32(kNaNCode);
    for (; j0 + 16 <= m; j0 += 16) {
      const __m512 x = _mm512_loadu_ps(a + j0);
      __m512i passed = _mm512_setzero_si512(), reached = _mm512_setzero_si512();
      for (int t = 0; t < K; ++t) {  // Box::passed and Box::reached: a >= bound, false for NaN
        passed = _mm512_mask_add_epi32(passed, _mm512_cmp_ps_mask(x, _mm512_set1_ps(upper[t]), _CMP_GE_OQ), passed,
                                       one);
        reached = _mm512_mask_add_epi32(reached, _mm512_cmp_ps_mask(x, _mm512_set1_ps(lower[t]), _CMP_GE_OQ),
                                        reached, one);
      }
      // box_code: passed << 4 | reached where a box holds x, 0 where none does, kNaNCode for NaN
      __m512i c = _mm512_maskz_or_epi32(_mm512_cmpgt_epi32_mask(reached, passed), _mm512_slli_epi32(passed, 4),
                                        reached);
      c = _mm512_mask_mov_epi32(c, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), nan_code);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(code + j0), _mm512_cvtepi32_epi8(c));
    }
    if (j0 == m) return;
  }
#endif
  a += j0;
  code += j0;
  m -= j0;
  int32_t passed[kBlock], reached[kBlock];
  for (int64_t j = 0; j < m; ++j) passed[j] = reached[j] = 0;
  for (int t = 0; t < s.K; ++t) {
    const Box<T> box(s.theta[t], sigma);
    for (int64_t j = 0; j < m; ++j) {
      passed[j] += box.passed(a[j]);
      reached[j] += box.reached(a[j]);
    }
  }
  for (int64_t j = 0; j < m; ++j) passed[j] = box_code(a[j] != a[j], passed[j], reached[j]);
  uint8_t* __restrict out = code;  // bytes alias everything: say these alias nothing
  for (int64_t j = 0; j < m; ++j) out[j] = static_cast<uint8_t>(passed[j]);
}

template <typename scalar_t, typename T>
void block_code(const ThresholdTable<T>& s, const scalar_t* x, uint8_t* code, int64_t n, const EpsLayout<T>& eps,
                T mu, T sigma) {
  at::parallel_for(0, n, kBlockGrain, [&](int64_t begin, int64_t end) {
    T a[kBlock];
    for_each_eps_block<kBlock>(eps, begin, end, [&](int64_t i, int64_t m, auto e) {
      shifted(x + i, m, e, mu, a);
      code_block(s, a, m, sigma, code + i);
    });
  });
}

// f[j] = F(v) (or the density f(v) when kDensity) at v = (a[j] - theta) / sigma: the compact
// laws in loops the compiler vectorises, the smooth ones as SIMD vectors.
template <NoiseKind N, bool kDensity, typename T>
inline void noise_values(const T* a, int64_t m, T theta, const Standardize<T>& z_, T* f) {
  const Standardize<T> z = z_;  // a copy: f's stores could alias it, and the loop would reload it
  for (int64_t j = 0; j < m; ++j) f[j] = z(a[j] - theta);
  if constexpr (N == NoiseKind::Normal || N == NoiseKind::Logistic) {
    if constexpr (kDensity) map_vec(f, m, [](const auto& v) { return Noise<N, T>::pdf(v); });
    else map_vec(f, m, [](const auto& v) { return Noise<N, T>::cdf(v); });
  } else {
    for (int64_t j = 0; j < m; ++j) f[j] = kDensity ? Noise<N, T>::pdf(f[j]) : Noise<N, T>::cdf(f[j]);
  }
}

enum class BlockForward { Hard, Expectation, Random };

// The forward on this path that computes this configuration, if any (mode with a smooth noise, or
// one wider than half a gap, needs the per-element walk of common/stair.h).
template <typename T>
std::optional<BlockForward> block_forward_kind(const ThresholdTable<T>& s, NoiseKind nk, Strategy st, bool training,
                                               T sigma) {
  const bool compact = nk == NoiseKind::Uniform || nk == NoiseKind::Triangular;
  if (!(training && sigma > T(0)) || (st == Strategy::Mode && compact && T(2) * sigma <= s.min_gap))
    return BlockForward::Hard;
  if (st == Strategy::Expectation) return BlockForward::Expectation;
  if (st == Strategy::Random) return BlockForward::Random;
  return std::nullopt;
}

// Where the forward also writes the 1-byte code of a uniform backward noise (mu, sigma).
template <typename T> struct CodeOutput {
  uint8_t* ptr = nullptr;
  T mu = T(0), sigma = T(0);
};

// The forward of the whole input (`kind` chosen by block_forward_kind), and the backward's code
// with it when `code` says where.
template <NoiseKind N, typename scalar_t, typename T>
void block_forward(const ThresholdTable<T>& s, BlockForward kind, const scalar_t* x, scalar_t* y, int64_t n,
                   const EpsLayout<T>& eps, T mu, T sigma, uint64_t seed, uint64_t stream, CodeOutput<T> code = {}) {
  const Standardize<T> z(sigma);
  at::parallel_for(0, n, kBlockGrain, [&](int64_t begin, int64_t end) {
    T a[kBlock], acc[kBlock], nu[kBlock], f[kBlock];
    for_each_eps_block<kBlock>(eps, begin, end, [&](int64_t i, int64_t m, auto e) {
      if constexpr (std::is_same_v<decltype(e), OneEps<T>>) {  // LSQ's forward: one pass, the same bits
        if (kind == BlockForward::Hard && code.ptr == nullptr && s.arithmetic && s.ag.exact)
          return exact_hard_block(s.ag, x + i, y + i, m, e.e, mu);
      }
      shifted(x + i, m, e, mu, a);
      if (code.ptr != nullptr) {  // from the noise-free a, as _ana_code computes it
        if (code.mu == mu) {
          code_block(s, a, m, code.sigma, code.ptr + i);
        } else {
          shifted(x + i, m, e, code.mu, f);
          code_block(s, f, m, code.sigma, code.ptr + i);
        }
      }
      if (kind == BlockForward::Random) {
        noise_block<N>(i, m, seed, stream, nu);
        const T sg = sigma;  // locals, not the captures, in the loops: they vectorise
        for (int64_t j = 0; j < m; ++j) a[j] = noisy(a[j], sg, nu[j]);
      }
      if (kind != BlockForward::Expectation) {
        hard_block(s, a, m, e, y + i);
        return;
      }
      const T q0 = s.q[0];
      for (int64_t j = 0; j < m; ++j) acc[j] = a[j] != a[j] ? a[j] : q0;  // NaN stays NaN
      for (int t = 0; t < s.K; ++t) {
        noise_values<N, false>(a, m, s.theta[t], z, f);
        const T d = s.dq[t];
        for (int64_t j = 0; j < m; ++j) acc[j] += d * f[j];
      }
      scalar_t* out = y + i;  // a local, not the capture: the loop vectorises
      for (int64_t j = 0; j < m; ++j) out[j] = static_cast<scalar_t>(e[j] * acc[j]);
    });
  });
}

// grad_x = g * sum_t dq_t f_sigma(a - theta_t); for the uniform noise the sum of the terms of the
// boxes holding a.
template <NoiseKind N, typename scalar_t, typename T>
void block_backward(const ThresholdTable<T>& s, const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t n,
                    const EpsLayout<T>& eps, T mu, T sigma) {
  const Standardize<T> z(sigma);
  at::parallel_for(0, n, kBlockGrain, [&](int64_t begin, int64_t end) {
    T a[kBlock], d[kBlock], f[kBlock];
    for_each_eps_block<kBlock>(eps, begin, end, [&](int64_t i, int64_t m, auto e) {
      shifted(x + i, m, e, mu, a);
      for (int64_t j = 0; j < m; ++j) d[j] = a[j] != a[j] ? a[j] : T(0);  // NaN stays NaN
      for (int t = 0; t < s.K; ++t) {
        const T th = s.theta[t];
        if constexpr (N == NoiseKind::Uniform) {
          const Box<T> box(th, sigma);
          const T h = box_term(s.q, t);
          for (int64_t j = 0; j < m; ++j) d[j] += box.holds(a[j]) ? h : T(0);
        } else {
          noise_values<N, true>(a, m, th, z, f);
          const T w = s.dq[t];
          for (int64_t j = 0; j < m; ++j) d[j] += w * f[j];
        }
      }
      const scalar_t* gi = g + i;  // locals, not the captures: the loops vectorise
      scalar_t* out = gx + i;
      const T zinv = z.inv, zsigma = z.sigma;
      if (zinv < std::numeric_limits<T>::infinity())  // z(d), Standardize's choice
        for (int64_t j = 0; j < m; ++j) out[j] = static_cast<scalar_t>(static_cast<T>(gi[j]) * (d[j] * zinv));
      else
        for (int64_t j = 0; j < m; ++j) out[j] = static_cast<scalar_t>(static_cast<T>(gi[j]) * (d[j] / zsigma));
    });
  });
}

// The identity backward (SPEC §5): IdentityBackward's rule with one eps per run of elements, not
// an index division per element to find it, so that the loop vectorises.
template <typename scalar_t, typename T>
void block_identity_backward(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t n, const EpsLayout<T>& eps) {
  at::parallel_for(0, n, kBlockGrain, [&](int64_t begin, int64_t end) {
    for_each_eps_block<kBlock>(eps, begin, end, [&](int64_t i, int64_t m, auto e) {
      const scalar_t *gi = g + i, *xi = x + i;  // locals, not the captures: the loop vectorises
      scalar_t* out = gx + i;
      for (int64_t j = 0; j < m; ++j) {
        const T v = static_cast<T>(xi[j]), r = v != v ? v : static_cast<T>(gi[j]);
        out[j] = static_cast<scalar_t>(valid_eps(e[j]) ? r : quiet_nan<T>());
      }
    });
  });
}

// grad_x from the code through a 256-entry table of code_derivative, the functor's own maths. On
// a quantiser of at most 3 thresholds (binary, ternary, 2 bits) every valid code lo << 4 | hi has
// lo, hi < 4: 16 entries, which one register holds (AVX-512: one permute per 16 elements instead
// of a gather; AVX2: two per 8), and any code with a bit of 0xCC set is invalid or NaN.
template <typename scalar_t, typename T>
void table_backward_code(const T* q, int K, const scalar_t* g, const uint8_t* code, scalar_t* gx, int64_t n, T sigma) {
  T table[256];
  for (int c = 0; c < 256; ++c) table[c] = code_derivative(q, K, static_cast<uint8_t>(c), sigma);
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  alignas(64) float small[16];  // small[(lo << 2) | hi] = table[lo << 4 | hi]
  for (int c = 0; c < 16; ++c) small[c] = static_cast<float>(table[(c >> 2) << 4 | (c & 3)]);
#endif
  at::parallel_for(0, n, kBlockGrain, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (K <= 3) {
        const __m512 lut = _mm512_load_ps(small);
        const __m512i low2 = _mm512_set1_epi32(3), high2 = _mm512_set1_epi32(0xC), bad = _mm512_set1_epi32(0xCC);
        const __m512 nan = _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN());
        for (; i + 16 <= end; i += 16) {
          const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(code + i)));
          const __m512i idx =
              _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(c, 2), high2), _mm512_and_si512(c, low2));
          const __m512 d = _mm512_mask_blend_ps(_mm512_test_epi32_mask(c, bad), _mm512_permutexvar_ps(idx, lut), nan);
          _mm512_storeu_ps(gx + i, _mm512_mul_ps(_mm512_loadu_ps(g + i), d));
        }
      }
      for (; i + 16 <= end; i += 16) {  // 16 table entries per gather
        const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(code + i)));
        _mm512_storeu_ps(gx + i, _mm512_mul_ps(_mm512_loadu_ps(g + i), _mm512_i32gather_ps(c, table, 4)));
      }
    }
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (K <= 3) {
        const __m256 lut_lo = _mm256_load_ps(small), lut_hi = _mm256_load_ps(small + 8);
        const __m256i low2 = _mm256_set1_epi32(3), high2 = _mm256_set1_epi32(0xC), bad = _mm256_set1_epi32(0xCC);
        const __m256 nan = _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN());
        for (; i + 8 <= end; i += 8) {
          const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(code + i)));
          const __m256i idx =
              _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(c, 2), high2), _mm256_and_si256(c, low2));
          const __m256 upper = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));  // bit 3 of idx as the sign
          __m256 d = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lut_lo, idx), _mm256_permutevar8x32_ps(lut_hi, idx),
                                      upper);
          const __m256i invalid = _mm256_cmpgt_epi32(_mm256_and_si256(c, bad), _mm256_setzero_si256());
          d = _mm256_blendv_ps(d, nan, _mm256_castsi256_ps(invalid));
          _mm256_storeu_ps(gx + i, _mm256_mul_ps(_mm256_loadu_ps(g + i), d));
        }
      }
      for (; i + 8 <= end; i += 8) {  // 8 table entries per gather
        const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(code + i)));
        _mm256_storeu_ps(gx + i, _mm256_mul_ps(_mm256_loadu_ps(g + i), _mm256_i32gather_ps(table, c, 4)));
      }
    }
#endif
    for (; i < end; ++i) gx[i] = static_cast<scalar_t>(static_cast<T>(g[i]) * table[code[i]]);
  });
}

// Alpha-blending: common/functors.h's blend of each weight with its level.
template <typename scalar_t, typename T>
void block_alpha_blend(const ThresholdTable<T>& s, const scalar_t* w, scalar_t* y, int64_t n, const EpsLayout<T>& eps,
                       T alpha) {
  at::parallel_for(0, n, kBlockGrain, [&](int64_t begin, int64_t end) {
    T a[kBlock], v[kBlock];
    for_each_eps_block<kBlock>(eps, begin, end, [&](int64_t i, int64_t m, auto e) {
      shifted(w + i, m, e, T(0), a);
      level_values(s, a, m, v);
      const scalar_t* wi = w + i;  // locals, not the captures: the loop vectorises
      scalar_t* out = y + i;
      const T al = alpha;
      for (int64_t j = 0; j < m; ++j) {
        const T q = blend(static_cast<T>(wi[j]), e[j], v[j], al);
        out[j] = static_cast<scalar_t>(a[j] != a[j] ? a[j] : q);
      }
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace anacuda
