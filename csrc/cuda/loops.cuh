// The elementwise launch machinery shared by every CUDA op: grid-stride loops over contiguous,
// 16-byte aligned data with 16-byte vector loads and stores and a scalar tail; arithmetic in
// the op's compute type (float for half types). An op is a functor with
//   init()                            per-thread set-up (reads device-side hyper-parameters)
//   out_t operator()(int64_t i, T x, uint32_t word)    unary_kernel
//   T operator()(int64_t i, T g, x_t x)                binary_kernel (x: the input or a saved code)
// and `static constexpr bool kRandom`: if set, the loop hands element i its Philox word
// (philox4x32_10(i / 4, op.stream, op.seed).w[i % 4], one block per 4 elements).
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>

#include "../common/philox.h"

namespace anacuda {

constexpr int kThreads = 256;

template <typename T, int N> struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename scalar_t, typename out_t, int VEC, typename Op>
__global__ void __launch_bounds__(kThreads)
unary_kernel(const scalar_t* __restrict__ x, out_t* __restrict__ y, int64_t n, Op op) {
  using T = at::opmath_type<scalar_t>;
  op.init();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t nvec = n / VEC;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  for (int64_t v = first; v < nvec; v += stride) {
    const Vec<scalar_t, VEC> in = reinterpret_cast<const Vec<scalar_t, VEC>*>(x)[v];
    Vec<out_t, VEC> out;
    Philox4 block{};
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const int64_t i = v * VEC + j;
      if constexpr (Op::kRandom) {
        if (VEC % 4 == 0 ? (j & 3) == 0 : j == 0) block = philox4x32_10(static_cast<uint64_t>(i) >> 2, op.stream, op.seed);
      }
      out.v[j] = static_cast<out_t>(op(i, static_cast<T>(in.v[j]), block.w[i & 3]));
    }
    reinterpret_cast<Vec<out_t, VEC>*>(y)[v] = out;
  }
  for (int64_t i = nvec * VEC + first; i < n; i += stride) {
    uint32_t word = 0;
    if constexpr (Op::kRandom) word = philox4x32_10(static_cast<uint64_t>(i) >> 2, op.stream, op.seed).w[i & 3];
    y[i] = static_cast<out_t>(op(i, static_cast<T>(x[i]), word));
  }
}

template <typename scalar_t, typename x_t, int VEC, typename Op>
__global__ void __launch_bounds__(kThreads)
binary_kernel(const scalar_t* __restrict__ g, const x_t* __restrict__ x, scalar_t* __restrict__ out, int64_t n,
              Op op) {
  using T = at::opmath_type<scalar_t>;
  op.init();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t nvec = n / VEC;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  for (int64_t v = first; v < nvec; v += stride) {
    const Vec<scalar_t, VEC> gin = reinterpret_cast<const Vec<scalar_t, VEC>*>(g)[v];
    const Vec<x_t, VEC> xin = reinterpret_cast<const Vec<x_t, VEC>*>(x)[v];
    Vec<scalar_t, VEC> res;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      res.v[j] = static_cast<scalar_t>(op(v * VEC + j, static_cast<T>(gin.v[j]), xin.v[j]));
    }
    reinterpret_cast<Vec<scalar_t, VEC>*>(out)[v] = res;
  }
  for (int64_t i = nvec * VEC + first; i < n; i += stride) {
    out[i] = static_cast<scalar_t>(op(i, static_cast<T>(g[i]), x[i]));
  }
}

inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// The kernels assume 16-byte aligned data; a misaligned input (a slice at an odd offset) is
// copied once rather than compiling a second, scalar kernel for every op.
inline at::Tensor aligned_contiguous(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return aligned16(c.const_data_ptr()) ? c : c.clone();
}

inline int64_t blocks_for(int64_t n, int vec) {
  const int64_t max_blocks = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 16;
  return std::max<int64_t>(1, std::min(max_blocks, (n / vec + kThreads - 1) / kThreads));
}

// y = op(x) elementwise on the current stream; x and y contiguous and aligned, n > 0.
template <typename scalar_t, typename out_t, typename Op>
void launch_unary(const at::Tensor& x, at::Tensor& y, const Op& op) {
  constexpr int VEC = 16 / sizeof(scalar_t);
  unary_kernel<scalar_t, out_t, VEC, Op><<<blocks_for(x.numel(), VEC), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<out_t>(), x.numel(), op);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// out = op(g, x) elementwise on the current stream.
template <typename scalar_t, typename x_t, typename Op>
void launch_binary(const at::Tensor& g, const at::Tensor& x, at::Tensor& out, const Op& op) {
  constexpr int VEC = 16 / sizeof(scalar_t);
  binary_kernel<scalar_t, x_t, VEC, Op><<<blocks_for(x.numel(), VEC), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      g.const_data_ptr<scalar_t>(), x.const_data_ptr<x_t>(), out.mutable_data_ptr<scalar_t>(), x.numel(), op);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace anacuda
