// ANA forward and backward on CUDA: the functors of common/functors.h in the loops of
// loops.cuh (one grid-stride pass per direction, 16-byte vectors, float math for half types).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/functors.h"
#include "loops.cuh"

namespace anacuda {
namespace {

at::Tensor ana_cuda(const at::Tensor& x_, const at::Tensor& levels, const at::Tensor& thresholds,
                    bool uniform_grid, const at::Tensor& eps, c10::string_view noise, const at::Tensor& mu,
                    const at::Tensor& sigma, c10::string_view strategy, bool training,
                    const std::optional<at::Tensor>& seed, c10::string_view noise_b,
                    const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  const AnaCall call = check_ana_call(x_, noise, strategy, mu, sigma, noise_b, mu_b, sigma_b);
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = aligned_contiguous(x_);
  at::Tensor y = at::empty(x.sizes(), x.options());
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::ana", [&] {
    using T = at::opmath_type<scalar_t>;
    auto args = make_args<T>(x, levels, thresholds, uniform_grid, eps, mu, sigma, "mu", "sigma");
    if (call.strategy == Strategy::Random && training) seed_arg(args, seed, x.device());
    if (x.numel() == 0) return;
    dispatch_noise(call.noise, [&](auto n_tag) {
      dispatch_strategy(call.strategy, [&](auto s_tag) {
        AnaForward<decltype(n_tag)::value, decltype(s_tag)::value, T> op{};
        op.p = args;
        op.training = training;
        launch_unary<scalar_t, scalar_t>(x, y, op);
      });
    });
  });
  return y;
}

at::Tensor ana_backward_cuda(const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& levels,
                             const at::Tensor& thresholds, bool uniform_grid, const at::Tensor& eps,
                             c10::string_view noise_b, const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  check_input(x_, "input");
  check_grad(grad_, x_);
  const NoiseKind nk = parse_noise(noise_b);
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = aligned_contiguous(x_), g = aligned_contiguous(grad_);
  at::Tensor gx = at::empty(x.sizes(), x.options());
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::ana_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    auto args = make_args<T>(x, levels, thresholds, uniform_grid, eps, mu_b, sigma_b, "backward mu", "backward sigma");
    if (x.numel() == 0) return;
    dispatch_noise(nk, [&](auto n_tag) {
      AnaBackward<decltype(n_tag)::value, T> op{};
      op.p = args;
      launch_binary<scalar_t, scalar_t>(g, x, gx, op);
    });
  });
  return gx;
}

at::Tensor ana_code_cuda(const at::Tensor& x_, const at::Tensor& levels, const at::Tensor& thresholds,
                         const at::Tensor& eps, const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  check_input(x_, "input");
  check_code_thresholds(thresholds);
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = aligned_contiguous(x_);
  at::Tensor code = at::empty(x.sizes(), x.options().dtype(at::kByte));
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::ana_code", [&] {
    using T = at::opmath_type<scalar_t>;
    auto args = make_args<T>(x, levels, thresholds, false, eps, mu_b, sigma_b, "backward mu", "backward sigma");
    if (x.numel() == 0) return;
    UniformBoxCode<T> op{};
    op.p = args;
    launch_unary<scalar_t, uint8_t>(x, code, op);
  });
  return code;
}

at::Tensor ana_backward_code_cuda(const at::Tensor& grad_, const at::Tensor& code_, const at::Tensor& levels,
                                  const at::Tensor& sigma_b) {
  check_input(grad_, "gradient");
  check_code(grad_, code_, levels);
  c10::cuda::CUDAGuard guard(grad_.device());
  const at::Tensor g = aligned_contiguous(grad_), code = aligned_contiguous(code_), lv = levels.contiguous();
  at::Tensor gx = at::empty(g.sizes(), g.options());
  ANACUDA_DISPATCH_FLOATING(g.scalar_type(), "anacuda::ana_backward_code", [&] {
    using T = at::opmath_type<scalar_t>;
    std::vector<at::Tensor> keep;
    UniformBoxCodeBackward<T> op{};
    op.q = lv.const_data_ptr<T>();
    op.K = static_cast<int>(lv.numel()) - 1;
    op.sigma_arg = scalar_arg<T>(sigma_b, g.device(), "backward sigma", Range::NonNegative, keep);
    if (g.numel() == 0) return;
    launch_binary<scalar_t, uint8_t>(g, code, gx, op);
  });
  return gx;
}

// The two kernels one after the other (a fused kernel is future work: it needs a GPU to measure).
std::tuple<at::Tensor, at::Tensor> ana_coded_cuda(const at::Tensor& x, const at::Tensor& levels,
                                                  const at::Tensor& thresholds, bool uniform_grid, const at::Tensor& eps,
                                                  c10::string_view noise, const at::Tensor& mu, const at::Tensor& sigma,
                                                  c10::string_view strategy, bool training,
                                                  const std::optional<at::Tensor>& seed, c10::string_view noise_b,
                                                  const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  check_coded(noise_b, thresholds);
  at::Tensor y = ana_cuda(x, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy, training, seed, noise_b,
                          mu_b, sigma_b);
  return {y, ana_code_cuda(x, levels, thresholds, eps, mu_b, sigma_b)};
}

}  // namespace

TORCH_LIBRARY_IMPL(anacuda, CUDA, m) {
  m.impl("ana", &ana_cuda);
  m.impl("ana_backward", &ana_backward_cuda);
  m.impl("ana_code", &ana_code_cuda);
  m.impl("ana_backward_code", &ana_backward_code_cuda);
  m.impl("ana_coded", &ana_coded_cuda);
}

}  // namespace anacuda
