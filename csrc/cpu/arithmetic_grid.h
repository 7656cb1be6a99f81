// The hard stair of a grid whose thresholds and levels are arithmetic, theta_t = theta_0 + t s and
// q_k = q_0 + k dq, with s and dq powers of two and every stored value checked against the
// formula. Then t s is exact, so theta_0 + t s is the stored threshold however the compiler
// contracts it, and Q(a) is found by arithmetic: an estimate of the last threshold <= a,
// corrected by one exact comparison either way (the estimate's rounding is far below one step;
// one way only where the grid is exact in real arithmetic, as every uniform(b) grid is), in
// branch-free loops the compiler vectorises, where common/stair.h's count_le loops per element
// and a chain of selects takes a step per threshold. The same levels as count_le's, NaN kept.
// all_thresholds.h uses it for 4-bit grids and up (level_values) and for many thresholds
// (arithmetic_hard_forward).
#pragma once

#include "isa_headers.h"

namespace anacuda {
namespace CPU_CAPABILITY {

template <typename T> struct ArithmeticGrid {
  T theta0, step, inv_step, q0, dq, last;  // last = K - 1, the index of the top threshold
  bool exact = false;  // theta_t - theta_0 = t s in real arithmetic, not only after rounding
  // LSQ's grids: integer levels q_k = q_0 + k and thresholds halfway, theta_t = q_t + 1/2, so
  // that Q(a) is a rounded half up and clamped (unit_levels), all of it exact.
  bool unit = false;
};

template <typename T> bool is_power_of_two(T v) {
  int exponent = 0;
  return v > T(0) && std::isfinite(v) && std::frexp(v, &exponent) == T(0.5);
}

template <typename T> bool make_arithmetic_grid(const Grid<T>& g, ArithmeticGrid<T>& s) {
  if (g.K < 2) return false;
  s.theta0 = g.theta[0];
  s.step = g.theta[1] - g.theta[0];
  s.q0 = g.q[0];
  s.dq = g.q[1] - g.q[0];
  if (!is_power_of_two(s.step) || !is_power_of_two(s.dq)) return false;
  for (int64_t t = 0; t < g.K; ++t)
    if (s.theta0 + static_cast<T>(t) * s.step != g.theta[t]) return false;
  for (int64_t k = 0; k <= g.K; ++k)
    if (s.q0 + static_cast<T>(k) * s.dq != g.q[k]) return false;
  s.inv_step = T(1) / s.step;
  s.last = static_cast<T>(g.K - 1);
  // theta_0 + t s exact: the rounding error of the sum, by Knuth's TwoSum, is 0 (t s is exact).
  s.exact = true;
  for (int64_t t = 0; t < g.K && s.exact; ++t) {
    const T b = static_cast<T>(t) * s.step, sum = s.theta0 + b, bb = sum - s.theta0;
    s.exact = (s.theta0 - (sum - bb)) + (b - bb) == T(0);
  }
  const T bound = T(1 << 22);  // integers and halves exact, whatever T (float has 24 bits)
  s.unit = s.exact && s.step == T(1) && s.dq == T(1) && s.q0 == std::floor(s.q0) && s.theta0 == s.q0 + T(0.5) &&
           -bound <= s.q0 && g.q[g.K] <= bound;
  return true;
}

// Q(a) on an exact grid (a NaN a gives some level; the callers keep the NaN). Every t s is a
// float and rounding is monotone, so the estimate is never below the true index n: it is n or
// n + 1, and one comparison corrects it. Outside the grid the clamp decides, whatever that
// comparison gave (it moves the estimate by at most one, towards n). By value: the loops that
// call it then hold the grid in registers and vectorise.
template <typename T> struct ExactLevel {
  T theta0, step, inv_step, last, q0, dq;
  explicit ExactLevel(const ArithmeticGrid<T>& s)
      : theta0(s.theta0), step(s.step), inv_step(s.inv_step), last(s.last), q0(s.q0), dq(s.dq) {}
  inline T operator()(T a) const {
    T i = std::floor((a - theta0) * inv_step);
    i = a < theta0 + i * step ? i - T(1) : i;
    i = std::min(std::max(i, T(-1)), last);
    return q0 + (i + T(1)) * dq;
  }
};

// v[j] = Q(a[j]) (a NaN a[j] gives some level; the callers keep the NaN).
template <typename T> inline void arithmetic_levels(const ArithmeticGrid<T>& s, const T* a, int64_t n, T* v) {
  if (s.exact) {
    const ExactLevel<T> level{s};  // a local copy: v's stores could alias s
    for (int64_t j = 0; j < n; ++j) v[j] = level(a[j]);
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    T i = std::floor((a[j] - s.theta0) * s.inv_step);  // the last threshold <= a[j], or one off
    i = i < T(-1) ? T(-1) : (i > s.last ? s.last : i);   // +-inf into range
    i = (i >= T(0) && a[j] < s.theta0 + i * s.step) ? i - T(1) : i;
    i = (i < s.last && a[j] >= s.theta0 + (i + T(1)) * s.step) ? i + T(1) : i;
    v[j] = s.q0 + (i + T(1)) * s.dq;
  }
}

#if defined(CPU_CAPABILITY_AVX512)
// ExactLevel's Q(a) on a unit grid, 16 floats at a time: a rounded half up, clamped to [q_0, q_K].
// rint's nearest even is corrected at the ties (a - rint(a) = 1/2 exactly), and the + 0 of that
// correction makes rint's -0 the level +0. NaN kept: max and min return their second operand
// when one is NaN.
inline __m512 unit_levels(__m512 a, __m512 q0, __m512 qK) {
  const __m512 r = _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __mmask16 tie = _mm512_cmp_ps_mask(_mm512_sub_ps(a, r), _mm512_set1_ps(0.5f), _CMP_EQ_OQ);
  const __m512 v = _mm512_add_ps(r, _mm512_maskz_mov_ps(tie, _mm512_set1_ps(1.0f)));
  return _mm512_min_ps(qK, _mm512_max_ps(q0, v));
}

inline __mmask16 tail_mask(int64_t m) { return static_cast<__mmask16>((1u << m) - 1u); }

// exact_hard_block on a unit grid with mu = 0, float: y = e * Q(x / e), the same bits.
inline void unit_hard_block(const ArithmeticGrid<float>& s, const float* x, float* y, int64_t n, float e) {
  const __m512 ev = _mm512_set1_ps(e), q0 = _mm512_set1_ps(s.q0), qK = _mm512_set1_ps(s.q0 + (s.last + 1.0f));
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    _mm512_storeu_ps(y + j, _mm512_mul_ps(ev, unit_levels(_mm512_div_ps(_mm512_loadu_ps(x + j), ev), q0, qK)));
  if (j < n) {
    const __mmask16 m = tail_mask(n - j);
    const __m512 u = _mm512_div_ps(_mm512_maskz_loadu_ps(m, x + j), ev);
    _mm512_mask_storeu_ps(y + j, m, _mm512_mul_ps(ev, unit_levels(u, q0, qK)));
  }
}
#endif

// y[j] = e * Q(x[j] / e - mu) (NaN kept) for an exact grid and one e, in one pass: shifted's
// quotient (a power-of-two e multiplies by its exact reciprocal), arithmetic_levels' exact
// branch and the output, the same operations in registers rather than three loops through
// block arrays, so the same bits.
template <typename scalar_t, typename T>
inline void exact_hard_block(const ArithmeticGrid<T>& s, const scalar_t* x, scalar_t* y, int64_t n, T e, T mu) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (s.unit && mu == 0.0f) return unit_hard_block(s, x, y, n, e);
  }
#endif
  const ExactLevel<T> level{s};
  auto level_of = [=](T a) { return a != a ? a : e * level(a); };
  int exponent = 0;
  if (std::frexp(e, &exponent) == T(0.5) && std::isfinite(T(1) / e)) {
    const T r = T(1) / e;
    for (int64_t j = 0; j < n; ++j) y[j] = static_cast<scalar_t>(level_of(static_cast<T>(x[j]) * r - mu));
  } else {
    for (int64_t j = 0; j < n; ++j) y[j] = static_cast<scalar_t>(level_of(static_cast<T>(x[j]) / e - mu));
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace anacuda
