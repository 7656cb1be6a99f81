// Alpha-blending forward on the CPU (the loop: kernels_impl.h).
#include <torch/library.h>

#include "../common/args.h"
#include "kernels.h"

namespace anacuda {
namespace {

at::Tensor alpha_blend_cpu(const at::Tensor& w_, const at::Tensor& levels, const at::Tensor& thresholds,
                           bool uniform_grid, const at::Tensor& eps, const at::Tensor& alpha) {
  check_input(w_, "weight");
  const at::Tensor w = w_.contiguous();
  at::Tensor y = at::empty(w.sizes(), w.options());
  cpu_kernels().alpha_blend(w, y, levels, thresholds, uniform_grid, eps, alpha);
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(anacuda, CPU, m) { m.impl("alpha_blend", &alpha_blend_cpu); }

}  // namespace anacuda
