// The CUDA reduction of the dynamic scales (ops/dynamic_kernels.h): one block per chunk of a row
// (grid-stride over the chunks), each reduced by its threads in a fixed tree in shared memory
// into a partial; then one thread per row combines its chunks in order. No atomics: the result
// depends on neither the grid size nor the scheduling. And ana at the scale of rows of one chunk
// under a max rule (BitNet's per-token activations) in one kernel that reads x once.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "../common/dispatch.h"
#include "../common/functors.h"
#include "../ops/dynamic_kernels.h"

namespace anacuda {
namespace {

constexpr int kScaleThreads = 256;
constexpr int64_t kChunk = 4096;  // elements: 16 per thread

// The block's partials combined in a fixed tree in shared memory; every thread gets the result,
// and shared may be reused on return.
template <typename R>
__device__ inline typename R::acc_t block_combine(typename R::acc_t* shared, typename R::acc_t a) {
  shared[threadIdx.x] = a;
  __syncthreads();
  for (int s = kScaleThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] = R::combine(shared[threadIdx.x], shared[threadIdx.x + s]);
    __syncthreads();
  }
  const typename R::acc_t r = shared[0];
  __syncthreads();
  return r;
}

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
    const acc_t r = block_combine<R>(shared, a);
    if (threadIdx.x == 0) part[item] = r;
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

// ana at the scale of each row, for rows of at most kChunk elements under a max rule: a block per
// row holds it in registers, reduces it as partial_kernel and finish_kernel do (the same eps, bit
// for bit: one chunk, the same tree) and quantises it. x is read once, y and eps written once.
template <typename scalar_t, typename Forward>
__global__ void __launch_bounds__(kScaleThreads)
rows_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, at::opmath_type<scalar_t>* __restrict__ eps,
            ScaleRows rows, at::opmath_type<scalar_t> r_min, at::opmath_type<scalar_t> reach, Forward f) {
  using T = at::opmath_type<scalar_t>;
  using R = AbsReduce<T, false>;
  constexpr int kPer = kChunk / kScaleThreads;
  __shared__ T shared[kScaleThreads];
  f.init();
  const int L = static_cast<int>(rows.L);
  for (int64_t row = blockIdx.x; row < rows.M; row += gridDim.x) {
    const scalar_t* in = x + row * rows.L;
    T v[kPer];
    T a = R::identity();
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int i = threadIdx.x + k * kScaleThreads;
      v[k] = i < L ? static_cast<T>(in[i]) : T(0);
      if (i < L) a = R::combine(a, R::element(v[k]));
    }
    const T e = scale_from(R::finish(block_combine<R>(shared, a), rows.L), r_min, reach);
    if (threadIdx.x == 0) eps[row] = e;
    scalar_t* out = y + row * rows.L;
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int i = threadIdx.x + k * kScaleThreads;
      if (i < L) out[i] = static_cast<scalar_t>(f.value(v[k], e, 0));
    }
  }
}

template <typename scalar_t>
void launch_rows(const AnaCall& call, const ScaleCall& c, const at::Tensor& x, const at::Tensor& eps,
                 const at::Tensor& y) {
  using T = at::opmath_type<scalar_t>;
  const AnaParams<T> p = call.forward<T>();
  const int64_t blocks = std::min<int64_t>(
      c.rows.M, static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // Outside training the random strategy is the hard stair too (AnaForward::smooth): run it as mode.
  const Strategy strategy = call.strategy == Strategy::Random ? Strategy::Mode : call.strategy;
  dispatch_noise(call.noise.kind, [&](auto n) {
    auto launch = [&](auto st) {
      using Forward = AnaForward<decltype(n)::value, decltype(st)::value, T>;
      rows_kernel<scalar_t, Forward><<<blocks, kScaleThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), eps.mutable_data_ptr<T>(), c.rows,
          static_cast<T>(c.r_min), static_cast<T>(c.reach), Forward{p, call.training});
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (strategy == Strategy::Expectation) launch(StrategyTag<Strategy::Expectation>{});
    else launch(StrategyTag<Strategy::Mode>{});
  });
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

bool ana_dynamic_rows_cuda(const AnaCall& call, const ScaleCall& c, const at::Tensor& x, const at::Tensor& eps,
                           const at::Tensor& y) {
  // The random strategy's samples are numbered from the tensor's start, by the elementwise loop.
  if (c.mean || c.rows.M < 1 || c.rows.L < 1 || c.rows.L > kChunk ||
      (call.strategy == Strategy::Random && call.training) || !x.is_contiguous() || !y.is_contiguous() ||
      x.numel() != c.rows.M * c.rows.L)
    return false;
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::_ana_dynamic",
                            [&] { launch_rows<scalar_t>(call, c, x, eps, y); });
  return true;
}

}  // namespace anacuda
