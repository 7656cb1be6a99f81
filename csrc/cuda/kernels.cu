// The CUDA kernels of every op: the dtype dispatch and the functors of common/functors.h in the
// loops of loops.cuh (one grid-stride pass per op, 16-byte vectors, float maths for half types).
// The host entries (ops/*.cpp) have checked the arguments and set the device.
#include "../common/dispatch.h"
#include "../common/functors.h"
#include "../ops/device_kernels.h"
#include "loops.cuh"

namespace anacuda {
namespace {

void ana(const AnaCall& c, const at::Tensor& x, const at::Tensor& y) {
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::ana", [&] {
    using T = at::opmath_type<scalar_t>;
    const AnaParams<T> p = c.forward<T>();
    dispatch_noise(c.noise.kind, [&](auto n) {
      dispatch_strategy(c.strategy, [&](auto st) {
        launch_unary<scalar_t>(x, Output<scalar_t>{y.mutable_data_ptr<scalar_t>()},
                               AnaForward<decltype(n)::value, decltype(st)::value, T>{p, c.training});
      });
    });
  });
}

void ana_backward(const AnaCall& c, const at::Tensor& g, const at::Tensor& x, const at::Tensor& gx) {
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::_ana_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    const AnaParams<T> p = c.backward<T>();
    if (c.noise_b.kind == NoiseKind::Identity) {
      launch_binary<scalar_t, scalar_t>(g, x, gx, IdentityBackward<T>{p.eps});
      return;
    }
    dispatch_noise(c.noise_b.kind,
                   [&](auto n) { launch_binary<scalar_t, scalar_t>(g, x, gx, AnaBackward<decltype(n)::value, T>{p}); });
  });
}

void ana_code(const AnaCall& c, const at::Tensor& x, const at::Tensor& code) {
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::_ana_code", [&] {
    using T = at::opmath_type<scalar_t>;
    launch_unary<scalar_t>(x, Output<uint8_t>{code.mutable_data_ptr<uint8_t>()}, UniformBoxCode<T>{c.backward<T>()});
  });
}

void ana_backward_code(const CodeBackwardCall& c, const at::Tensor& g, const at::Tensor& code, const at::Tensor& gx) {
  ANACUDA_DISPATCH_FLOATING(g.scalar_type(), "anacuda::_ana_backward_code", [&] {
    using T = at::opmath_type<scalar_t>;
    const UniformBoxCodeBackward<T> op{c.levels.const_data_ptr<T>(), static_cast<int>(c.levels.numel()) - 1,
                                       c.sigma_b.get<T>()};
    launch_binary<scalar_t, uint8_t>(g, code, gx, op);
  });
}

// One pass: the output and the code from one read of x.
bool ana_coded(const AnaCall& c, const at::Tensor& x, const at::Tensor& y, const at::Tensor& code) {
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::_ana_coded", [&] {
    using T = at::opmath_type<scalar_t>;
    const AnaParams<T> p = c.forward<T>(), pb = c.backward<T>();
    dispatch_noise(c.noise.kind, [&](auto n) {
      dispatch_strategy(c.strategy, [&](auto st) {
        using Forward = AnaForward<decltype(n)::value, decltype(st)::value, T>;
        launch_unary<scalar_t>(
            x, OutputAndCode<scalar_t>{y.mutable_data_ptr<scalar_t>(), code.mutable_data_ptr<uint8_t>()},
            AnaCoded<decltype(n)::value, decltype(st)::value, T>{Forward{p, c.training}, UniformBoxCode<T>{pb}});
      });
    });
  });
  return true;
}

void alpha_blend(const BlendCall& c, const at::Tensor& w, const at::Tensor& y) {
  ANACUDA_DISPATCH_FLOATING(w.scalar_type(), "anacuda::alpha_blend", [&] {
    using T = at::opmath_type<scalar_t>;
    launch_unary<scalar_t>(w, Output<scalar_t>{y.mutable_data_ptr<scalar_t>()}, AlphaBlend<T>{c.params<T>()});
  });
}

}  // namespace

const DeviceKernels& cuda_kernels() {
  static const DeviceKernels k = {"CUDA", &ana, &ana_backward, &ana_code, &ana_backward_code, &ana_coded, &alpha_blend};
  return k;
}

}  // namespace anacuda
