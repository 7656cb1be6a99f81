// The CPU counterpart of cuda/loops.cuh: the same functors over contiguous data, in parallel
// chunks; the random strategy's Philox block is computed once per 4 elements.
#pragma once

#include "kernels_deps.h"

namespace anacuda {
namespace CPU_CAPABILITY {

constexpr int64_t kGrain = 16384;

template <typename scalar_t, typename out_t, typename Op>
void cpu_unary(const scalar_t* x, out_t* y, int64_t n, Op op) {
  using T = at::opmath_type<scalar_t>;
  op.init();
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    Philox4 block{};
    int64_t block_id = -1;
    for (int64_t i = begin; i < end; ++i) {
      if constexpr (Op::kRandom) {
        if ((i >> 2) != block_id) {
          block_id = i >> 2;
          block = philox4x32_10(static_cast<uint64_t>(block_id), op.stream, op.seed);
        }
      }
      y[i] = static_cast<out_t>(op(i, static_cast<T>(x[i]), block.w[i & 3]));
    }
  });
}

// out = op(g, x): x is the input (scalar_t) or a saved code; the functor takes it as it is.
template <typename scalar_t, typename x_t, typename Op>
void cpu_binary(const scalar_t* g, const x_t* x, scalar_t* out, int64_t n, Op op) {
  using T = at::opmath_type<scalar_t>;
  op.init();
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = static_cast<scalar_t>(op(i, static_cast<T>(g[i]), x[i]));
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace anacuda
