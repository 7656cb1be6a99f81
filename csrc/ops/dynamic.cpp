// The host entries of the dynamic scales (SPEC §9): _dynamic_eps, the scale alone, and ana and
// alpha_blend at that scale, computed in the same call (the reduction's kernel, then the op's
// elementwise kernel with the eps it wrote: x read twice, the output written once, nothing read
// back to the host; ana's rows in one pass where they fit in cache (CPU) or in a block (CUDA)).
// The scale takes no gradient; _ana_dynamic_backward is _ana_backward at it.
// Schemas: csrc/anacuda.cpp; fakes: anacuda/ops.py; autograd: autograd.cpp.
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <string_view>
#include <vector>

#include "device_kernels.h"
#include "dynamic_kernels.h"
#include "host_args.h"

namespace anacuda {
namespace {

struct ScaleRule {
  ScaleGroup group;
  bool mean;
};

ScaleRule parse_rule(std::string_view s) {
  if (s == "absmax_per_token") return {ScaleGroup::Token, false};
  if (s == "absmean") return {ScaleGroup::Tensor, true};
  if (s == "absmax") return {ScaleGroup::Tensor, false};
  if (s == "absmean_per_channel") return {ScaleGroup::Channel, true};
  if (s == "absmax_per_channel") return {ScaleGroup::Channel, false};
  TORCH_CHECK(false, "anacuda: unknown scale rule '", s,
              "'; expected absmax_per_token, absmean, absmax, absmean_per_channel or absmax_per_channel");
}

// The scale of a rule for x: its shape (to broadcast to x: (..., 1) per token, () per tensor,
// (C, 1, ...) per channel, dim 0) and the reduction's call, x viewed as (M, L) row-major.
struct Scale {
  std::vector<int64_t> shape;
  ScaleCall call;
};

Scale scale_of(const at::Tensor& x, c10::string_view rule_name, double reach, double r_min) {
  check_input(x, "input");
  const ScaleRule rule = parse_rule(rule_name);
  const at::ScalarType ct = compute_type(x.scalar_type());
  TORCH_CHECK(std::isfinite(reach) && reach > 0 && std::isfinite(static_cast<float>(reach)),
              "anacuda: the grid's reach must be finite and > 0, got ", reach);
  TORCH_CHECK(std::isfinite(r_min) && r_min > 0 && (ct == at::kDouble || static_cast<float>(r_min) > 0),
              "anacuda: r_min must be finite and > 0 (in ", ct, "), got ", r_min);
  Scale s;
  int64_t L = 1;
  if (rule.group == ScaleGroup::Token) {
    TORCH_CHECK(x.dim() >= 2, "anacuda: the scale rule '", rule_name,
                "' needs an input of at least 2 dimensions (..., tokens, features), got shape ", x.sizes());
    s.shape = x.sizes().vec();
    s.shape.back() = 1;
    L = x.size(-1);
  } else if (rule.group == ScaleGroup::Channel) {
    TORCH_CHECK(x.dim() >= 1, "anacuda: the scale rule '", rule_name,
                "' needs an input of at least 1 dimension (channels first), got shape ", x.sizes());
    s.shape.assign(x.dim(), 1);
    s.shape[0] = x.size(0);
    for (int64_t d = 1; d < x.dim(); ++d) L *= x.size(d);
  } else {
    L = x.numel();
  }
  int64_t M = 1;
  for (const int64_t n : s.shape) M *= n;
  s.call.rows.M = M;
  s.call.rows.L = L;
  s.call.mean = rule.mean;
  s.call.r_min = r_min;
  s.call.reach = reach;
  return s;
}

at::Tensor empty_scale(const at::Tensor& x, const Scale& s) {
  return at::empty(s.shape, x.options().dtype(compute_type(x.scalar_type())));
}

// eps = max(r(|x|), r_min) / reach per group, in the compute type, on x's device.
at::Tensor dynamic_eps(const at::Tensor& x, c10::string_view rule_name, double reach, double r_min) {
  const Scale s = scale_of(x, rule_name, reach, r_min);
  const c10::OptionalDeviceGuard guard(x.device());
  at::Tensor eps = empty_scale(x, s);
  if (s.call.rows.M > 0) dynamic_eps_kernel(s.call, x.contiguous(), eps);
  return eps;
}

std::tuple<at::Tensor, at::Tensor> ana_dynamic(const at::Tensor& x, const at::Tensor& levels,
                                               const at::Tensor& thresholds, bool uniform_grid,
                                               c10::string_view rule, double reach, double r_min,
                                               c10::string_view noise, const at::Tensor& mu, const at::Tensor& sigma,
                                               c10::string_view strategy, bool training,
                                               const std::optional<at::Tensor>& seed, c10::string_view noise_b,
                                               const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  const MemoryOrder layout = memory_order(x);
  MemoryOrder order = layout;
  // Checked with eps = 1 in place of the scale, which is computed next.
  AnaCall call = forward_call(x, order, levels, thresholds, uniform_grid, at::ones({}, at::kDouble), noise, mu, sigma,
                              strategy, training, seed, noise_b, mu_b, sigma_b);
  const Scale s = scale_of(x, rule, reach, r_min);
  const c10::OptionalDeviceGuard guard(x.device());
  at::Tensor eps = empty_scale(x, s);
  at::Tensor y = order.empty(x, x.scalar_type());
  const at::Tensor xo = x.numel() > 0 ? order.contiguous(x) : x, yo = order.view(y);
  const bool one_pass = x.numel() > 0 && order.perm.empty() && ana_dynamic_rows(call, s.call, xo, eps, yo);
  if (!one_pass) {
    if (s.call.rows.M > 0) dynamic_eps_kernel(s.call, order.perm.empty() ? xo : x.contiguous(), eps);  // empty rows too
    if (x.numel() > 0) {
      call.eps = eps_arg(eps, x, order, /*check_values=*/false);
      kernels_for(x.device()).ana(call, xo, yo);
    }
  }
  return {y.contiguous(layout.format), eps};  // as ana
}

at::Tensor ana_dynamic_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& eps,
                                const at::Tensor& levels, const at::Tensor& thresholds, bool uniform_grid,
                                c10::string_view noise_b, const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  check_input(x, "input");
  check_grad(grad, x);
  const MemoryOrder order = memory_order(x);
  AnaCall call;
  call.noise_b = noise_arg(parse_noise(noise_b, true), mu_b, sigma_b, x, true);
  call.grid = grid_arg(levels, thresholds, uniform_grid, x);
  call.eps = eps_arg(eps, x, order, /*check_values=*/false);
  const c10::OptionalDeviceGuard guard(x.device());
  at::Tensor gx = order.empty(x, x.scalar_type());
  if (x.numel() > 0)
    kernels_for(x.device()).ana_backward(call, order.contiguous(grad), order.contiguous(x), order.view(gx));
  return gx;
}

at::Tensor alpha_blend_dynamic(const at::Tensor& w, const at::Tensor& levels, const at::Tensor& thresholds,
                               bool uniform_grid, c10::string_view rule, double reach, double r_min,
                               const at::Tensor& alpha) {
  check_input(w, "weight");
  const MemoryOrder order = memory_order(w);
  BlendCall call;
  call.grid = grid_arg(levels, thresholds, uniform_grid, w);
  call.alpha = scalar_arg(alpha, w, "alpha", Range::ZeroToOne);
  const c10::OptionalDeviceGuard guard(w.device());
  const at::Tensor eps = dynamic_eps(w, rule, reach, r_min);
  call.eps = eps_arg(eps, w, order, /*check_values=*/false);
  at::Tensor y = order.empty(w, w.scalar_type());
  if (w.numel() > 0) kernels_for(w.device()).alpha_blend(call, order.contiguous(w), order.view(y));
  return y;
}

void register_ops(torch::Library& m) {
  m.impl("_dynamic_eps", &dynamic_eps);
  m.impl("_ana_dynamic", &ana_dynamic);
  m.impl("_ana_dynamic_backward", &ana_dynamic_backward);
  m.impl("_alpha_blend_dynamic", &alpha_blend_dynamic);
}

}  // namespace

TORCH_LIBRARY_IMPL(anacuda, CPU, m) { register_ops(m); }
#if ANACUDA_WITH_CUDA
TORCH_LIBRARY_IMPL(anacuda, CUDA, m) { register_ops(m); }
#endif

}  // namespace anacuda
