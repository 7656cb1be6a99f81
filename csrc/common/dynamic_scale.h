// Dynamic scales (SPEC §9, docs/semantics.md): eps = max(r(|x|), r_min) / reach over each group
// of a rule, the reduction r a max or a mean. The per-element maths of the reductions that the
// CPU (cpu/dynamic_eps.cpp) and CUDA (cuda/dynamic_eps.cu) kernels run, and the scale of a
// group from its reduced value. Every group is a row of x viewed as (M, L) row-major: a token
// (the last dimension), the whole tensor (M = 1) or an output channel (dim 0).
#pragma once

#include <c10/macros/Macros.h>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace anacuda {

enum class ScaleGroup : int { Token = 0, Tensor = 1, Channel = 2 };

// The reduction of |x| over a group: a partial per chunk of a row, combined in a fixed order
// (deterministic: the chunks do not depend on the number of threads or blocks). Max keeps a
// NaN; sums run in double, whatever the input's dtype.
template <typename T, bool kMean> struct AbsReduce {
  using acc_t = std::conditional_t<kMean, double, T>;
  static constexpr bool kMax = !kMean;
  static C10_HOST_DEVICE inline acc_t identity() { return acc_t(0); }
  // |x| without a branch (a CPU loop with one does not vectorise); NaN stays.
  static C10_HOST_DEVICE inline acc_t element(T x) { return static_cast<acc_t>(std::abs(x)); }
  static C10_HOST_DEVICE inline acc_t combine(acc_t a, acc_t b) {
    if constexpr (kMean) {
      return a + b;
    } else {
      if (a != a) return a;
      return b > a || b != b ? b : a;
    }
  }
  // r of a group of n elements (an empty group: 0).
  static C10_HOST_DEVICE inline T finish(acc_t r, int64_t n) {
    if constexpr (kMean) return n > 0 ? static_cast<T>(r / static_cast<double>(n)) : T(0);
    return static_cast<T>(r);
  }
};

// eps from r: NaN for a group holding a NaN or ±inf (r not finite: the group has no scale).
template <typename T> C10_HOST_DEVICE inline T scale_from(T r, T r_min, T reach) {
  if (!(r < std::numeric_limits<T>::infinity())) return std::numeric_limits<T>::quiet_NaN();
  return (r > r_min ? r : r_min) / reach;
}

// The rows of one reduction: M groups of L elements, each cut into chunks of `chunk` elements.
struct ScaleRows {
  int64_t M = 0, L = 0, chunk = 1;
  C10_HOST_DEVICE inline int64_t chunks() const { return L > 0 ? (L + chunk - 1) / chunk : 1; }
};

}  // namespace anacuda
