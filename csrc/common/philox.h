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

// The counter (c0..c3) of block `block` in `stream`, and the key of `seed`.
C10_HOST_DEVICE inline void philox_start(uint64_t block, uint64_t stream, uint64_t seed, uint32_t& c0, uint32_t& c1,
                                         uint32_t& c2, uint32_t& c3, uint32_t& k0, uint32_t& k1) {
  c0 = static_cast<uint32_t>(block);
  c1 = static_cast<uint32_t>(block >> 32);
  c2 = static_cast<uint32_t>(stream);
  c3 = static_cast<uint32_t>(stream >> 32);
  k0 = static_cast<uint32_t>(seed);
  k1 = static_cast<uint32_t>(seed >> 32);
}

// One of the 10 rounds on the counter (c0..c3) with the round key (k0, k1). The CPU computes
// many blocks side by side by calling it on arrays (cpu/all_thresholds.h), the GPU one block
// per 4 elements.
C10_HOST_DEVICE C10_ALWAYS_INLINE void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3,
                                                    uint32_t k0, uint32_t k1) {
  const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0, p2 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
  const uint32_t n0 = static_cast<uint32_t>(p2 >> 32) ^ c1 ^ k0, n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
  c0 = n0;
  c1 = static_cast<uint32_t>(p2);
  c2 = n2;
  c3 = static_cast<uint32_t>(p0);
}

// The key of the next round.
C10_HOST_DEVICE C10_ALWAYS_INLINE void philox_next_key(uint32_t& k0, uint32_t& k1) {
  k0 += 0x9E3779B9u;
  k1 += 0xBB67AE85u;
}

constexpr int kPhiloxRounds = 10;

C10_HOST_DEVICE inline Philox4 philox4x32_10(uint64_t block, uint64_t stream, uint64_t seed) {
  uint32_t c0, c1, c2, c3, k0, k1;
  philox_start(block, stream, seed, c0, c1, c2, c3, k0, k1);
#pragma unroll
  for (int round = 0; round < kPhiloxRounds; ++round) {
    philox_round(c0, c1, c2, c3, k0, k1);
    philox_next_key(k0, k1);
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Element i's block and its word in it.
C10_HOST_DEVICE inline uint64_t philox_block_of(int64_t i) { return static_cast<uint64_t>(i) >> 2; }
C10_HOST_DEVICE inline int philox_lane_of(int64_t i) { return static_cast<int>(i & 3); }

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
