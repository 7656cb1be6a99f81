// The CPU side of the dynamic scales (ops/dynamic_kernels.h): the reduction (cpu/scale_rows.h,
// in the build of the CPU kernels that runs) and ana at the scale of rows in one pass.
#include <ATen/Parallel.h>

#include <algorithm>

#include "../ops/dynamic_kernels.h"
#include "kernel_table.h"

namespace anacuda {

void dynamic_eps_cpu(const ScaleCall& c, const at::Tensor& x, const at::Tensor& eps) {
  ScaleCall call = c;
  call.rows.chunk = 8192;  // elements; fixed, so that the result does not depend on the threads
  cpu_only_kernels().dynamic_eps(call, x, eps);
}

bool ana_dynamic_rows_cpu(const AnaCall& call, const ScaleCall& c, const at::Tensor& x, const at::Tensor& eps,
                          const at::Tensor& y) {
  constexpr int64_t kBlockBytes = 256 * 1024;  // a block of rows read twice: from memory, then from cache
  const int64_t M = c.rows.M, L = c.rows.L;
  if (M < 2 || L * x.element_size() > kBlockBytes || (call.strategy == Strategy::Random && call.training) ||
      !x.is_contiguous() || !y.is_contiguous() || x.numel() != M * L)
    return false;
  const int64_t per_block = kBlockBytes / (L * x.element_size());
  const at::Tensor xr = x.view({M, L}), yr = y.view({M, L}), er = eps.view({M});
  at::parallel_for(0, M, per_block, [&](int64_t begin, int64_t end) {
    for (int64_t r0 = begin; r0 < end; r0 += per_block) {  // the kernels' own parallel loops run inline here
      const int64_t n = std::min(per_block, end - r0);
      ScaleCall rows = c;
      rows.rows.M = n;
      AnaCall block = call;
      block.eps.values = er.narrow(0, r0, n);
      block.eps.inner = L;
      block.eps.channels = n;
      dynamic_eps_cpu(rows, xr.narrow(0, r0, n), block.eps.values);
      cpu_kernels().ana(block, xr.narrow(0, r0, n), yr.narrow(0, r0, n));
    }
  });
  return true;
}

}  // namespace anacuda
