// The reduction kernels of the dynamic scales (SPEC §9): cpu/dynamic_eps.cpp and
// cuda/dynamic_eps.cu, called by the host entries in ops/dynamic.cpp. Apart from the elementwise
// kernel tables (device_kernels.h): one reduction, the same on both CPU paths.
#pragma once

#include <ATen/ATen.h>

#include "../common/dynamic_scale.h"
#include "call.h"

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

// ana at the scale of rows in one pass over memory on the CPU: blocks of rows that fit in cache,
// each reduced and then quantised by one thread, so that the second read of x hits the cache.
// eps[m] scales row m of x (M, L), both row-major (rules per token or per channel), and is
// written here. False where it does not apply (a single row, rows too long to stay in cache, the
// random strategy, whose samples are numbered from the tensor's start): the caller then runs
// the two kernels. The same bits either way.
bool ana_dynamic_rows_cpu(const AnaCall& call, const ScaleCall& c, const at::Tensor& x, const at::Tensor& eps,
                          const at::Tensor& y);
#if ANACUDA_WITH_CUDA
// The same on CUDA: one kernel, a block per row, for rows of at most 4096 elements under a max rule
// (cuda/dynamic_eps.cu); x is read once.
bool ana_dynamic_rows_cuda(const AnaCall& call, const ScaleCall& c, const at::Tensor& x, const at::Tensor& eps,
                           const at::Tensor& y);
#endif

inline bool ana_dynamic_rows(const AnaCall& call, const ScaleCall& c, const at::Tensor& x, const at::Tensor& eps,
                             const at::Tensor& y) {
#if ANACUDA_WITH_CUDA
  if (x.is_cuda()) return ana_dynamic_rows_cuda(call, c, x, eps, y);
#endif
  return x.is_cpu() && ana_dynamic_rows_cpu(call, c, x, eps, y);
}

inline void dynamic_eps_kernel(const ScaleCall& c, const at::Tensor& x, const at::Tensor& eps) {
#if ANACUDA_WITH_CUDA
  if (x.is_cuda()) return dynamic_eps_cuda(c, x, eps);
#endif
  TORCH_CHECK(x.is_cpu(), "anacuda: no kernels for device ", x.device());
  dynamic_eps_cpu(c, x, eps);
}

}  // namespace anacuda
