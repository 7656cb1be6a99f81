"""The executable spec (docs/semantics.md) in plain PyTorch.

An O(K) composite like the paper's own code: every element meets every threshold through a
K-wide temporary. Tests compare the kernels with it and benchmarks use it as the baseline;
the fast path never calls it. Same signatures as anacuda.functional.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .functional import ana_args
from .quantizer import (IDENTITY, SCALE_FLOOR, SCALE_RULES, Param, Quantizer, check_scale_rule, compute_dtype,
                        grid_reach)

_SQRT1_2 = 1.0 / math.sqrt(2.0)


# --- the noise laws, standardised (v = z / sigma), SPEC §3 ----------------------------------
def cdf(noise: str, v: torch.Tensor) -> torch.Tensor:
    if noise == "uniform":
        return ((v + 1) / 2).clamp(0, 1)
    if noise == "triangular":
        inside = (1 + v * (2 - v.abs())) / 2
        return torch.where(v <= -1, torch.zeros_like(v), torch.where(v >= 1, torch.ones_like(v), inside))
    if noise == "normal":
        return 0.5 * torch.special.erfc(-v * _SQRT1_2)
    if noise == "logistic":
        return torch.sigmoid(v)
    raise ValueError(noise)


def centered(noise: str, v: torch.Tensor) -> torch.Tensor:
    """F(v) − 1/2, accurate near v = 0."""
    if noise == "uniform":
        return v.clamp(-1, 1) / 2
    if noise == "triangular":
        c = v.clamp(-1, 1)
        return c * (2 - c.abs()) / 2
    if noise == "normal":
        return 0.5 * torch.special.erf(v * _SQRT1_2)
    if noise == "logistic":
        return 0.5 * torch.tanh(v / 2)
    raise ValueError(noise)


def pdf(noise: str, v: torch.Tensor) -> torch.Tensor:
    if noise == "uniform":  # half-open support [-1, 1)
        return torch.where((v >= -1) & (v < 1), torch.full_like(v, 0.5), torch.zeros_like(v))
    if noise == "triangular":
        return (1 - v.abs()).clamp(min=0)
    if noise == "normal":
        return torch.exp(-0.5 * v * v) / math.sqrt(2 * math.pi)
    if noise == "logistic":
        f = torch.sigmoid(v)
        return f * (1 - f)
    raise ValueError(noise)


def quantile(noise: str, r: torch.Tensor) -> torch.Tensor:
    if noise == "uniform":
        return 2 * r - 1
    if noise == "triangular":
        return torch.where(r < 0.5, torch.sqrt(2 * r) - 1, 1 - torch.sqrt(2 * (1 - r)))
    if noise == "normal":
        return math.sqrt(2) * torch.special.erfinv(2 * r - 1)
    if noise == "logistic":
        return torch.log(r) - torch.log1p(-r)
    raise ValueError(noise)


# --- the stair ---------------------------------------------------------------------------------
def hard_stair(a: torch.Tensor, levels: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Q(a) = q_0 + sum_i dq_i H(a - theta_i); on a threshold, the upper level."""
    idx = (a.unsqueeze(-1) >= thresholds).sum(-1)
    return torch.where(torch.isnan(a), a, levels[idx])


def _ana_forward(a, levels, thresholds, noise, sigma, strategy, training, generator):
    hard = hard_stair(a, levels, thresholds)
    if not training:
        return hard
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    if strategy == "random":
        r = torch.rand(a.shape, dtype=a.dtype, device=a.device, generator=generator)
        r = r.clamp(torch.finfo(a.dtype).tiny, 1 - torch.finfo(a.dtype).eps)  # the open interval (0, 1)
        y = hard_stair(a + safe * quantile(noise, r), levels, thresholds)
    else:
        P = cdf(noise, (a.unsqueeze(-1) - thresholds) / safe)  # (..., K): the K-wide temporary
        dq = levels[1:] - levels[:-1]
        if strategy == "expectation":
            y = levels[0] + (dq * P).sum(-1)
        else:  # mode: probabilities of the K + 1 levels; the upper level wins a tie
            y = levels[_most_likely_level(noise, (a.unsqueeze(-1) - thresholds) / safe)]
        y = torch.where(torch.isnan(a), a, y)
    return torch.where(sigma > 0, y, hard)


def _most_likely_level(noise: str, z: torch.Tensor) -> torch.Tensor:
    """argmax_k p_k with p_k = F(z_{k-1}) − F(z_k) (z_{-1} = +inf, z_K = −inf); the upper level
    wins a tie. Each difference is taken in the form rounding cannot spoil: upper tails when both
    z >= 0, lower tails when both z < 0, the centred CDF across 0; neighbours whose p are equal
    to within rounding are told apart by p_k − p_{k-1} = 2 C(z_{k-1}) + F(−z_{k-2}) − F(z_k)."""
    z = z.double()  # the decision in float64: the spec, not the rounding of a float32 tanh
    inf = torch.full_like(z[..., :1], float("inf"))
    zz = torch.cat([inf, inf, z, -inf], -1)  # zz[k + 1] = z_{k-1}
    best_p = torch.full_like(z[..., 0], -1.0)
    best = torch.zeros_like(z[..., 0], dtype=torch.long)
    for k in range(z.shape[-1] + 1):
        z2, z1, z0 = zz[..., k], zz[..., k + 1], zz[..., k + 2]  # z_{k-2}, z_{k-1}, z_k
        pk = torch.where(z0 >= 0, cdf(noise, -z0) - cdf(noise, -z1),
                         torch.where(z1 < 0, cdf(noise, z1) - cdf(noise, z0), centered(noise, z1) - centered(noise, z0)))
        take = pk >= best_p
        margin = 8 * torch.finfo(pk.dtype).eps * torch.maximum(pk, best_p)
        tie = ((pk - best_p).abs() <= margin) & (best == k - 1)
        exact = 2 * centered(noise, z1) + cdf(noise, -z2) - cdf(noise, z0) >= 0
        take = torch.where(tie, exact, take)
        best_p = torch.where(take, pk, best_p)
        best = torch.where(take, torch.full_like(best, k), best)
    return best


def stair_derivative(a, levels, thresholds, noise, sigma):
    """sum_i dq_i f_sigma(a - theta_i); exactly 0 when sigma = 0; NaN where a is NaN. The
    "identity" backward (SPEC §5): 1 everywhere, ±inf included, NaN where a is NaN."""
    if noise == IDENTITY:
        return torch.where(torch.isnan(a), a, torch.ones_like(a))
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    dq = levels[1:] - levels[:-1]
    if noise == "uniform":  # the boxes tested by their edges, so that neighbours tile exactly
        inside = (a.unsqueeze(-1) >= thresholds - safe) & (a.unsqueeze(-1) < thresholds + safe)
        f = torch.where(inside, torch.full_like(inside, 0.5, dtype=a.dtype), torch.zeros_like(a.unsqueeze(-1)))
    else:
        f = pdf(noise, (a.unsqueeze(-1) - thresholds) / safe)
    d = (dq * f).sum(-1) / safe
    d = torch.where(sigma > 0, d, torch.zeros_like(d))
    return torch.where(torch.isnan(a), a, d)


class _ReferenceANA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, levels, thresholds, eps, noise, mu, sigma, strategy, training, back, generator):
        acc = compute_dtype(x.dtype)
        ctx.eps_shape, ctx.eps_dtype = eps.shape, eps.dtype
        xf, eps = x.to(acc), eps.to(device=x.device, dtype=acc)
        u = xf / eps
        g = _ana_forward(u - mu.to(u), levels, thresholds, noise, sigma.to(u), strategy, training, generator)
        ctx.save_for_backward(x, levels, thresholds, eps, g if ctx.needs_input_grad[3] else None)
        ctx.back = back
        return (eps * g).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, levels, thresholds, eps, g = ctx.saved_tensors
        name, mu_b, sigma_b = ctx.back
        u = x.to(eps.dtype) / eps
        d = stair_derivative(u - mu_b.to(u), levels, thresholds, name, sigma_b.to(u))
        grad = grad.to(d.dtype)
        grad_eps = None
        if ctx.needs_input_grad[3]:
            # SPEC §8: dy/deps = g(u) - u g'_b(u), with g what the forward produced; at ±inf
            # g'_b = 0 and the term is the saturated level (never inf * 0).
            term = g - torch.where(torch.isinf(u), torch.zeros_like(u), u * d)
            grad_eps = (grad * term).sum_to_size(ctx.eps_shape).to(ctx.eps_dtype)
        return (grad * d).to(x.dtype), None, None, grad_eps, None, None, None, None, None, None, None


def ana(
    x: torch.Tensor,
    quantizer: Quantizer,
    noise: str = "uniform",
    mu: Param = 0.0,
    sigma: Param = 0.5,
    strategy: str = "expectation",
    training: bool = True,
    eps: Param = 1.0,
    backward_noise=None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Reference of anacuda.functional.ana (same signature and semantics). The random strategy
    draws its noise from torch.rand: equal in distribution to the kernels, not sample by sample."""
    if isinstance(eps, str):
        eps = dynamic_eps(x, quantizer, eps)
    learned = eps if isinstance(eps, torch.Tensor) and eps.requires_grad else None
    mu_t, sigma_t, eps_t, back = ana_args(x, quantizer, noise, mu, sigma, strategy,
                                          eps if learned is None else eps.detach(), backward_noise)
    if learned is not None:
        eps_t = learned  # SPEC §8: autograd through eps
    acc = compute_dtype(x.dtype)
    levels = quantizer.levels.to(device=x.device, dtype=acc)
    thresholds = quantizer.thresholds.to(device=x.device, dtype=acc)
    dev = dict(device=x.device, dtype=acc)
    back = (back.name, back.mu.to(**dev), back.sigma.to(**dev))
    return _ReferenceANA.apply(
        x, levels, thresholds, eps_t, noise, mu_t.to(**dev), sigma_t.to(**dev), strategy, bool(training), back, generator
    )


def alpha_blend(w: torch.Tensor, quantizer: Quantizer, alpha: Param, eps: Param = 1.0) -> torch.Tensor:
    """Reference of anacuda.functional.alpha_blend: alpha * eps * Q(w / eps) + (1 - alpha) * w,
    the quantised term detached (no straight-through gradient)."""
    from .functional import _check_input
    from .quantizer import as_param

    _check_input(w, quantizer, "alpha_blend")
    acc = compute_dtype(w.dtype)
    if isinstance(eps, str):
        eps = dynamic_eps(w, quantizer, eps)
    alpha = as_param(alpha, "alpha", "unit").to(device=w.device, dtype=acc)
    learned = isinstance(eps, torch.Tensor) and eps.requires_grad
    as_param(eps.detach() if learned else eps, "eps", "positive", scalar=False)
    eps = torch.as_tensor(eps, dtype=torch.float64) if not isinstance(eps, torch.Tensor) else eps
    eps = eps.to(device=w.device, dtype=acc)
    levels = quantizer.levels.to(device=w.device, dtype=acc)
    thresholds = quantizer.thresholds.to(device=w.device, dtype=acc)
    wf = w.to(acc)
    # SPEC §6, §8: no gradient through the stair; a learned eps gets alpha * Q(w / eps).
    q = alpha * eps * hard_stair(wf.detach() / eps.detach(), levels, thresholds).detach()
    float_term = torch.where(alpha < 1, (1 - alpha) * wf, torch.zeros_like(wf))
    return (q + float_term).to(w.dtype)


#: The dynamic-scale rules of SPEC §9: (reduction, group); grid_reach: c of §9 (anacuda.quantizer).
DYNAMIC_RULES = SCALE_RULES


def dynamic_eps(x: torch.Tensor, quantizer: Quantizer, rule: str, r_min: float = SCALE_FLOOR) -> torch.Tensor:
    """eps = max(r(|x|), r_min) / c (SPEC §9), detached, in the compute dtype, shaped to broadcast
    to x: (..., 1) per token, one value per tensor, (C, 1, ...) per output channel (dim 0). r of an
    empty group is 0; a group holding a NaN or ±inf has no scale: NaN."""
    check_scale_rule(rule, x.shape)
    reduce, group = DYNAMIC_RULES[rule]
    a = x.detach().to(compute_dtype(x.dtype)).abs()
    dims = {"token": (-1,), "tensor": tuple(range(x.dim())), "channel": tuple(range(1, x.dim()))}[group]
    keep = group != "tensor"
    if not dims:  # one value per element (a 1-d tensor per channel) or a 0-d tensor
        r = a
    elif reduce == "max":
        r = a.amax(dim=dims, keepdim=keep) if a.numel() else a.sum(dim=dims, keepdim=keep)
    else:
        n = math.prod(x.shape[d] for d in dims)
        r = a.sum(dim=dims, keepdim=keep) / max(n, 1)
    r = torch.where(torch.isfinite(r), r, torch.full_like(r, float("nan")))
    return r.clamp(min=r_min) / grid_reach(quantizer)
