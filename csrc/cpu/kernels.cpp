// Which build of the CPU kernels runs: ATen's own answer (at::get_cpu_capability honours
// ATEN_CPU_CAPABILITY), so anacuda never uses instructions that torch itself avoids.
#include "kernels.h"

#include <ATen/Version.h>

namespace anacuda {

const CpuKernels& cpu_kernels() {
  static const CpuKernels* chosen = [] {
#if ANACUDA_HAS_AVX2
    const std::string cap = at::get_cpu_capability();
    if (cap == "AVX2" || cap == "AVX512") return &AVX2::kernels;
#endif
    return &DEFAULT::kernels;
  }();
  return *chosen;
}

}  // namespace anacuda
