// The CPU kernels for processors with AVX-512 (F, BW, VL, DQ) and FMA, where ATen runs its own
// AVX512 kernels: paths.h compiled for that target, with 512-bit vectors in the loops the
// compiler vectorises (-ffp-contract=off keeps the results those of the baseline, as in AVX2).
#include "isa_headers.h"

#if ANACUDA_HAS_X86_BUILDS
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))), \
                             apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,prefer-vector-width=512")
#pragma GCC diagnostic ignored "-Wpsabi"  // as in isa_avx2.cpp
// GCC 12 warns of the _mm512_undefined_* values inside its own intrinsics' headers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
// sleef.h declares the 512-bit functions that ATen's AVX512 vector types call only under
// __AVX512F__ (and the 256-bit ones under __AVX__), macros the target pragma does not define.
#ifndef __AVX512F__
#define __AVX__ 1
#define __AVX512F__ 1
#include <sleef.h>
#undef __AVX512F__
#undef __AVX__
#endif
#include "paths.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
