"""Learned scales for the layers (SPEC §8): LSQ's initialisation, its gradient scale, and how a
learned eps stays positive. The op takes the parameter as it is (anacuda.functional.ana with an
eps that requires grad); what belongs to the layer that owns it is here.

Positivity: a floor, eps_eff = max(eps, floor), rather than learning log eps. Above the floor
(where a scale lives in practice: the step-size gradient is bounded by |q_0|, q_K per element and
LSQ's gradient scale makes an update a small fraction of eps) the op gets the parameter's value
itself, so its gradient is exactly LSQ's and eval equals the frozen model bit for bit; a log
parametrisation would multiply every gradient by eps and change LSQ's dynamics. The floor only
stops a step that would cross 0 from reaching the op (which rejects eps <= 0); its gradient
passes straight through, so a parameter pushed below the floor is still trained back up (a
clamp's zero gradient there would leave it stuck). The floor is EPS_FLOOR, or the parameter
dtype's smallest normal number where EPS_FLOOR would round to 0 (float16).

Initialisation of an activation's scale from its first batch: under torch.distributed, every
rank's first batch takes part (the ranks' values are averaged), so the replicas start from the
same scale; DDP broadcasts parameters only when it wraps the model, before that batch. That
average is a collective, so with several processes the first batch must be a training one (an
evaluation first, often run on one rank, is refused rather than left waiting); under FSDP2,
which drops what a forward writes to the parameters it gathered, it must come before
fully_shard (ANAActivation.activation_eps says so).
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


def floor_of(dtype: torch.dtype) -> float:
    """The floor of a learned eps of `dtype`: EPS_FLOOR, or the smallest normal number of dtype."""
    return max(EPS_FLOOR, torch.finfo(dtype).tiny)


def floored(eps: torch.Tensor) -> torch.Tensor:
    """max(eps, the floor of eps's dtype): the value the op gets from a learned eps."""
    return eps.clamp(min=floor_of(eps.dtype))


class _LearnedEps(torch.autograd.Function):
    """max(eps, floor) forward; backward the identity times `scale` (LSQ's 1 / sqrt(N q_K), or 1):
    the gradient passes the floor, so a parameter below it still moves."""

    @staticmethod
    def forward(ctx, eps, scale: float):
        ctx.scale = scale
        return floored(eps)

    @staticmethod
    def backward(ctx, grad):
        return (grad * ctx.scale if ctx.scale != 1.0 else grad), None


def effective_eps(eps: torch.Tensor, shared: int, quantizer: Quantizer, grad_scale: bool) -> torch.Tensor:
    """The eps the op gets from a learned parameter: floored, and with LSQ's gradient scale
    1 / sqrt(N q_K) (N = `shared`, the elements that share each value) when `grad_scale`."""
    scale = 1.0 / math.sqrt(max(1, shared) * top_level(quantizer)) if grad_scale else 1.0
    return _LearnedEps.apply(eps, scale)


def several_processes() -> bool:
    """Whether torch.distributed's default group runs with more than one process."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.compiler.disable  # a collective: eager, also inside a compiled forward
def replicas_mean(t: torch.Tensor) -> torch.Tensor:
    """t averaged over the processes of torch.distributed's default group when one runs with more
    than one process (a collective: every rank calls it), else t."""
    if not several_processes():
        return t
    t = t.clone()
    torch.distributed.all_reduce(t)
    return t / torch.distributed.get_world_size()
