// The CPU kernels behind the ops, compiled once per instruction set (isa_default.cpp and, on
// x86-64, isa_avx2.cpp, both from kernels_impl.h) and chosen at run time the way ATen chooses
// its own: the best the processor has, or the baseline under ATEN_CPU_CAPABILITY=default
// (how the tests compare the two builds of every kernel).
#pragma once

#include <ATen/ATen.h>
#include <optional>

#include "../common/noise.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ANACUDA_HAS_AVX2 1
#else
#define ANACUDA_HAS_AVX2 0
#endif

namespace anacuda {

// Each entry runs after the op's checks (ana.cpp, alpha_blend.cpp): inputs contiguous, output
// allocated; hyper-parameter tensors still to be validated and read (common/args.h).
struct CpuKernels {
  const char* name;
  void (*ana)(const at::Tensor& x, at::Tensor& y, const at::Tensor& levels, const at::Tensor& thresholds,
              bool uniform_grid, const at::Tensor& eps, NoiseKind noise, const at::Tensor& mu,
              const at::Tensor& sigma, Strategy strategy, bool training, const std::optional<at::Tensor>& seed);
  void (*ana_backward)(const at::Tensor& grad, const at::Tensor& x, at::Tensor& gx, const at::Tensor& levels,
                       const at::Tensor& thresholds, bool uniform_grid, const at::Tensor& eps, NoiseKind noise_b,
                       const at::Tensor& mu_b, const at::Tensor& sigma_b);
  void (*ana_code)(const at::Tensor& x, at::Tensor& code, const at::Tensor& levels, const at::Tensor& thresholds,
                   const at::Tensor& eps, const at::Tensor& mu_b, const at::Tensor& sigma_b);
  void (*ana_backward_code)(const at::Tensor& grad, const at::Tensor& code, at::Tensor& gx,
                            const at::Tensor& levels, const at::Tensor& sigma_b);
  void (*ana_coded)(const at::Tensor& x, at::Tensor& y, at::Tensor& code, const at::Tensor& levels,
                    const at::Tensor& thresholds, bool uniform_grid, const at::Tensor& eps, NoiseKind noise,
                    const at::Tensor& mu, const at::Tensor& sigma, Strategy strategy, bool training,
                    const std::optional<at::Tensor>& seed, const at::Tensor& mu_b, const at::Tensor& sigma_b);
  void (*alpha_blend)(const at::Tensor& w, at::Tensor& y, const at::Tensor& levels, const at::Tensor& thresholds,
                      bool uniform_grid, const at::Tensor& eps, const at::Tensor& alpha);
};

namespace DEFAULT {
extern const CpuKernels kernels;
}
#if ANACUDA_HAS_AVX2
namespace AVX2 {
extern const CpuKernels kernels;
}
#endif

// The kernels for this processor (decided once).
const CpuKernels& cpu_kernels();

}  // namespace anacuda
