// The host entry of alpha_blend for every device (as ops/ana.cpp): checks, an output in the
// weight's memory format, the device's kernel.
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "device_kernels.h"
#include "host_args.h"

namespace anacuda {
namespace {

at::Tensor alpha_blend(const at::Tensor& w, const at::Tensor& levels, const at::Tensor& thresholds, bool uniform_grid,
                       const at::Tensor& eps, const at::Tensor& alpha) {
  check_input(w, "weight");
  const MemoryOrder order = memory_order(w);
  BlendCall call;
  call.grid = grid_arg(levels, thresholds, uniform_grid, w);
  call.eps = eps_arg(eps, w, order);
  call.alpha = scalar_arg(alpha, w, "alpha", Range::ZeroToOne);
  const c10::OptionalDeviceGuard guard(w.device());
  at::Tensor y = order.empty(w, w.scalar_type());
  if (w.numel() > 0) kernels_for(w.device()).alpha_blend(call, order.contiguous(w), order.view(y));
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(anacuda, CPU, m) { m.impl("alpha_blend", &alpha_blend); }
#if ANACUDA_WITH_CUDA
TORCH_LIBRARY_IMPL(anacuda, CUDA, m) { m.impl("alpha_blend", &alpha_blend); }
#endif

}  // namespace anacuda
