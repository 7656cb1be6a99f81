"""Drop-in quantised Linear and Conv layers.

ANALinear / ANAConv{1,2,3}d: the weight goes through ANA on every forward (smoothed while
training, the hard stair in eval mode). AlphaBlendLinear / AlphaBlendConv{1,2,3}d: the weight
is alpha-blended, α·eps·Q(w/eps) + (1 − α)·w (SPEC §6). Constructors take the torch.nn
arguments plus the quantisation keywords (for the ANA layers: an ANAConfig's fields, or
``config=``); the forward is torch.nn's with the quantised weight.

Weight scale `eps`: a number or tensor broadcastable to the weight (fixed, a buffer), the name
of a rule of ``anacuda.scale.WEIGHT_RULES`` recomputed from the weight on every forward (no
gradient through it; default ``scale.DEFAULT_WEIGHT_RULE``, docs/scales.md says why), or
"learned": an nn.Parameter per output channel, initialised as LSQ does (2 mean|w| / sqrt(q_K);
`init_scale()` redoes it from the current weight), trained with LSQ's gradient scale
1 / sqrt(N q_K) (`layer.eps_grad_scale = False` turns it off) and kept positive by a floor
(anacuda/nn/learned_scale.py says why).
The weight quantiser's levels must not decrease: freeze stores each weight as its level's index.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import functional as F
from .. import scale
from ..config import ANAConfig
from ..quantizer import Param, Quantizer, as_param
from .activation import NoiseHyperParams
from .learned_scale import effective_eps, lsq_init


def check_weight_args(quantizer, eps):
    """A weight layer's quantiser (default ternary; levels must not decrease) and eps (None: the
    default rule; a rule the quantiser can take; "learned"; or a positive number or tensor), checked for
    any weight shape. Returns (quantizer, eps)."""
    if quantizer is None:
        quantizer = Quantizer.ternary()
    if not isinstance(quantizer, Quantizer):
        raise TypeError(f"anacuda.nn: quantizer must be an anacuda.Quantizer, got {type(quantizer).__name__}")
    lv = quantizer._levels
    if bool((lv[1:] < lv[:-1]).any()):
        raise ValueError(f"anacuda.nn: a weight quantizer's levels must not decrease (freeze stores each weight as "
                         f"the index of its level), got levels {lv.tolist()}")
    if eps is None:
        eps = scale.DEFAULT_WEIGHT_RULE
    if isinstance(eps, str):
        if scale.check_weight_rule(eps, learned=True) != scale.LEARNED:
            scale.weight_scale(torch.ones(1, 1), quantizer, eps)  # a rule the quantiser cannot take
    else:
        eps = as_param(eps, "eps", "positive", scalar=False, stored=True)
    return quantizer, eps


class _WeightScale:
    """The weight's eps: a fixed buffer or a rule applied to the current weight."""

    def _setup_weight_quantisation(self, quantizer, eps):
        self.quantizer, eps = check_weight_args(quantizer, eps)
        if isinstance(eps, str):
            self.eps_mode = eps
            if eps == scale.LEARNED:  # SPEC §8: one value per output channel
                self.eps_grad_scale = True
                self.eps = nn.Parameter(lsq_init(self.weight, self.quantizer, per_channel=True))
            else:
                self.register_buffer("eps", None)
            return
        self.eps_mode = None
        eps_t = eps.detach().float().clone()
        w = tuple(self.weight.shape)
        try:
            fits = torch.broadcast_shapes(eps_t.shape, w) == w
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"anacuda.nn: eps of shape {tuple(eps_t.shape)} does not broadcast to the weight's shape "
                             f"{w} (one eps per output channel has shape {(w[0],) + (1,) * (len(w) - 1)})")
        self.register_buffer("eps", eps_t)

    def weight_eps(self) -> torch.Tensor:
        if self.eps_mode is None:
            return self.eps
        if self.eps_mode == scale.LEARNED:
            return effective_eps(self.eps, self.weight[0].numel(), self.quantizer, self.eps_grad_scale)
        return scale.weight_scale(self.weight, self.quantizer, self.eps_mode)

    @torch.no_grad()
    def init_scale(self):
        """A learned eps: LSQ's initialisation from the current weight."""
        if self.eps_mode != scale.LEARNED:
            raise ValueError(f"anacuda.nn: init_scale needs weight eps 'learned', got {self.eps_mode or 'a fixed eps'}")
        self.eps.copy_(lsq_init(self.weight, self.quantizer, per_channel=True))

    def _eps_repr(self) -> str:
        if self.eps_mode is not None:
            return f"eps={self.eps_mode}"
        return f"eps={self.eps.item():.4g}" if self.eps.numel() == 1 else f"eps=tensor{tuple(self.eps.shape)}"


class ANAWeight(_WeightScale, NoiseHyperParams):
    """Mixin: ANA on the weight of a torch.nn Linear/Conv."""

    def _setup_ana(self, config: ANAConfig, init):
        self._setup_weight_quantisation(config.quantizer, config.eps)
        self._setup_noise(config)
        if init == "thresholds":
            self.init_near_thresholds()
        elif init is not None:
            raise ValueError(f"anacuda.nn: init must be None or 'thresholds', got {init!r}")

    def quantized_weight(self) -> torch.Tensor:
        self._warn_if_no_gradient(self.weight.requires_grad, "its weight gets a zero gradient and stops learning")
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
        self._setup_weight_quantisation(quantizer, eps)
        self.register_buffer("alpha", as_param(alpha, "alpha", "unit", stored=True).detach().float().reshape(()).clone())

    def quantized_weight(self) -> torch.Tensor:
        if not self.training:  # deployed: fully quantised
            return F.alpha_blend(self.weight, self.quantizer, 1.0, self.weight_eps())
        return F.alpha_blend(self.weight, self.quantizer, self.alpha, self.weight_eps())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, quantizer={self.quantizer}, alpha={self.alpha.item():.4g}, {self._eps_repr()}"


def _config(cls_name, config, **given) -> ANAConfig:
    return ANAConfig.build(config, f"anacuda.nn.{cls_name}", **given)


class ANALinear(ANAWeight, nn.Linear):
    """Drop-in torch.nn.Linear with ANA weights. Quantisation keywords: an ANAConfig's fields
    (defaults: ternary, uniform noise σ = 0.5, mode, eps ``scale.DEFAULT_WEIGHT_RULE``), or
    ``config=``; `init="thresholds"` starts every weight near a threshold (needs a numeric eps)."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *, quantizer: Quantizer = None,
                 noise: str = None, strategy: str = None, mu: Param = None, sigma: Param = None, eps=None,
                 backward_noise=None, init=None, config: ANAConfig = None):
        cfg = _config("ANALinear", config, quantizer=quantizer, noise=noise, strategy=strategy, mu=mu, sigma=sigma,
                      eps=eps, backward_noise=backward_noise)
        nn.Linear.__init__(self, in_features, out_features, bias, device, dtype)
        self._setup_ana(cfg, init)

    def forward(self, x):
        return nn.functional.linear(x, self.quantized_weight(), self.bias)


def _conv_class(base, prefix):
    class Conv(ANAWeight if prefix == "ANA" else AlphaBlendWeight, base):
        if prefix == "ANA":
            def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                         bias=True, padding_mode="zeros", device=None, dtype=None, *, quantizer: Quantizer = None,
                         noise: str = None, strategy: str = None, mu: Param = None, sigma: Param = None, eps=None,
                         backward_noise=None, init=None, config: ANAConfig = None):
                cfg = _config(f"ANA{base.__name__}", config, quantizer=quantizer, noise=noise, strategy=strategy,
                              mu=mu, sigma=sigma, eps=eps, backward_noise=backward_noise)
                base.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                              padding_mode, device, dtype)
                self._setup_ana(cfg, init)
        else:
            def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                         bias=True, padding_mode="zeros", device=None, dtype=None, *, quantizer: Quantizer = None,
                         alpha: Param = 0.0, eps=None):
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
                 alpha: Param = 0.0, eps=None):
        nn.Linear.__init__(self, in_features, out_features, bias, device, dtype)
        self._setup_blend(quantizer, alpha, eps)

    def forward(self, x):
        return nn.functional.linear(x, self.quantized_weight(), self.bias)
