// Host-side checks and the preparation of kernel arguments, shared by the CPU and CUDA ops.
//
// Nothing here reads device memory: hyper-parameters on the host (Python numbers arrive as
// CPU tensors) are read and validated here; hyper-parameters on the device are passed as
// pointers and read by the kernel, which turns invalid values into NaN (SPEC §7: no sync).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>
#include <limits>
#include <optional>
#include <vector>

#include "dispatch.h"
#include "stair.h"

namespace anacuda {

// A scalar hyper-parameter: a value from the host or a pointer to device memory.
template <typename T> struct Scalar {
  const T* ptr = nullptr;
  T value = T(0);
  C10_HOST_DEVICE inline T get() const { return ptr ? *ptr : value; }
};

// Per-element scale: eps[(i / inner) % channels] (one value when channels == 1).
template <typename T> struct EpsLayout {
  const T* ptr = nullptr;
  T value = T(1);
  int64_t inner = 1, channels = 1;
  C10_HOST_DEVICE inline T at(int64_t i) const {
    if (ptr == nullptr) return value;
    if (channels == 1) return ptr[0];
    // 32-bit division where everything fits: far cheaper than 64-bit on a GPU.
    if (((static_cast<uint64_t>(i) | static_cast<uint64_t>(inner) | static_cast<uint64_t>(channels)) >> 32) == 0)
      return ptr[(static_cast<uint32_t>(i) / static_cast<uint32_t>(inner)) % static_cast<uint32_t>(channels)];
    return ptr[(i / inner) % channels];
  }
};

// What the forward and backward kernels need (plain data, passed by value to a kernel).
template <typename T> struct AnaParams {
  Grid<T> grid;
  EpsLayout<T> eps;
  Scalar<T> mu, sigma;
  Scalar<int64_t> seed, stream;
};

// The same, with the converted tensors it points into kept alive.
template <typename T> struct AnaArgs : AnaParams<T> {
  std::vector<at::Tensor> keep;
};

inline at::ScalarType compute_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.defined(), "anacuda: ", name, " is undefined");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()) &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble ||
                   x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16),
              "anacuda: ", name, " must be float64, float32, float16 or bfloat16, got ", x.scalar_type());
}

inline void check_grad(const at::Tensor& grad, const at::Tensor& x) {
  TORCH_CHECK(grad.defined() && grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type() &&
                  grad.device() == x.device(),
              "anacuda: the gradient must have the input's shape, dtype and device; got ", grad.sizes(), " ",
              grad.scalar_type(), " on ", grad.device(), " for an input ", x.sizes(), " ", x.scalar_type(), " on ",
              x.device());
}

// The saved code of a uniform backward noise, and the levels it indexes.
inline void check_code(const at::Tensor& grad, const at::Tensor& code, const at::Tensor& levels) {
  TORCH_CHECK(code.scalar_type() == at::kByte && code.sizes() == grad.sizes() && code.device() == grad.device(),
              "anacuda: the code must be a uint8 tensor of the gradient's shape and device");
  TORCH_CHECK(levels.dim() == 1 && levels.numel() >= 2 && levels.numel() <= 16,
              "anacuda: a coded backward needs 2 to 16 levels, got ", levels.numel());
  TORCH_CHECK(levels.scalar_type() == compute_type(grad.scalar_type()) && levels.device() == grad.device(),
              "anacuda: levels must be ", compute_type(grad.scalar_type()), " on the gradient's device");
}

inline bool on_host_or(const at::Tensor& t, const at::Device& d) {
  return t.device().is_cpu() || t.device() == d;
}

enum class Range { Any, NonNegative, Unit };

// Checks a scalar hyper-parameter; returns its value when it lives on the host.
inline std::optional<double> check_scalar(const at::Tensor& t, const at::Device& dev, const char* name, Range range) {
  TORCH_CHECK(t.numel() == 1, "anacuda: ", name, " must be a number or a one-element tensor, got shape ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "anacuda: ", name, " must be a floating tensor, got ", t.scalar_type());
  TORCH_CHECK(on_host_or(t, dev), "anacuda: ", name, " is on ", t.device(), " but the input is on ", dev);
  if (!t.device().is_cpu()) return std::nullopt;
  const double v = t.item<double>();  // host memory: no synchronisation
  TORCH_CHECK(std::isfinite(v), "anacuda: ", name, " must be finite, got ", v);
  TORCH_CHECK(range == Range::Any || v >= 0, "anacuda: ", name, range == Range::Unit ? " must be in [0, 1]" : " must be >= 0", ", got ", v);
  TORCH_CHECK(range != Range::Unit || v <= 1, "anacuda: ", name, " must be in [0, 1], got ", v);
  return v;
}

template <typename T>
Scalar<T> scalar_arg(const at::Tensor& t, const at::Device& dev, const char* name, Range range,
                     std::vector<at::Tensor>& keep) {
  Scalar<T> s;
  if (auto v = check_scalar(t, dev, name, range)) {
    s.value = static_cast<T>(*v);
    TORCH_CHECK(std::isfinite(s.value), "anacuda: ", name, " = ", *v, " overflows ",
                c10::CppTypeToScalarType<T>::value, ", the compute type of this input");
  } else {
    at::Tensor c = t.to(c10::CppTypeToScalarType<T>::value).reshape({1});
    keep.push_back(c);
    s.ptr = c.const_data_ptr<T>();
  }
  return s;
}

// The arguments of a forward op (ana, ana_coded) that need no kernel: the input, the names, and
// the host values of the noises. The forward noise is checked ahead of the backward one (which
// defaults to it), so that an error names the argument the user gave; the backward noise rides
// along for autograd and is checked here too, so that a bad one fails at the forward call.
struct AnaCall {
  NoiseKind noise;
  Strategy strategy;
};

inline AnaCall check_ana_call(const at::Tensor& x, c10::string_view noise, c10::string_view strategy,
                              const at::Tensor& mu, const at::Tensor& sigma, c10::string_view noise_b,
                              const at::Tensor& mu_b, const at::Tensor& sigma_b) {
  check_input(x, "input");
  const AnaCall call{parse_noise(noise), parse_strategy(strategy)};
  check_scalar(mu, x.device(), "mu", Range::Any);
  check_scalar(sigma, x.device(), "sigma", Range::NonNegative);
  parse_noise(noise_b);
  check_scalar(mu_b, x.device(), "backward mu", Range::Any);
  check_scalar(sigma_b, x.device(), "backward sigma", Range::NonNegative);
  return call;
}

// eps broadcast to x's shape: one value, or a contiguous block of dimensions of x (e.g. one
// value per channel), or, for any other broadcast, materialised at x's shape.
template <typename T>
EpsLayout<T> eps_arg(const at::Tensor& eps, const at::Tensor& x, std::vector<at::Tensor>& keep) {
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
  EpsLayout<T> e;
  if (eps.numel() == 1) {
    if (eps.device().is_cpu() || (x.device().is_cpu())) {
      const double v = eps.item<double>();
      TORCH_CHECK(std::isfinite(v) && v > 0, "anacuda: eps must be finite and > 0, got ", v);
      e.value = static_cast<T>(v);
      TORCH_CHECK(std::isfinite(e.value) && e.value > 0, "anacuda: eps = ", v, " is out of the range of ",
                  c10::CppTypeToScalarType<T>::value, ", the compute type of this input");
    } else {
      at::Tensor c = eps.to(c10::CppTypeToScalarType<T>::value).reshape({1});
      keep.push_back(c);
      e.ptr = c.const_data_ptr<T>();
    }
    return e;
  }
  TORCH_CHECK(eps.device() == x.device(), "anacuda: an eps of more than one value must be on the input's device ",
              x.device(), ", got ", eps.device());
  if (eps.device().is_cpu()) {
    const at::Tensor et = eps.to(c10::CppTypeToScalarType<T>::value);  // checked in the compute type
    TORCH_CHECK(et.gt(0).logical_and(et.isfinite()).all().item<bool>(),
                "anacuda: every eps must be finite and > 0 (in ", et.scalar_type(), ", the compute type)");
  }
  // Dimensions of x (right-aligned with eps) along which eps varies.
  int64_t first = -1, last = -1;
  bool block = true;
  for (int64_t d = 0; d < xd; ++d) {
    const int64_t k = d - (xd - ed);
    const bool varies = k >= 0 && eps.size(k) != 1 && x.size(d) != 1;
    const bool neutral = x.size(d) == 1;
    if (varies) {
      if (first < 0) first = d;
      else if (last != d - 1) block = false;
      last = d;
    } else if (neutral && last == d - 1 && first >= 0) {
      last = d;  // a size-1 dimension inside the block keeps it contiguous
    }
  }
  at::Tensor c;
  if (block && first >= 0) {
    int64_t inner = 1, channels = 1;
    for (int64_t d = last + 1; d < xd; ++d) inner *= x.size(d);
    for (int64_t d = first; d <= last; ++d) channels *= x.size(d);
    c = eps.to(c10::CppTypeToScalarType<T>::value).contiguous().reshape({-1});
    e.inner = inner;
    e.channels = channels;
  } else {
    c = eps.to(c10::CppTypeToScalarType<T>::value).expand(x.sizes()).contiguous().reshape({-1});
    e.inner = 1;
    e.channels = x.numel();
  }
  keep.push_back(c);
  e.ptr = c.const_data_ptr<T>();
  return e;
}

inline void check_grid(const at::Tensor& levels, const at::Tensor& thresholds, const at::Tensor& x) {
  const auto acc = compute_type(x.scalar_type());
  TORCH_CHECK(thresholds.dim() == 1 && thresholds.numel() >= 1,
              "anacuda: thresholds must be a non-empty 1-D tensor, got shape ", thresholds.sizes());
  TORCH_CHECK(levels.dim() == 1 && levels.numel() == thresholds.numel() + 1,
              "anacuda: a quantiser with K thresholds needs K + 1 levels, got ", levels.numel(),
              " levels and ", thresholds.numel(), " thresholds");
  TORCH_CHECK(levels.scalar_type() == acc && thresholds.scalar_type() == acc,
              "anacuda: levels and thresholds must be ", acc, " for a ", x.scalar_type(),
              " input (use Quantizer.tables)");
  TORCH_CHECK(levels.device() == x.device() && thresholds.device() == x.device(),
              "anacuda: levels and thresholds must be on the input's device ", x.device());
}

template <typename T> Grid<T> grid_arg(const at::Tensor& levels, const at::Tensor& thresholds, bool uniform_grid,
                                       const at::Tensor& x, std::vector<at::Tensor>& keep) {
  check_grid(levels, thresholds, x);
  at::Tensor th = thresholds.contiguous(), lv = levels.contiguous();
  keep.push_back(th);
  keep.push_back(lv);
  Grid<T> g;
  g.theta = th.const_data_ptr<T>();
  g.q = lv.const_data_ptr<T>();
  g.K = th.numel();
  g.uniform = uniform_grid && th.numel() >= 2;
  g.theta0 = T(0);
  g.inv_step = T(0);
  return g;
}

template <typename T>
AnaArgs<T> make_args(const at::Tensor& x, const at::Tensor& levels, const at::Tensor& thresholds,
                     bool uniform_grid, const at::Tensor& eps, const at::Tensor& mu,
                     const at::Tensor& sigma, const char* mu_name, const char* sigma_name) {
  AnaArgs<T> a;
  a.grid = grid_arg<T>(levels, thresholds, uniform_grid, x, a.keep);
  a.eps = eps_arg<T>(eps, x, a.keep);
  a.mu = scalar_arg<T>(mu, x.device(), mu_name, Range::Any, a.keep);
  a.sigma = scalar_arg<T>(sigma, x.device(), sigma_name, Range::NonNegative, a.keep);
  return a;
}

// Alpha-blending (SPEC §6): the quantiser, eps and alpha.
template <typename T> struct BlendParams {
  Grid<T> grid;
  EpsLayout<T> eps;
  Scalar<T> alpha;
};

template <typename T> struct BlendArgs : BlendParams<T> {
  std::vector<at::Tensor> keep;
};

template <typename T>
BlendArgs<T> make_blend_args(const at::Tensor& w, const at::Tensor& levels, const at::Tensor& thresholds,
                             bool uniform_grid, const at::Tensor& eps, const at::Tensor& alpha) {
  BlendArgs<T> a;
  a.grid = grid_arg<T>(levels, thresholds, uniform_grid, w, a.keep);
  a.eps = eps_arg<T>(eps, w, a.keep);
  a.alpha = scalar_arg<T>(alpha, w.device(), "alpha", Range::Unit, a.keep);
  return a;
}

// The random strategy's key: a 2-element int64 tensor (seed, stream) drawn from torch's RNG.
template <typename T>
void seed_arg(AnaArgs<T>& a, const std::optional<at::Tensor>& seed, const at::Device& dev) {
  TORCH_CHECK(seed.has_value() && seed->defined(),
              "anacuda: the random strategy needs a seed tensor (anacuda.functional.ana draws one)");
  TORCH_CHECK(seed->scalar_type() == at::kLong && seed->numel() == 2,
              "anacuda: seed must be an int64 tensor of 2 elements (seed, stream)");
  TORCH_CHECK(on_host_or(*seed, dev), "anacuda: seed is on ", seed->device(), " but the input is on ", dev);
  if (seed->device().is_cpu()) {
    at::Tensor s = seed->contiguous();
    a.seed.value = s.const_data_ptr<int64_t>()[0];
    a.stream.value = s.const_data_ptr<int64_t>()[1];
  } else {
    at::Tensor s = seed->contiguous();
    a.keep.push_back(s);
    a.seed.ptr = s.const_data_ptr<int64_t>();
    a.stream.ptr = a.seed.ptr + 1;
  }
}

// Per-thread start-up (on the device it reads the grid ends once per thread, not per element).
template <typename T> C10_HOST_DEVICE inline void init_grid(Grid<T>& g) {
  if (g.uniform) {
    g.theta0 = g.theta[0];
    g.inv_step = T(g.K - 1) / (g.theta[g.K - 1] - g.theta[0]);
  }
}

// A hyper-parameter read on the device is checked there: invalid values give NaN.
template <typename T> C10_HOST_DEVICE inline bool valid_noise(T mu, T sigma) {
  const T inf = std::numeric_limits<T>::infinity();
  return sigma >= T(0) && sigma < inf && mu > -inf && mu < inf;
}
template <typename T> C10_HOST_DEVICE inline bool valid_eps(T e) {
  return e > T(0) && e < std::numeric_limits<T>::infinity();
}

}  // namespace anacuda
