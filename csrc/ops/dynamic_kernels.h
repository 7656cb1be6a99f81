// The reduction kernels of the dynamic scales (SPEC §9): cpu/dynamic_eps.cpp and
// cuda/dynamic_eps.cu, called by the host entries in ops/dynamic.cpp. Apart from the elementwise
// kernel tables (device_kernels.h): one reduction, the same on both CPU paths.
#pragma once

#include <ATen/ATen.h>

#include "../common/dynamic_scale.h"

namespace anacuda {

struct ScaleCall {
  ScaleRows rows;
  bool mean = false;
  double r_min = 1e-5, reach = 1;
};

// eps[m] (M values in the compute type) of the rows of x, contiguous (M, L).
void dynamic_eps_cpu(const ScaleCall& c, const at::Tensor& x, const at::Tensor& eps);
#if ANACUDA_WITH_CUDA
void dynamic_eps_cuda(const ScaleCall& c, const at::Tensor& x, const at::Tensor& eps);
#endif

inline void dynamic_eps_kernel(const ScaleCall& c, const at::Tensor& x, const at::Tensor& eps) {
#if ANACUDA_WITH_CUDA
  if (x.is_cuda()) return dynamic_eps_cuda(c, x, eps);
#endif
  TORCH_CHECK(x.is_cpu(), "anacuda: no kernels for device ", x.device());
  dynamic_eps_cpu(c, x, eps);
}

}  // namespace anacuda
