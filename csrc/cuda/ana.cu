// ANA forward and backward on CUDA: one grid-stride pass per direction, 16-byte vector loads
// and stores where the pointers allow, a scalar tail, arithmetic in float for half types.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../common/args.h"
#include "../common/dispatch.h"

namespace anacuda {
namespace {

constexpr int kThreads = 256;

template <typename T, int N> struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T> __device__ inline T quiet_nan() { return std::numeric_limits<T>::quiet_NaN(); }

// One element of the forward; `word` is its Philox word (random strategy only).
template <NoiseKind N, Strategy S, typename T, typename I>
__device__ inline T forward_element(const AnaParams<T>& p, I i, T x, T mu, T sigma, bool ok, bool smooth,
                                    uint32_t word) {
  const T e = p.eps.at(i);
  if (!ok || !valid_eps(e)) return quiet_nan<T>();
  return e * ana_element<N, S>(p.grid, x / e, mu, sigma, smooth, word);
}

template <typename scalar_t, int VEC, NoiseKind N, Strategy S>
__global__ void __launch_bounds__(kThreads)
forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n, AnaParams<at::opmath_type<scalar_t>> p,
               bool training) {
  using T = at::opmath_type<scalar_t>;
  using I = int64_t;
  init_grid(p.grid);
  const T mu = p.mu.get(), sigma = p.sigma.get();
  const bool ok = valid_noise(mu, sigma), smooth = training && sigma > T(0);
  uint64_t seed = 0, stream = 0;
  if constexpr (S == Strategy::Random) {
    seed = static_cast<uint64_t>(p.seed.get());
    stream = static_cast<uint64_t>(p.stream.get());
  }
  const I stride = static_cast<I>(gridDim.x) * kThreads;
  const I nvec = n / VEC;
  for (I v = static_cast<I>(blockIdx.x) * kThreads + threadIdx.x; v < nvec; v += stride) {
    const Vec<scalar_t, VEC> in = reinterpret_cast<const Vec<scalar_t, VEC>*>(x)[v];
    Vec<scalar_t, VEC> out;
    Philox4 block{};
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const I i = v * VEC + j;
      if constexpr (S == Strategy::Random) {
        if (VEC % 4 == 0 ? (j & 3) == 0 : j == 0) block = philox4x32_10(static_cast<uint64_t>(i) >> 2, stream, seed);
      }
      out.v[j] = static_cast<scalar_t>(
          forward_element<N, S>(p, i, static_cast<T>(in.v[j]), mu, sigma, ok, smooth, block.w[i & 3]));
    }
    reinterpret_cast<Vec<scalar_t, VEC>*>(y)[v] = out;
  }
  for (I i = nvec * VEC + static_cast<I>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    uint32_t word = 0;
    if constexpr (S == Strategy::Random) word = philox4x32_10(static_cast<uint64_t>(i) >> 2, stream, seed).w[i & 3];
    y[i] = static_cast<scalar_t>(forward_element<N, S>(p, i, static_cast<T>(x[i]), mu, sigma, ok, smooth, word));
  }
}

template <NoiseKind N, typename T, typename I>
__device__ inline T backward_element(const AnaParams<T>& p, I i, T g, T x, T mu, T sigma, bool ok) {
  const T e = p.eps.at(i);
  if (!ok || !valid_eps(e)) return quiet_nan<T>();
  return g * stair_derivative<N>(p.grid, x / e - mu, sigma);
}

template <typename scalar_t, int VEC, NoiseKind N>
__global__ void __launch_bounds__(kThreads)
backward_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x, scalar_t* __restrict__ gx, int64_t n,
                AnaParams<at::opmath_type<scalar_t>> p) {
  using T = at::opmath_type<scalar_t>;
  using I = int64_t;
  init_grid(p.grid);
  const T mu = p.mu.get(), sigma = p.sigma.get();
  const bool ok = valid_noise(mu, sigma);
  const I stride = static_cast<I>(gridDim.x) * kThreads;
  const I nvec = n / VEC;
  for (I v = static_cast<I>(blockIdx.x) * kThreads + threadIdx.x; v < nvec; v += stride) {
    const Vec<scalar_t, VEC> gin = reinterpret_cast<const Vec<scalar_t, VEC>*>(g)[v];
    const Vec<scalar_t, VEC> xin = reinterpret_cast<const Vec<scalar_t, VEC>*>(x)[v];
    Vec<scalar_t, VEC> out;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      out.v[j] = static_cast<scalar_t>(backward_element<N>(p, v * VEC + j, static_cast<T>(gin.v[j]),
                                                           static_cast<T>(xin.v[j]), mu, sigma, ok));
    }
    reinterpret_cast<Vec<scalar_t, VEC>*>(gx)[v] = out;
  }
  for (I i = nvec * VEC + static_cast<I>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    gx[i] = static_cast<scalar_t>(backward_element<N>(p, i, static_cast<T>(g[i]), static_cast<T>(x[i]), mu, sigma, ok));
  }
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// The kernels assume 16-byte aligned data (16-byte vector loads and stores); a misaligned
// input (a slice at an odd offset) is copied once rather than compiling a second kernel.
at::Tensor aligned_contiguous(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return aligned16(c.const_data_ptr()) ? c : c.clone();
}

int64_t blocks_for(int64_t n, int vec) {
  const int64_t max_blocks = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 16;
  return std::max<int64_t>(1, std::min(max_blocks, (n / vec + kThreads - 1) / kThreads));
}

at::Tensor ana_cuda(const at::Tensor& x_, const at::Tensor& levels, const at::Tensor& thresholds,
                    bool uniform_grid, const at::Tensor& eps, c10::string_view noise, const at::Tensor& mu,
                    const at::Tensor& sigma, c10::string_view strategy, bool training,
                    const std::optional<at::Tensor>& seed, c10::string_view noise_b,
                    const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  check_input(x_, "input");
  const NoiseKind nk = parse_noise(noise);
  const Strategy st = parse_strategy(strategy);
  check_backward_noise(noise_b, mu_b, sigma_b, x_.device());
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = aligned_contiguous(x_);
  at::Tensor y = at::empty(x.sizes(), x.options());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::ana", [&] {
    using T = at::opmath_type<scalar_t>;
    auto args = make_args<T>(x, levels, thresholds, uniform_grid, eps, mu, sigma, "mu", "sigma");
    if (st == Strategy::Random && training) seed_arg(args, seed, x.device());
    if (x.numel() == 0) return;
    const AnaParams<T>& p = args;
    dispatch_noise(nk, [&](auto n_tag) {
      dispatch_strategy(st, [&](auto s_tag) {
        constexpr NoiseKind N = decltype(n_tag)::value;
        constexpr Strategy S = decltype(s_tag)::value;
        constexpr int VEC = 16 / sizeof(scalar_t);
        forward_kernel<scalar_t, VEC, N, S><<<blocks_for(x.numel(), VEC), kThreads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), x.numel(), p, training);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return y;
}

at::Tensor ana_backward_cuda(const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& levels,
                             const at::Tensor& thresholds, bool uniform_grid, const at::Tensor& eps,
                             c10::string_view noise_b, const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  check_input(x_, "input");
  TORCH_CHECK(grad_.sizes() == x_.sizes() && grad_.scalar_type() == x_.scalar_type() && grad_.device() == x_.device(),
              "anacuda: the gradient must have the input's shape, dtype and device");
  const NoiseKind nk = parse_noise(noise_b);
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = aligned_contiguous(x_), g = aligned_contiguous(grad_);
  at::Tensor gx = at::empty(x.sizes(), x.options());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::ana_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    auto args = make_args<T>(x, levels, thresholds, uniform_grid, eps, mu_b, sigma_b, "backward mu", "backward sigma");
    if (x.numel() == 0) return;
    const AnaParams<T>& p = args;
    dispatch_noise(nk, [&](auto n_tag) {
      constexpr NoiseKind N = decltype(n_tag)::value;
      constexpr int VEC = 16 / sizeof(scalar_t);
      backward_kernel<scalar_t, VEC, N><<<blocks_for(x.numel(), VEC), kThreads, 0, stream>>>(
          g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(), x.numel(), p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(anacuda, CUDA, m) {
  m.impl("ana", &ana_cuda);
  m.impl("ana_backward", &ana_backward_cuda);
}

}  // namespace anacuda
