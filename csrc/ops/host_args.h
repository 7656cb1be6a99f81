// The checks of an op's arguments, each run once per call by the op's host entry, and what they
// produce: the call for the device kernels (ops/call.h). Nothing here reads device memory:
// hyper-parameters on the host (Python numbers arrive as CPU tensors) are read and validated
// here; hyper-parameters on the device are passed on for the kernel to read, which turns invalid
// values into NaN (SPEC §7, docs/semantics.md: no synchronisation). A bad host value raises
// ValueError (TORCH_CHECK_VALUE), as the same bad Python number does in anacuda.functional.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <cmath>
#include <optional>
#include <string_view>
#include <vector>

#include "../common/box_code.h"
#include "call.h"
#include "memory_order.h"

namespace anacuda {

// Half types compute in float (SPEC §7).
inline at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// `backward`: the backward noise, which may also be "identity" (SPEC §5).
inline NoiseKind parse_noise(std::string_view s, bool backward = false) {
  if (s == "uniform") return NoiseKind::Uniform;
  if (s == "triangular") return NoiseKind::Triangular;
  if (s == "normal") return NoiseKind::Normal;
  if (s == "logistic") return NoiseKind::Logistic;
  TORCH_CHECK(!(s == "identity" && !backward), "anacuda: 'identity' is a backward noise only (the unclipped STE); "
              "the forward noise is uniform, triangular, normal or logistic");
  if (s == "identity") return NoiseKind::Identity;
  TORCH_CHECK(false, "anacuda: unknown noise '", s, "'; expected uniform, triangular, normal or logistic",
              backward ? " (or identity, for a backward)" : "");
}

inline Strategy parse_strategy(std::string_view s) {
  if (s == "expectation") return Strategy::Expectation;
  if (s == "mode") return Strategy::Mode;
  if (s == "random") return Strategy::Random;
  TORCH_CHECK(false, "anacuda: unknown strategy '", s, "'; expected expectation, mode or random");
}

inline void check_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.defined(), "anacuda: ", name, " is undefined");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble || x.scalar_type() == at::kHalf ||
                  x.scalar_type() == at::kBFloat16,
              "anacuda: ", name, " must be float64, float32, float16 or bfloat16, got ", x.scalar_type());
}

inline void check_grad(const at::Tensor& grad, const at::Tensor& x) {
  TORCH_CHECK(grad.defined() && grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type() &&
                  grad.device() == x.device(),
              "anacuda: the gradient must have the input's shape, dtype and device; got ", grad.sizes(), " ",
              grad.scalar_type(), " on ", grad.device(), " for an input ", x.sizes(), " ", x.scalar_type(), " on ",
              x.device());
}

inline bool on_host_or(const at::Tensor& t, const at::Device& d) { return t.device().is_cpu() || t.device() == d; }

enum class Range { Any, NonNegative, ZeroToOne };

// Every value of a host tensor in a compute type (float or double) finite and > 0, read in
// place (four tensor ops would cost more than a small layer's kernel).
inline bool all_valid_eps(const at::Tensor& et) {
  const at::Tensor c = et.contiguous();
  const auto all = [&](auto* p) {
    bool ok = true;
    for (int64_t i = 0; i < c.numel(); ++i) ok = ok && valid_eps(p[i]);
    return ok;
  };
  return c.scalar_type() == at::kDouble ? all(c.const_data_ptr<double>()) : all(c.const_data_ptr<float>());
}

// The value of a one-element floating tensor in host memory, read in place: item() would go
// through the dispatcher, a microsecond per scalar, and a call reads up to five of them.
inline double host_value(const at::Tensor& t) {
  if (t.is_neg()) return t.item<double>();  // a lazily negated view
  switch (t.scalar_type()) {
    case at::kDouble: return *t.const_data_ptr<double>();
    case at::kFloat: return *t.const_data_ptr<float>();
    case at::kHalf: return static_cast<double>(*t.const_data_ptr<at::Half>());
    case at::kBFloat16: return static_cast<double>(*t.const_data_ptr<at::BFloat16>());
    default: return t.item<double>();
  }
}

// A scalar hyper-parameter for an input x: one element, floating, on the host (then finite, in
// its range and finite in x's compute type) or on x's device.
inline ScalarArg scalar_arg(const at::Tensor& t, const at::Tensor& x, const char* name, Range range) {
  TORCH_CHECK(t.numel() == 1, "anacuda: ", name, " must be a number or a one-element tensor, got shape ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "anacuda: ", name, " must be a floating tensor, got ",
              t.scalar_type());
  TORCH_CHECK(on_host_or(t, x.device()), "anacuda: ", name, " is on ", t.device(), " but the input is on ", x.device());
  const at::ScalarType ct = compute_type(x.scalar_type());
  ScalarArg s;
  if (!t.device().is_cpu()) {
    s.on_device = t.to(ct).reshape({1});
    return s;
  }
  const double v = host_value(t);  // host memory: no synchronisation
  TORCH_CHECK_VALUE(std::isfinite(v), "anacuda: ", name, " must be finite, got ", v);
  TORCH_CHECK_VALUE(range == Range::Any || v >= 0, "anacuda: ", name,
                    range == Range::ZeroToOne ? " must be in [0, 1]" : " must be >= 0", ", got ", v);
  TORCH_CHECK_VALUE(range != Range::ZeroToOne || v <= 1, "anacuda: ", name, " must be in [0, 1], got ", v);
  TORCH_CHECK_VALUE(ct == at::kDouble || std::isfinite(static_cast<float>(v)), "anacuda: ", name, " = ", v,
                    " overflows ", ct, ", the compute type of this input");
  s.value = v;
  return s;
}

// A noise: its law (parsed by the caller) with mu and sigma ("backward mu" etc. in errors when
// `backward`).
inline NoiseArg noise_arg(NoiseKind kind, const at::Tensor& mu, const at::Tensor& sigma, const at::Tensor& x,
                          bool backward) {
  NoiseArg n;
  n.kind = kind;
  n.mu = scalar_arg(mu, x, backward ? "backward mu" : "mu", Range::Any);
  n.sigma = scalar_arg(sigma, x, backward ? "backward sigma" : "sigma", Range::NonNegative);
  return n;
}

inline GridArg grid_arg(const at::Tensor& levels, const at::Tensor& thresholds, bool uniform_grid, const at::Tensor& x) {
  const at::ScalarType ct = compute_type(x.scalar_type());
  TORCH_CHECK(thresholds.dim() == 1 && thresholds.numel() >= 1,
              "anacuda: thresholds must be a non-empty 1-D tensor, got shape ", thresholds.sizes());
  TORCH_CHECK(levels.dim() == 1 && levels.numel() == thresholds.numel() + 1,
              "anacuda: a quantiser with K thresholds needs K + 1 levels, got ", levels.numel(), " levels and ",
              thresholds.numel(), " thresholds");
  TORCH_CHECK(levels.scalar_type() == ct && thresholds.scalar_type() == ct, "anacuda: levels and thresholds must be ",
              ct, " for a ", x.scalar_type(), " input (use Quantizer.tables)");
  TORCH_CHECK(levels.device() == x.device() && thresholds.device() == x.device(),
              "anacuda: levels and thresholds must be on the input's device ", x.device());
  return {levels.contiguous(), thresholds.contiguous(), uniform_grid && thresholds.numel() >= 2};
}

// eps broadcast to x's shape: one value, or a contiguous block of dimensions of x in memory
// order (e.g. one value per channel, NCHW or channels_last), or, for any other broadcast,
// materialised at x's shape. `check_values` false: an eps the op computed itself (a dynamic
// scale, SPEC §9), NaN where its group holds a NaN or ±inf, read by the kernels as a device
// eps is (an invalid value gives NaN).
inline EpsArg eps_arg(const at::Tensor& eps, const at::Tensor& x, const MemoryOrder& order, bool check_values = true) {
  TORCH_CHECK(eps.defined() && at::isFloatingType(eps.scalar_type()),
              "anacuda: eps must be a number or a floating tensor");
  TORCH_CHECK(on_host_or(eps, x.device()), "anacuda: eps is on ", eps.device(), " but the input is on ", x.device());
  const int64_t xd = x.dim(), ed = eps.dim();
  bool broadcastable = ed <= xd;
  for (int64_t d = 0; broadcastable && d < ed; ++d) {
    const int64_t es = eps.size(ed - 1 - d), xs = x.size(xd - 1 - d);
    broadcastable = es == 1 || es == xs;
  }
  TORCH_CHECK(broadcastable || eps.numel() == 1, "anacuda: eps of shape ", eps.sizes(),
              " does not broadcast to the input's shape ", x.sizes(),
              " (for one value per channel, give eps the shape (C, 1, 1) of a channel axis)");
  const at::ScalarType ct = compute_type(x.scalar_type());
  EpsArg e;
  if (eps.numel() == 1) {
    if (eps.device().is_cpu() && check_values) {
      const double v = host_value(eps);
      TORCH_CHECK_VALUE(std::isfinite(v) && v > 0, "anacuda: eps must be finite and > 0, got ", v);
      const bool fits = ct == at::kDouble || (std::isfinite(static_cast<float>(v)) && static_cast<float>(v) > 0);
      TORCH_CHECK_VALUE(fits, "anacuda: eps = ", v, " is out of the range of ", ct, ", the compute type of this input");
      e.value = v;
    } else {
      e.values = eps.to(ct).reshape({1});
    }
    return e;
  }
  TORCH_CHECK(eps.device() == x.device(), "anacuda: an eps of more than one value must be on the input's device ",
              x.device(), ", got ", eps.device());
  const at::Tensor et = eps.to(ct);  // checked in the compute type
  if (et.device().is_cpu() && check_values)
    TORCH_CHECK_VALUE(all_valid_eps(et), "anacuda: every eps must be finite and > 0 (in ", ct, ", the compute type)");
  // eps with x's dimensions, both in memory order.
  std::vector<int64_t> padded(xd - ed, 1);
  padded.insert(padded.end(), et.sizes().begin(), et.sizes().end());
  const at::Tensor em = order.view(et.reshape(padded));
  const at::IntArrayRef xs = order.view(x).sizes(), es = em.sizes();
  // Dimensions along which eps varies.
  int64_t first = -1, last = -1;
  bool block = true;
  for (int64_t d = 0; d < xd; ++d) {
    const bool varies = es[d] != 1 && xs[d] != 1;
    const bool neutral = xs[d] == 1;
    if (varies) {
      if (first < 0) first = d;
      else if (last != d - 1) block = false;
      last = d;
    } else if (neutral && last == d - 1 && first >= 0) {
      last = d;  // a size-1 dimension inside the block keeps it contiguous
    }
  }
  if (block && first >= 0) {
    e.inner = 1;
    e.channels = 1;
    for (int64_t d = last + 1; d < xd; ++d) e.inner *= xs[d];
    for (int64_t d = first; d <= last; ++d) e.channels *= xs[d];
    e.values = em.contiguous().reshape({-1});
  } else {
    e.inner = 1;
    e.channels = x.numel();
    e.values = em.expand(xs).contiguous().reshape({-1});
  }
  return e;
}

// The random strategy's key: a 2-element int64 tensor (seed, stream) drawn from torch's RNG.
inline SeedArg seed_arg(const std::optional<at::Tensor>& seed, const at::Tensor& x) {
  TORCH_CHECK(seed.has_value() && seed->defined(),
              "anacuda: the random strategy needs a seed tensor (anacuda.functional.ana draws one)");
  TORCH_CHECK(seed->scalar_type() == at::kLong && seed->numel() == 2,
              "anacuda: seed must be an int64 tensor of 2 elements (seed, stream)");
  TORCH_CHECK(on_host_or(*seed, x.device()), "anacuda: seed is on ", seed->device(), " but the input is on ",
              x.device());
  SeedArg s;
  const at::Tensor c = seed->contiguous();
  if (c.device().is_cpu()) {
    s.seed = c.const_data_ptr<int64_t>()[0];
    s.stream = c.const_data_ptr<int64_t>()[1];
  } else {
    s.on_device = c;
  }
  return s;
}

// A code describes the boxes of at most kCodeMaxK thresholds (_ana_code, _ana_coded) of a
// uniform backward noise (_ana_coded, which is told the noise).
inline void check_code_thresholds(const at::Tensor& thresholds) {
  TORCH_CHECK(thresholds.numel() <= kCodeMaxK, "anacuda: a coded backward needs at most ", kCodeMaxK,
              " thresholds, got ", thresholds.numel());
}

// The saved code of a uniform backward noise, and the levels it indexes.
inline void check_code(const at::Tensor& grad, const at::Tensor& code, const at::Tensor& levels) {
  TORCH_CHECK(code.defined() && code.scalar_type() == at::kByte && code.sizes() == grad.sizes() &&
                  code.device() == grad.device(),
              "anacuda: the code must be a uint8 tensor of the gradient's shape and device");
  TORCH_CHECK(levels.dim() == 1 && levels.numel() >= 2 && levels.numel() <= kCodeMaxK + 1,
              "anacuda: a coded backward needs 2 to ", kCodeMaxK + 1, " levels, got ", levels.numel());
  TORCH_CHECK(levels.scalar_type() == compute_type(grad.scalar_type()) && levels.device() == grad.device(),
              "anacuda: levels must be ", compute_type(grad.scalar_type()), " on the gradient's device");
}

// The arguments of a forward op (ana, _ana_coded), in the order errors are reported: the input,
// the forward noise ahead of the backward one (which defaults to it, so that an error names the
// argument the user gave; the backward noise rides along for autograd and is checked here, so
// that a bad one fails at the forward call), then the quantiser, eps and the seed. `order`: x's
// memory order, which becomes the order to compute in: row-major for the random strategy, whose
// noise is keyed by the element's index (SPEC §7), whatever the layout.
inline AnaCall forward_call(const at::Tensor& x, MemoryOrder& order, const at::Tensor& levels,
                            const at::Tensor& thresholds, bool uniform_grid, const at::Tensor& eps,
                            std::string_view noise, const at::Tensor& mu, const at::Tensor& sigma,
                            std::string_view strategy, bool training, const std::optional<at::Tensor>& seed,
                            std::string_view noise_b, const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  check_input(x, "input");
  AnaCall c;
  const NoiseKind kind = parse_noise(noise);
  c.strategy = parse_strategy(strategy);
  c.noise = noise_arg(kind, mu, sigma, x, false);
  c.noise_b = noise_arg(parse_noise(noise_b, true), mu_b, sigma_b, x, true);
  c.training = training;
  c.grid = grid_arg(levels, thresholds, uniform_grid, x);
  if (c.strategy == Strategy::Random && training) order = MemoryOrder{};
  c.eps = eps_arg(eps, x, order);
  if (c.strategy == Strategy::Random && training) c.seed = seed_arg(seed, x);
  return c;
}

}  // namespace anacuda
