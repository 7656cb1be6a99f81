"""ONNX with QDQ weights: each frozen Linear/Conv weight is an int8 (or uint8) initializer of its
levels, dequantised by DequantizeLinear with eps as the per-output-channel scale, so the
dequantised weight equals the frozen one bit for bit (one float32 product per element, as in
levels[codes] · eps). Activation quantisers stay the comparisons of HardQuantizer (SPEC §1: on
a threshold goes up; QuantizeLinear rounds half to even and is not used), HardTokenQuantizer's
per-token scale a ReduceMax. A frozen converted transformer's layers (FrozenTernaryLinear,
TernaryMultiheadAttention's FrozenProjection) keep their own forward around the QDQ weight. Grids whose levels
are not integers in [-128, 127] (int8) or [0, 255] (uint8) are refused, as are eps layouts other
than per tensor or per output channel. Exported with torch.onnx.export (the torch.export-based
exporter, which needs onnxscript)."""

from __future__ import annotations

import copy
import os

import torch

from .common import check_frozen, frozen_layers, require, row_scales
from ..nn.freeze import FrozenConv, FrozenLinear

_STORAGE = ((torch.int8, -128, 127), (torch.uint8, 0, 255))


class _DequantizedWeight:
    """Mixin: the weight as quantized_decomposed.dequantize_per_channel (ONNX DequantizeLinear)."""

    def frozen_weight(self) -> torch.Tensor:
        lo, hi = self.storage_range
        w = torch.ops.quantized_decomposed.dequantize_per_channel(self.weight_q, self.weight_scale, None, 0, lo, hi,
                                                                  self.weight_q.dtype)
        return w.to(self.weight_dtype)


class _QDQLinear(_DequantizedWeight, FrozenLinear):
    pass


class _QDQConv(_DequantizedWeight, FrozenConv):
    pass


_QDQ = {FrozenLinear: _QDQLinear, FrozenConv: _QDQConv}


def _qdq_class(cls: type) -> type:
    """The QDQ twin of a frozen weight class (FrozenTernaryLinear, FrozenProjection, ...): its own
    forward, with the weight dequantised."""
    if cls not in _QDQ:
        _QDQ[cls] = type(f"_QDQ{cls.__name__}", (_DequantizedWeight, cls), {"__module__": __name__})
    return _QDQ[cls]


def _to_qdq(name: str, m) -> None:
    """Turn frozen layer `m` (a copy) into its QDQ twin, in place."""
    levels = m.levels
    integral = torch.equal(levels, levels.round())
    storage = next(((dt, lo, hi) for dt, lo, hi in _STORAGE if integral and levels.min() >= lo and levels.max() <= hi),
                   None)
    if storage is None:
        raise ValueError(f"anacuda.export(format='onnx'): layer {name!r} has the grid {tuple(levels.tolist())}; "
                         "DequantizeLinear holds integer levels in [-128, 127] or [0, 255] times a scale")
    dtype, lo, hi = storage
    scale = row_scales(name, m, "onnx").float()
    q = levels[m.codes.long()].to(dtype)
    for b in ("packed", "codes", "levels", "eps"):
        m._buffers.pop(b, None)
    m.__class__ = _qdq_class(type(m))
    m.register_buffer("weight_q", q)
    m.register_buffer("weight_scale", scale)
    m.storage_range = (lo, hi)


def qdq_model(model) -> torch.nn.Module:
    """A copy of the frozen model whose weights are int8/uint8 levels + DequantizeLinear; its
    outputs equal the frozen model's bit for bit."""
    check_frozen(model, "onnx")
    try:
        import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed ops)
    except ImportError as err:
        raise ImportError(f"anacuda.export(format='onnx'): torch's quantized_decomposed ops are missing "
                          f"({err})") from None
    model = copy.deepcopy(model).eval()
    for name, m in frozen_layers(model):
        _to_qdq(name, m)
    return model


def export_onnx(model, path, *, example_inputs=None, dynamic_batch: bool = True, opset: int | None = None) -> None:
    """Export with torch.onnx.export. `example_inputs`: a tensor or a tuple of the forward's
    inputs; with dynamic_batch their first dimension is left free in the graph."""
    require("onnxscript", "onnxscript", "onnx")
    require("onnx", "onnx", "onnx")
    if example_inputs is None:
        raise ValueError("anacuda.export(format='onnx') needs example_inputs= (a tensor or a tuple of the forward's "
                         "inputs) to trace the model")
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    qdq = qdq_model(model)
    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic = tuple({0: batch} if isinstance(a, torch.Tensor) and a.dim() else None for a in args)
    kwargs = {} if opset is None else {"opset_version": opset}
    torch.onnx.export(qdq, args, os.fspath(path), dynamo=True, dynamic_shapes=dynamic, external_data=False,
                      verbose=False, **kwargs)
