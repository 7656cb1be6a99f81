"""Learned scales for the layers (SPEC §8): LSQ's initialisation, its gradient scale, and how a
learned eps stays positive. The op takes the parameter as it is (anacuda.functional.ana with an
eps that requires grad); what belongs to the layer that owns it is here.

Positivity: a floor, eps_eff = max(eps, EPS_FLOOR), rather than learning log eps. Above the floor
(where a scale lives in practice: the step-size gradient is bounded by |q_0|, q_K per element and
LSQ's gradient scale makes an update a small fraction of eps) the layer passes the parameter
itself, so its gradient is exactly LSQ's and eval equals the frozen model bit for bit; a log
parametrisation would multiply every gradient by eps and change LSQ's dynamics. The floor only
stops a step that would cross 0 from reaching the op (which rejects eps <= 0).
"""

from __future__ import annotations

import math

import torch

from ..quantizer import Quantizer

#: The smallest eps a learned scale takes.
EPS_FLOOR = 1e-8


def top_level(quantizer: Quantizer) -> float:
    """q_K of LSQ (its Q_P): the largest level, or the largest magnitude for a grid below 0."""
    return quantizer.max_level if quantizer.max_level > 0 else max(abs(quantizer.min_level), abs(quantizer.max_level))


@torch.no_grad()
def lsq_init(t: torch.Tensor, quantizer: Quantizer, per_channel: bool) -> torch.Tensor:
    """LSQ's initial step 2 mean|t| / sqrt(q_K): per output channel (dim 0, shape (C, 1, ...)) or
    one value, in float32, at least EPS_FLOOR."""
    a = t.detach().float().abs()
    m = a.mean(dim=tuple(range(1, t.dim())), keepdim=True) if per_channel and t.dim() > 0 else a.mean()
    return (2 * m / math.sqrt(top_level(quantizer))).clamp(min=EPS_FLOOR)


class _GradScale(torch.autograd.Function):
    """The identity, with the gradient multiplied by `scale` (LSQ's 1 / sqrt(N q_K))."""

    @staticmethod
    def forward(ctx, t, scale: float):
        ctx.scale = scale
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def effective_eps(eps: torch.Tensor, shared: int, quantizer: Quantizer, grad_scale: bool) -> torch.Tensor:
    """The eps the op gets from a learned parameter: floored, and with LSQ's gradient scale
    1 / sqrt(N q_K) (N = `shared`, the elements that share each value) when `grad_scale`."""
    e = eps.clamp(min=EPS_FLOOR)
    if grad_scale:
        e = _GradScale.apply(e, 1.0 / math.sqrt(max(1, shared) * top_level(quantizer)))
    return e
