// The outputs keep the input's memory format: contiguous, channels_last or channels_last_3d, as
// x.suggest_memory_format() says (the fakes in anacuda/ops.py say the same). The kernels run over
// the elements in memory order: x.permute(perm), contiguous without a copy for a dense input of
// that format, and the outputs viewed the same way.
#pragma once

#include <ATen/ATen.h>
#include <vector>

namespace anacuda {

struct MemoryOrder {
  at::MemoryFormat format = at::MemoryFormat::Contiguous;
  std::vector<int64_t> perm;  // the dimensions from outermost to innermost in memory; empty: as they are

  // t (of the input's shape) in memory order: a view.
  at::Tensor view(const at::Tensor& t) const { return perm.empty() ? t : t.permute(perm); }
  // The same, contiguous (a copy only where t is not dense in this format).
  at::Tensor contiguous(const at::Tensor& t) const { return view(t).contiguous(); }
  // A fresh output of x's shape in this format.
  at::Tensor empty(const at::Tensor& x, at::ScalarType dtype) const {
    return at::empty(x.sizes(), x.options().dtype(dtype).memory_format(format));
  }
};

inline MemoryOrder memory_order(const at::Tensor& x) {
  MemoryOrder m;
  m.format = x.suggest_memory_format();
  if (m.format == at::MemoryFormat::ChannelsLast) m.perm = {0, 2, 3, 1};
  else if (m.format == at::MemoryFormat::ChannelsLast3d) m.perm = {0, 2, 3, 4, 1};
  else m.format = at::MemoryFormat::Contiguous;
  return m;
}

}  // namespace anacuda
