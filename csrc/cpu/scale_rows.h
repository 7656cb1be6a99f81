// The CPU reduction of the dynamic scales (SPEC §9; ops/dynamic_kernels.h), compiled per
// instruction set: each row cut into fixed chunks, each chunk reduced in interleaved accumulators
// (so that the loop vectorises), the lanes and then the chunks combined in order. The result
// depends on neither the number of threads nor the instruction set nor the CPU path.
#pragma once

#include "isa_headers.h"

namespace anacuda {
namespace CPU_CAPABILITY {

template <typename scalar_t, typename R> typename R::acc_t chunk_partial(const scalar_t* x, int64_t n) {
  using T = at::opmath_type<scalar_t>;
  // A max is exact in any order: enough lanes to hide the latency of its dependency chain. A
  // sum keeps its 8 lanes (its order is its result).
  constexpr int kScaleLanes = R::kMax ? 32 : 8;
  if constexpr (R::kMax) {  // the max: NaN noted apart in lanes of T, so that the loop vectorises
    T lane[kScaleLanes] = {}, nan[kScaleLanes] = {};
    int64_t i = 0;
    for (; i + kScaleLanes <= n; i += kScaleLanes)
      for (int j = 0; j < kScaleLanes; ++j) {
        const T a = R::element(static_cast<T>(x[i + j]));
        nan[j] = std::max(nan[j], a != a ? T(1) : T(0));  // not `? 1 : nan[j]`: GCC made that a masked store
        lane[j] = std::max(lane[j], a);  // a NaN a keeps lane[j]: it is noted in nan[j]
      }
    for (int j = 0; i < n; ++i, ++j) lane[j] = R::combine(lane[j], R::element(static_cast<T>(x[i])));
    T any_nan = T(0);
    for (int j = 0; j < kScaleLanes; ++j) any_nan += nan[j];
    T r = any_nan != T(0) ? std::numeric_limits<T>::quiet_NaN() : lane[0];
    for (int j = 1; j < kScaleLanes; ++j) r = R::combine(r, lane[j]);
    return r;
  }
  typename R::acc_t lane[kScaleLanes];
  for (int j = 0; j < kScaleLanes; ++j) lane[j] = R::identity();
  int64_t i = 0;
  for (; i + kScaleLanes <= n; i += kScaleLanes)
    for (int j = 0; j < kScaleLanes; ++j) lane[j] = R::combine(lane[j], R::element(static_cast<T>(x[i + j])));
  for (int j = 0; i < n; ++i, ++j) lane[j] = R::combine(lane[j], R::element(static_cast<T>(x[i])));
  typename R::acc_t r = lane[0];
  for (int j = 1; j < kScaleLanes; ++j) r = R::combine(r, lane[j]);
  return r;
}

template <typename scalar_t, bool kMean> void reduce_rows(const ScaleCall& c, const scalar_t* x, at::opmath_type<scalar_t>* eps) {
  using T = at::opmath_type<scalar_t>;
  using R = AbsReduce<T, kMean>;
  const ScaleRows rows = c.rows;
  const int64_t nc = rows.chunks();
  std::vector<typename R::acc_t> part(static_cast<size_t>(rows.M * nc));
  const int64_t per_item = std::max<int64_t>(1, std::min(rows.L, rows.chunk));
  at::parallel_for(0, rows.M * nc, std::max<int64_t>(1, 16384 / per_item), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row = item / nc, start = (item % nc) * rows.chunk;
      const int64_t n = std::max<int64_t>(0, std::min(rows.chunk, rows.L - start));
      part[item] = chunk_partial<scalar_t, R>(x + row * rows.L + start, n);
    }
  });
  const T r_min = static_cast<T>(c.r_min), reach = static_cast<T>(c.reach);
  at::parallel_for(0, rows.M, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      typename R::acc_t r = part[row * nc];
      for (int64_t k = 1; k < nc; ++k) r = R::combine(r, part[row * nc + k]);
      eps[row] = scale_from(R::finish(r, rows.L), r_min, reach);
    }
  });
}

void dynamic_eps(const ScaleCall& c, const at::Tensor& x, const at::Tensor& eps) {
  ANACUDA_DISPATCH_FLOATING(x.scalar_type(), "anacuda::_dynamic_eps", [&] {
    using T = at::opmath_type<scalar_t>;
    if (c.mean) reduce_rows<scalar_t, true>(c, x.const_data_ptr<scalar_t>(), eps.mutable_data_ptr<T>());
    else reduce_rows<scalar_t, false>(c, x.const_data_ptr<scalar_t>(), eps.mutable_data_ptr<T>());
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace anacuda
