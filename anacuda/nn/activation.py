"""ANAActivation: a drop-in activation (for ReLU, ReLU6, Hardtanh) that quantises with ANA."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as F
from ..quantizer import Noise, Param, Quantizer, as_param, check_noise_name, check_strategy
from .learned_scale import effective_eps, lsq_init


def _buffer(value: Param, name: str, minimum: str) -> torch.Tensor:
    """A hyper-parameter as a float32 buffer value (checked once, here)."""
    t = as_param(value, name, minimum, stored=True)
    return t.detach().to(torch.float32).reshape(()).clone()


class NoiseHyperParams(nn.Module):
    """The ANA configuration of a layer: quantiser, noise, strategy, and μ, σ (and a backward
    noise's μ_b, σ_b) kept as buffers so that state_dict, .to() and DDP carry them and a
    NoiseController can anneal them without recompilation."""

    def _setup_noise(self, quantizer, noise, strategy, mu, sigma, backward_noise):
        if quantizer is None:
            quantizer = Quantizer.ternary()
        if not isinstance(quantizer, Quantizer):
            raise TypeError(f"anacuda.nn: quantizer must be an anacuda.Quantizer, got {type(quantizer).__name__}")
        self.quantizer = quantizer
        self.noise = check_noise_name(noise)
        self.strategy = check_strategy(strategy)
        self.register_buffer("mu", _buffer(mu, "mu", "any"))
        self.register_buffer("sigma", _buffer(sigma, "sigma", "nonnegative"))
        if backward_noise is None:
            self.backward_noise_name = None
        else:
            b = Noise.of(backward_noise)
            self.backward_noise_name = b.name
            self.register_buffer("mu_b", _buffer(b.mu, "backward mu", "any"))
            self.register_buffer("sigma_b", _buffer(b.sigma, "backward sigma", "nonnegative"))

    def _backward_noise(self):
        if self.backward_noise_name is None:
            return None
        return (self.backward_noise_name, self.mu_b, self.sigma_b)

    def _noise_repr(self) -> str:
        s = (f"quantizer={self.quantizer}, noise={self.noise}, strategy={self.strategy}, "
             f"mu={self.mu.item():.4g}, sigma={self.sigma.item():.4g}")
        if self.backward_noise_name is not None:
            s += f", backward_noise=({self.backward_noise_name}, {self.mu_b.item():.4g}, {self.sigma_b.item():.4g})"
        return s


class ANAActivation(NoiseHyperParams):
    """y = eps · g(x / eps) with ANA (SPEC §4): smoothed while training with σ > 0, the hard stair
    Q(x / eps − μ) in eval mode. Defaults follow the CVPR 2022 CIFAR-10 setting: ternary levels,
    uniform noise σ = 0.5, strategy mode (the clipped STE)."""

    def __init__(self, quantizer: Quantizer = None, noise: str = "uniform", strategy: str = "mode",
                 mu: Param = 0.0, sigma: Param = 0.5, eps: Param = 1.0, backward_noise=None):
        super().__init__()
        self._setup_noise(quantizer, noise, strategy, mu, sigma, backward_noise)
        self.eps_mode = None
        if isinstance(eps, str):
            # A learned eps (SPEC §8, anacuda/nn/learned_scale.py): one value, LSQ's initialisation
            # from the first training batch (or init_scale(x); do it before torch.compile, whose
            # guard on the pending flag would otherwise recompile once), LSQ's gradient scale.
            if eps != "learned":
                raise TypeError(f"anacuda: eps must be a number or a tensor, got str {eps!r} (the one rule of an "
                                "activation's eps is 'learned')")
            self.eps_mode, self.eps_grad_scale, self.eps_pending = "learned", True, True
            self.eps = nn.Parameter(torch.ones((), dtype=torch.float32))
            return
        eps_t = as_param(eps, "eps", "positive", scalar=False, stored=True)
        self.register_buffer("eps", eps_t.detach().to(torch.float32).clone())

    @torch.no_grad()
    def init_scale(self, x: torch.Tensor):
        """A learned eps: LSQ's initialisation 2 mean|x| / sqrt(q_K) from the batch x."""
        if self.eps_mode != "learned":
            raise ValueError("anacuda.nn: init_scale needs activation eps 'learned'")
        self.eps.copy_(lsq_init(x, self.quantizer, per_channel=False))
        self.eps_pending = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.eps_mode == "learned" and prefix + "eps" in state_dict:
            self.eps_pending = False  # a loaded scale is not re-initialised by the next batch
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def activation_eps(self, x: torch.Tensor) -> torch.Tensor:
        """The eps this forward uses (for a learned one: floored, with LSQ's gradient scale)."""
        if self.eps_mode != "learned":
            return self.eps
        if self.eps_pending and self.training:
            self.init_scale(x)
        return effective_eps(self.eps, x.numel(), self.quantizer, self.eps_grad_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.ana(x, self.quantizer, self.noise, self.mu, self.sigma, self.strategy, self.training,
                     self.activation_eps(x), self._backward_noise())

    def extra_repr(self) -> str:
        if self.eps_mode == "learned":
            eps = "learned"
        else:
            eps = f"{self.eps.item():.4g}" if self.eps.numel() == 1 else f"tensor{tuple(self.eps.shape)}"
        return f"{self._noise_repr()}, eps={eps}"
