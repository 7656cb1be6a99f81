// The CPU's kernels, compiled once per instruction set (isa_default.cpp and, on x86-64,
// isa_avx2.cpp, both from paths.h) and chosen at run time the way ATen chooses its own: the best
// the processor has, or the baseline under ATEN_CPU_CAPABILITY=default (how the tests compare the
// two builds of every kernel).
//
// Each build has two paths. "fast": the CPU's own loops where they apply (all_thresholds.h,
// smooth_window.h). "functors": the GPU's code, the functors of common/functors.h in the CUDA
// loop (loops.h), for every call; the tests run the op suite through both (anacuda._testing).
#pragma once

#include <string>

#include "../ops/device_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ANACUDA_HAS_AVX2 1
#else
#define ANACUDA_HAS_AVX2 0
#endif

namespace anacuda {

namespace DEFAULT {
extern const DeviceKernels kernels;
}
#if ANACUDA_HAS_AVX2
namespace AVX2 {
extern const DeviceKernels kernels;
}
#endif

// The CPU path: "fast" (the default) or "functors"; ANACUDA_CPU_PATH sets it at load.
bool cpu_runs_functors();
std::string cpu_path();
void set_cpu_path(const std::string& path);

}  // namespace anacuda
