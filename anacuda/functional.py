"""User-facing functions, like torch.nn.functional. The semantics are docs/semantics.md's; the
executable form of it is anacuda.reference, with the same signatures."""

from __future__ import annotations

from typing import Optional

import torch

from . import distributed, ops  # ops: the fakes and autograd; distributed: DTensor's sharding rules
from .quantizer import (SCALE_FLOOR, Noise, Param, Quantizer, as_param, check_noise_name, check_scale_rule,
                        check_strategy, grid_reach)


# The ops' overloads, looked up once: torch.ops.anacuda.ana resolves them and runs a Python
# __call__ on every call.
_ANA, _ANA_CODED, _ANA_DYNAMIC = (torch.ops.anacuda.ana.default, torch.ops.anacuda._ana_coded.default,
                                  torch.ops.anacuda._ana_dynamic.default)


def _check_input(x, quantizer, fn: str):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"anacuda.{fn}: x must be a tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"anacuda.{fn}: x must be float64, float32, float16 or bfloat16, got {x.dtype}")
    if not isinstance(quantizer, Quantizer):
        raise TypeError(f"anacuda.{fn}: quantizer must be an anacuda.Quantizer, got {type(quantizer).__name__}")


def _check_learned_eps(eps: torch.Tensor, x: torch.Tensor, fn: str) -> None:
    """A learned eps (SPEC §8) lives on x's device: its gradient is reduced there."""
    if eps.requires_grad and eps.device != x.device:
        raise ValueError(f"anacuda.{fn}: a learned eps (requires_grad) must be on the input's device {x.device}, "
                         f"got {eps.device}")


def ana_args(x, quantizer, noise, mu, sigma, strategy, eps, backward_noise):
    """Checks the arguments of ana and turns them into the op's (shared with reference.ana)."""
    _check_input(x, quantizer, "ana")
    check_noise_name(noise)
    check_strategy(strategy)
    mu_t = as_param(mu, "mu")
    sigma_t = as_param(sigma, "sigma", "nonnegative")
    # A rule (SPEC §9) is checked here and passed on as it is: the op computes the scale.
    if isinstance(eps, str):
        eps_t = check_scale_rule(eps, x.shape)
    else:
        eps_t = as_param(eps, "eps", "positive", scalar=False, learnable=True)
        _check_learned_eps(eps_t, x, "ana")
    if backward_noise is None:
        back = Noise(noise, mu_t, sigma_t)
    else:
        b = Noise.of(backward_noise)
        back = Noise(b.name, as_param(b.mu, "backward mu"), as_param(b.sigma, "backward sigma", "nonnegative"))
    return mu_t, sigma_t, eps_t, back


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
    """Additive Noise Annealing of the stair `quantizer`: ``eps * g(x / eps)`` (SPEC §4, §5).

    noise: uniform, triangular, normal or logistic, with location `mu` and scale `sigma` (in
    units of eps). strategy: expectation (the smoothed stair), mode (the most likely level) or
    random (a noisy sample). With ``training=False`` or ``sigma == 0`` the output is the hard
    stair ``Q(x / eps - mu)``. The gradient is the closed-form derivative of the stair smoothed
    by `backward_noise` (a ``(noise, mu, sigma)`` tuple; by default the forward noise).
    ``backward_noise="identity"`` passes the gradient unchanged (the unclipped STE of BitNet b1.58).
    mu, sigma and eps may be numbers or tensors (on the host or x's device); tensors change
    without recompilation or synchronisation. eps broadcasts to x (e.g. shape (C, 1, 1)).
    An eps that requires grad (on x's device) is learned: its gradient is SPEC §8's
    ``g(u) - u g'_b(u)`` summed over the elements that share it (LSQ with the clipped STE).
    eps may also be a rule, computed by the op from x in the same call (SPEC §9; no gradient
    flows through it): "absmax_per_token" (last dimension), "absmean", "absmax" (whole tensor),
    "absmean_per_channel", "absmax_per_channel" (dim 0): ``max(r(|x|), 1e-5) / c``, c the
    largest level magnitude the grid reaches on both sides of 0 (127 for signed 8-bit).
    """
    mu_t, sigma_t, eps_t, back = ana_args(x, quantizer, noise, mu, sigma, strategy, eps, backward_noise)
    if not isinstance(training, bool):  # 'False' from a config file would be truthy
        raise TypeError(f"anacuda.ana: training must be a bool, got {type(training).__name__}")
    if distributed.is_dtensor(x) and isinstance(eps_t, str):  # the scale across the shards
        return distributed.at_rule_scale(x, eps_t, quantizer, lambda e: ana(x, quantizer, noise, mu, sigma, strategy,
                                                                            training, e, backward_noise, generator))
    levels, thresholds = quantizer.tables(x.device, x.dtype)
    seed = None
    if strategy == "random" and training:
        # (seed, stream) from torch's generator for x's device: torch.manual_seed reproduces it.
        seed = torch.randint(0, 2**62, (2,), dtype=torch.int64, device=x.device, generator=generator)
    if distributed.is_dtensor(x):  # PyTorch's distributed tensor: the other tensors replicated on its mesh
        seed = None if seed is None else distributed.shared_seed(x, seed)
        levels, thresholds, eps_t, mu_t, sigma_t, back_mu, back_sigma = distributed.replicated(
            x, levels, thresholds, eps_t, mu_t, sigma_t, back.mu, back.sigma)
        back = Noise(back.name, back_mu, back_sigma)
    args = (x, levels, thresholds, quantizer.uniform_grid, eps_t, noise, mu_t, sigma_t, strategy, training, seed,
            back.name, back.mu, back.sigma)
    if isinstance(eps_t, str):  # a dynamic scale, computed by the op in the same call
        return _ANA_DYNAMIC(x, levels, thresholds, quantizer.uniform_grid, eps_t, grid_reach(quantizer), SCALE_FLOOR,
                            *args[5:])[0]
    # A learned eps needs u in the backward (SPEC §8): ana saves x, never the 1-byte code.
    if x.requires_grad and torch.is_grad_enabled() and ops.uses_code(back.name, thresholds) and not eps_t.requires_grad:
        return _ANA_CODED(*args)[0]  # the backward's 1-byte code from the same pass
    return _ANA(*args)


def alpha_blend(w: torch.Tensor, quantizer: Quantizer, alpha: Param, eps: Param = 1.0) -> torch.Tensor:
    """Alpha-blending (Liu & Mattina, arXiv 1903.01061; SPEC §6):
    ``alpha * eps * Q(w / eps) + (1 - alpha) * w`` with gradient ``(1 - alpha) * grad`` (none
    through the quantised term). alpha in [0, 1] (ramped 0 -> 1 in training) and eps may be
    numbers or tensors; eps broadcasts to w (e.g. one value per output channel), or is a rule of
    ana's (e.g. "absmean_per_channel"), computed from w in the same call."""
    _check_input(w, quantizer, "alpha_blend")
    alpha_t = as_param(alpha, "alpha", "unit")
    if isinstance(eps, str):  # a dynamic scale (SPEC §9), as in ana
        check_scale_rule(eps, w.shape)
        if distributed.is_dtensor(w):  # the scale across the shards
            return distributed.at_rule_scale(w, eps, quantizer, lambda e: alpha_blend(w, quantizer, alpha_t, e),
                                              nan_gradient=False)
        levels, thresholds = quantizer.tables(w.device, w.dtype)
        return torch.ops.anacuda._alpha_blend_dynamic(w, levels, thresholds, quantizer.uniform_grid, eps,
                                                      grid_reach(quantizer), SCALE_FLOOR, alpha_t)
    eps_t = as_param(eps, "eps", "positive", scalar=False, learnable=True)  # learned: d y / d eps = alpha Q(u)
    _check_learned_eps(eps_t, w, "alpha_blend")
    levels, thresholds = quantizer.tables(w.device, w.dtype)
    if distributed.is_dtensor(w):
        levels, thresholds, eps_t, alpha_t = distributed.replicated(w, levels, thresholds, eps_t, alpha_t)
    return torch.ops.anacuda.alpha_blend(w, levels, thresholds, quantizer.uniform_grid, eps_t, alpha_t)
