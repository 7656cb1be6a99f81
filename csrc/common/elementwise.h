// The index arithmetic of the elementwise loops, one definition for the CUDA kernels
// (cuda/loops.cuh) and the CPU's functor path (cpu/loops.h): the CPU tests then run the GPU's
// loop as well as its maths.
//
// The n elements are cut into packs of kPack elements (16 bytes of the input: one vector load
// on the GPU), then a tail of fewer than kPack done one by one. Element j of pack v is
// i = v * kPack + j. An op with kRandom gets word i % 4 of the Philox block i / 4
// (common/philox.h), computed once per 4 elements in a pack and per element in the tail; an
// op reads its per-channel eps from i itself (EpsLayout::at).
#pragma once

#include <c10/macros/Macros.h>
#include <cstdint>

#include "philox.h"

namespace anacuda {

template <typename scalar_t> struct Packs {
  static constexpr int kPack = 16 / static_cast<int>(sizeof(scalar_t));
  // Whole packs in n elements; the tail starts at whole(n) * kPack.
  static C10_HOST_DEVICE inline int64_t whole(int64_t n) { return n / kPack; }

  // f(j, i, word) for the elements of pack v, in order.
  template <typename Op, typename F>
  static C10_HOST_DEVICE C10_ALWAYS_INLINE void for_each(const Op& op, int64_t v, F&& f) {
    Philox4 block{};
#pragma unroll
    for (int j = 0; j < kPack; ++j) {
      const int64_t i = v * kPack + j;
      if constexpr (Op::kRandom) {
        if (kPack % 4 == 0 ? (j & 3) == 0 : j == 0)
          block = philox4x32_10(philox_block_of(i), op.stream, op.seed);
      }
      f(j, i, block.w[philox_lane_of(i)]);
    }
  }
};

// The Philox word of a tail element i (0 for an op without randomness).
template <typename Op> C10_HOST_DEVICE inline uint32_t tail_word(const Op& op, int64_t i) {
  if constexpr (Op::kRandom) return philox4x32_10(philox_block_of(i), op.stream, op.seed).w[philox_lane_of(i)];
  return 0;
}

// N values of T in one aligned block: a pack's loads and stores are single vector instructions.
template <typename T, int N> struct alignas(sizeof(T) * N) Aligned {
  T v[N];
};

// Where a unary op's results go, element by element (put) or a pack at a time (store): one
// array, or an output and its code (AnaCoded) into two.
template <typename out_t> struct Output {
  out_t* y;
  template <int N> struct Pack {
    Aligned<out_t, N> y;
    template <typename R> C10_HOST_DEVICE inline void set(int j, const R& r) { y.v[j] = static_cast<out_t>(r); }
  };
  template <typename R> C10_HOST_DEVICE inline void put(int64_t i, const R& r) const { y[i] = static_cast<out_t>(r); }
  template <int N> C10_HOST_DEVICE inline void store(int64_t v, const Pack<N>& p) const {
    reinterpret_cast<Aligned<out_t, N>*>(y)[v] = p.y;
  }
};

template <typename scalar_t> struct OutputAndCode {
  scalar_t* y;
  uint8_t* code;
  template <int N> struct Pack {
    Aligned<scalar_t, N> y;
    Aligned<uint8_t, N> code;
    template <typename R> C10_HOST_DEVICE inline void set(int j, const R& r) {
      y.v[j] = static_cast<scalar_t>(r.value);
      code.v[j] = r.code;
    }
  };
  template <typename R> C10_HOST_DEVICE inline void put(int64_t i, const R& r) const {
    y[i] = static_cast<scalar_t>(r.value);
    code[i] = r.code;
  }
  template <int N> C10_HOST_DEVICE inline void store(int64_t v, const Pack<N>& p) const {
    reinterpret_cast<Aligned<scalar_t, N>*>(y)[v] = p.y;
    reinterpret_cast<Aligned<uint8_t, N>*>(code)[v] = p.code;
  }
};

}  // namespace anacuda
