// The CPU kernels of every op, for one instruction set (CPU_CAPABILITY: DEFAULT or AVX2; see
// kernels.h): which loop computes what. The loops: small_grid.h (few thresholds, branch-free),
// smooth.h (normal and logistic noise over the thresholds in reach of each element, for many
// thresholds), loops.h (the per-element functors of common/functors.h, as the CUDA kernels
// run them: mode with smooth or wide noise, and many thresholds).
#pragma once

#ifndef CPU_CAPABILITY
#error "compile through isa_default.cpp or isa_avx2.cpp"
#endif

#include "kernels_deps.h"

#include <ATen/cpu/vec/vec.h>

#include "loops.h"
#include "small_grid.h"
#include "smooth.h"

namespace anacuda {
namespace CPU_CAPABILITY {

// The small-grid forward that computes this configuration, if any (mode with a smooth noise, or
// one wider than half a gap, needs the per-element walk of common/stair.h).
template <typename T>
std::optional<SmallForward> small_kind(const SmallGrid<T>& sg, NoiseKind nk, Strategy st, bool training, T sigma) {
  const bool compact = nk == NoiseKind::Uniform || nk == NoiseKind::Triangular;
  if (!(training && sigma > T(0)) || (st == Strategy::Mode && compact && T(2) * sigma <= sg.min_gap))
    return SmallForward::Hard;
  if (st == Strategy::Expectation) return SmallForward::Expectation;
  if (st == Strategy::Random) return SmallForward::Random;
  return std::nullopt;
}

void ana(const at::Tensor& x, at::Tensor& y, const at::Tensor& levels, const at::Tensor& thresholds,
         bool uniform_grid, const at::Tensor& eps, NoiseKind nk, const at::Tensor& mu, const at::Tensor& sigma,
         Strategy st, bool training, const std::optional<at::Tensor>& seed) {
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::ana", [&] {
    using T = at::opmath_type<scalar_t>;
    auto args = make_args<T>(x, levels, thresholds, uniform_grid, eps, mu, sigma, "mu", "sigma");
    if (st == Strategy::Random && training) seed_arg(args, seed, x.device());
    if (x.numel() == 0) return;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const T sigma_v = args.sigma.value;
    const bool smooth = training && sigma_v > T(0), compact = nk == NoiseKind::Uniform || nk == NoiseKind::Triangular;
    SmallGrid<T> sg;
    if (make_small_grid(args.grid, sg)) {
      if (const auto kind = small_kind(sg, nk, st, training, sigma_v)) {
        dispatch_noise(nk, [&](auto n_tag) {
          small_forward<decltype(n_tag)::value>(sg, *kind, xp, yp, x.numel(), args.eps, args.mu.value, sigma_v,
                                                static_cast<uint64_t>(args.seed.value),
                                                static_cast<uint64_t>(args.stream.value));
        });
        return;
      }
    }
    if (smooth && st == Strategy::Expectation && !compact) {
      if (nk == NoiseKind::Normal)
        smooth_window<NoiseKind::Normal>(args.grid, xp, static_cast<const scalar_t*>(nullptr), yp, x.numel(), args.eps,
                                         args.mu.value, sigma_v);
      else
        smooth_window<NoiseKind::Logistic>(args.grid, xp, static_cast<const scalar_t*>(nullptr), yp, x.numel(),
                                           args.eps, args.mu.value, sigma_v);
      return;
    }
    dispatch_noise(nk, [&](auto n_tag) {
      dispatch_strategy(st, [&](auto s_tag) {
        AnaForward<decltype(n_tag)::value, decltype(s_tag)::value, T> op{};
        op.p = args;
        op.training = training;
        cpu_unary<scalar_t, scalar_t>(xp, yp, x.numel(), op);
      });
    });
  });
}

void ana_backward(const at::Tensor& g, const at::Tensor& x, at::Tensor& gx, const at::Tensor& levels,
                  const at::Tensor& thresholds, bool uniform_grid, const at::Tensor& eps, NoiseKind nk,
                  const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::ana_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    auto args = make_args<T>(x, levels, thresholds, uniform_grid, eps, mu_b, sigma_b, "backward mu", "backward sigma");
    if (x.numel() == 0) return;
    const scalar_t *gp = g.const_data_ptr<scalar_t>(), *xp = x.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    const T sigma_v = args.sigma.value;
    SmallGrid<T> sg;
    if (sigma_v > T(0) && make_small_grid(args.grid, sg)) {
      dispatch_noise(nk, [&](auto n_tag) {
        small_backward<decltype(n_tag)::value>(sg, gp, xp, gxp, x.numel(), args.eps, args.mu.value, sigma_v);
      });
      return;
    }
    if ((nk == NoiseKind::Normal || nk == NoiseKind::Logistic) && sigma_v > T(0)) {
      if (nk == NoiseKind::Normal)
        smooth_window<NoiseKind::Normal>(args.grid, xp, gp, gxp, x.numel(), args.eps, args.mu.value, sigma_v);
      else
        smooth_window<NoiseKind::Logistic>(args.grid, xp, gp, gxp, x.numel(), args.eps, args.mu.value, sigma_v);
      return;
    }
    dispatch_noise(nk, [&](auto n_tag) {
      AnaBackward<decltype(n_tag)::value, T> op{};
      op.p = args;
      cpu_binary<scalar_t, scalar_t>(gp, xp, gxp, x.numel(), op);
    });
  });
}

void ana_code(const at::Tensor& x, at::Tensor& code, const at::Tensor& levels, const at::Tensor& thresholds,
              const at::Tensor& eps, const at::Tensor& mu_b, const at::Tensor& sigma_b) {
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
}

void ana_backward_code(const at::Tensor& g, const at::Tensor& code, at::Tensor& gx, const at::Tensor& levels,
                       const at::Tensor& sigma_b) {
  ANACUDA_DISPATCH_FLOATING(g.scalar_type(), "anacuda::ana_backward_code", [&] {
    using T = at::opmath_type<scalar_t>;
    std::vector<at::Tensor> keep;
    UniformBoxCodeBackward<T> op{};
    op.q = levels.const_data_ptr<T>();
    op.K = static_cast<int>(levels.numel()) - 1;
    op.sigma_arg = scalar_arg<T>(sigma_b, g.device(), "backward sigma", Range::NonNegative, keep);
    if (g.numel() == 0) return;
    if (op.sigma_arg.value > T(0)) {
      small_backward_code(op.q, op.K, g.const_data_ptr<scalar_t>(), code.const_data_ptr<uint8_t>(),
                          gx.mutable_data_ptr<scalar_t>(), g.numel(), op.sigma_arg.value);
      return;
    }
    cpu_binary<scalar_t, uint8_t>(g.const_data_ptr<scalar_t>(), code.const_data_ptr<uint8_t>(),
                                  gx.mutable_data_ptr<scalar_t>(), g.numel(), op);
  });
}

void ana_coded(const at::Tensor& x, at::Tensor& y, at::Tensor& code, const at::Tensor& levels,
               const at::Tensor& thresholds, bool uniform_grid, const at::Tensor& eps, NoiseKind nk,
               const at::Tensor& mu, const at::Tensor& sigma, Strategy st, bool training,
               const std::optional<at::Tensor>& seed, const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  bool fused = false;
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::ana_coded", [&] {
    using T = at::opmath_type<scalar_t>;
    auto args = make_args<T>(x, levels, thresholds, uniform_grid, eps, mu, sigma, "mu", "sigma");
    if (st == Strategy::Random && training) seed_arg(args, seed, x.device());
    CodeOut<T> out;
    out.ptr = code.mutable_data_ptr<uint8_t>();
    out.mu = scalar_arg<T>(mu_b, x.device(), "backward mu", Range::Any, args.keep).value;
    out.sigma = scalar_arg<T>(sigma_b, x.device(), "backward sigma", Range::NonNegative, args.keep).value;
    SmallGrid<T> sg;
    if (x.numel() == 0 || !make_small_grid(args.grid, sg)) return;
    if (const auto kind = small_kind(sg, nk, st, training, args.sigma.value)) {
      dispatch_noise(nk, [&](auto n_tag) {
        small_forward<decltype(n_tag)::value>(sg, *kind, x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                                              x.numel(), args.eps, args.mu.value, args.sigma.value,
                                              static_cast<uint64_t>(args.seed.value),
                                              static_cast<uint64_t>(args.stream.value), out);
      });
      fused = true;
    }
  });
  if (!fused) {  // two passes
    ana(x, y, levels, thresholds, uniform_grid, eps, nk, mu, sigma, st, training, seed);
    ana_code(x, code, levels, thresholds, eps, mu_b, sigma_b);
  }
}

void alpha_blend(const at::Tensor& w, at::Tensor& y, const at::Tensor& levels, const at::Tensor& thresholds,
                 bool uniform_grid, const at::Tensor& eps, const at::Tensor& alpha) {
  ANACUDA_DISPATCH_FLOATING(w.scalar_type(), "anacuda::alpha_blend", [&] {
    using T = at::opmath_type<scalar_t>;
    auto args = make_blend_args<T>(w, levels, thresholds, uniform_grid, eps, alpha);
    if (w.numel() == 0) return;
    SmallGrid<T> sg;
    if (make_small_grid(args.grid, sg)) {
      small_alpha_blend(sg, w.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), w.numel(), args.eps,
                        args.alpha.value);
      return;
    }
    AlphaBlend<T> op{};
    op.p = args;
    cpu_unary<scalar_t, scalar_t>(w.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), w.numel(), op);
  });
}

extern const CpuKernels kernels = {
    C10_STRINGIZE(CPU_CAPABILITY), &ana, &ana_backward, &ana_code, &ana_backward_code, &ana_coded, &alpha_blend,
};

}  // namespace CPU_CAPABILITY
}  // namespace anacuda
