// The CPU kernels of every op for one instruction set (CPU_CAPABILITY: DEFAULT or AVX2; see
// kernel_table.h): the dtype dispatch, and which loop computes what. The fast paths:
// all_thresholds.h (few thresholds, branch-free blocks), smooth_window.h (normal and logistic
// noise over the thresholds in reach of each element, for many thresholds) and arithmetic_grid.h
// (the hard stair of an evenly spaced grid with many thresholds). Everything else, and
// everything when the CPU runs the GPU's code: loops.h, the functors of common/functors.h in the
// CUDA loop.
#pragma once

#ifndef CPU_CAPABILITY
#error "compile through isa_default.cpp or isa_avx2.cpp"
#endif

#include "isa_headers.h"

#include "all_thresholds.h"
#include "learned_fast.h"
#include "loops.h"
#include "scale_rows.h"
#include "smooth_window.h"

namespace anacuda {
namespace CPU_CAPABILITY {

template <typename T> bool fast_table(const Grid<T>& g, ThresholdTable<T>& s) {
  return !cpu_runs_functors() && make_threshold_table(g, s);
}

void ana(const AnaCall& c, const at::Tensor& x, const at::Tensor& y) {
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::ana", [&] {
    using T = at::opmath_type<scalar_t>;
    const AnaParams<T> p = c.forward<T>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const T sigma = p.sigma.value;
    ThresholdTable<T> s;
    if (fast_table(p.grid, s)) {
      if (const auto kind = block_forward_kind(s, c.noise.kind, c.strategy, c.training, sigma)) {
        dispatch_noise(c.noise.kind, [&](auto n) {
          block_forward<decltype(n)::value>(s, *kind, xp, yp, x.numel(), p.eps, p.mu.value, sigma,
                                            static_cast<uint64_t>(p.seed.value), static_cast<uint64_t>(p.stream.value));
        });
        return;
      }
    }
    const bool smooth_noise = c.noise.kind == NoiseKind::Normal || c.noise.kind == NoiseKind::Logistic;
    if (!cpu_runs_functors() && c.training && sigma > T(0) && c.strategy == Strategy::Expectation && smooth_noise) {
      dispatch_noise(c.noise.kind, [&](auto n) {
        if constexpr (decltype(n)::value == NoiseKind::Normal || decltype(n)::value == NoiseKind::Logistic)
          smooth_window<decltype(n)::value>(p.grid, xp, static_cast<const scalar_t*>(nullptr), yp, x.numel(), p.eps,
                                            p.mu.value, sigma);
      });
      return;
    }
    const bool hard = mode_is_hard(c, p);  // many thresholds: the table's rule
    ArithmeticGrid<T> ag;
    if (!cpu_runs_functors() && (hard || !(c.training && sigma > T(0))) && make_arithmetic_grid(p.grid, ag)) {
      arithmetic_hard_forward(ag, xp, yp, x.numel(), p.eps, p.mu.value);
      return;
    }
    dispatch_noise(c.noise.kind, [&](auto n) {
      dispatch_strategy(c.strategy, [&](auto st) {
        unary_loop(xp, Output<scalar_t>{yp}, x.numel(),
                   AnaForward<decltype(n)::value, decltype(st)::value, T>{p, c.training, hard});
      });
    });
  });
}

void ana_backward(const AnaCall& c, const at::Tensor& g, const at::Tensor& x, const at::Tensor& gx) {
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::_ana_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    const AnaParams<T> p = c.backward<T>();
    const scalar_t *gp = g.const_data_ptr<scalar_t>(), *xp = x.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    const T sigma = p.sigma.value;
    const NoiseKind nk = c.noise_b.kind;
    if (nk == NoiseKind::Identity) {
      if (cpu_runs_functors()) binary_loop(gp, xp, gxp, x.numel(), IdentityBackward<T>{p.eps});
      else block_identity_backward(gp, xp, gxp, x.numel(), p.eps);
      return;
    }
    ThresholdTable<T> s;
    if (sigma > T(0) && fast_table(p.grid, s)) {
      dispatch_noise(nk, [&](auto n) {
        block_backward<decltype(n)::value>(s, gp, xp, gxp, x.numel(), p.eps, p.mu.value, sigma);
      });
      return;
    }
    if (!cpu_runs_functors() && (nk == NoiseKind::Normal || nk == NoiseKind::Logistic) && sigma > T(0)) {
      dispatch_noise(nk, [&](auto n) {
        if constexpr (decltype(n)::value == NoiseKind::Normal || decltype(n)::value == NoiseKind::Logistic)
          smooth_window<decltype(n)::value>(p.grid, xp, gp, gxp, x.numel(), p.eps, p.mu.value, sigma);
      });
      return;
    }
    dispatch_noise(nk, [&](auto n) { binary_loop(gp, xp, gxp, x.numel(), AnaBackward<decltype(n)::value, T>{p}); });
  });
}

void ana_code(const AnaCall& c, const at::Tensor& x, const at::Tensor& code) {
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::_ana_code", [&] {
    using T = at::opmath_type<scalar_t>;
    const AnaParams<T> p = c.backward<T>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    uint8_t* cp = code.mutable_data_ptr<uint8_t>();
    ThresholdTable<T> s;
    if (fast_table(p.grid, s)) {
      block_code(s, xp, cp, x.numel(), p.eps, p.mu.value, p.sigma.value);
      return;
    }
    unary_loop(xp, Output<uint8_t>{cp}, x.numel(), UniformBoxCode<T>{p});
  });
}

void ana_backward_code(const CodeBackwardCall& c, const at::Tensor& g, const at::Tensor& code, const at::Tensor& gx) {
  ANACUDA_DISPATCH_FLOATING(g.scalar_type(), "anacuda::_ana_backward_code", [&] {
    using T = at::opmath_type<scalar_t>;
    const T* q = c.levels.const_data_ptr<T>();
    const int K = static_cast<int>(c.levels.numel()) - 1;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const uint8_t* cp = code.const_data_ptr<uint8_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    const HostOrDevice<T> sigma = c.sigma_b.get<T>();
    if (!cpu_runs_functors()) {
      table_backward_code(q, K, gp, cp, gxp, g.numel(), sigma.value);
      return;
    }
    binary_loop(gp, cp, gxp, g.numel(), UniformBoxCodeBackward<T>{q, K, sigma});
  });
}

bool ana_coded(const AnaCall& c, const at::Tensor& x, const at::Tensor& y, const at::Tensor& code) {
  bool done = false;
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::_ana_coded", [&] {
    using T = at::opmath_type<scalar_t>;
    const AnaParams<T> p = c.forward<T>(), pb = c.backward<T>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    uint8_t* cp = code.mutable_data_ptr<uint8_t>();
    if (cpu_runs_functors()) {  // the GPU's one pass
      dispatch_noise(c.noise.kind, [&](auto n) {
        dispatch_strategy(c.strategy, [&](auto st) {
          using Forward = AnaForward<decltype(n)::value, decltype(st)::value, T>;
          using Coded = AnaCoded<decltype(n)::value, decltype(st)::value, T>;
          unary_loop(xp, OutputAndCode<scalar_t>{yp, cp}, x.numel(), Coded{Forward{p, c.training}, UniformBoxCode<T>{pb}});
        });
      });
      done = true;
      return;
    }
    ThresholdTable<T> s;
    if (!make_threshold_table(p.grid, s)) return;
    const auto kind = block_forward_kind(s, c.noise.kind, c.strategy, c.training, p.sigma.value);
    if (!kind) return;
    const CodeOutput<T> out{cp, pb.mu.value, pb.sigma.value};
    dispatch_noise(c.noise.kind, [&](auto n) {
      block_forward<decltype(n)::value>(s, *kind, xp, yp, x.numel(), p.eps, p.mu.value, p.sigma.value,
                                        static_cast<uint64_t>(p.seed.value), static_cast<uint64_t>(p.stream.value), out);
    });
    done = true;
  });
  return done;
}

void alpha_blend(const BlendCall& c, const at::Tensor& w, const at::Tensor& y) {
  ANACUDA_DISPATCH_FLOATING(w.scalar_type(), "anacuda::alpha_blend", [&] {
    using T = at::opmath_type<scalar_t>;
    const BlendParams<T> p = c.params<T>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    ThresholdTable<T> s;
    if (fast_table(p.grid, s)) {
      block_alpha_blend(s, wp, yp, w.numel(), p.eps, p.alpha.value);
      return;
    }
    unary_loop(wp, Output<scalar_t>{yp}, w.numel(), AlphaBlend<T>{p});
  });
}

extern const DeviceKernels kernels = {
    C10_STRINGIZE(CPU_CAPABILITY), &ana, &ana_backward, &ana_code, &ana_backward_code, &ana_coded, &alpha_blend,
};
extern const CpuOnlyKernels cpu_only = {&dynamic_eps, &ana_eps_grad};

}  // namespace CPU_CAPABILITY
}  // namespace anacuda
