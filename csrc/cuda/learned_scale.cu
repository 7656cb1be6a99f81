// The CUDA kernels of a learned scale (SPEC §8; common/learned_scale.h): one block per task
// (a piece of one channel's elements), thread l its lane, the lanes summed by a shared-memory
// tree into the task's partial; a second kernel sums each channel's partials the same way. No
// atomics, no synchronisation with the host: the same bits on every run. cpu/learned_scale.cpp
// runs the same structure.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "../common/dispatch.h"
#include "../common/learned_scale.h"
#include "../ops/learned_scale_kernels.h"

namespace anacuda {
namespace {

template <typename T> __device__ inline T block_tree_sum(T* acc, T mine) {
  const int l = threadIdx.x;
  acc[l] = mine;
  __syncthreads();
  for (int s = kLanes / 2; s > 0; s >>= 1) {
    if (l < s) acc[l] += acc[l + s];
    __syncthreads();
  }
  const T total = acc[0];
  __syncthreads();  // acc is reused by the next task
  return total;
}

template <typename scalar_t, typename Op>
__global__ void __launch_bounds__(kLanes)
eps_partials_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x, scalar_t* __restrict__ gx,
                    at::opmath_type<scalar_t>* __restrict__ partial, EpsReduction r, Op op) {
  using T = at::opmath_type<scalar_t>;
  __shared__ T acc[kLanes];
  op.init();
  const int64_t pieces = r.pieces(), m = r.per_channel();
  for (int64_t task = blockIdx.x; task < r.tasks(); task += gridDim.x) {
    const int64_t c = task / pieces, start = (task % pieces) * kPiece, stop = min(m, start + kPiece);
    T a = T(0);
    for (int64_t j = start + threadIdx.x; j < stop; j += kLanes) {
      const int64_t i = r.element(c, j);
      const EpsGrad<T> res = op(i, static_cast<T>(g[i]), static_cast<T>(x[i]), tail_word(op, i));
      if (gx != nullptr) gx[i] = static_cast<scalar_t>(res.gx);
      a += res.ge;
    }
    const T total = block_tree_sum(acc, a);
    if (threadIdx.x == 0) partial[task] = total;
  }
}

template <typename T>
__global__ void __launch_bounds__(kLanes)
eps_sum_kernel(const T* __restrict__ partial, T* __restrict__ ge, int64_t channels, int64_t pieces) {
  __shared__ T acc[kLanes];
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    T a = T(0);
    for (int64_t k = threadIdx.x; k < pieces; k += kLanes) a += partial[c * pieces + k];
    const T total = block_tree_sum(acc, a);
    if (threadIdx.x == 0) ge[c] = total;
  }
}

template <typename scalar_t, typename Op>
__global__ void __launch_bounds__(kLanes)
eps_elementwise_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x, scalar_t* __restrict__ gx,
                       at::opmath_type<scalar_t>* __restrict__ ge, int64_t n, Op op) {
  using T = at::opmath_type<scalar_t>;
  op.init();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kLanes;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kLanes + threadIdx.x; i < n; i += stride) {
    const EpsGrad<T> res = op(i, static_cast<T>(g[i]), static_cast<T>(x[i]), tail_word(op, i));
    if (gx != nullptr) gx[i] = static_cast<scalar_t>(res.gx);
    ge[i] = res.ge;
  }
}

int64_t grid_for(int64_t work) {
  const int64_t max_blocks = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return std::max<int64_t>(1, std::min(max_blocks, work));
}

template <typename scalar_t, typename Op>
void launch(const Op& op, const EpsReduction& r, bool elementwise, const at::Tensor& grad, const at::Tensor& x,
            scalar_t* gx, const at::Tensor& ge) {
  using T = at::opmath_type<scalar_t>;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const scalar_t *gp = grad.const_data_ptr<scalar_t>(), *xp = x.const_data_ptr<scalar_t>();
  T* gep = ge.mutable_data_ptr<T>();
  if (elementwise) {
    eps_elementwise_kernel<scalar_t, Op>
        <<<grid_for((x.numel() + kLanes - 1) / kLanes), kLanes, 0, stream>>>(gp, xp, gx, gep, x.numel(), op);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const at::Tensor partial = at::empty({r.tasks()}, ge.options());
  eps_partials_kernel<scalar_t, Op>
      <<<grid_for(r.tasks()), kLanes, 0, stream>>>(gp, xp, gx, partial.mutable_data_ptr<T>(), r, op);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  eps_sum_kernel<T><<<grid_for(r.channels), kLanes, 0, stream>>>(partial.const_data_ptr<T>(), gep, r.channels,
                                                                   r.pieces());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void ana(const AnaCall& c, const EpsReduction& r, bool elementwise, const at::Tensor& grad, const at::Tensor& x,
         const at::Tensor& gx, const at::Tensor& ge) {
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::_ana_backward_eps", [&] {
    using T = at::opmath_type<scalar_t>;
    const AnaParams<T> p = c.forward<T>(), pb = c.backward<T>();
    dispatch_noise(c.noise.kind, [&](auto n) {
      dispatch_strategy(c.strategy, [&](auto st) {
        using Forward = AnaForward<decltype(n)::value, decltype(st)::value, T>;
        launch<scalar_t>(AnaEpsGrad<decltype(n)::value, decltype(st)::value, T>{Forward{p, c.training}, pb,
                                                                               c.noise_b.kind},
                         r, elementwise, grad, x, gx.mutable_data_ptr<scalar_t>(), ge);
      });
    });
  });
}

void alpha_blend(const BlendCall& c, const EpsReduction& r, bool elementwise, const at::Tensor& grad,
                 const at::Tensor& w, const at::Tensor& ge) {
  ANACUDA_DISPATCH_FLOATING(w.scalar_type(), "anacuda::_alpha_blend_backward_eps", [&] {
    using T = at::opmath_type<scalar_t>;
    launch<scalar_t>(BlendEpsGrad<T>{AlphaBlend<T>{c.params<T>()}}, r, elementwise, grad, w,
                     static_cast<scalar_t*>(nullptr), ge);
  });
}

}  // namespace

const LearnedScaleKernels& cuda_learned_scale_kernels() {
  static const LearnedScaleKernels k = {&ana, &alpha_blend};
  return k;
}

}  // namespace anacuda
