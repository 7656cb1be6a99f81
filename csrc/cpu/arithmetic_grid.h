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
  return true;
}

// v[j] = Q(a[j]) (a NaN a[j] gives some level; the callers keep the NaN).
template <typename T> inline void arithmetic_levels(const ArithmeticGrid<T>& s, const T* a, int64_t n, T* v) {
  if (s.exact) {
    // Every t s is a float and rounding is monotone, so the estimate is never below the true
    // index n: it is n or n + 1, and one comparison corrects it. Outside the grid the clamp
    // decides, whatever that comparison gave (it moves the estimate by at most one, towards n).
    const T theta0 = s.theta0, step = s.step, inv_step = s.inv_step, last = s.last, q0 = s.q0, dq = s.dq;
    for (int64_t j = 0; j < n; ++j) {
      T i = std::floor((a[j] - theta0) * inv_step);
      i = a[j] < theta0 + i * step ? i - T(1) : i;
      i = std::min(std::max(i, T(-1)), last);
      v[j] = q0 + (i + T(1)) * dq;
    }
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

// y[j] = e * Q(x[j] / e - mu) (NaN kept) for an exact grid and one e, in one pass: shifted's
// quotient (a power-of-two e multiplies by its exact reciprocal), arithmetic_levels' exact
// branch and the output, the same operations in registers rather than three loops through
// block arrays, so the same bits.
template <typename scalar_t, typename T>
inline void exact_hard_block(const ArithmeticGrid<T>& s, const scalar_t* x, scalar_t* y, int64_t n, T e, T mu) {
  const T theta0 = s.theta0, step = s.step, inv_step = s.inv_step, last = s.last, q0 = s.q0, dq = s.dq;
  auto level_of = [=](T a) {
    T i = std::floor((a - theta0) * inv_step);
    i = a < theta0 + i * step ? i - T(1) : i;
    i = std::min(std::max(i, T(-1)), last);
    return a != a ? a : e * (q0 + (i + T(1)) * dq);
  };
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
