// One device's kernels of a learned scale (SPEC §8; common/learned_scale.h), a table of their
// own beside device_kernels.h: cpu/learned_scale.cpp, cuda/learned_scale.cu. The host entry
// (ops/learned_scale.cpp) passes tensors contiguous in the input's memory order, fresh outputs
// and at least one element. `ge`, in the compute type: eps's gradient per channel of `r`, or,
// when `elementwise`, every element's share (reduced by the host entry).
#pragma once

#include <ATen/ATen.h>

#include "../common/learned_scale.h"
#include "call.h"

namespace anacuda {

struct LearnedScaleKernels {
  // grad_x into gx and eps's gradient into ge.
  void (*ana)(const AnaCall& c, const EpsReduction& r, bool elementwise, const at::Tensor& grad, const at::Tensor& x,
              const at::Tensor& gx, const at::Tensor& ge);
  // eps's gradient of alpha-blending into ge.
  void (*alpha_blend)(const BlendCall& c, const EpsReduction& r, bool elementwise, const at::Tensor& grad,
                      const at::Tensor& w, const at::Tensor& ge);
};

const LearnedScaleKernels& cpu_learned_scale_kernels();  // cpu/learned_scale.cpp
#if ANACUDA_WITH_CUDA
const LearnedScaleKernels& cuda_learned_scale_kernels();  // cuda/learned_scale.cu
#endif

inline const LearnedScaleKernels& learned_scale_kernels_for(const at::Device& d) {
#if ANACUDA_WITH_CUDA
  if (d.is_cuda()) return cuda_learned_scale_kernels();
#endif
  TORCH_CHECK(d.is_cpu(), "anacuda: no kernels for device ", d);
  return cpu_learned_scale_kernels();
}

}  // namespace anacuda
