// ANA forward and backward on the CPU: one parallel pass per direction over contiguous data.
#include <torch/library.h>

#include "../common/functors.h"
#include "batched.h"
#include "loops.h"
#include "small_grid.h"

namespace anacuda {
namespace {

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
    const T sigma_v = args.sigma.value;
    const bool smooth = training && sigma_v > T(0), compact = nk == NoiseKind::Uniform || nk == NoiseKind::Triangular;
    SmallGrid<T> sg;
    if (make_small_grid(args.grid, sg)) {
      std::optional<SmallForward> kind;
      if (!smooth || (st == Strategy::Mode && compact && T(2) * sigma_v <= sg.min_gap)) kind = SmallForward::Hard;
      else if (st == Strategy::Expectation && compact) kind = SmallForward::Expectation;
      else if (st == Strategy::Random) kind = SmallForward::Random;
      if (kind) {
        dispatch_noise(nk, [&](auto n_tag) {
          small_forward<decltype(n_tag)::value>(sg, *kind, x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                                                x.numel(), args.eps, args.mu.value, sigma_v,
                                                static_cast<uint64_t>(args.seed.value), static_cast<uint64_t>(args.stream.value));
        });
        return;
      }
    }
    if (smooth && st == Strategy::Expectation && !compact) {
      const auto run = [&](auto n_tag) {
        batched_window<decltype(n_tag)::value, scalar_t, T>(args.grid, nullptr, x.const_data_ptr<scalar_t>(),
                                                            y.mutable_data_ptr<scalar_t>(), x.numel(), args.eps,
                                                            args.mu.value, sigma_v);
      };
      if (nk == NoiseKind::Normal) run(NoiseTag<NoiseKind::Normal>{});
      else run(NoiseTag<NoiseKind::Logistic>{});
      return;
    }
    dispatch_noise(nk, [&](auto n_tag) {
      dispatch_strategy(st, [&](auto s_tag) {
        AnaForward<decltype(n_tag)::value, decltype(s_tag)::value, T> op{};
        op.p = args;
        op.training = training;
        cpu_unary<scalar_t, scalar_t>(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), x.numel(), op);
      });
    });
  });
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
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::ana_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    auto args = make_args<T>(x, levels, thresholds, uniform_grid, eps, mu_b, sigma_b, "backward mu", "backward sigma");
    if (x.numel() == 0) return;
    SmallGrid<T> sg;
    if ((nk == NoiseKind::Uniform || nk == NoiseKind::Triangular) && args.sigma.value > T(0) &&
        make_small_grid(args.grid, sg)) {
      dispatch_noise(nk, [&](auto n_tag) {
        small_backward<decltype(n_tag)::value>(sg, g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                               gx.mutable_data_ptr<scalar_t>(), x.numel(), args.eps, args.mu.value,
                                               args.sigma.value);
      });
      return;
    }
    if ((nk == NoiseKind::Normal || nk == NoiseKind::Logistic) && args.sigma.value > T(0)) {
      const auto run = [&](auto n_tag) {
        batched_window<decltype(n_tag)::value, scalar_t, T>(args.grid, g.const_data_ptr<scalar_t>(),
                                                            x.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(),
                                                            x.numel(), args.eps, args.mu.value, args.sigma.value);
      };
      if (nk == NoiseKind::Normal) run(NoiseTag<NoiseKind::Normal>{});
      else run(NoiseTag<NoiseKind::Logistic>{});
      return;
    }
    dispatch_noise(nk, [&](auto n_tag) {
      AnaBackward<decltype(n_tag)::value, T> op{};
      op.p = args;
      cpu_binary<scalar_t, scalar_t>(g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(),
                 x.numel(), op);
    });
  });
  return gx;
}

at::Tensor ana_code_cpu(const at::Tensor& x_, const at::Tensor& levels, const at::Tensor& thresholds,
                         const at::Tensor& eps, const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  check_input(x_, "input");
  TORCH_CHECK(thresholds.numel() <= kCodeMaxK, "anacuda: a coded backward needs at most ", kCodeMaxK,
              " thresholds, got ", thresholds.numel());
  const at::Tensor x = x_.contiguous();
  at::Tensor code = at::empty(x.sizes(), x.options().dtype(at::kByte));
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::ana_code", [&] {
    using T = at::opmath_type<scalar_t>;
    auto args = make_args<T>(x, levels, thresholds, false, eps, mu_b, sigma_b, "backward mu", "backward sigma");
    if (x.numel() == 0) return;
    SmallGrid<T> sg;
    if (make_small_grid(args.grid, sg) && std::isfinite(static_cast<double>(args.sigma.value))) {
      small_code(sg, x.const_data_ptr<scalar_t>(), code.mutable_data_ptr<uint8_t>(), x.numel(), args.eps,
                 args.mu.value, args.sigma.value);
      return;
    }
    UniformBoxCode<T> op{};
    op.p = args;
    cpu_unary<scalar_t, uint8_t>(x.const_data_ptr<scalar_t>(), code.mutable_data_ptr<uint8_t>(), x.numel(), op);
  });
  return code;
}

at::Tensor ana_backward_code_cpu(const at::Tensor& grad_, const at::Tensor& code_, const at::Tensor& levels,
                                  const at::Tensor& sigma_b) {
  check_input(grad_, "gradient");
  check_code(grad_, code_, levels);
  const at::Tensor g = grad_.contiguous(), code = code_.contiguous(), lv = levels.contiguous();
  at::Tensor gx = at::empty(g.sizes(), g.options());
  ANACUDA_DISPATCH_FLOATING(g.scalar_type(), "anacuda::ana_backward_code", [&] {
    using T = at::opmath_type<scalar_t>;
    std::vector<at::Tensor> keep;
    UniformBoxCodeBackward<T> op{};
    op.q = lv.const_data_ptr<T>();
    op.K = static_cast<int>(lv.numel()) - 1;
    op.sigma_arg = scalar_arg<T>(sigma_b, g.device(), "backward sigma", Range::NonNegative, keep);
    if (g.numel() == 0) return;
    if (op.sigma_arg.value > T(0)) {
      small_backward_code(op.q, op.K, g.const_data_ptr<scalar_t>(), code.const_data_ptr<uint8_t>(),
                          gx.mutable_data_ptr<scalar_t>(), g.numel(), op.sigma_arg.value);
      return;
    }
    cpu_binary<scalar_t, uint8_t>(g.const_data_ptr<scalar_t>(), code.const_data_ptr<uint8_t>(), gx.mutable_data_ptr<scalar_t>(), g.numel(), op);
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(anacuda, CPU, m) {
  m.impl("ana", &ana_cpu);
  m.impl("ana_backward", &ana_backward_cpu);
  m.impl("ana_code", &ana_code_cpu);
  m.impl("ana_backward_code", &ana_backward_code_cpu);
}

}  // namespace anacuda
