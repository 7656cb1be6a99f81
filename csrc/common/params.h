// The parameters a kernel sees: plain structs passed by value to a CUDA kernel or a CPU loop,
// and the checks of hyper-parameters read on the device. A hyper-parameter given on the host was
// checked there (ops/host_args.h); one that lives in device memory is read by the kernel, which
// turns an invalid value into NaN rather than synchronise to raise (SPEC §7, docs/semantics.md).
#pragma once

#include <c10/macros/Macros.h>
#include <cstdint>
#include <limits>

#include "stair.h"

namespace anacuda {

// A scalar hyper-parameter: a value from the host, or a pointer to it in device memory.
template <typename T> struct HostOrDevice {
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

// What the ANA kernels need: the quantiser, eps, one noise (the forward's or the backward's)
// and, for the random strategy, the key (seed, stream).
template <typename T> struct AnaParams {
  Grid<T> grid;
  EpsLayout<T> eps;
  HostOrDevice<T> mu, sigma;
  HostOrDevice<int64_t> seed, stream;
};

// Alpha-blending (SPEC §6): the quantiser, eps and alpha.
template <typename T> struct BlendParams {
  Grid<T> grid;
  EpsLayout<T> eps;
  HostOrDevice<T> alpha;
};

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
