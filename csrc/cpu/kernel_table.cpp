// Which build of the CPU kernels runs: ATen's own answer (at::get_cpu_capability honours
// ATEN_CPU_CAPABILITY), so anacuda never uses instructions that torch itself avoids. And which
// path they take (kernel_table.h).
#include "kernel_table.h"

#include <ATen/Version.h>
#include <atomic>
#include <cstdlib>

namespace anacuda {

namespace {

enum class Isa { Default, Avx2, Avx512 };

Isa isa() {
#if ANACUDA_HAS_X86_BUILDS
  static const Isa chosen = [] {
    const std::string cap = at::get_cpu_capability();
    return cap == "AVX512" ? Isa::Avx512 : cap == "AVX2" ? Isa::Avx2 : Isa::Default;
  }();
  return chosen;
#else
  return Isa::Default;
#endif
}

}  // namespace

const DeviceKernels& cpu_kernels() {
#if ANACUDA_HAS_X86_BUILDS
  if (isa() == Isa::Avx512) return AVX512::kernels;
  if (isa() == Isa::Avx2) return AVX2::kernels;
#endif
  return DEFAULT::kernels;
}

const CpuOnlyKernels& cpu_only_kernels() {
#if ANACUDA_HAS_X86_BUILDS
  if (isa() == Isa::Avx512) return AVX512::cpu_only;
  if (isa() == Isa::Avx2) return AVX2::cpu_only;
#endif
  return DEFAULT::cpu_only;
}

namespace {

bool parse_path(const std::string& path) {
  TORCH_CHECK(path == "fast" || path == "functors", "anacuda: the CPU path is 'fast' or 'functors', got '", path, "'");
  return path == "functors";
}

std::atomic<bool>& functors() {
  static std::atomic<bool> on{[] {
    const char* env = std::getenv("ANACUDA_CPU_PATH");
    return env != nullptr && *env != '\0' && parse_path(env);
  }()};
  return on;
}

}  // namespace

bool cpu_runs_functors() { return functors().load(std::memory_order_relaxed); }
std::string cpu_path() { return cpu_runs_functors() ? "functors" : "fast"; }
void set_cpu_path(const std::string& path) { functors().store(parse_path(path)); }

}  // namespace anacuda
