// The ANA ops on the CPU: checks, contiguous inputs, fresh outputs; the loops run in the
// build of the kernels chosen for this processor (kernels.h).
#include <torch/library.h>

#include "../common/args.h"
#include "../common/functors.h"
#include "kernels.h"

namespace anacuda {
namespace {

at::Tensor ana_cpu(const at::Tensor& x_, const at::Tensor& levels, const at::Tensor& thresholds,
                   bool uniform_grid, const at::Tensor& eps, c10::string_view noise, const at::Tensor& mu,
                   const at::Tensor& sigma, c10::string_view strategy, bool training,
                   const std::optional<at::Tensor>& seed, c10::string_view noise_b,
                   const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  const AnaCall call = check_ana_call(x_, noise, strategy, mu, sigma, noise_b, mu_b, sigma_b);
  const at::Tensor x = x_.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  cpu_kernels().ana(x, y, levels, thresholds, uniform_grid, eps, call.noise, mu, sigma, call.strategy, training,
                    seed);
  return y;
}

at::Tensor ana_backward_cpu(const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& levels,
                            const at::Tensor& thresholds, bool uniform_grid, const at::Tensor& eps,
                            c10::string_view noise_b, const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  check_input(x_, "input");
  check_grad(grad_, x_);
  const NoiseKind nk = parse_noise(noise_b);
  const at::Tensor x = x_.contiguous(), g = grad_.contiguous();
  at::Tensor gx = at::empty(x.sizes(), x.options());
  cpu_kernels().ana_backward(g, x, gx, levels, thresholds, uniform_grid, eps, nk, mu_b, sigma_b);
  return gx;
}

at::Tensor ana_code_cpu(const at::Tensor& x_, const at::Tensor& levels, const at::Tensor& thresholds,
                        const at::Tensor& eps, const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  check_input(x_, "input");
  check_code_thresholds(thresholds);
  const at::Tensor x = x_.contiguous();
  at::Tensor code = at::empty(x.sizes(), x.options().dtype(at::kByte));
  cpu_kernels().ana_code(x, code, levels, thresholds, eps, mu_b, sigma_b);
  return code;
}

at::Tensor ana_backward_code_cpu(const at::Tensor& grad_, const at::Tensor& code_, const at::Tensor& levels,
                                 const at::Tensor& sigma_b) {
  check_input(grad_, "gradient");
  check_code(grad_, code_, levels);
  const at::Tensor g = grad_.contiguous(), code = code_.contiguous(), lv = levels.contiguous();
  at::Tensor gx = at::empty(g.sizes(), g.options());
  cpu_kernels().ana_backward_code(g, code, gx, lv, sigma_b);
  return gx;
}

std::tuple<at::Tensor, at::Tensor> ana_coded_cpu(const at::Tensor& x_, const at::Tensor& levels,
                                                 const at::Tensor& thresholds, bool uniform_grid, const at::Tensor& eps,
                                                 c10::string_view noise, const at::Tensor& mu, const at::Tensor& sigma,
                                                 c10::string_view strategy, bool training,
                                                 const std::optional<at::Tensor>& seed, c10::string_view noise_b,
                                                 const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  const AnaCall call = check_ana_call(x_, noise, strategy, mu, sigma, noise_b, mu_b, sigma_b);
  check_coded(noise_b, thresholds);
  const at::Tensor x = x_.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options()), code = at::empty(x.sizes(), x.options().dtype(at::kByte));
  cpu_kernels().ana_coded(x, y, code, levels, thresholds, uniform_grid, eps, call.noise, mu, sigma, call.strategy,
                          training, seed, mu_b, sigma_b);
  return {y, code};
}

}  // namespace

TORCH_LIBRARY_IMPL(anacuda, CPU, m) {
  m.impl("ana", &ana_cpu);
  m.impl("ana_backward", &ana_backward_cpu);
  m.impl("ana_code", &ana_code_cpu);
  m.impl("ana_backward_code", &ana_backward_code_cpu);
  m.impl("ana_coded", &ana_coded_cpu);
}

}  // namespace anacuda
