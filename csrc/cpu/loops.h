// The CPU's functor path: the per-element functors of common/functors.h in the loop of the CUDA
// kernels (cuda/loops.cuh), whose index arithmetic (packs, tail, Philox words) both take from
// common/elementwise.h; packs run in parallel chunks. It is the CPU's path wherever no fast path
// applies, and every path under the switch that makes the CPU run the GPU's code (kernel_table.h).
#pragma once

#include "isa_headers.h"

namespace anacuda {
namespace CPU_CAPABILITY {

constexpr int64_t kGrain = 16384;  // elements

template <typename scalar_t, typename Out, typename Op>
void unary_loop(const scalar_t* x, const Out& out, int64_t n, Op op) {
  using T = at::opmath_type<scalar_t>;
  using P = Packs<scalar_t>;
  op.init();
  at::parallel_for(0, P::whole(n), kGrain / P::kPack, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v)
      P::for_each(op, v, [&](int, int64_t i, uint32_t word) { out.put(i, op(i, static_cast<T>(x[i]), word)); });
  });
  for (int64_t i = P::whole(n) * P::kPack; i < n; ++i) out.put(i, op(i, static_cast<T>(x[i]), tail_word(op, i)));
}

// out = op(g, x): x is the input (scalar_t) or a saved code; the functor takes it as it is.
template <typename scalar_t, typename x_t, typename Op>
void binary_loop(const scalar_t* g, const x_t* x, scalar_t* out, int64_t n, Op op) {
  using T = at::opmath_type<scalar_t>;
  using P = Packs<scalar_t>;
  const Output<scalar_t> o{out};
  op.init();
  at::parallel_for(0, P::whole(n), kGrain / P::kPack, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v)
      P::for_each(op, v, [&](int, int64_t i, uint32_t) { o.put(i, op(i, static_cast<T>(g[i]), x[i])); });
  });
  for (int64_t i = P::whole(n) * P::kPack; i < n; ++i) o.put(i, op(i, static_cast<T>(g[i]), x[i]));
}

}  // namespace CPU_CAPABILITY
}  // namespace anacuda
