// The second pass of a learned eps's reduction on the CPU (common/learned_scale.h): each
// channel's partials summed over kLanes lanes, pairwise, into ge. Shared by the functors' loop
// (learned_scale.cpp) and the fast path (learned_fast.h); compiled for the baseline.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../common/learned_scale.h"

namespace anacuda {

template <typename T> void sum_partials(const EpsReduction& r, const std::vector<T>& partial, T* ge) {
  const int64_t pieces = r.pieces();
  if (pieces == 1) {  // the tree below adds only zeros to the one partial: its + 0, without threads
    for (int64_t c = 0; c < r.channels; ++c) ge[c] = partial[c] + T(0);
    return;
  }
  at::parallel_for(0, r.channels, std::max<int64_t>(1, kPiece / pieces), [&](int64_t begin, int64_t end) {
    T acc[kLanes];
    for (int64_t c = begin; c < end; ++c) {
      std::fill(acc, acc + kLanes, T(0));
      for (int64_t k = 0; k < pieces; ++k) acc[k & (kLanes - 1)] += partial[c * pieces + k];
      tree_sum(acc);
      ge[c] = acc[0];
    }
  });
}

}  // namespace anacuda
