// Alpha-blending forward on CUDA.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/functors.h"
#include "loops.cuh"

namespace anacuda {
namespace {

at::Tensor alpha_blend_cuda(const at::Tensor& w_, const at::Tensor& levels, const at::Tensor& thresholds,
                            bool uniform_grid, const at::Tensor& eps, const at::Tensor& alpha) {
  check_input(w_, "weight");
  c10::cuda::CUDAGuard guard(w_.device());
  const at::Tensor w = aligned_contiguous(w_);
  at::Tensor y = at::empty(w.sizes(), w.options());
  ANACUDA_DISPATCH_FLOATING(w.scalar_type(), "anacuda::alpha_blend", [&] {
    using T = at::opmath_type<scalar_t>;
    auto args = make_blend_args<T>(w, levels, thresholds, uniform_grid, eps, alpha);
    if (w.numel() == 0) return;
    AlphaBlend<T> op{};
    op.p = args;
    launch_unary<scalar_t, scalar_t>(w, y, op);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(anacuda, CUDA, m) { m.impl("alpha_blend", &alpha_blend_cuda); }

}  // namespace anacuda
