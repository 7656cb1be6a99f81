// Compile-time dispatch: the dtype list (one place), the noise laws and the strategies (their
// names are parsed with the other checks, in ops/host_args.h).
#pragma once

#include <ATen/Dispatch.h>
#include <type_traits>

#include "noise.h"

// Every op supports exactly these input dtypes; half types compute in float (SPEC §7,
// docs/semantics.md).
#define ANACUDA_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

namespace anacuda {

template <NoiseKind N> using NoiseTag = std::integral_constant<NoiseKind, N>;
template <Strategy S> using StrategyTag = std::integral_constant<Strategy, S>;

// f(NoiseTag<N>{}) for the runtime value n.
template <typename F> void dispatch_noise(NoiseKind n, F&& f) {
  switch (n) {
    case NoiseKind::Uniform: f(NoiseTag<NoiseKind::Uniform>{}); break;
    case NoiseKind::Triangular: f(NoiseTag<NoiseKind::Triangular>{}); break;
    case NoiseKind::Normal: f(NoiseTag<NoiseKind::Normal>{}); break;
    case NoiseKind::Logistic: f(NoiseTag<NoiseKind::Logistic>{}); break;
    case NoiseKind::Identity: TORCH_CHECK(false, "anacuda: 'identity' is not a noise law (a backward only)");
  }
}

template <typename F> void dispatch_strategy(Strategy s, F&& f) {
  switch (s) {
    case Strategy::Expectation: f(StrategyTag<Strategy::Expectation>{}); break;
    case Strategy::Mode: f(StrategyTag<Strategy::Mode>{}); break;
    case Strategy::Random: f(StrategyTag<Strategy::Random>{}); break;
  }
}

}  // namespace anacuda
