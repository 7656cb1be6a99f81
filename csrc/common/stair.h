// The quantiser walk and the per-element ANA formulas (SPEC §1, §4, §5), shared by the CPU
// loops and the CUDA kernels.
//
// Every function works on a = u - mu (u = x / eps, thresholds already in units of eps) and
// visits only the thresholds inside the noise's reach [a - R, a + R] (R = radius * sigma):
// thresholds below it are fully on (F = 1, f = 0), thresholds above it fully off. On a
// uniform grid the window is found by arithmetic, on any other grid by binary search, so
// the work per element does not grow with the number of levels.
#pragma once

#include "noise.h"
#include "philox.h"

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
      e = e < T(0) ? T(0) : (e > T(K) ? T(K) : e);  // also maps +-inf into range
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
  const T R = L::radius() * sigma, inv_sigma = T(1) / sigma;
  const int64_t lo = g.count_le(a - R), hi = g.count_le(a + R);
  T y = g.q[lo];
  for (int64_t t = lo; t < hi; ++t) y += (g.q[t + 1] - g.q[t]) * L::cdf((a - g.theta[t]) * inv_sigma);
  return y;
}

// Mode: the most likely level; the upper one on a tie. p_k = P_{k-1} - P_k with P_t the
// probability that step t is on; when both are near 1 the same difference is taken from the
// upper tails (1 - P = F(-z) by symmetry), so tiny sigma and 8-bit grids lose nothing.
template <NoiseKind N, typename T>
C10_HOST_DEVICE inline T mode_stair(const Grid<T>& g, T a, T sigma) {
  if (a != a) return a;
  using L = Noise<N, T>;
  const T R = L::radius() * sigma, inv_sigma = T(1) / sigma;
  const int64_t lo = g.count_le(a - R), hi = g.count_le(a + R);
  // Threshold lo - 1 (or none) is fully on: P = 1, upper tail 0.
  T p_prev = T(1), s_prev = T(0);
  T best_p = T(-1);
  int64_t best = lo;
  for (int64_t k = lo; k <= hi; ++k) {
    T p = T(0), s = T(1);  // threshold k: fully off when k == hi
    bool upper = false;    // z_k >= 0: take the difference from the upper tails
    if (k < hi) {
      T z = (a - g.theta[k]) * inv_sigma;
      upper = z >= T(0);
      T tail = L::cdf(upper ? -z : z);
      p = upper ? T(1) - tail : tail;
      s = upper ? tail : T(1) - tail;
    }
    T pk = upper ? s - s_prev : p_prev - p;
    if (pk >= best_p) { best_p = pk; best = k; }
    p_prev = p;
    s_prev = s;
  }
  return g.q[best];
}

// Random: Q(a + nu), nu = sigma * quantile(r) drawn by the caller's uniform r.
template <NoiseKind N, typename T>
C10_HOST_DEVICE inline T random_stair(const Grid<T>& g, T a, T sigma, T r) {
  if (a != a) return a;
  return g.q[g.count_le(a + sigma * Noise<N, T>::quantile(r))];
}

// Derivative of the smoothed stair: sum over the window of dq_t * f_sigma(a - theta_t).
template <NoiseKind N, typename T>
C10_HOST_DEVICE inline T stair_derivative(const Grid<T>& g, T a, T sigma) {
  if (a != a) return a;
  if (!(sigma > T(0))) return T(0);
  using L = Noise<N, T>;
  const T R = L::radius() * sigma, inv_sigma = T(1) / sigma;
  const int64_t lo = g.count_le(a - R), hi = g.count_le(a + R);
  T d = T(0);
  for (int64_t t = lo; t < hi; ++t) d += (g.q[t + 1] - g.q[t]) * L::pdf((a - g.theta[t]) * inv_sigma);
  return d * inv_sigma;
}

// ANA forward of one element (SPEC §4), u = x / eps. `smooth` is training && sigma > 0;
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
