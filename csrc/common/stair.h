// The quantiser walk and the per-element ANA formulas (SPEC §1, §4, §5 of docs/semantics.md),
// shared by the CPU loops and the CUDA kernels.
//
// Every function works on a = u - mu (u = x / eps, thresholds already in units of eps) and
// visits only the thresholds inside the noise's reach [a - R, a + R] (R = radius * sigma):
// thresholds below it are fully on (F = 1, f = 0), thresholds above it fully off. On a
// uniform grid the window is found by arithmetic, on any other grid by binary search, so
// the work per element does not grow with the number of levels.
#pragma once

#include "noise.h"
#include "philox.h"

#include <limits>

namespace anacuda {

template <typename T> struct Grid {
  const T* theta;  // K thresholds, strictly increasing
  const T* q;      // K + 1 levels
  int64_t K;
  bool uniform;    // thresholds equally spaced: locate by arithmetic
  T theta0, inv_step;

  // Number of thresholds t with theta[t] <= a (so Q(a) = q[count_le(a)]); a must not be NaN.
  C10_HOST_DEVICE inline int64_t count_le(T a) const {
    if (uniform) {
      // An estimate by arithmetic, then exact comparisons against the stored thresholds
      // (an input exactly on a threshold goes up, whatever the rounding of the estimate).
      T e = (a - theta0) * inv_step + T(1);
      e = e >= T(0) ? (e <= T(K) ? e : T(K)) : T(0);  // maps +-inf, and NaN (a degenerate grid), into range
      int64_t j = static_cast<int64_t>(e);
      while (j < K && theta[j] <= a) ++j;
      while (j > 0 && theta[j - 1] > a) --j;
      return j;
    }
    int64_t lo = 0, hi = K;  // first index with theta > a
    while (lo < hi) {
      int64_t mid = (lo + hi) >> 1;
      if (theta[mid] <= a) lo = mid + 1; else hi = mid;
    }
    return lo;
  }
};

// The step of the stair at threshold t: q_{t+1} - q_t.
template <typename T> C10_HOST_DEVICE inline T level_step(const T* q, int64_t t) { return q[t + 1] - q[t]; }

// Thresholds [lo, hi) that the noise can reach from a (|a - theta| <= R), widened by one on
// each side: the formulas then decide the edge cases in exact comparisons, not the rounding of
// a -+ R. Thresholds below lo are fully on, from hi on fully off.
template <typename T> C10_HOST_DEVICE inline void window(const Grid<T>& g, T a, T R, int64_t& lo, int64_t& hi) {
  lo = g.count_le(a - R);
  hi = g.count_le(a + R);
  lo = lo > 0 ? lo - 1 : 0;
  hi = hi < g.K ? hi + 1 : g.K;
}

// Hard stair Q(a).
template <typename T> C10_HOST_DEVICE inline T hard_stair(const Grid<T>& g, T a) {
  if (a != a) return a;
  return g.q[g.count_le(a)];
}

// Expectation: q[lo] + sum over the window of dq_t * F((a - theta_t) / sigma).
template <NoiseKind N, typename T>
C10_HOST_DEVICE inline T smooth_stair(const Grid<T>& g, T a, T sigma) {
  if (a != a) return a;
  using L = Noise<N, T>;
  const T R = L::radius() * sigma;
  const Standardize<T> z(sigma);
  int64_t lo, hi;
  window(g, a, R, lo, hi);
  T y = g.q[lo];
  for (int64_t t = lo; t < hi; ++t) y += level_step(g.q, t) * L::cdf(z(a - g.theta[t]));
  return y;
}

// Mode: the most likely level; the upper one on a tie. p_k = P_{k-1} - P_k, with P_t the
// probability that step t is on, is taken in the form that loses nothing to rounding: from
// the upper tails (1 - P = F(-z)) when both steps are likely on, from the lower tails when
// both are likely off, and from the centred CDF (F - 1/2) across z = 0. Two neighbours whose
// probabilities are equal to within rounding (a hair from a threshold, or exactly on one) are
// told apart by their exact difference p_k - p_{k-1} = 2 C(z_{k-1}) + F(-z_{k-2}) - F(z_k).
template <NoiseKind N, typename T>
C10_HOST_DEVICE inline T mode_stair(const Grid<T>& g, T a, T sigma) {
  if (a != a) return a;
  using L = Noise<N, T>;
  const T R = L::radius() * sigma;
  const Standardize<T> standardize(sigma);
  const T inf = std::numeric_limits<T>::infinity();
  int64_t lo, hi;
  window(g, a, R, lo, hi);
  T z_prev2 = inf, z_prev = inf;  // thresholds lo - 2, lo - 1 (or none): fully on
  T best_p = T(-1);
  int64_t best = lo;
  for (int64_t k = lo; k <= hi; ++k) {
    const T z = k < hi ? standardize(a - g.theta[k]) : -inf;
    T pk;
    if (z >= T(0)) pk = L::cdf(-z) - L::cdf(-z_prev);       // both on: upper tails
    else if (z_prev < T(0)) pk = L::cdf(z_prev) - L::cdf(z);  // both off: lower tails
    else pk = L::centered(z_prev) - L::centered(z);           // across 0
    bool take = pk >= best_p;
    const T margin = T(8) * std::numeric_limits<T>::epsilon() * (pk > best_p ? pk : best_p);
    if (best == k - 1 && pk - best_p <= margin && best_p - pk <= margin)  // a near-tie: decide exactly
      take = T(2) * L::centered(z_prev) + L::cdf(-z_prev2) - L::cdf(z) >= T(0);
    if (take) { best_p = pk; best = k; }
    z_prev2 = z_prev;
    z_prev = z;
  }
  return g.q[best];
}

// The random strategy's noisy point: a + sigma * nu, nu a draw of the standardised noise.
template <typename T> C10_HOST_DEVICE inline T noisy(T a, T sigma, T nu) { return a + sigma * nu; }

// Random: Q(a + sigma * nu), nu = quantile(r) drawn by the caller's uniform r.
template <NoiseKind N, typename T>
C10_HOST_DEVICE inline T random_stair(const Grid<T>& g, T a, T sigma, T r) {
  if (a != a) return a;
  return g.q[g.count_le(noisy(a, sigma, Noise<N, T>::quantile(r)))];
}

// The box of a uniform noise of half-width sigma around a threshold: it holds a iff
// theta - sigma <= a < theta + sigma, half-open so that neighbouring boxes whose edges coincide
// tile exactly (the edges are compared, not a - theta, which would round differently on either
// side). As the thresholds increase, the boxes a has reached and the boxes it has passed are
// each a prefix [0, n): the boxes holding a are [passed, reached).
template <typename T> struct Box {
  T lower, upper;
  C10_HOST_DEVICE inline Box(T theta, T sigma) : lower(theta - sigma), upper(theta + sigma) {}
  C10_HOST_DEVICE inline bool reached(T a) const { return a >= lower; }
  C10_HOST_DEVICE inline bool passed(T a) const { return a >= upper; }
  C10_HOST_DEVICE inline bool holds(T a) const { return a >= lower && a < upper; }
};

// Box t's term of the uniform noise's stair derivative (before the division by sigma): its
// step times the density 1/2.
template <typename T> C10_HOST_DEVICE inline T box_term(const T* q, int64_t t) { return level_step(q, t) * T(0.5); }

// The sum of the terms of the boxes [lo, hi), in threshold order.
template <typename T> C10_HOST_DEVICE inline T box_sum(const T* q, int64_t lo, int64_t hi) {
  T d = T(0);
  for (int64_t t = lo; t < hi; ++t) d += box_term(q, t);
  return d;
}

// Derivative of the smoothed stair: sum over the window of dq_t * f_sigma(a - theta_t); for the
// uniform noise, the sum over the boxes holding a.
template <NoiseKind N, typename T>
C10_HOST_DEVICE inline T stair_derivative(const Grid<T>& g, T a, T sigma) {
  if (a != a) return a;
  if (!(sigma > T(0))) return T(0);
  using L = Noise<N, T>;
  const T R = L::radius() * sigma;
  const Standardize<T> z(sigma);
  int64_t lo, hi;
  window(g, a, R, lo, hi);
  if constexpr (N == NoiseKind::Uniform) {
    int64_t passed = lo, reached = lo;
    for (int64_t t = lo; t < hi; ++t) {
      const Box<T> box(g.theta[t], sigma);
      passed += box.passed(a);
      reached += box.reached(a);
    }
    return z(box_sum(g.q, passed, reached));
  } else {
    T d = T(0);
    for (int64_t t = lo; t < hi; ++t) d += level_step(g.q, t) * L::pdf(z(a - g.theta[t]));
    return z(d);
  }
}

// ANA forward of one element (SPEC §4), u = x / eps. `smooth` is training && sigma > 0 (and not a
// mode known to be the hard stair, AnaForward::hard);
// `word` is the element's Philox word (random strategy only).
template <NoiseKind N, Strategy S, typename T>
C10_HOST_DEVICE inline T ana_element(const Grid<T>& g, T u, T mu, T sigma, bool smooth, uint32_t word) {
  const T a = u - mu;
  if (!smooth) return hard_stair(g, a);
  if constexpr (S == Strategy::Expectation) return smooth_stair<N>(g, a, sigma);
  else if constexpr (S == Strategy::Mode) return mode_stair<N>(g, a, sigma);
  else return random_stair<N>(g, a, sigma, uniform_open<T>(word));
}

}  // namespace anacuda
