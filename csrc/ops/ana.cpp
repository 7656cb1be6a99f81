// The host entries of ana and its helper ops, one for every device (the pattern of PyTorch's
// fake-quantize stubs): check the arguments once (host_args.h), allocate the outputs in the
// input's memory format (memory_order.h), and call the device's kernel (device_kernels.h).
// Schemas: csrc/anacuda.cpp; fakes and autograd: anacuda/ops.py.
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "device_kernels.h"
#include "host_args.h"

namespace anacuda {
namespace {

at::Tensor ana(const at::Tensor& x, const at::Tensor& levels, const at::Tensor& thresholds, bool uniform_grid,
               const at::Tensor& eps, c10::string_view noise, const at::Tensor& mu, const at::Tensor& sigma,
               c10::string_view strategy, bool training, const std::optional<at::Tensor>& seed,
               c10::string_view noise_b, const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  const MemoryOrder layout = memory_order(x);
  MemoryOrder order = layout;
  const AnaCall call = forward_call(x, order, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy,
                                    training, seed, noise_b, mu_b, sigma_b);
  const c10::OptionalDeviceGuard guard(x.device());
  at::Tensor y = order.empty(x, x.scalar_type());
  if (x.numel() > 0) kernels_for(x.device()).ana(call, order.contiguous(x), order.view(y));
  return y.contiguous(layout.format);  // y itself, but for the random strategy on a channels_last input
}

at::Tensor ana_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& levels,
                        const at::Tensor& thresholds, bool uniform_grid, const at::Tensor& eps,
                        c10::string_view noise_b, const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  check_input(x, "input");
  check_grad(grad, x);
  const MemoryOrder order = memory_order(x);
  AnaCall call;
  call.noise_b = noise_arg(parse_noise(noise_b, true), mu_b, sigma_b, x, true);
  call.grid = grid_arg(levels, thresholds, uniform_grid, x);
  call.eps = eps_arg(eps, x, order);
  const c10::OptionalDeviceGuard guard(x.device());
  at::Tensor gx = order.empty(x, x.scalar_type());
  if (x.numel() > 0)
    kernels_for(x.device()).ana_backward(call, order.contiguous(grad), order.contiguous(x), order.view(gx));
  return gx;
}

at::Tensor ana_code(const at::Tensor& x, const at::Tensor& levels, const at::Tensor& thresholds,
                    const at::Tensor& eps, const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  check_input(x, "input");
  check_code_thresholds(thresholds);
  const MemoryOrder order = memory_order(x);
  AnaCall call;
  call.grid = grid_arg(levels, thresholds, false, x);
  call.eps = eps_arg(eps, x, order);
  call.noise_b = noise_arg(NoiseKind::Uniform, mu_b, sigma_b, x, true);
  const c10::OptionalDeviceGuard guard(x.device());
  at::Tensor code = order.empty(x, at::kByte);
  if (x.numel() > 0) kernels_for(x.device()).ana_code(call, order.contiguous(x), order.view(code));
  return code;
}

// The gradient takes the layout of the code, which has the input's.
at::Tensor ana_backward_code(const at::Tensor& grad, const at::Tensor& code, const at::Tensor& levels,
                             const at::Tensor& sigma_b) {
  check_input(grad, "gradient");
  check_code(grad, code, levels);
  const MemoryOrder order = memory_order(code);
  const CodeBackwardCall call{levels.contiguous(), scalar_arg(sigma_b, grad, "backward sigma", Range::NonNegative)};
  const c10::OptionalDeviceGuard guard(grad.device());
  at::Tensor gx = order.empty(code, grad.scalar_type());
  if (grad.numel() > 0)
    kernels_for(grad.device()).ana_backward_code(call, order.contiguous(grad), order.contiguous(code), order.view(gx));
  return gx;
}

// ana and ana_code of a uniform backward noise in one pass where the device has one, else in two.
std::tuple<at::Tensor, at::Tensor> ana_coded(const at::Tensor& x, const at::Tensor& levels,
                                             const at::Tensor& thresholds, bool uniform_grid, const at::Tensor& eps,
                                             c10::string_view noise, const at::Tensor& mu, const at::Tensor& sigma,
                                             c10::string_view strategy, bool training,
                                             const std::optional<at::Tensor>& seed, c10::string_view noise_b,
                                             const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  const MemoryOrder layout = memory_order(x);
  MemoryOrder order = layout;
  const AnaCall call = forward_call(x, order, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy,
                                    training, seed, noise_b, mu_b, sigma_b);
  TORCH_CHECK(call.noise_b.kind == NoiseKind::Uniform, "anacuda: _ana_coded needs a uniform backward noise, got '",
              noise_b, "' (call ana)");
  check_code_thresholds(thresholds);
  const c10::OptionalDeviceGuard guard(x.device());
  at::Tensor y = order.empty(x, x.scalar_type()), code = order.empty(x, at::kByte);
  if (x.numel() > 0) {
    const DeviceKernels& k = kernels_for(x.device());
    const at::Tensor xm = order.contiguous(x), ym = order.view(y), cm = order.view(code);
    if (!k.ana_coded(call, xm, ym, cm)) {
      k.ana(call, xm, ym);
      k.ana_code(call, xm, cm);
    }
  }
  return {y.contiguous(layout.format), code.contiguous(layout.format)};  // as ana
}

void register_ops(torch::Library& m) {
  m.impl("ana", &ana);
  m.impl("_ana_backward", &ana_backward);
  m.impl("_ana_code", &ana_code);
  m.impl("_ana_backward_code", &ana_backward_code);
  m.impl("_ana_coded", &ana_coded);
}

}  // namespace

TORCH_LIBRARY_IMPL(anacuda, CPU, m) { register_ops(m); }
#if ANACUDA_WITH_CUDA
TORCH_LIBRARY_IMPL(anacuda, CUDA, m) { register_ops(m); }
#endif

}  // namespace anacuda
