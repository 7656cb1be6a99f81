// One device's kernels, one function per op: each dispatches on the dtype and runs its loops
// (cpu/paths.h, cuda/kernels.cu). The host entries (ops/*.cpp) call them with checked arguments,
// tensors contiguous in the input's memory order (ops/memory_order.h), fresh outputs, and at
// least one element.
#pragma once

#include <ATen/ATen.h>

#include "call.h"

namespace anacuda {

struct DeviceKernels {
  const char* name;
  void (*ana)(const AnaCall& c, const at::Tensor& x, const at::Tensor& y);
  void (*ana_backward)(const AnaCall& c, const at::Tensor& grad, const at::Tensor& x, const at::Tensor& grad_x);
  void (*ana_code)(const AnaCall& c, const at::Tensor& x, const at::Tensor& code);
  void (*ana_backward_code)(const CodeBackwardCall& c, const at::Tensor& grad, const at::Tensor& code,
                            const at::Tensor& grad_x);
  // y and code in one pass over x; false where this device has no such pass for the call (the
  // host entry then runs ana and ana_code).
  bool (*ana_coded)(const AnaCall& c, const at::Tensor& x, const at::Tensor& y, const at::Tensor& code);
  void (*alpha_blend)(const BlendCall& c, const at::Tensor& w, const at::Tensor& y);
};

const DeviceKernels& cpu_kernels();  // cpu/kernel_table.cpp
#if ANACUDA_WITH_CUDA
const DeviceKernels& cuda_kernels();  // cuda/kernels.cu
#endif

inline const DeviceKernels& kernels_for(const at::Device& d) {
#if ANACUDA_WITH_CUDA
  if (d.is_cuda()) return cuda_kernels();
#endif
  TORCH_CHECK(d.is_cpu(), "anacuda: no kernels for device ", d);
  return cpu_kernels();
}

}  // namespace anacuda
