// The 1-byte code of a uniform backward noise (SPEC §5, docs/semantics.md). Its backward needs
// only which boxes hold a = x / eps - mu_b: for K <= 15 thresholds the boxes [lo, hi) (stair.h),
// as one byte lo << 4 | hi (0 for none, 0xF0 for NaN). Saving it instead of the input takes a
// quarter of the memory (PyTorch's fake_quantize cachemask does the same for the clipped STE).
#pragma once

#include <limits>

#include "stair.h"

namespace anacuda {

constexpr int kCodeMaxK = 15;
constexpr uint8_t kNaNCode = 0xF0;

// The code of a (NaN or not) whose boxes are [passed, reached), as an int (in 32-bit lanes the
// CPU's loops over blocks vectorise it; the callers store the byte).
C10_HOST_DEVICE inline int box_code(bool nan, int passed, int reached) {
  return nan ? int{kNaNCode} : (reached > passed ? passed << 4 | reached : 0);
}

// The codes box_code writes: 0 (no box), kNaNCode, or lo << 4 | hi with lo < hi <= K. Any other
// byte (only a direct call of _ana_backward_code can pass one) gets a NaN gradient: rejecting it
// would cost a reduction over the codes, on a GPU a synchronisation.
C10_HOST_DEVICE inline bool valid_code(uint8_t code, int K) {
  const int lo = code >> 4, hi = code & 15;
  return code == 0 || code == kNaNCode || (lo < hi && hi <= K);
}

// The stair's derivative at a point of this code, the uniform noise of half-width sigma: the
// sum over its boxes, in the order stair_derivative sums them. NaN for a NaN input, a forged
// code, or an invalid sigma read on the device.
template <typename T> C10_HOST_DEVICE inline T code_derivative(const T* q, int K, uint8_t code, T sigma) {
  if (!valid_code(code, K) || code == kNaNCode || !(sigma >= T(0) && sigma < std::numeric_limits<T>::infinity()))
    return std::numeric_limits<T>::quiet_NaN();
  if (!(sigma > T(0))) return T(0);
  return Standardize<T>(sigma)(box_sum(q, code >> 4, code & 15));
}

}  // namespace anacuda
