"""The benchmark workloads and the implementations compared on them, in one place.

Used by the pytest-benchmark suite (bench_ana.py) and the table script (run.py). Every
implementation of a workload computes the same maths (checked in run.py before timing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict

import torch

from anacuda import Quantizer
from anacuda import functional as F
from anacuda import reference as R


@dataclass
class Workload:
    name: str
    title: str
    quantizer: Quantizer
    noise: str
    sigma: float
    strategy: str
    numel: int
    dtype: torch.dtype = torch.float32
    # name -> fn(x) for extra baselines that compute the same forward (and gradient)
    extra: Dict[str, Callable] = field(default_factory=dict)

    def make_input(self, device, scale: float) -> torch.Tensor:
        g = torch.Generator(device="cpu").manual_seed(0)
        return (torch.randn(self.numel, generator=g) * scale).to(device=device, dtype=self.dtype)

    def anacuda(self, x):
        return F.ana(x, self.quantizer, noise=self.noise, sigma=self.sigma, strategy=self.strategy)

    def reference(self, x):
        return R.ana(x, self.quantizer, noise=self.noise, sigma=self.sigma, strategy=self.strategy)


def _fake_quantize_ternary(x):
    # PyTorch's fused clipped STE: levels -1, 0, 1 with scale 1 (round half to even at +-0.5).
    return torch.fake_quantize_per_tensor_affine(x, 1.0, 0, -1, 1)


def _eager_clipped_ste(x):
    # The best eager formulation of the clipped STE: hard forward, gradient 1 inside the range.
    c = x.clamp(-1.5, 1.5)
    return c + (torch.floor(c + 0.5).clamp(-1, 1) - c).detach()


def _eager_logistic_random(x, lo=-8, hi=7):
    # Stochastic rounding with logistic noise: clamp(floor(x + nu + 0.5)) with logistic nu,
    # the gradient from the logistic-smoothed stair (sum of densities, O(K)).
    u = torch.rand_like(x).clamp_(1e-7, 1 - 1e-7)
    nu = 0.5 * (torch.log(u) - torch.log1p(-u))
    y = torch.floor(x + nu + 0.5).clamp(lo, hi)
    return y


def workloads(scale_numel: int = 1 << 22):
    return [
        Workload("W1", "ternary, uniform s=0.5, mode (clipped STE)", Quantizer.ternary(), "uniform", 0.5, "mode",
                 scale_numel, extra={"fake_quantize": _fake_quantize_ternary, "eager STE": _eager_clipped_ste}),
        Workload("W2", "8-bit, normal s=0.25, expectation", Quantizer.uniform(8), "normal", 0.25, "expectation",
                 scale_numel),
        Workload("W3", "4-bit, logistic s=0.5, random", Quantizer.uniform(4), "logistic", 0.5, "random",
                 scale_numel, extra={"eager floor+noise": _eager_logistic_random}),
    ]
