"""What the exporters share: the checks that a model is frozen, the frozen weight layers, the
grid and scale layouts a format can hold, and optional imports with the pip package named."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from ..nn.activation import ANAActivation
from ..nn.attention import _Projection
from ..nn.freeze import FrozenConv, FrozenLinear, FrozenProjection, HardQuantizer, HardTokenQuantizer, _FrozenWeight
from ..nn.layers import AlphaBlendWeight, ANAWeight
from ..nn.ternary import DynamicScaleANA, TernaryLinear

#: Layers that train (anacuda.freeze replaces them), and what a frozen model holds.
LIVE = (ANAWeight, AlphaBlendWeight, ANAActivation, TernaryLinear, DynamicScaleANA, _Projection)
QUANTISERS = (HardQuantizer, HardTokenQuantizer)

TERNARY = (-1.0, 0.0, 1.0)


def require(module: str, pip_name: str, fmt: str):
    """Import an optional package, or say which one to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"anacuda.export(format={fmt!r}) needs the package {pip_name!r}: "
                          f"pip install {pip_name} ({err})") from None


def check_frozen(model, fmt: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"anacuda.export: model must be a torch.nn.Module, got {type(model).__name__}")
    live = [(name, m) for name, m in model.named_modules() if isinstance(m, LIVE)]
    if live:
        name, m = live[0]
        if isinstance(m, DynamicScaleANA) and m.rule != "absmax_per_token":
            raise ValueError(f"anacuda.export(format={fmt!r}): layer {name!r} is a DynamicScaleANA with the rule "
                             f"{m.rule!r}; anacuda.freeze keeps it live (only 'absmax_per_token' has a frozen form, "
                             "HardTokenQuantizer) and no format holds it")
        raise ValueError(f"anacuda.export(format={fmt!r}): the model is not frozen ({len(live)} training layers, "
                         f"first {name!r}, a {type(m).__name__}); export anacuda.freeze(model)")
    if not any(isinstance(m, (_FrozenWeight,) + QUANTISERS) for m in model.modules()):
        raise ValueError(f"anacuda.export(format={fmt!r}): the model has no frozen anacuda layers; convert it with "
                         "anacuda.convert, train it, and export anacuda.freeze(model)")


def frozen_layers(model) -> list[tuple[str, _FrozenWeight]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _FrozenWeight)]


def frozen_keys(model) -> set[str]:
    """The state_dict keys that hold frozen weights (codes or packed codes, levels, eps)."""
    return {f"{name}.{b}" if name else b for name, m in frozen_layers(model) for b, _ in m.named_buffers(recurse=False)}


def require_linear(name: str, m, fmt: str) -> None:
    """A weight matrix: a frozen Linear, or a frozen projection of an attention (in_proj_weight)."""
    if not isinstance(m, (FrozenLinear, FrozenProjection)):
        kind = "a convolution" if isinstance(m, FrozenConv) else type(m).__name__
        raise ValueError(f"anacuda.export(format={fmt!r}): layer {name!r} is {kind}; this format holds the weights "
                         "of Linear layers only (use format='onnx' for convolutions)")


def require_ternary(name: str, m, fmt: str) -> None:
    levels = tuple(m.levels.tolist())
    if levels != TERNARY:
        raise ValueError(f"anacuda.export(format={fmt!r}): layer {name!r} has the grid {levels}; this format holds "
                         "ternary weights only (levels -1, 0, +1)")


def row_scales(name: str, m, fmt: str) -> torch.Tensor:
    """eps as one value per output row (dim 0) of the weight: per tensor or per output channel.
    Other layouts (eps varying within a row) are refused."""
    rows = m.eps.expand(m.weight_shape).reshape(m.weight_shape[0], -1)
    if not torch.equal(rows, rows[:, :1].expand_as(rows)):
        raise ValueError(f"anacuda.export(format={fmt!r}): layer {name!r} has eps of shape {tuple(m.eps.shape)} "
                         f"varying within an output row; this format holds one scale per tensor or per output row")
    return rows[:, 0].contiguous()


def tensor_scale(name: str, m, fmt: str) -> torch.Tensor:
    """eps as a single value (refused unless equal over the whole tensor)."""
    flat = m.eps.reshape(-1)
    if not torch.equal(flat, flat[:1].expand_as(flat)):
        raise ValueError(f"anacuda.export(format={fmt!r}): layer {name!r} has eps of shape {tuple(m.eps.shape)} "
                         "with different values; this format holds one scale per tensor (train with a per-tensor eps, "
                         "e.g. weight_eps='max_abs' or a per-tensor absmean)")
    return flat[0].clone()
