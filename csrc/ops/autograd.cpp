// The autograd of every differentiable op (anacuda/ops.py keeps the fakes). In C++ because its
// cost is per call, and a small layer's kernel costs less: torch.library's Python
// register_autograd runs on every call, no_grad included, fills in the schema's defaults
// (quadratic in the arity; pytorch#195110), and goes through a Python autograd.Function.
// Where nothing needs a gradient (no_grad, eval, or an input and eps that do not require one) the
// op is called directly, without a graph node. The rules are SPEC §5, §6, §8 and §9's:
//   ana:                  save x; grad_x = _ana_backward, and with a learned eps (x, eps) =
//                         _ana_backward_eps in one pass (it recomputes g, SPEC §8).
//   _ana_coded:           save the 1-byte code; grad_x = _ana_backward_code.
//   alpha_blend:          grad_w = (1 - alpha) grad; a learned eps: _alpha_blend_backward_eps.
//   _ana_dynamic:         the scale is a constant of the step; grad_x = _ana_dynamic_backward
//                         (the identity's at valid scales on the CPU: grad itself).
//   _alpha_blend_dynamic: grad_w = (1 - alpha) grad.
// needs_input_grad counts only the tensor arguments (x 0, levels 1, thresholds 2, eps 3, ...);
// backward returns one gradient per argument of the schema; an undefined incoming gradient (of y
// where only the code or scale output is used) gives none.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

#include "host_args.h"

namespace anacuda {
namespace {

using at::Tensor;
using c10::string_view;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature> c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Whether the call records a graph node: grad mode on and a differentiable input (x, and a
// learned eps) requiring grad.
bool records(const Tensor& x) { return at::GradMode::is_enabled() && x.requires_grad(); }
bool records(const Tensor& x, const Tensor& eps) {
  return at::GradMode::is_enabled() && (x.requires_grad() || eps.requires_grad());
}

std::string str(const AutogradContext* ctx, const char* key) { return ctx->saved_data.at(key).toStringRef(); }

// (1 - alpha) grad: no gradient through the quantised term (SPEC §6); half types in float32.
Tensor blend_grad(const Tensor& grad, const Tensor& alpha) {
  const auto acc = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return (grad.to(acc) * (1 - alpha.to(acc).reshape({}))).to(grad.scalar_type());
}

// --- ana ----------------------------------------------------------------------------------------
using AnaSignature = Tensor(const Tensor&, const Tensor&, const Tensor&, bool, const Tensor&, string_view,
                            const Tensor&, const Tensor&, string_view, bool, const std::optional<Tensor>&, string_view,
                            const Tensor&, const Tensor&);

class Ana : public torch::autograd::Function<Ana> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& levels, const Tensor& thresholds,
                        bool uniform_grid, const Tensor& eps, string_view noise, const Tensor& mu, const Tensor& sigma,
                        string_view strategy, bool training, const std::optional<Tensor>& seed, string_view noise_b,
                        const Tensor& mu_b, const Tensor& sigma_b) {
    static const auto ana = op<AnaSignature>("anacuda::ana");
    at::AutoDispatchBelowADInplaceOrView below;
    Tensor y = ana.call(x, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy, training, seed, noise_b,
                        mu_b, sigma_b);
    ctx->save_for_backward({x, levels, thresholds, eps, mu, sigma, mu_b, sigma_b, seed.value_or(Tensor())});
    ctx->saved_data["uniform_grid"] = uniform_grid;
    ctx->saved_data["training"] = training;
    ctx->saved_data["noise"] = std::string(noise);
    ctx->saved_data["strategy"] = std::string(strategy);
    ctx->saved_data["noise_b"] = std::string(noise_b);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    using BackwardEps = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool,
                                                   const Tensor&, string_view, const Tensor&, const Tensor&,
                                                   string_view, bool, const std::optional<Tensor>&, string_view,
                                                   const Tensor&, const Tensor&);
    using Backward = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool, const Tensor&,
                            string_view, const Tensor&, const Tensor&);
    static const auto backward_eps = op<BackwardEps>("anacuda::_ana_backward_eps");
    static const auto backward = op<Backward>("anacuda::_ana_backward");
    const auto s = ctx->get_saved_variables();
    const Tensor &x = s[0], &levels = s[1], &thresholds = s[2], &eps = s[3], &mu_b = s[6], &sigma_b = s[7];
    const bool uniform_grid = ctx->saved_data.at("uniform_grid").toBool();
    const std::string noise_b = str(ctx, "noise_b");
    variable_list out(14);
    if (ctx->needs_input_grad(3)) {  // a learned eps: both gradients from one pass
      const std::optional<Tensor> seed = s[8].defined() ? std::optional<Tensor>(s[8]) : std::nullopt;
      auto [gx, geps] = backward_eps.call(grads[0], x, levels, thresholds, uniform_grid, eps, str(ctx, "noise"), s[4],
                                          s[5], str(ctx, "strategy"), ctx->saved_data.at("training").toBool(), seed,
                                          noise_b, mu_b, sigma_b);
      if (ctx->needs_input_grad(0)) out[0] = gx;
      out[4] = geps;
    } else if (ctx->needs_input_grad(0)) {
      out[0] = backward.call(grads[0], x, levels, thresholds, uniform_grid, eps, noise_b, mu_b, sigma_b);
    }
    return out;
  }
};

Tensor ana_autograd(const Tensor& x, const Tensor& levels, const Tensor& thresholds, bool uniform_grid,
                    const Tensor& eps, string_view noise, const Tensor& mu, const Tensor& sigma, string_view strategy,
                    bool training, const std::optional<Tensor>& seed, string_view noise_b, const Tensor& mu_b,
                    const Tensor& sigma_b) {
  if (records(x, eps))
    return Ana::apply(x, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy, training, seed, noise_b,
                      mu_b, sigma_b);
  static const auto ana = op<AnaSignature>("anacuda::ana");
  at::AutoDispatchBelowADInplaceOrView below;
  return ana.call(x, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy, training, seed, noise_b, mu_b,
                  sigma_b);
}

// --- _ana_coded ---------------------------------------------------------------------------------
using CodedSignature = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, bool, const Tensor&,
                                                  string_view, const Tensor&, const Tensor&, string_view, bool,
                                                  const std::optional<Tensor>&, string_view, const Tensor&,
                                                  const Tensor&);

class AnaCoded : public torch::autograd::Function<AnaCoded> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& levels, const Tensor& thresholds,
                               bool uniform_grid, const Tensor& eps, string_view noise, const Tensor& mu,
                               const Tensor& sigma, string_view strategy, bool training,
                               const std::optional<Tensor>& seed, string_view noise_b, const Tensor& mu_b,
                               const Tensor& sigma_b) {
    static const auto coded = op<CodedSignature>("anacuda::_ana_coded");
    at::AutoDispatchBelowADInplaceOrView below;
    auto [y, code] = coded.call(x, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy, training, seed,
                                noise_b, mu_b, sigma_b);
    ctx->save_for_backward({code, levels, sigma_b});
    ctx->mark_non_differentiable({code});
    ctx->set_materialize_grads(false);  // else the code's gradient comes as zeros of its size
    return {y, code};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward =
        op<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&)>("anacuda::_ana_backward_code");
    variable_list out(14);
    if (ctx->needs_input_grad(0) && grads[0].defined()) {
      const auto s = ctx->get_saved_variables();
      out[0] = backward.call(grads[0], s[0], s[1], s[2]);
    }
    return out;
  }
};

std::tuple<Tensor, Tensor> ana_coded_autograd(const Tensor& x, const Tensor& levels, const Tensor& thresholds,
                                              bool uniform_grid, const Tensor& eps, string_view noise,
                                              const Tensor& mu, const Tensor& sigma, string_view strategy,
                                              bool training, const std::optional<Tensor>& seed, string_view noise_b,
                                              const Tensor& mu_b, const Tensor& sigma_b) {
  if (!records(x, eps)) {
    static const auto coded = op<CodedSignature>("anacuda::_ana_coded");
    at::AutoDispatchBelowADInplaceOrView below;
    return coded.call(x, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy, training, seed, noise_b,
                      mu_b, sigma_b);
  }
  auto out = AnaCoded::apply(x, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy, training, seed,
                             noise_b, mu_b, sigma_b);
  return {out[0], out[1]};
}

// --- alpha_blend --------------------------------------------------------------------------------
using BlendSignature = Tensor(const Tensor&, const Tensor&, const Tensor&, bool, const Tensor&, const Tensor&);

class AlphaBlend : public torch::autograd::Function<AlphaBlend> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& w, const Tensor& levels, const Tensor& thresholds,
                        bool uniform_grid, const Tensor& eps, const Tensor& alpha) {
    static const auto blend = op<BlendSignature>("anacuda::alpha_blend");
    at::AutoDispatchBelowADInplaceOrView below;
    Tensor y = blend.call(w, levels, thresholds, uniform_grid, eps, alpha);
    ctx->save_for_backward({alpha, w, levels, thresholds, eps});
    ctx->saved_data["uniform_grid"] = uniform_grid;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_eps = op<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool,
                                               const Tensor&, const Tensor&)>("anacuda::_alpha_blend_backward_eps");
    const auto s = ctx->get_saved_variables();
    variable_list out(6);
    if (ctx->needs_input_grad(3))  // a learned eps (SPEC §8): alpha * Q(w / eps), reduced to eps's shape
      out[4] = backward_eps.call(grads[0], s[1], s[2], s[3], ctx->saved_data.at("uniform_grid").toBool(), s[4], s[0]);
    if (ctx->needs_input_grad(0)) out[0] = blend_grad(grads[0], s[0]);
    return out;
  }
};

Tensor alpha_blend_autograd(const Tensor& w, const Tensor& levels, const Tensor& thresholds, bool uniform_grid,
                            const Tensor& eps, const Tensor& alpha) {
  if (records(w, eps)) return AlphaBlend::apply(w, levels, thresholds, uniform_grid, eps, alpha);
  static const auto blend = op<BlendSignature>("anacuda::alpha_blend");
  at::AutoDispatchBelowADInplaceOrView below;
  return blend.call(w, levels, thresholds, uniform_grid, eps, alpha);
}

// --- _ana_dynamic -------------------------------------------------------------------------------
using DynamicSignature = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, bool, string_view,
                                                    double, double, string_view, const Tensor&, const Tensor&,
                                                    string_view, bool, const std::optional<Tensor>&, string_view,
                                                    const Tensor&, const Tensor&);

// The identity backward needs no x: a scale is NaN exactly where its group holds a NaN or +-inf
// (SPEC §9), so "NaN where x / eps is NaN" is "NaN where eps is", and grad in x's place gives it.
// Nothing of the input's size is kept for it (as BitNet's x + (q - x).detach() keeps nothing).
// Where every scale is valid that gradient is grad itself, which the backward then returns as it
// is, without a pass over memory (as autograd's own backward of a clone does). Checked on the
// host for a real CPU scale only: a GPU's would need a synchronisation, a traced one has no values.
bool all_valid_on_host(const Tensor& eps) {
  constexpr auto traced = c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::Functionalize});
  if (!eps.device().is_cpu() || eps.key_set().has_any(traced)) return false;
  return all_valid_eps(eps);  // the scale is in the compute type (float or double)
}

class AnaDynamic : public torch::autograd::Function<AnaDynamic> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& levels, const Tensor& thresholds,
                               bool uniform_grid, string_view rule, double reach, double r_min, string_view noise,
                               const Tensor& mu, const Tensor& sigma, string_view strategy, bool training,
                               const std::optional<Tensor>& seed, string_view noise_b, const Tensor& mu_b,
                               const Tensor& sigma_b) {
    static const auto dynamic = op<DynamicSignature>("anacuda::_ana_dynamic");
    at::AutoDispatchBelowADInplaceOrView below;
    auto [y, eps] = dynamic.call(x, levels, thresholds, uniform_grid, rule, reach, r_min, noise, mu, sigma, strategy,
                                 training, seed, noise_b, mu_b, sigma_b);
    ctx->save_for_backward({noise_b == "identity" ? Tensor() : x, eps, levels, thresholds, mu_b, sigma_b});
    ctx->mark_non_differentiable({eps});
    ctx->set_materialize_grads(false);  // else the scale's gradient comes as zeros of its size
    ctx->saved_data["uniform_grid"] = uniform_grid;
    ctx->saved_data["noise_b"] = std::string(noise_b);
    return {y, eps};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward =
        op<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool, string_view,
                  const Tensor&, const Tensor&)>("anacuda::_ana_dynamic_backward");
    variable_list out(16);
    if (ctx->needs_input_grad(0) && grads[0].defined()) {
      const auto s = ctx->get_saved_variables();
      if (!s[0].defined() && all_valid_on_host(s[1])) out[0] = grads[0];  // the identity at valid scales
      else
        out[0] = backward.call(grads[0], s[0].defined() ? s[0] : grads[0], s[1], s[2], s[3],
                               ctx->saved_data.at("uniform_grid").toBool(), str(ctx, "noise_b"), s[4], s[5]);
    }
    return out;
  }
};

std::tuple<Tensor, Tensor> ana_dynamic_autograd(const Tensor& x, const Tensor& levels, const Tensor& thresholds,
                                                bool uniform_grid, string_view rule, double reach, double r_min,
                                                string_view noise, const Tensor& mu, const Tensor& sigma,
                                                string_view strategy, bool training, const std::optional<Tensor>& seed,
                                                string_view noise_b, const Tensor& mu_b, const Tensor& sigma_b) {
  if (!records(x)) {
    static const auto dynamic = op<DynamicSignature>("anacuda::_ana_dynamic");
    at::AutoDispatchBelowADInplaceOrView below;
    return dynamic.call(x, levels, thresholds, uniform_grid, rule, reach, r_min, noise, mu, sigma, strategy, training,
                        seed, noise_b, mu_b, sigma_b);
  }
  auto out = AnaDynamic::apply(x, levels, thresholds, uniform_grid, rule, reach, r_min, noise, mu, sigma, strategy,
                               training, seed, noise_b, mu_b, sigma_b);
  return {out[0], out[1]};
}

// --- _alpha_blend_dynamic -----------------------------------------------------------------------
using BlendDynamicSignature = Tensor(const Tensor&, const Tensor&, const Tensor&, bool, string_view, double, double,
                                     const Tensor&);

class AlphaBlendDynamic : public torch::autograd::Function<AlphaBlendDynamic> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& w, const Tensor& levels, const Tensor& thresholds,
                        bool uniform_grid, string_view rule, double reach, double r_min, const Tensor& alpha) {
    static const auto blend = op<BlendDynamicSignature>("anacuda::_alpha_blend_dynamic");
    at::AutoDispatchBelowADInplaceOrView below;
    Tensor y = blend.call(w, levels, thresholds, uniform_grid, rule, reach, r_min, alpha);
    ctx->save_for_backward({alpha});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(8);
    if (ctx->needs_input_grad(0)) out[0] = blend_grad(grads[0], ctx->get_saved_variables()[0]);
    return out;
  }
};

Tensor alpha_blend_dynamic_autograd(const Tensor& w, const Tensor& levels, const Tensor& thresholds, bool uniform_grid,
                                    string_view rule, double reach, double r_min, const Tensor& alpha) {
  if (records(w)) return AlphaBlendDynamic::apply(w, levels, thresholds, uniform_grid, rule, reach, r_min, alpha);
  static const auto blend = op<BlendDynamicSignature>("anacuda::_alpha_blend_dynamic");
  at::AutoDispatchBelowADInplaceOrView below;
  return blend.call(w, levels, thresholds, uniform_grid, rule, reach, r_min, alpha);
}

}  // namespace

TORCH_LIBRARY_IMPL(anacuda, Autograd, m) {
  m.impl("ana", &ana_autograd);
  m.impl("_ana_coded", &ana_coded_autograd);
  m.impl("alpha_blend", &alpha_blend_autograd);
  m.impl("_ana_dynamic", &ana_dynamic_autograd);
  m.impl("_alpha_blend_dynamic", &alpha_blend_dynamic_autograd);
}

}  // namespace anacuda
