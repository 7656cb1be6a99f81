// The CPU kernels for processors with AVX2 and FMA: paths.h compiled for that target
// (multiply-adds stay unfused: -ffp-contract=off keeps the results those of the baseline).
#include "isa_headers.h"

#if ANACUDA_HAS_X86_BUILDS
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#pragma GCC diagnostic ignored "-Wpsabi"  // thunks of ATen's unused lambdas; nothing crosses an ABI here
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
// sleef.h declares its 256-bit functions (which ATen's AVX2 vector types call) only under
// __AVX__, a macro that the target pragma does not define.
#ifndef __AVX__
#define __AVX__ 1
#include <sleef.h>
#undef __AVX__
#endif
#include "paths.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
