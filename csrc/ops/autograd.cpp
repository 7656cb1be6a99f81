// The autograd of _ana_coded, the op every layer's forward calls (the other ops' autograd is
// anacuda/ops.py's). In C++ because its cost is per call: torch.library's Python
// register_autograd fills in the schema's defaults on every call, quadratic in the arity (14
// arguments here: tens of microseconds, more than the kernel of a small layer; pytorch#195110),
// and runs a Python autograd.Function. This is the Python version's rule: save the 1-byte code, the
// levels and the backward sigma; grad_x = _ana_backward_code(grad, code, levels, sigma_b).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace anacuda {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using CodedSignature = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, bool, const Tensor&,
                                                  c10::string_view, const Tensor&, const Tensor&, c10::string_view,
                                                  bool, const std::optional<Tensor>&, c10::string_view, const Tensor&,
                                                  const Tensor&);

class AnaCoded : public torch::autograd::Function<AnaCoded> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& levels, const Tensor& thresholds,
                               bool uniform_grid, const Tensor& eps, c10::string_view noise, const Tensor& mu,
                               const Tensor& sigma, c10::string_view strategy, bool training,
                               const std::optional<Tensor>& seed, c10::string_view noise_b, const Tensor& mu_b,
                               const Tensor& sigma_b) {
    static const auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("anacuda::_ana_coded", "").typed<CodedSignature>();
    at::AutoDispatchBelowADInplaceOrView below;
    auto [y, code] = op.call(x, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy, training, seed,
                             noise_b, mu_b, sigma_b);
    ctx->save_for_backward({code, levels, sigma_b});
    ctx->mark_non_differentiable({code});
    return {y, code};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("anacuda::_ana_backward_code", "")
                               .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&)>();
    variable_list out(14);  // one per input; only x has a gradient
    if (ctx->needs_input_grad(0)) {
      const auto saved = ctx->get_saved_variables();
      out[0] = op.call(grads[0], saved[0], saved[1], saved[2]);
    }
    return out;
  }
};

std::tuple<Tensor, Tensor> ana_coded_autograd(const Tensor& x, const Tensor& levels, const Tensor& thresholds,
                                              bool uniform_grid, const Tensor& eps, c10::string_view noise,
                                              const Tensor& mu, const Tensor& sigma, c10::string_view strategy,
                                              bool training, const std::optional<Tensor>& seed,
                                              c10::string_view noise_b, const Tensor& mu_b, const Tensor& sigma_b) {
  auto out = AnaCoded::apply(x, levels, thresholds, uniform_grid, eps, noise, mu, sigma, strategy, training, seed,
                             noise_b, mu_b, sigma_b);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(anacuda, Autograd, m) { m.impl("_ana_coded", &ana_coded_autograd); }

}  // namespace anacuda
