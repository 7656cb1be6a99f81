// What a host entry (ops/ana.cpp, ops/alpha_blend.cpp) hands a device's kernels: the arguments
// of one call, checked (ops/host_args.h) and free of the input's dtype. A kernel turns them into
// the plain parameters of common/params.h for its compute type T and checks nothing.
#pragma once

#include <ATen/ATen.h>

#include "../common/params.h"

namespace anacuda {

// A scalar hyper-parameter: its value when it lives on the host, else the one-element tensor on
// the input's device, in the compute type, that the kernel reads.
struct ScalarArg {
  double value = 0;
  at::Tensor on_device;
  template <typename T> HostOrDevice<T> get() const {
    HostOrDevice<T> s;
    if (on_device.defined()) s.ptr = on_device.const_data_ptr<T>();
    else s.value = static_cast<T>(value);
    return s;
  }
};

// eps broadcast to the input in memory order: one value (on the host, or in `values` on the
// device), or `values` indexed as EpsLayout says, in the compute type on the input's device.
struct EpsArg {
  double value = 1;
  at::Tensor values;
  int64_t inner = 1, channels = 1;
  template <typename T> EpsLayout<T> get() const {
    EpsLayout<T> e;
    e.value = static_cast<T>(value);
    e.inner = inner;
    e.channels = channels;
    if (values.defined()) e.ptr = values.const_data_ptr<T>();
    return e;
  }
};

// The quantiser: contiguous levels and thresholds in the compute type on the input's device.
struct GridArg {
  at::Tensor levels, thresholds;
  bool uniform = false;  // equally spaced thresholds (and at least two)
  template <typename T> Grid<T> get() const {
    Grid<T> g;
    g.theta = thresholds.const_data_ptr<T>();
    g.q = levels.const_data_ptr<T>();
    g.K = thresholds.numel();
    g.uniform = uniform;
    g.theta0 = T(0);
    g.inv_step = T(0);
    return g;
  }
};

// A noise law with its location and scale.
struct NoiseArg {
  NoiseKind kind = NoiseKind::Uniform;
  ScalarArg mu, sigma;
};

// The random strategy's key (seed, stream): on the host, or the 2-element tensor on the device.
struct SeedArg {
  int64_t seed = 0, stream = 0;
  at::Tensor on_device;
};

// ana and its helpers. The forward (ana, _ana_coded) reads noise, strategy, training and seed;
// the backward's noise_b serves _ana_backward, _ana_code and the code of _ana_coded.
struct AnaCall {
  GridArg grid;
  EpsArg eps;
  NoiseArg noise;
  Strategy strategy = Strategy::Expectation;
  bool training = true;
  SeedArg seed;
  NoiseArg noise_b;

  template <typename T> AnaParams<T> params(const NoiseArg& n) const {
    AnaParams<T> p;
    p.grid = grid.get<T>();
    p.eps = eps.get<T>();
    p.mu = n.mu.get<T>();
    p.sigma = n.sigma.get<T>();
    if (seed.on_device.defined()) {
      p.seed.ptr = seed.on_device.const_data_ptr<int64_t>();
      p.stream.ptr = p.seed.ptr + 1;
    } else {
      p.seed.value = seed.seed;
      p.stream.value = seed.stream;
    }
    return p;
  }
  template <typename T> AnaParams<T> forward() const { return params<T>(noise); }
  template <typename T> AnaParams<T> backward() const { return params<T>(noise_b); }
};

// _ana_backward_code: the levels the code indexes and the backward noise's sigma.
struct CodeBackwardCall {
  at::Tensor levels;
  ScalarArg sigma_b;
};

struct BlendCall {
  GridArg grid;
  EpsArg eps;
  ScalarArg alpha;
  template <typename T> BlendParams<T> params() const { return {grid.get<T>(), eps.get<T>(), alpha.get<T>()}; }
};

}  // namespace anacuda
