// The CPU kernels of a learned scale (SPEC §8): the functors of common/learned_scale.h in the
// loop structure of the CUDA kernels (cuda/learned_scale.cu), task by task, lane by lane, so that
// the sums have the GPU's order and the same bits whatever the number of threads. Compiled once,
// for the baseline instruction set. The fast path differs from the functors (the GPU's code) in
// one place: a mode forward that is the hard stair (all_thresholds.h's rule) is computed as one.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../common/dispatch.h"
#include "../common/learned_scale.h"
#include "../ops/learned_scale_kernels.h"
#include "kernel_table.h"

namespace anacuda {
namespace {

// op's Philox word of element i, the block cached across neighbouring elements.
template <typename Op> struct Words {
  uint64_t block = ~uint64_t(0);
  Philox4 w{};
  uint32_t operator()(const Op& op, int64_t i) {
    if constexpr (!Op::kRandom) {
      return 0;
    } else {
      if (philox_block_of(i) != block) {
        block = philox_block_of(i);
        w = philox4x32_10(block, op.stream, op.seed);
      }
      return w.w[philox_lane_of(i)];
    }
  }
};

// The second pass: each channel's partials summed over kLanes lanes, pairwise, into ge.
template <typename T> void sum_partials(const EpsReduction& r, const std::vector<T>& partial, T* ge) {
  const int64_t pieces = r.pieces();
  at::parallel_for(0, r.channels, std::max<int64_t>(1, kPiece / pieces), [&](int64_t begin, int64_t end) {
    T acc[kLanes];
    for (int64_t c = begin; c < end; ++c) {
      std::fill(acc, acc + kLanes, T(0));
      for (int64_t k = 0; k < pieces; ++k) acc[k & (kLanes - 1)] += partial[c * pieces + k];
      tree_sum(acc);
      ge[c] = acc[0];
    }
  });
}

// grad_x (where gx is not null) and eps's gradient (EpsReduction, or each element's share).
template <typename scalar_t, typename Op>
void eps_grad_loop(Op op, const EpsReduction& r, bool elementwise, const scalar_t* g, const scalar_t* x, scalar_t* gx,
                   at::opmath_type<scalar_t>* ge, int64_t n) {
  using T = at::opmath_type<scalar_t>;
  op.init();
  if (elementwise) {
    at::parallel_for(0, n, kPiece, [&](int64_t begin, int64_t end) {
      Words<Op> word;
      for (int64_t i = begin; i < end; ++i) {
        const EpsGrad<T> res = op(i, static_cast<T>(g[i]), static_cast<T>(x[i]), word(op, i));
        if (gx != nullptr) gx[i] = static_cast<scalar_t>(res.gx);
        ge[i] = res.ge;
      }
    });
    return;
  }
  const int64_t pieces = r.pieces(), m = r.per_channel();
  std::vector<T> partial(r.tasks());
  at::parallel_for(0, r.tasks(), 4, [&](int64_t begin, int64_t end) {
    T acc[kLanes];
    Words<Op> word;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task / pieces, start = (task % pieces) * kPiece, stop = std::min(m, start + kPiece);
      std::fill(acc, acc + kLanes, T(0));
      for (int64_t j = start; j < stop; ++j) {
        const int64_t i = r.element(c, j);
        const EpsGrad<T> res = op(i, static_cast<T>(g[i]), static_cast<T>(x[i]), word(op, i));
        if (gx != nullptr) gx[i] = static_cast<scalar_t>(res.gx);
        acc[(j - start) & (kLanes - 1)] += res.ge;
      }
      tree_sum(acc);
      partial[task] = acc[0];
    }
  });
  sum_partials(r, partial, ge);
}

// The fast path for LSQ and its relatives (not on the functor path): a hard forward (no noise, or
// mode with a narrow compact one) and a uniform backward noise on a grid of at most kFastMaxK
// thresholds, one eps per channel whose elements are contiguous. A piece is cut into blocks of
// kLanes consecutive elements, element l of a block being lane l as in eps_grad_loop, so the sums
// are the same bits; in each block Q is a chain of selects and the derivative the sum of the boxes
// holding u - mu_b, both over every threshold (cpu/all_thresholds.h's forms), in loops the
// compiler vectorises. False: the functors' loop computes it.
constexpr int64_t kFastMaxK = 32;

template <typename scalar_t, typename T>
bool eps_grad_fast(const AnaCall& c, const AnaParams<T>& p, const AnaParams<T>& pb, const EpsReduction& r,
                   bool elementwise, const scalar_t* g, const scalar_t* x, scalar_t* gx, T* ge) {
  const T mu = p.mu.value, sigma = p.sigma.value, mu_b = pb.mu.value, sigma_b = pb.sigma.value;
  const int64_t K = p.grid.K, m = r.per_channel();
  const bool hard = mode_is_hard(c, p) || !(c.training && sigma > T(0));
  if (cpu_runs_functors() || elementwise || !hard || c.noise_b.kind != NoiseKind::Uniform || K > kFastMaxK ||
      !(sigma_b > T(0)) || !valid_noise(mu, sigma) || !valid_noise(mu_b, sigma_b) || m == 0 ||
      !(r.outer == 1 || (r.inner == 1 && r.channels == 1)))
    return false;
  for (int64_t ch = 0; ch < r.channels; ++ch)
    if (!valid_eps(p.eps.at(r.element(ch, 0)))) return false;  // NaN outputs: the functors say where
  T theta[kFastMaxK], q[kFastMaxK + 1], h[kFastMaxK];
  for (int64_t t = 0; t < K; ++t) {
    theta[t] = p.grid.theta[t];
    h[t] = box_term(p.grid.q, t);
  }
  for (int64_t t = 0; t <= K; ++t) q[t] = p.grid.q[t];
  const Standardize<T> z(sigma_b);
  const T inf = std::numeric_limits<T>::infinity();
  const bool inverse = z.inv < inf;  // Standardize's choice, made once
  const int64_t pieces = r.pieces();
  std::vector<T> partial(r.tasks());
  at::parallel_for(0, r.tasks(), 4, [&](int64_t begin, int64_t end) {
    T acc[kLanes], u[kLanes], a[kLanes], v[kLanes], d[kLanes];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t ch = task / pieces, start = (task % pieces) * kPiece, stop = std::min(m, start + kPiece);
      const T e = p.eps.at(r.element(ch, 0));
      std::fill(acc, acc + kLanes, T(0));
      for (int64_t j0 = start; j0 < stop; j0 += kLanes) {
        const int64_t len = std::min<int64_t>(kLanes, stop - j0), i0 = r.element(ch, j0);
        for (int64_t l = 0; l < len; ++l) {
          u[l] = static_cast<T>(x[i0 + l]) / e;
          a[l] = u[l] - mu;
          v[l] = q[0];
        }
        for (int64_t t = 0; t < K; ++t) {  // invariants in locals, so that the loops vectorise
          const T th = theta[t], qt = q[t + 1];
          for (int64_t l = 0; l < len; ++l) v[l] = a[l] >= th ? qt : v[l];
        }
        for (int64_t l = 0; l < len; ++l) {
          v[l] = a[l] != a[l] ? a[l] : v[l];  // hard_stair keeps a NaN
          a[l] = u[l] - mu_b;
          d[l] = a[l] != a[l] ? a[l] : T(0);
        }
        for (int64_t t = 0; t < K; ++t) {
          const Box<T> box(theta[t], sigma_b);
          const T lower = box.lower, upper = box.upper, ht = h[t];
          for (int64_t l = 0; l < len; ++l) d[l] += (a[l] >= lower && a[l] < upper) ? ht : T(0);  // box.holds
        }
        for (int64_t l = 0; l < len; ++l) {
          d[l] = inverse ? d[l] * z.inv : d[l] / z.sigma;  // z(d)
          const T gv = static_cast<T>(g[i0 + l]);
          const T term = (u[l] == inf || u[l] == -inf) ? v[l] : v[l] - u[l] * d[l];  // never inf * 0
          acc[l] += gv * term;
          u[l] = gv * d[l];  // grad_x
        }
        if (gx != nullptr)
          for (int64_t l = 0; l < len; ++l) gx[i0 + l] = static_cast<scalar_t>(u[l]);
      }
      tree_sum(acc);
      partial[task] = acc[0];
    }
  });
  sum_partials(r, partial, ge);
  return true;
}

void ana(const AnaCall& c, const EpsReduction& r, bool elementwise, const at::Tensor& grad, const at::Tensor& x,
         const at::Tensor& gx, const at::Tensor& ge) {
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::_ana_backward_eps", [&] {
    using T = at::opmath_type<scalar_t>;
    const AnaParams<T> p = c.forward<T>(), pb = c.backward<T>();
    if (eps_grad_fast<scalar_t>(c, p, pb, r, elementwise, grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                gx.mutable_data_ptr<scalar_t>(), ge.mutable_data_ptr<T>()))
      return;
    const bool hard = mode_is_hard(c, p);
    dispatch_noise(c.noise.kind, [&](auto n) {
      dispatch_strategy(c.strategy, [&](auto st) {
        using Forward = AnaForward<decltype(n)::value, decltype(st)::value, T>;
        eps_grad_loop<scalar_t>(AnaEpsGrad<decltype(n)::value, decltype(st)::value, T>{Forward{p, c.training, hard}, pb,
                                                                                      c.noise_b.kind},
                                r, elementwise, grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                gx.mutable_data_ptr<scalar_t>(), ge.mutable_data_ptr<T>(), x.numel());
      });
    });
  });
}

void alpha_blend(const BlendCall& c, const EpsReduction& r, bool elementwise, const at::Tensor& grad,
                 const at::Tensor& w, const at::Tensor& ge) {
  ANACUDA_DISPATCH_FLOATING(w.scalar_type(), "anacuda::_alpha_blend_backward_eps", [&] {
    using T = at::opmath_type<scalar_t>;
    eps_grad_loop<scalar_t>(BlendEpsGrad<T>{AlphaBlend<T>{c.params<T>()}}, r, elementwise,
                            grad.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                            static_cast<scalar_t*>(nullptr), ge.mutable_data_ptr<T>(), w.numel());
  });
}

}  // namespace

const LearnedScaleKernels& cpu_learned_scale_kernels() {
  static const LearnedScaleKernels k = {&ana, &alpha_blend};
  return k;
}

}  // namespace anacuda
