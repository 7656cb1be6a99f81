"""Drop-in quantised Linear and Conv layers.

ANALinear / ANAConv{1,2,3}d: the weight goes through ANA on every forward (smoothed while
training, the hard stair in eval mode). AlphaBlendLinear / AlphaBlendConv{1,2,3}d: the weight
is alpha-blended, α·eps·Q(w/eps) + (1 − α)·w (SPEC §6). Constructors take the torch.nn
arguments plus the quantisation keywords; the forward is torch.nn's with the quantised weight.

Weight scale `eps`: a number or tensor (fixed, a buffer), or "max_abs" (per tensor) /
"max_abs_per_channel" (per output channel), recomputed from the weight on every forward
(anacuda.scale.max_abs, no gradient through it), or "learned": an nn.Parameter per output
channel, initialised as LSQ does (2 mean|w| / sqrt(q_K); `init_scale()` redoes it from the
current weight), trained with LSQ's gradient scale 1 / sqrt(N q_K) (`layer.eps_grad_scale =
False` turns it off) and kept positive by a floor (anacuda/nn/learned_scale.py says why).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import functional as F
from .. import scale
from ..quantizer import Param, Quantizer, as_param
from .activation import NoiseHyperParams
from .learned_scale import effective_eps, lsq_init

_EPS_MODES = ("max_abs", "max_abs_per_channel", "learned")


class _WeightScale:
    """The weight's eps: a fixed buffer or a rule applied to the current weight."""

    def _setup_eps(self, eps):
        if isinstance(eps, str):
            if eps not in _EPS_MODES:
                raise ValueError(f"anacuda.nn: weight eps must be a number, a tensor or one of {_EPS_MODES}, got {eps!r}")
            self.eps_mode = eps
            if eps == "learned":  # SPEC §8: one value per output channel
                self.eps_grad_scale = True
                self.eps = nn.Parameter(lsq_init(self.weight, self.quantizer, per_channel=True))
            else:
                self.register_buffer("eps", None)
        else:
            self.eps_mode = None
            self.register_buffer("eps", as_param(eps, "eps", "positive", scalar=False, stored=True).detach().float().clone())

    def weight_eps(self) -> torch.Tensor:
        if self.eps_mode is None:
            return self.eps
        if self.eps_mode == "learned":
            return effective_eps(self.eps, self.weight[0].numel(), self.quantizer, self.eps_grad_scale)
        return scale.max_abs(self.weight, self.quantizer, dim=0 if self.eps_mode == "max_abs_per_channel" else None)

    @torch.no_grad()
    def init_scale(self):
        """A learned eps: LSQ's initialisation from the current weight."""
        if self.eps_mode != "learned":
            raise ValueError(f"anacuda.nn: init_scale needs weight eps 'learned', got {self.eps_mode or 'a fixed eps'}")
        self.eps.copy_(lsq_init(self.weight, self.quantizer, per_channel=True))

    def _eps_repr(self) -> str:
        if self.eps_mode is not None:
            return f"eps={self.eps_mode}"
        return f"eps={self.eps.item():.4g}" if self.eps.numel() == 1 else f"eps=tensor{tuple(self.eps.shape)}"


class ANAWeight(_WeightScale, NoiseHyperParams):
    """Mixin: ANA on the weight of a torch.nn Linear/Conv."""

    def _setup_ana(self, quantizer, noise, strategy, mu, sigma, eps, backward_noise, init):
        self._setup_noise(quantizer, noise, strategy, mu, sigma, backward_noise)
        self._setup_eps(eps)
        if init == "thresholds":
            self.init_near_thresholds()
        elif init is not None:
            raise ValueError(f"anacuda.nn: init must be None or 'thresholds', got {init!r}")

    def quantized_weight(self) -> torch.Tensor:
        return F.ana(self.weight, self.quantizer, self.noise, self.mu, self.sigma, self.strategy, self.training,
                     self.weight_eps(), self._backward_noise())

    @torch.no_grad()
    def init_near_thresholds(self, generator=None):
        """The paper's initialisation: each weight at a random threshold plus U(±1/√fan_in), in
        units of eps, where the smoothed stair has non-zero gradient. Needs a fixed eps."""
        if self.eps_mode is not None:
            raise ValueError("anacuda.nn: init_near_thresholds needs a fixed (numeric) weight eps")
        th = self.quantizer._thresholds.to(self.weight.device, torch.float32)
        fan_in = self.weight[0].numel()
        idx = torch.randint(th.numel(), self.weight.shape, device=self.weight.device, generator=generator)
        jitter = (torch.rand(self.weight.shape, device=self.weight.device, generator=generator) * 2 - 1) / math.sqrt(fan_in)
        self.weight.copy_(((th[idx] + jitter) * self.eps.to(self.weight.device)).to(self.weight.dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._noise_repr()}, {self._eps_repr()}"


class AlphaBlendWeight(_WeightScale):
    """Mixin: alpha-blending of the weight of a torch.nn Linear/Conv; α is a buffer."""

    def _setup_blend(self, quantizer, alpha, eps):
        if quantizer is None:
            quantizer = Quantizer.ternary()
        if not isinstance(quantizer, Quantizer):
            raise TypeError(f"anacuda.nn: quantizer must be an anacuda.Quantizer, got {type(quantizer).__name__}")
        self.quantizer = quantizer
        self.register_buffer("alpha", as_param(alpha, "alpha", "unit", stored=True).detach().float().reshape(()).clone())
        self._setup_eps(eps)

    def quantized_weight(self) -> torch.Tensor:
        if not self.training:  # deployed: fully quantised
            return F.alpha_blend(self.weight, self.quantizer, 1.0, self.weight_eps())
        return F.alpha_blend(self.weight, self.quantizer, self.alpha, self.weight_eps())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, quantizer={self.quantizer}, alpha={self.alpha.item():.4g}, {self._eps_repr()}"


def _ana_kwargs(quantizer, noise, strategy, mu, sigma, eps, backward_noise, init):
    return dict(quantizer=quantizer, noise=noise, strategy=strategy, mu=mu, sigma=sigma, eps=eps,
                backward_noise=backward_noise, init=init)


class ANALinear(ANAWeight, nn.Linear):
    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *, quantizer: Quantizer = None,
                 noise="uniform", strategy="mode", mu: Param = 0.0, sigma: Param = 0.5, eps="max_abs_per_channel",
                 backward_noise=None, init=None):
        nn.Linear.__init__(self, in_features, out_features, bias, device, dtype)
        self._setup_ana(quantizer, noise, strategy, mu, sigma, eps, backward_noise, init)

    def forward(self, x):
        return nn.functional.linear(x, self.quantized_weight(), self.bias)


def _conv_class(base, prefix):
    class Conv(ANAWeight if prefix == "ANA" else AlphaBlendWeight, base):
        if prefix == "ANA":
            def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                         bias=True, padding_mode="zeros", device=None, dtype=None, *, quantizer: Quantizer = None,
                         noise="uniform", strategy="mode", mu: Param = 0.0, sigma: Param = 0.5,
                         eps="max_abs_per_channel", backward_noise=None, init=None):
                base.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                              padding_mode, device, dtype)
                self._setup_ana(quantizer, noise, strategy, mu, sigma, eps, backward_noise, init)
        else:
            def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                         bias=True, padding_mode="zeros", device=None, dtype=None, *, quantizer: Quantizer = None,
                         alpha: Param = 0.0, eps="max_abs_per_channel"):
                base.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                              padding_mode, device, dtype)
                self._setup_blend(quantizer, alpha, eps)

        def forward(self, x):
            return self._conv_forward(x, self.quantized_weight(), self.bias)

    Conv.__name__ = Conv.__qualname__ = f"{prefix}{base.__name__}"
    Conv.__doc__ = f"Drop-in torch.nn.{base.__name__} with {'ANA' if prefix == 'ANA' else 'alpha-blended'} weights."
    return Conv


ANAConv1d = _conv_class(nn.Conv1d, "ANA")
ANAConv2d = _conv_class(nn.Conv2d, "ANA")
ANAConv3d = _conv_class(nn.Conv3d, "ANA")
AlphaBlendConv1d = _conv_class(nn.Conv1d, "AlphaBlend")
AlphaBlendConv2d = _conv_class(nn.Conv2d, "AlphaBlend")
AlphaBlendConv3d = _conv_class(nn.Conv3d, "AlphaBlend")


class AlphaBlendLinear(AlphaBlendWeight, nn.Linear):
    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *, quantizer: Quantizer = None,
                 alpha: Param = 0.0, eps="max_abs_per_channel"):
        nn.Linear.__init__(self, in_features, out_features, bias, device, dtype)
        self._setup_blend(quantizer, alpha, eps)

    def forward(self, x):
        return nn.functional.linear(x, self.quantized_weight(), self.bias)
