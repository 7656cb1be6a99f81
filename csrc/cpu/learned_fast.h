// CPU fast path of a learned eps's backward (SPEC §8) for LSQ and its relatives: a hard forward
// (no noise, or mode with a narrow compact one) and a uniform backward noise, one eps per channel
// whose elements are contiguous. Not on the functor path. A piece of a channel is cut into blocks
// of kLanes consecutive elements, element l of a block being lane l as in learned_scale.cpp's
// eps_grad_loop, so the sums are the same bits. In a block, Q is found by level_values (few
// thresholds) or by arithmetic (arithmetic_grid.h: an even grid of any size), and the
// derivative is the sum of the boxes holding u - mu_b over the thresholds (few), or, where the
// boxes tile [lower_0, upper_K-1) with equal terms (LSQ's sigma_b = half a step on an even grid),
// that one term inside and 0 outside: the same sum, for any K. LSQ itself in float under AVX-512
// (a unit grid, arithmetic_grid.h) runs all of it in one pass, in registers: lsq_unit_block.
// False: the functors compute it.
#pragma once

#include "all_thresholds.h"
#include "eps_partials.h"

namespace anacuda {
namespace CPU_CAPABILITY {

#if defined(CPU_CAPABILITY_AVX512)
// The loops of eps_grad_fast below on a unit grid (arithmetic_grid.h) with mu = mu_b = 0, float,
// fused and 16 lanes at a time, the same operations, so the same bits: the level by
// unit_levels; outside the boxes (+-inf included) d = 0 and the term is the level itself, as
// the functor's; a NaN gives NaN in both gradients (its level is NaN, and d is NaN for grad_x).
inline void lsq_unit_block(const ArithmeticGrid<float>& s, const float* x, const float* g, float* gx, int64_t n,
                           float e, float lower, float upper, float inside, float* acc) {
  const __m512 ev = _mm512_set1_ps(e), q0 = _mm512_set1_ps(s.q0), qK = _mm512_set1_ps(s.q0 + (s.last + 1.0f));
  const __m512 lo = _mm512_set1_ps(lower), hi = _mm512_set1_ps(upper), in = _mm512_set1_ps(inside);
  // Lane results: acc's term and the gradient of x (masked loads and stores only at the tail:
  // on AMD Zen 4 a masked store delays the loads that follow it).
  const auto lane = [&](__m512 xv, __m512 gv, __m512 av, __m512& dx) {
    const __m512 u = _mm512_div_ps(xv, ev), v = unit_levels(u, q0, qK);
    // u in [lower, upper) or NaN; u - u is 0 there, NaN for a NaN.
    const __mmask16 box = _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(u, lo, _CMP_NLT_UQ), u, hi, _CMP_NGE_UQ);
    const __m512 term = _mm512_sub_ps(v, _mm512_maskz_mul_ps(box, u, in));  // v - u * d, d = inside or 0
    dx = _mm512_mul_ps(gv, _mm512_maskz_add_ps(box, in, _mm512_sub_ps(u, u)));
    return _mm512_add_ps(av, _mm512_mul_ps(gv, term));
  };
  __m512 dx;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    _mm512_storeu_ps(acc + j, lane(_mm512_loadu_ps(x + j), _mm512_loadu_ps(g + j), _mm512_loadu_ps(acc + j), dx));
    if (gx != nullptr) _mm512_storeu_ps(gx + j, dx);
  }
  if (j < n) {
    const __mmask16 m = tail_mask(n - j);
    const __m512 av = lane(_mm512_maskz_loadu_ps(m, x + j), _mm512_maskz_loadu_ps(m, g + j),
                           _mm512_maskz_loadu_ps(m, acc + j), dx);
    _mm512_mask_storeu_ps(acc + j, m, av);
    if (gx != nullptr) _mm512_mask_storeu_ps(gx + j, m, dx);
  }
}
#endif

template <typename scalar_t, typename T>
bool eps_grad_fast(const AnaCall& c, const AnaParams<T>& p, const AnaParams<T>& pb, const EpsReduction& r,
                   bool elementwise, const scalar_t* g, const scalar_t* x, scalar_t* gx, T* ge) {
  const T mu = p.mu.value, sigma = p.sigma.value, mu_b = pb.mu.value, sigma_b = pb.sigma.value;
  const int64_t K = p.grid.K, m = r.per_channel();
  const bool hard = mode_is_hard(c, p) || !(c.training && sigma > T(0));
  if (cpu_runs_functors() || elementwise || !hard || c.noise_b.kind != NoiseKind::Uniform || !(sigma_b > T(0)) ||
      !valid_noise(mu, sigma) || !valid_noise(mu_b, sigma_b) || m == 0 || K == 0 ||
      !(r.outer == 1 || (r.inner == 1 && r.channels == 1)))
    return false;
  ThresholdTable<T> table;
  ArithmeticGrid<T> arithmetic;
  const bool few = make_threshold_table(p.grid, table);
  if (!few && !make_arithmetic_grid(p.grid, arithmetic)) return false;
  // The boxes: tiling (one term h on [lower, upper)) or, for few thresholds, summed one by one.
  const Box<T> first(p.grid.theta[0], sigma_b), last(p.grid.theta[K - 1], sigma_b);
  const T h = box_term(p.grid.q, 0), lower = first.lower, upper = last.upper;
  bool tiles = true;
  for (int64_t t = 0; t + 1 < K && tiles; ++t)
    tiles = Box<T>(p.grid.theta[t], sigma_b).upper == Box<T>(p.grid.theta[t + 1], sigma_b).lower &&
            box_term(p.grid.q, t + 1) == h;
  tiles = tiles && lower < upper;
  if (!tiles && !few) return false;
  T box_lower[kTableMaxK], box_upper[kTableMaxK], box_h[kTableMaxK];
  for (int t = 0; few && t < K; ++t) {
    const Box<T> box(p.grid.theta[t], sigma_b);
    box_lower[t] = box.lower;
    box_upper[t] = box.upper;
    box_h[t] = box_term(p.grid.q, t);
  }
  for (int64_t ch = 0; ch < r.channels; ++ch)
    if (!valid_eps(p.eps.at(r.element(ch, 0)))) return false;  // NaN outputs: the functors say where
  const Standardize<T> z(sigma_b);
  const T inf = std::numeric_limits<T>::infinity();
  const bool inverse = z.inv < inf;  // Standardize's choice, made once
  // LSQ itself (lsq_unit_block): boxes that tile a unit grid, mu = mu_b = 0 (ternary and 2 bits
  // too: the table takes their levels by selects, lsq_unit_block by arithmetic).
  if (few && !table.arithmetic) make_arithmetic_grid(p.grid, arithmetic);
  const ArithmeticGrid<T>* grid = few && table.arithmetic ? &table.ag : &arithmetic;
  [[maybe_unused]] const bool unit = tiles && grid->unit && mu == T(0) && mu_b == T(0);
  [[maybe_unused]] const T inside = inverse ? h * z.inv : h / z.sigma;  // z(h), d inside the boxes
  const int64_t pieces = r.pieces();
  std::vector<T> partial(r.tasks());
  at::parallel_for(0, r.tasks(), 4, [&](int64_t begin, int64_t end) {
    // Everything the loops read in locals, not through the captures: the loops then vectorise.
    const T lo = lower, hi = upper, ht = h, zinv = z.inv, zsigma = z.sigma, infinity = inf, mu_f = mu, mu_bk = mu_b;
    T acc[kLanes], u[kLanes], a[kLanes], v[kLanes], d[kLanes];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t ch = task / pieces, start = (task % pieces) * kPiece, stop = std::min(m, start + kPiece);
      const T e = p.eps.at(r.element(ch, 0));
      std::fill(acc, acc + kLanes, T(0));
      for (int64_t j0 = start; j0 < stop; j0 += kLanes) {
        const int64_t len = std::min<int64_t>(kLanes, stop - j0), i0 = r.element(ch, j0);
        const scalar_t *xi = x + i0, *gi = g + i0;
#if defined(CPU_CAPABILITY_AVX512)
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (unit) {
            lsq_unit_block(*grid, xi, gi, gx == nullptr ? nullptr : gx + i0, len, e, lo, hi, inside, acc);
            continue;
          }
        }
#endif
        for (int64_t l = 0; l < len; ++l) {
          u[l] = static_cast<T>(xi[l]) / e;
          a[l] = u[l] - mu_f;
        }
        if (few) level_values(table, a, len, v);
        else arithmetic_levels(arithmetic, a, len, v);
        for (int64_t l = 0; l < len; ++l) {
          v[l] = a[l] != a[l] ? a[l] : v[l];  // hard_stair keeps a NaN
          a[l] = u[l] - mu_bk;
        }
        if (tiles) {
          for (int64_t l = 0; l < len; ++l) {
            const T in = (a[l] >= lo && a[l] < hi) ? ht : T(0);
            d[l] = a[l] != a[l] ? a[l] : in;
          }
        } else {
          for (int64_t l = 0; l < len; ++l) d[l] = a[l] != a[l] ? a[l] : T(0);
          for (int t = 0; t < K; ++t) {
            const T bl = box_lower[t], bu = box_upper[t], bh = box_h[t];
            for (int64_t l = 0; l < len; ++l) d[l] += (a[l] >= bl && a[l] < bu) ? bh : T(0);  // Box::holds
          }
        }
        if (inverse)  // z(d), Standardize's choice made once
          for (int64_t l = 0; l < len; ++l) d[l] = d[l] * zinv;
        else
          for (int64_t l = 0; l < len; ++l) d[l] = d[l] / zsigma;
        for (int64_t l = 0; l < len; ++l) {
          const T gv = static_cast<T>(gi[l]);
          const T term = (u[l] == infinity || u[l] == -infinity) ? v[l] : v[l] - u[l] * d[l];  // never inf * 0
          acc[l] += gv * term;
          u[l] = gv * d[l];  // grad_x
        }
        if (gx != nullptr) {
          scalar_t* out = gx + i0;
          for (int64_t l = 0; l < len; ++l) out[l] = static_cast<scalar_t>(u[l]);
        }
      }
      tree_sum(acc);
      partial[task] = acc[0];
    }
  });
  sum_partials(r, partial, ge);
  return true;
}

bool ana_eps_grad(const AnaCall& c, const EpsReduction& r, bool elementwise, const at::Tensor& grad,
                  const at::Tensor& x, const at::Tensor& gx, const at::Tensor& ge) {
  bool done = false;
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::_ana_backward_eps", [&] {
    using T = at::opmath_type<scalar_t>;
    done = eps_grad_fast<scalar_t>(c, c.forward<T>(), c.backward<T>(), r, elementwise, grad.const_data_ptr<scalar_t>(),
                                   x.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(), ge.mutable_data_ptr<T>());
  });
  return done;
}

}  // namespace CPU_CAPABILITY
}  // namespace anacuda
