// The CUDA reduction of the dynamic scales (ops/dynamic_kernels.h): one block per chunk of a row
// (grid-stride over the chunks), each reduced by its threads in a fixed tree in shared memory
// into a partial; then one thread per row combines its chunks in order. No atomics: the result
// depends on neither the grid size nor the scheduling.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "../common/dispatch.h"
#include "../ops/dynamic_kernels.h"

namespace anacuda {
namespace {

constexpr int kScaleThreads = 256;
constexpr int64_t kChunk = 4096;  // elements: 16 per thread

template <typename scalar_t, bool kMean>
__global__ void __launch_bounds__(kScaleThreads)
partial_kernel(const scalar_t* __restrict__ x, ScaleRows rows,
               typename AbsReduce<at::opmath_type<scalar_t>, kMean>::acc_t* __restrict__ part) {
  using R = AbsReduce<at::opmath_type<scalar_t>, kMean>;
  using acc_t = typename R::acc_t;
  using T = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[kScaleThreads];
  const int64_t nc = rows.chunks(), items = rows.M * nc;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t row = item / nc, start = (item % nc) * rows.chunk;
    const int64_t left = rows.L - start;
    const int64_t n = left < 0 ? 0 : (left < rows.chunk ? left : rows.chunk);
    const scalar_t* p = x + row * rows.L + start;
    acc_t a = R::identity();
    for (int64_t i = threadIdx.x; i < n; i += kScaleThreads) a = R::combine(a, R::element(static_cast<T>(p[i])));
    shared[threadIdx.x] = a;
    __syncthreads();
    for (int s = kScaleThreads / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) shared[threadIdx.x] = R::combine(shared[threadIdx.x], shared[threadIdx.x + s]);
      __syncthreads();
    }
    if (threadIdx.x == 0) part[item] = shared[0];
    __syncthreads();  // shared is reused by the next item
  }
}

template <typename T, bool kMean>
__global__ void finish_kernel(const typename AbsReduce<T, kMean>::acc_t* __restrict__ part, ScaleRows rows, T r_min,
                              T reach, T* __restrict__ eps) {
  using R = AbsReduce<T, kMean>;
  const int64_t nc = rows.chunks();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < rows.M; row += stride) {
    typename R::acc_t r = part[row * nc];
    for (int64_t k = 1; k < nc; ++k) r = R::combine(r, part[row * nc + k]);
    eps[row] = scale_from(R::finish(r, rows.L), r_min, reach);
  }
}

template <typename scalar_t, bool kMean> void reduce_rows(const ScaleCall& c, const at::Tensor& x, const at::Tensor& eps) {
  using T = at::opmath_type<scalar_t>;
  using acc_t = typename AbsReduce<T, kMean>::acc_t;
  const int64_t items = c.rows.M * c.rows.chunks();
  const at::Tensor part =
      at::empty({items}, x.options().dtype(kMean ? at::kDouble : (std::is_same_v<T, double> ? at::kDouble : at::kFloat)));
  const int64_t max_blocks = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  partial_kernel<scalar_t, kMean><<<std::max<int64_t>(1, std::min(items, max_blocks)), kScaleThreads, 0, stream>>>(
      x.const_data_ptr<scalar_t>(), c.rows, part.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t blocks = std::max<int64_t>(1, std::min(max_blocks, (c.rows.M + kScaleThreads - 1) / kScaleThreads));
  finish_kernel<T, kMean><<<blocks, kScaleThreads, 0, stream>>>(part.const_data_ptr<acc_t>(), c.rows,
                                                                 static_cast<T>(c.r_min), static_cast<T>(c.reach),
                                                                 eps.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void dynamic_eps_cuda(const ScaleCall& c, const at::Tensor& x, const at::Tensor& eps) {
  ScaleCall call = c;
  call.rows.chunk = kChunk;
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::_dynamic_eps", [&] {
    if (call.mean) reduce_rows<scalar_t, true>(call, x, eps);
    else reduce_rows<scalar_t, false>(call, x, eps);
  });
}

}  // namespace anacuda
