// Counter-based random numbers for the random strategy (Philox4x32-10, Salmon et al. 2011).
//
// Element i of a call keyed by (seed, stream) takes word i % 4 of the block
// philox(counter = (i / 4, stream), key = seed). The noise of an element depends only on
// (seed, stream, i): the same on CPU and CUDA, whatever the thread layout.
#pragma once

#include <c10/macros/Macros.h>
#include <cstdint>

namespace anacuda {

struct Philox4 {
  uint32_t w[4];
};

C10_HOST_DEVICE inline uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

C10_HOST_DEVICE inline Philox4 philox4x32_10(uint64_t block, uint64_t stream, uint64_t seed) {
  uint32_t c0 = static_cast<uint32_t>(block), c1 = static_cast<uint32_t>(block >> 32);
  uint32_t c2 = static_cast<uint32_t>(stream), c3 = static_cast<uint32_t>(stream >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    uint32_t lo0 = mulhilo(0xD2511F53u, c0, &hi0);
    uint32_t lo1 = mulhilo(0xCD9E8D57u, c2, &hi1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// A 32-bit word to a uniform number in the open interval (0, 1), exactly representable:
// 24 bits for float, 32 bits for double.
template <typename T> C10_HOST_DEVICE inline T uniform_open(uint32_t w);
template <> C10_HOST_DEVICE inline float uniform_open<float>(uint32_t w) {
  return (static_cast<float>(w >> 8) + 0.5f) * 5.9604644775390625e-08f;  // 2^-24
}
template <> C10_HOST_DEVICE inline double uniform_open<double>(uint32_t w) {
  return (static_cast<double>(w) + 0.5) * 2.3283064365386962890625e-10;  // 2^-32
}

}  // namespace anacuda
