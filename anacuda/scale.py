"""Helpers that pick the scale eps of a tensor for a quantiser, per tensor or per channel.

Each returns a detached tensor broadcastable to x (shape (C, 1, ..., 1) along `dim` when dim
is given, a 0-d tensor otherwise), strictly positive even for an all-zero tensor or channel.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .quantizer import Quantizer


def _reduce(x: torch.Tensor, dim: Optional[int], fn) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("anacuda.scale: x must be a floating tensor")
    if x.numel() == 0:
        raise ValueError("anacuda.scale: x is empty; a scale needs at least one value")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
        raise TypeError(f"anacuda.scale: dim must be an int or None, got {type(dim).__name__}")
    x = x.detach()
    if dim is None:
        return fn(x.reshape(-1), 0)
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"anacuda.scale: dim {dim} is out of range for a {x.dim()}-d tensor")
    dim = dim % x.dim()
    flat = x.movedim(dim, 0).reshape(x.shape[dim], -1)
    shape = [1] * x.dim()
    shape[dim] = x.shape[dim]
    return fn(flat, 1).reshape(shape)


def _positive(eps: torch.Tensor) -> torch.Tensor:
    """eps > 0, nudged up by 2^-20 (relative, rounded up in eps's dtype): the largest magnitude
    lands a hair inside its outermost level (|u| < m) instead of on it. On it (u = m), it would
    sit on the excluded edge of the half-open box [θ − σ, θ + σ) of the clipped STE (SPEC §3),
    so the weight that sets its channel's scale would get no gradient and never move."""
    eps = eps.clamp(min=torch.finfo(eps.dtype).tiny)
    up = eps.double() * (1 + 2.0**-20)
    out = up.to(eps.dtype)
    return torch.where(out.double() < up, torch.nextafter(out, torch.full_like(out, math.inf)), out)


def _check_quantizer(quantizer) -> None:
    if not isinstance(quantizer, Quantizer):
        raise TypeError(f"anacuda.scale: quantizer must be an anacuda.Quantizer, got {type(quantizer).__name__}")


def _top(quantizer: Quantizer) -> float:
    _check_quantizer(quantizer)
    lo, hi = quantizer.min_level, quantizer.max_level
    if lo < 0 < hi:
        return min(-lo, hi)
    top = max(abs(lo), abs(hi))
    if top == 0:
        raise ValueError("anacuda.scale: every level of the quantiser is 0; no scale can be chosen")
    return top


def max_abs(x: torch.Tensor, quantizer: Quantizer, dim: Optional[int] = None) -> torch.Tensor:
    """Symmetric: eps = max|x| / m with m the magnitude of the outermost level on the shorter side
    (7 for 4-bit signed levels -8 … 7), so neither sign of the largest magnitude is clipped."""
    return _positive(_reduce(x, dim, lambda t, d: t.abs().amax(dim=d)) / _top(quantizer))


def min_max(x: torch.Tensor, quantizer: Quantizer, dim: Optional[int] = None) -> torch.Tensor:
    """The smallest eps that clips neither max x (onto the highest level) nor min x (onto the
    lowest): max(max x / q_K, min x / q_0) over the levels of the right sign (activation
    calibration; for unsigned levels 0 … q_K it is max x / q_K)."""
    _check_quantizer(quantizer)
    lo, hi = quantizer.min_level, quantizer.max_level

    def fn(t, d):
        parts = []
        if hi > 0:
            parts.append(t.amax(dim=d).clamp(min=0) / hi)
        if lo < 0:
            parts.append(t.amin(dim=d).clamp(max=0) / lo)
        if not parts:
            raise ValueError("anacuda.scale: every level of the quantiser is 0; no scale can be chosen")
        return torch.stack(parts).amax(0)

    return _positive(_reduce(x, dim, fn))
