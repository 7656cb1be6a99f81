// The CPU's kernels, compiled once per instruction set (isa_default.cpp and, on x86-64,
// isa_avx2.cpp and isa_avx512.cpp, all from paths.h) and chosen at run time as ATen chooses its
// own (at::get_cpu_capability): the best the processor has, or the one ATEN_CPU_CAPABILITY names
// (avx2, or default for the baseline: how the tests compare the builds of every kernel).
//
// Each build has two paths. "fast": the CPU's own loops where they apply (all_thresholds.h,
// smooth_window.h). "functors": the GPU's code, the functors of common/functors.h in the CUDA
// loop (loops.h), for every call; the tests run the op suite through both (anacuda._testing).
#pragma once

#include <algorithm>
#include <limits>
#include <string>

#include "../common/learned_scale.h"
#include "../ops/device_kernels.h"
#include "../ops/dynamic_kernels.h"

// The AVX2 and AVX512 builds (x86-64, with the compilers whose target pragmas they use).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ANACUDA_HAS_X86_BUILDS 1
#else
#define ANACUDA_HAS_X86_BUILDS 0
#endif

namespace anacuda {

// The CPU's kernels outside the device table, built per instruction set too: the dynamic
// scales' reduction (scale_rows.h) and the fast path of a learned eps's backward (learned_fast.h;
// false where it does not apply, and the functors' loop of learned_scale.cpp runs).
struct CpuOnlyKernels {
  void (*dynamic_eps)(const ScaleCall& c, const at::Tensor& x, const at::Tensor& eps);
  bool (*ana_eps_grad)(const AnaCall& c, const EpsReduction& r, bool elementwise, const at::Tensor& grad,
                       const at::Tensor& x, const at::Tensor& gx, const at::Tensor& ge);
};

namespace DEFAULT {
extern const DeviceKernels kernels;
extern const CpuOnlyKernels cpu_only;
}
#if ANACUDA_HAS_X86_BUILDS
namespace AVX2 {
extern const DeviceKernels kernels;
extern const CpuOnlyKernels cpu_only;
}
namespace AVX512 {
extern const DeviceKernels kernels;
extern const CpuOnlyKernels cpu_only;
}
#endif

const CpuOnlyKernels& cpu_only_kernels();  // the same build as cpu_kernels()

// The CPU path: "fast" (the default) or "functors"; ANACUDA_CPU_PATH sets it at load.
bool cpu_runs_functors();
std::string cpu_path();
void set_cpu_path(const std::string& path);

// Mode with a compact noise no wider than half the smallest gap between thresholds: the most
// likely level is the hard stair's, and the fast path computes it as one (all_thresholds.h's
// block_forward_kind for few thresholds; AnaForward's `hard` for many). Never on the functor path.
template <typename T> bool mode_is_hard(const AnaCall& c, const AnaParams<T>& p) {
  const bool compact = c.noise.kind == NoiseKind::Uniform || c.noise.kind == NoiseKind::Triangular;
  if (cpu_runs_functors() || c.strategy != Strategy::Mode || !compact) return false;
  T min_gap = std::numeric_limits<T>::infinity();
  for (int64_t t = 1; t < p.grid.K; ++t) min_gap = std::min(min_gap, p.grid.theta[t] - p.grid.theta[t - 1]);
  return T(2) * p.sigma.value <= min_gap;
}

}  // namespace anacuda
