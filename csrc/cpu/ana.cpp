// ANA forward and backward on the CPU: one parallel pass per direction over contiguous data.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/args.h"
#include "../common/dispatch.h"

namespace anacuda {
namespace {

constexpr int64_t kGrain = 16384;

template <typename scalar_t, NoiseKind N, Strategy S>
void forward_loop(const scalar_t* x, scalar_t* y, int64_t n, AnaArgs<at::opmath_type<scalar_t>>& args,
                  bool training) {
  using T = at::opmath_type<scalar_t>;
  Grid<T> grid = args.grid;
  init_grid(grid);
  const EpsLayout<T> eps = args.eps;
  const T mu = args.mu.value, sigma = args.sigma.value;
  const bool smooth = training && sigma > T(0);
  const uint64_t seed = static_cast<uint64_t>(args.seed.value), stream = static_cast<uint64_t>(args.stream.value);
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    Philox4 block{};
    int64_t block_id = -1;
    for (int64_t i = begin; i < end; ++i) {
      uint32_t word = 0;
      if constexpr (S == Strategy::Random) {
        if ((i >> 2) != block_id) {
          block_id = i >> 2;
          block = philox4x32_10(static_cast<uint64_t>(block_id), stream, seed);
        }
        word = block.w[i & 3];
      }
      const T e = eps.at(i);
      const T u = static_cast<T>(x[i]) / e;
      y[i] = static_cast<scalar_t>(e * ana_element<N, S>(grid, u, mu, sigma, smooth, word));
    }
  });
}

template <typename scalar_t, NoiseKind N>
void backward_loop(const scalar_t* g, const scalar_t* x, scalar_t* gx, int64_t n,
                   AnaArgs<at::opmath_type<scalar_t>>& args) {
  using T = at::opmath_type<scalar_t>;
  Grid<T> grid = args.grid;
  init_grid(grid);
  const EpsLayout<T> eps = args.eps;
  const T mu = args.mu.value, sigma = args.sigma.value;
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T u = static_cast<T>(x[i]) / eps.at(i);
      gx[i] = static_cast<scalar_t>(static_cast<T>(g[i]) * stair_derivative<N>(grid, u - mu, sigma));
    }
  });
}

at::Tensor ana_cpu(const at::Tensor& x_, const at::Tensor& levels, const at::Tensor& thresholds,
                   bool uniform_grid, const at::Tensor& eps, c10::string_view noise, const at::Tensor& mu,
                   const at::Tensor& sigma, c10::string_view strategy, bool training,
                   const std::optional<at::Tensor>& seed, c10::string_view noise_b,
                   const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  check_input(x_, "input");
  const NoiseKind nk = parse_noise(noise);
  const Strategy st = parse_strategy(strategy);
  check_backward_noise(noise_b, mu_b, sigma_b, x_.device());
  const at::Tensor x = x_.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::ana", [&] {
    using T = at::opmath_type<scalar_t>;
    auto args = make_args<T>(x, levels, thresholds, uniform_grid, eps, mu, sigma, "mu", "sigma");
    if (st == Strategy::Random && training) seed_arg(args, seed, x.device());
    if (x.numel() == 0) return;
    dispatch_noise(nk, [&](auto n_tag) {
      dispatch_strategy(st, [&](auto s_tag) {
        forward_loop<scalar_t, decltype(n_tag)::value, decltype(s_tag)::value>(
            x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), x.numel(), args, training);
      });
    });
  });
  return y;
}

at::Tensor ana_backward_cpu(const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& levels,
                            const at::Tensor& thresholds, bool uniform_grid, const at::Tensor& eps,
                            c10::string_view noise_b, const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  check_input(x_, "input");
  TORCH_CHECK(grad_.sizes() == x_.sizes() && grad_.scalar_type() == x_.scalar_type(),
              "anacuda: the gradient must have the input's shape and dtype");
  const NoiseKind nk = parse_noise(noise_b);
  const at::Tensor x = x_.contiguous(), g = grad_.contiguous();
  at::Tensor gx = at::empty(x.sizes(), x.options());
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::ana_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    auto args = make_args<T>(x, levels, thresholds, uniform_grid, eps, mu_b, sigma_b, "backward mu", "backward sigma");
    if (x.numel() == 0) return;
    dispatch_noise(nk, [&](auto n_tag) {
      backward_loop<scalar_t, decltype(n_tag)::value>(g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                                      gx.mutable_data_ptr<scalar_t>(), x.numel(), args);
    });
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(anacuda, CPU, m) {
  m.impl("ana", &ana_cpu);
  m.impl("ana_backward", &ana_backward_cpu);
}

}  // namespace anacuda
