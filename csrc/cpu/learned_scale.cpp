// The CPU kernels of a learned scale (SPEC §8): the functors of common/learned_scale.h in the
// loop structure of the CUDA kernels (cuda/learned_scale.cu), task by task, lane by lane, so that
// the sums have the GPU's order and the same bits whatever the number of threads. Compiled once,
// for the baseline instruction set. LSQ and its relatives take the fast path of learned_fast.h
// first (per instruction set, in the same order, so the same bits).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../common/dispatch.h"
#include "../common/learned_scale.h"
#include "../ops/learned_scale_kernels.h"
#include "eps_partials.h"
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

void ana(const AnaCall& c, const EpsReduction& r, bool elementwise, const at::Tensor& grad, const at::Tensor& x,
         const at::Tensor& gx, const at::Tensor& ge) {
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::_ana_backward_eps", [&] {
    using T = at::opmath_type<scalar_t>;
    if (cpu_only_kernels().ana_eps_grad(c, r, elementwise, grad, x, gx, ge)) return;  // learned_fast.h
    const AnaParams<T> p = c.forward<T>(), pb = c.backward<T>();
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
