// The host entries of a learned scale's backward (SPEC §8): _ana_backward_eps (grad_x and eps's
// gradient in one pass) and _alpha_blend_backward_eps. The same checks as the forward's (the
// random strategy recomputes the forward's sample, so it runs in the forward's order), then the
// device's kernels: eps's gradient reduced in the kernel for one value or one value per channel,
// else (any other broadcast) every element's share summed here.
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "host_args.h"
#include "learned_scale_kernels.h"

namespace anacuda {
namespace {

void check_learned_eps(const at::Tensor& eps, const at::Tensor& x) {
  TORCH_CHECK(eps.device() == x.device(), "anacuda: a learned eps must be on the input's device ", x.device(),
              ", got ", eps.device(), " (its gradient would need a copy between devices)");
}

// How eps's gradient is gathered: in the kernel over the channels of `e`, or elementwise (eps
// materialised at x's shape: one value per element, or a broadcast that is no block of channels).
struct EpsGather {
  EpsReduction r;
  bool elementwise;
};

EpsGather eps_gather(const EpsArg& e, int64_t n) {
  EpsGather g;
  g.r.channels = e.channels;
  g.r.inner = e.inner;
  g.r.outer = n / (e.channels * e.inner);
  g.elementwise = e.channels > 1 && e.channels == n;
  return g;
}

// The kernel's gradient `ge` (compute type) in eps's shape and dtype. `ge` holds one value per
// channel, in x's memory order of eps's dimensions, or one per element of x in memory order.
at::Tensor to_eps(const at::Tensor& ge, bool elementwise, const at::Tensor& eps, const at::Tensor& x,
                  const MemoryOrder& order) {
  std::vector<int64_t> inverse(order.perm.size());
  for (size_t d = 0; d < order.perm.size(); ++d) inverse[order.perm[d]] = static_cast<int64_t>(d);
  const auto back = [&](const at::Tensor& t) { return inverse.empty() ? t : t.permute(inverse); };
  if (elementwise) {
    const at::Tensor full = back(ge.reshape(order.view(x).sizes()));
    return full.sum_to_size(eps.sizes()).to(eps.scalar_type());
  }
  if (eps.numel() == 1) return ge.reshape(eps.sizes()).to(eps.scalar_type());
  std::vector<int64_t> padded(x.dim() - eps.dim(), 1);
  padded.insert(padded.end(), eps.sizes().begin(), eps.sizes().end());
  std::vector<int64_t> mem(padded.size());
  for (size_t d = 0; d < padded.size(); ++d) mem[d] = padded[order.perm.empty() ? d : order.perm[d]];
  return back(ge.reshape(mem)).reshape(eps.sizes()).to(eps.scalar_type());
}

at::Tensor gather_buffer(const EpsGather& g, const at::Tensor& x) {
  return at::empty({g.elementwise ? x.numel() : g.r.channels}, x.options().dtype(compute_type(x.scalar_type())));
}

std::tuple<at::Tensor, at::Tensor> ana_backward_eps(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& levels, const at::Tensor& thresholds,
    bool uniform_grid, const at::Tensor& eps, c10::string_view noise, const at::Tensor& mu, const at::Tensor& sigma,
    c10::string_view strategy, bool training, const std::optional<at::Tensor>& seed, c10::string_view noise_b,
    const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  const MemoryOrder layout = memory_order(x);
  MemoryOrder order = layout;
  const AnaCall call = forward_call(x, order, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy,
                                    training, seed, noise_b, mu_b, sigma_b);
  check_grad(grad, x);
  check_learned_eps(eps, x);
  const c10::OptionalDeviceGuard guard(x.device());
  at::Tensor gx = order.empty(x, x.scalar_type());
  if (x.numel() == 0) return {gx, at::zeros_like(eps, at::MemoryFormat::Contiguous)};
  const EpsGather g = eps_gather(call.eps, x.numel());
  const at::Tensor ge = gather_buffer(g, x);
  learned_scale_kernels_for(x.device())
      .ana(call, g.r, g.elementwise, order.contiguous(grad), order.contiguous(x), order.view(gx), ge);
  return {gx.contiguous(layout.format), to_eps(ge, g.elementwise, eps, x, order)};
}

at::Tensor alpha_blend_backward_eps(const at::Tensor& grad, const at::Tensor& w, const at::Tensor& levels,
                                    const at::Tensor& thresholds, bool uniform_grid, const at::Tensor& eps,
                                    const at::Tensor& alpha) {
  check_input(w, "weight");
  check_grad(grad, w);
  const MemoryOrder order = memory_order(w);
  BlendCall call;
  call.grid = grid_arg(levels, thresholds, uniform_grid, w);
  call.eps = eps_arg(eps, w, order);
  call.alpha = scalar_arg(alpha, w, "alpha", Range::ZeroToOne);
  check_learned_eps(eps, w);
  const c10::OptionalDeviceGuard guard(w.device());
  if (w.numel() == 0) return at::zeros_like(eps, at::MemoryFormat::Contiguous);
  const EpsGather g = eps_gather(call.eps, w.numel());
  const at::Tensor ge = gather_buffer(g, w);
  learned_scale_kernels_for(w.device())
      .alpha_blend(call, g.r, g.elementwise, order.contiguous(grad), order.contiguous(w), ge);
  return to_eps(ge, g.elementwise, eps, w, order);
}

void register_ops(torch::Library& m) {
  m.impl("_ana_backward_eps", &ana_backward_eps);
  m.impl("_alpha_blend_backward_eps", &alpha_blend_backward_eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(anacuda, CPU, m) { register_ops(m); }
#if ANACUDA_WITH_CUDA
TORCH_LIBRARY_IMPL(anacuda, CUDA, m) { register_ops(m); }
#endif

}  // namespace anacuda
