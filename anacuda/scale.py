"""Helpers that pick the scale eps of a tensor for a quantiser, per tensor or per channel, and
the named weight-scale rules the layers and ``convert`` take (``WEIGHT_RULES``).

Each helper returns a detached tensor broadcastable to x (shape (C, 1, ..., 1) along `dim` when
dim is given, a 0-d tensor otherwise), strictly positive even for an all-zero tensor or channel.
docs/scales.md compares the rules (zero weights at conversion, accuracy after training).
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


def _mean_abs(x: torch.Tensor, dim: Optional[int]) -> torch.Tensor:
    """mean|x|, summed in float64 and rounded once to x's dtype: so the result does not depend on
    the order of the sum (eager and torch.compile's Inductor sum in different orders; in float32
    the two differ by an ulp, which moves every quantised weight and can flip a level)."""
    if _op_reduces(x, dim):  # the same sum in float64, from one read of x and no temporaries
        rule = "absmean" if dim is None else "absmean_per_channel"
        return torch.ops.anacuda._dynamic_eps(x.detach(), rule, 1.0, torch.finfo(x.dtype).tiny)
    return _reduce(x, dim, lambda t, d: t.abs().to(torch.float64).mean(dim=d).to(t.dtype))


def _op_reduces(x, dim) -> bool:
    """Whether anacuda's reduction (csrc/cpu/scale_rows.h, cuda/dynamic_eps.cu) computes mean|x|
    over the whole tensor or along dim 0: float32 and float64 (where the op's compute type is x's,
    so the double sum is rounded once, as above) on its own devices, not a distributed tensor
    (whose sum needs the shards: distributed.rule_scale)."""
    from . import distributed

    return (isinstance(x, torch.Tensor) and x.dtype in (torch.float32, torch.float64) and x.numel() > 0
            and x.device.type in ("cpu", "cuda") and (dim is None or (type(dim) is int and x.dim() >= 1
                                                                      and dim in (0, -x.dim())))
            and not distributed.is_dtensor(x))


def absmean(x: torch.Tensor, quantizer: Quantizer, dim: Optional[int] = None) -> torch.Tensor:
    """BitNet b1.58's absmean: eps = mean|x|, so that one step of the grid is the mean magnitude
    (ternary: zero below ½·mean|x|, as BitNet's RoundClip(w / mean|w|, −1, 1); binary: XNOR-Net's
    scale mean|x|). The quantiser only has to be one (it does not enter the formula)."""
    _check_quantizer(quantizer)
    return _positive(_mean_abs(x, dim))


def _smallest_positive_threshold(quantizer: Quantizer, rule: str) -> float:
    th = quantizer._thresholds
    pos = th[th > 0]
    if pos.numel() == 0:
        raise ValueError(f"anacuda.scale.{rule}: the quantiser has no positive threshold to place, got thresholds "
                         f"{th.tolist()}")
    return float(pos.min())


def twn(x: torch.Tensor, quantizer: Quantizer, dim: Optional[int] = None) -> torch.Tensor:
    """Ternary Weight Networks' threshold (Li et al. 2016): Δ = 0.7·mean|x|, placed on the
    smallest positive threshold θ⁺ of the quantiser: eps = 0.7·mean|x| / θ⁺ (ternary: 1.4·mean|x|).
    TWN's second step, the level α = mean of |x| above Δ, is not a scale of the stair (its levels
    sit at ±eps) and is not used."""
    _check_quantizer(quantizer)
    return _positive(_mean_abs(x, dim) * (0.7 / _smallest_positive_threshold(quantizer, "twn")))


def lsq(x: torch.Tensor, quantizer: Quantizer, dim: Optional[int] = None) -> torch.Tensor:
    """LSQ's initial step size (Esser et al. 2020): eps = 2·mean|x| / √q_P, q_P the highest
    positive level (2^(b−1) − 1 for signed b-bit grids; ternary: 2·mean|x|). Here a fixed rule,
    recomputed from the weight; LSQ learns the step from this start."""
    _check_quantizer(quantizer)
    if not quantizer.max_level > 0:
        raise ValueError(f"anacuda.scale.lsq: the quantiser needs a positive level, got levels "
                         f"{quantizer._levels.tolist()}")
    return _positive(_mean_abs(x, dim) * (2.0 / math.sqrt(quantizer.max_level)))


#: The weight-scale rules a layer's `eps` (and ``convert``'s `weight_eps`) takes by name:
#: name -> (helper, per output channel). "_per_channel" computes one eps per output channel
#: (dim 0 of a Linear or Conv weight), the others one per tensor.
WEIGHT_RULES = {
    "max_abs": (max_abs, False),
    "max_abs_per_channel": (max_abs, True),
    "absmean": (absmean, False),
    "absmean_per_channel": (absmean, True),
    "twn": (twn, False),
    "lsq": (lsq, False),
}

#: The default weight scale of the layers, ``convert`` and ANAConfig: chosen by the measurement of
#: docs/scales.md (scripts/scale_study.py).
DEFAULT_WEIGHT_RULE = "absmean"


#: eps = LEARNED: an nn.Parameter trained with the network (SPEC §8), initialised as LSQ does;
#: the layers and ``convert`` take it beside the rules (anacuda/nn/learned_scale.py).
LEARNED = "learned"


def check_weight_rule(rule: str, learned: bool = False) -> str:
    """`rule` if it names a rule of WEIGHT_RULES (or LEARNED, when `learned`), else a ValueError."""
    if rule not in WEIGHT_RULES and not (learned and rule == LEARNED):
        names = tuple(WEIGHT_RULES) + ((LEARNED,) if learned else ())
        raise ValueError(f"anacuda: weight eps must be a number, a tensor or one of {names}, got {rule!r}")
    return rule


def weight_scale(w: torch.Tensor, quantizer: Quantizer, rule: str) -> torch.Tensor:
    """eps of a weight by a named rule of WEIGHT_RULES (per output channel: shape (C, 1, ...))."""
    fn, per_channel = WEIGHT_RULES[check_weight_rule(rule)]
    return fn(w, quantizer, dim=0 if per_channel else None)
