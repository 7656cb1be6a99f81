// Alpha-blending forward on the CPU.
#include <torch/library.h>

#include "../common/functors.h"
#include "loops.h"
#include "small_grid.h"

namespace anacuda {
namespace {

at::Tensor alpha_blend_cpu(const at::Tensor& w_, const at::Tensor& levels, const at::Tensor& thresholds,
                           bool uniform_grid, const at::Tensor& eps, const at::Tensor& alpha) {
  check_input(w_, "weight");
  const at::Tensor w = w_.contiguous();
  at::Tensor y = at::empty(w.sizes(), w.options());
  ANACUDA_DISPATCH_FLOATING(w.scalar_type(), "anacuda::alpha_blend", [&] {
    using T = at::opmath_type<scalar_t>;
    auto args = make_blend_args<T>(w, levels, thresholds, uniform_grid, eps, alpha);
    if (w.numel() == 0) return;
    SmallGrid<T> sg;
    if (make_small_grid(args.grid, sg)) {
      small_alpha_blend(sg, w.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), w.numel(), args.eps,
                        args.alpha.value);
      return;
    }
    AlphaBlend<T> op{};
    op.p = args;
    cpu_unary<scalar_t, scalar_t>(w.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), w.numel(), op);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(anacuda, CPU, m) { m.impl("alpha_blend", &alpha_blend_cpu); }

}  // namespace anacuda
