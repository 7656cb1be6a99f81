// The elementwise launch machinery shared by every CUDA op: grid-stride loops over contiguous,
// 16-byte aligned data with 16-byte vector loads and stores and a scalar tail (the index
// arithmetic: common/elementwise.h, which the CPU's functor path runs too); arithmetic in the
// op's compute type (float for half types). An op is a functor with
//   init()                                        per-thread set-up (reads device-side hyper-parameters)
//   R operator()(int64_t i, T x, uint32_t word)   unary_kernel; R goes to an Output or OutputAndCode
//   T operator()(int64_t i, T g, x_t x)           binary_kernel (x: the input or a saved code)
// and `static constexpr bool kRandom`: if set, element i gets its Philox word.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>

#include "../common/elementwise.h"

namespace anacuda {

constexpr int kThreads = 256;

template <typename scalar_t, typename Out, typename Op>
__global__ void __launch_bounds__(kThreads) unary_kernel(const scalar_t* __restrict__ x, Out out, int64_t n, Op op) {
  using T = at::opmath_type<scalar_t>;
  using P = Packs<scalar_t>;
  op.init();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  for (int64_t v = first; v < P::whole(n); v += stride) {
    const Aligned<scalar_t, P::kPack> in = reinterpret_cast<const Aligned<scalar_t, P::kPack>*>(x)[v];
    typename Out::template Pack<P::kPack> res;
    P::for_each(op, v, [&](int j, int64_t i, uint32_t word) { res.set(j, op(i, static_cast<T>(in.v[j]), word)); });
    out.store(v, res);
  }
  for (int64_t i = P::whole(n) * P::kPack + first; i < n; i += stride)
    out.put(i, op(i, static_cast<T>(x[i]), tail_word(op, i)));
}

template <typename scalar_t, typename x_t, typename Op>
__global__ void __launch_bounds__(kThreads)
binary_kernel(const scalar_t* __restrict__ g, const x_t* __restrict__ x, Output<scalar_t> out, int64_t n, Op op) {
  using T = at::opmath_type<scalar_t>;
  using P = Packs<scalar_t>;
  op.init();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  for (int64_t v = first; v < P::whole(n); v += stride) {
    const Aligned<scalar_t, P::kPack> gin = reinterpret_cast<const Aligned<scalar_t, P::kPack>*>(g)[v];
    const Aligned<x_t, P::kPack> xin = reinterpret_cast<const Aligned<x_t, P::kPack>*>(x)[v];
    typename Output<scalar_t>::template Pack<P::kPack> res;
    P::for_each(op, v, [&](int j, int64_t i, uint32_t) { res.set(j, op(i, static_cast<T>(gin.v[j]), xin.v[j])); });
    out.store(v, res);
  }
  for (int64_t i = P::whole(n) * P::kPack + first; i < n; i += stride) out.put(i, op(i, static_cast<T>(g[i]), x[i]));
}

inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// The kernels assume 16-byte aligned data; a misaligned input (a slice at an odd offset) is
// copied once rather than compiling a second, scalar kernel for every op.
inline at::Tensor aligned(const at::Tensor& t) { return aligned16(t.const_data_ptr()) ? t : t.clone(); }

inline int64_t blocks_for(int64_t n, int pack) {
  const int64_t max_blocks = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 16;
  return std::max<int64_t>(1, std::min(max_blocks, (n / pack + kThreads - 1) / kThreads));
}

// out = op(x) elementwise on the current stream; x contiguous, the outputs fresh, n > 0.
template <typename scalar_t, typename Out, typename Op>
void launch_unary(const at::Tensor& x_, const Out& out, const Op& op) {
  const at::Tensor x = aligned(x_);
  unary_kernel<scalar_t, Out, Op><<<blocks_for(x.numel(), Packs<scalar_t>::kPack), kThreads, 0,
                                    at::cuda::getCurrentCUDAStream()>>>(x.const_data_ptr<scalar_t>(), out,
                                                                        x.numel(), op);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// out = op(g, x) elementwise on the current stream.
template <typename scalar_t, typename x_t, typename Op>
void launch_binary(const at::Tensor& g_, const at::Tensor& x_, const at::Tensor& out, const Op& op) {
  const at::Tensor g = aligned(g_), x = aligned(x_);
  binary_kernel<scalar_t, x_t, Op><<<blocks_for(x.numel(), Packs<scalar_t>::kPack), kThreads, 0,
                                     at::cuda::getCurrentCUDAStream()>>>(
      g.const_data_ptr<scalar_t>(), x.const_data_ptr<x_t>(), Output<scalar_t>{out.mutable_data_ptr<scalar_t>()},
      x.numel(), op);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace anacuda
