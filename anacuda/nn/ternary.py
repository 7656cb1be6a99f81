"""Ternary Linear layers for transformers: BitNet b1.58's BitLinear, and the same layer trained
with ANA.

TernaryLinear: ternary weights with a dynamic absmean scale (one per tensor by default, one per
output channel as an option) or a learned one (LearnedScaleANA, SPEC §8), 8-bit activations
with a dynamic absmax scale per token on its input, and an optional RMSNorm in front (BitNet's
SubLN). Both quantisers are DynamicScaleANA modules: ANA with any noise and strategy (SPEC §4,
§5), μ and σ kept as buffers that a NoiseController anneals, and the scale computed by the op
from the input in the same call (``anacuda.functional.ana(x, ..., eps=rule)``, SPEC §9).
BitLinear: BitNet b1.58's recipe — the hard forward (σ = 0) with the unclipped STE (the op's
``backward_noise="identity"``, SPEC §5).
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch
from torch import nn

from .. import functional as F
from ..config import ANAConfig
from ..quantizer import IDENTITY, SCALE_FLOOR, Param, Quantizer, grid_reach
from ..quantizer import SCALE_RULES as _RULES
from .activation import NoiseHyperParams
from .learned_scale import effective_eps, floored, lsq_init

#: The rules of SPEC §9 (channel = dim 0): eps = max(r(|x|), SCALE_FLOOR) / c; anacuda.quantizer's.
SCALE_RULES = tuple(_RULES)
#: A weight's learned scale (SPEC §8), one per tensor or per output channel: LearnedScaleANA.
LEARNED_SCALES = ("learned", "learned_per_channel")


def _check_rule(rule) -> str:
    if rule not in SCALE_RULES:
        raise ValueError(f"anacuda.nn: the scale rule must be one of {SCALE_RULES}, got {rule!r}")
    return rule


class DynamicScaleANA(NoiseHyperParams):
    """y = eps · g(x / eps) with ANA (SPEC §4, §5), eps computed from x by `rule` on every call
    (SPEC §9; no gradient through it). backward_noise: as in anacuda.functional.ana, or
    "identity" for the unclipped STE (the gradient passes unchanged; SPEC §5). Defaults: 8-bit
    signed levels −128 … 127, uniform noise σ = 0.5, strategy mode (rounding, with the clipped STE
    on [−128, 127) as gradient). Not training, or σ = 0: the hard stair.

    A group (row, tensor or channel) that holds a NaN or an infinity has no finite scale; its
    output is NaN, as in BitNet's code. An all-zero group quantises to 0.

    ``blend=True``: the λ warm-up of Hugging Face's 1.58-bit fine-tuning (huggingface/blog#2339),
    ``y = x + α (q − x)`` with q the quantiser's output and α = λ a buffer (0 at first) that an
    ``AlphaController`` ramps to 1 while training; in eval mode, q (α = 1). With the identity
    backward the gradient is 1, as in the blog's ``x + λ (q − x).detach()``; otherwise
    1 − α + α · the quantiser's.
    """

    def __init__(self, rule: str = "absmax_per_token", quantizer: Optional[Quantizer] = None, noise: str = "uniform",
                 strategy: str = "mode", mu: Param = 0.0, sigma: Param = 0.5, backward_noise=None, blend: bool = False):
        super().__init__()
        if not isinstance(blend, bool):
            raise TypeError(f"anacuda.DynamicScaleANA: blend must be a bool, got {type(blend).__name__}")
        self.blend = blend
        if blend:
            self.register_buffer("alpha", torch.tensor(0.0))
        self.rule = _check_rule(rule)
        # "identity" is kept out of the buffers (it has no μ_b, σ_b) and handed to the op by name.
        self.identity_backward = isinstance(backward_noise, str) and backward_noise == IDENTITY
        self._setup_noise(ANAConfig(Quantizer.uniform(8, signed=True) if quantizer is None else quantizer, noise,
                                    strategy, mu, sigma,
                                    backward_noise=None if self.identity_backward else backward_noise))
        grid_reach(self.quantizer)  # a grid with no level above 0 has no scale: fail now, not in forward

    def _note_sigma(self, sigma, name=None) -> None:
        super()._note_sigma(sigma, name)
        self._no_gradient = self._no_gradient and not self.identity_backward  # identity: always a gradient

    def _needed_dims(self) -> int:
        return 2 if self.rule == "absmax_per_token" else (1 if self.rule.endswith("_per_channel") else 0)

    def scale(self, x: torch.Tensor):
        """The eps of this forward: the rule, computed by the op from x."""
        return self.rule

    @torch.no_grad()
    def eval_scale(self, x: torch.Tensor) -> torch.Tensor:
        """The eps of the eval forward on x, as a tensor (for freeze)."""
        return torch.ops.anacuda._dynamic_eps(x.detach(), self.rule, grid_reach(self.quantizer), SCALE_FLOOR)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"anacuda.DynamicScaleANA: x must be a tensor, got {type(x).__name__}")
        need = self._needed_dims()
        if x.dim() < need:
            what = "tokens and features, shape (..., tokens, features)" if need == 2 else "a channel dimension"
            raise ValueError(f"anacuda.DynamicScaleANA: the scale rule {self.rule!r} needs {what}; got a "
                             f"{x.dim()}-d input of shape {tuple(x.shape)}")
        if not self.blend:
            self._warn_if_no_gradient(x.requires_grad, "what comes before it gets no gradient through it")
        q = F.ana(x, self.quantizer, self.noise, self.mu, self.sigma, self.strategy, self.training, self.scale(x),
                  IDENTITY if self.identity_backward else self._backward_noise())
        if self.blend and self.training:
            return x + self.alpha.to(x.dtype) * (q - x)
        return q

    def extra_repr(self) -> str:
        s = f"rule={self.rule}, {self._noise_repr()}"
        s += ", backward_noise=identity" if self.identity_backward else ""
        return s + (f", blend alpha={self.alpha.item():.4g}" if self.blend else "")


class LearnedScaleANA(DynamicScaleANA):
    """DynamicScaleANA with a learned eps (SPEC §8) for a weight: an nn.Parameter of one value
    (``per_channel=False``; shape (1,), as FSDP2 takes no 0-d parameter) or one per output
    channel (dim 0, shape (C, 1, ...)), initialised as LSQ does, 2 mean|w| / sqrt(q_K), from
    `weight` when it is built (``init_scale(w)`` redoes it: convert does so once it has handed the
    layer the model's own weight), trained with LSQ's gradient scale 1 / sqrt(N q_K)
    (``eps_grad_scale``) and kept positive by a floor that passes the gradient
    (anacuda/nn/learned_scale.py). Initialised outside the forward, so that FSDP2, which gathers
    parameters for a forward and drops what the forward writes to them, keeps it."""

    def __init__(self, weight: torch.Tensor, per_channel: bool = False, quantizer: Optional[Quantizer] = None,
                 noise: str = "uniform", strategy: str = "mode", mu: Param = 0.0, sigma: Param = 0.5,
                 backward_noise=None, blend: bool = False):
        super().__init__("absmean_per_channel" if per_channel else "absmean", quantizer, noise, strategy, mu, sigma,
                         backward_noise, blend)
        self.rule = LEARNED_SCALES[1] if per_channel else LEARNED_SCALES[0]
        self.per_channel = per_channel
        shape = (weight.shape[0],) + (1,) * (weight.dim() - 1) if per_channel else (1,)
        self.eps = nn.Parameter(torch.empty(shape, device=weight.device))
        self.eps_grad_scale = True
        self.init_scale(weight)

    @torch.no_grad()
    def init_scale(self, w: torch.Tensor) -> None:
        """LSQ's initialisation from the weight w."""
        self.eps.copy_(lsq_init(w, self.quantizer, per_channel=self.per_channel).reshape(self.eps.shape))

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        shared = w.numel() // max(1, self.eps.numel())
        return effective_eps(self.eps, shared, self.quantizer, self.eps_grad_scale)

    @torch.no_grad()
    def eval_scale(self, w: torch.Tensor) -> torch.Tensor:
        return floored(self.eps.detach())


def _check_features(n, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"anacuda.TernaryLinear: {name} must be an integer >= 1, got {n!r}")
    return int(n)


def _or(value, default):
    return default if value is None else value


class TernaryLinear(nn.Linear):
    """Drop-in torch.nn.Linear with ternary weights and 8-bit per-token activations on its input
    (BitNet b1.58's layer), trained with ANA.

    y = linear(A(norm(x)), W(weight), bias), where
    - norm: ``torch.nn.RMSNorm(in_features)`` when ``norm=True`` (BitNet's SubLN), else none;
    - A = ``self.input_quant``: DynamicScaleANA on a signed `activation_bits` grid (−128 … 127),
      eps = max|x| / 127 per token (the last dimension); ``activation_bits=None``: no A;
    - W = ``self.weight_quant``: DynamicScaleANA on the ternary grid {−1, 0, 1} with
      `weight_scale` "absmean" (eps = mean|W|, BitNet's), "absmean_per_channel" (per output
      channel), "absmax" or "absmax_per_channel"; or a LearnedScaleANA with "learned" (one
      learned eps, LSQ's) or "learned_per_channel" (one per output channel).

    noise, strategy, mu, sigma, backward_noise configure both quantisers (as anacuda.functional.ana;
    backward_noise may also be "identity", the unclipped STE); the ``activation_*`` arguments
    override them for the input's quantiser. Training with σ > 0 smooths the stairs; eval mode or
    σ = 0 gives the hard ternary / 8-bit network.

    Annealing: σ and μ are buffers of the two quantisers (``weight_quant.sigma``,
    ``input_quant.sigma``); ``anacuda.NoiseController(model, steps=T, groups="blocks")`` finds
    them and anneals one group per transformer block (leaving out hard quantisers at σ = μ = 0).
    A group has one start σ: quantisers with different σ in one group are refused.

    The input needs a token dimension: shape (..., tokens, in_features); a 0-d or 1-d input is
    refused. ``freeze`` makes it a ``FrozenTernaryLinear`` (packed trits, the eval forward's eps,
    the norm, a ``HardTokenQuantizer`` for the input): equal to this layer in eval mode.

    ``blend=True`` phases both quantisers in with the λ warm-up of Hugging Face's 1.58-bit
    fine-tuning (``x + λ (q − x)``, λ = α of an ``anacuda.AlphaController``; see DynamicScaleANA).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 noise: str = "uniform", strategy: str = "mode", mu: Param = 0.0, sigma: Param = 0.5,
                 backward_noise=None, weight_scale: str = "absmean", activation_bits: Optional[int] = 8,
                 activation_noise: Optional[str] = None, activation_strategy: Optional[str] = None,
                 activation_mu: Optional[Param] = None, activation_sigma: Optional[Param] = None,
                 activation_backward_noise=None, norm: bool = False, blend: bool = False):
        _check_features(in_features, "in_features")
        _check_features(out_features, "out_features")
        if weight_scale not in (*SCALE_RULES, *LEARNED_SCALES) or weight_scale == "absmax_per_token":
            raise ValueError("anacuda.TernaryLinear: weight_scale must be 'absmean', 'absmean_per_channel', 'absmax', "
                             f"'absmax_per_channel', 'learned' or 'learned_per_channel', got {weight_scale!r}")
        if activation_bits is not None and (isinstance(activation_bits, bool) or
                                            not isinstance(activation_bits, numbers.Integral) or
                                            not 2 <= activation_bits <= 16):
            raise ValueError(f"anacuda.TernaryLinear: activation_bits must be an integer in [2, 16] or None, "
                             f"got {activation_bits!r}")
        if not isinstance(norm, bool):
            raise TypeError(f"anacuda.TernaryLinear: norm must be a bool, got {type(norm).__name__}")
        super().__init__(in_features, out_features, bias, device, dtype)
        self.norm = nn.RMSNorm(in_features, device=device, dtype=dtype) if norm else None
        self.input_quant = None if activation_bits is None else DynamicScaleANA(
            "absmax_per_token", Quantizer.uniform(int(activation_bits), signed=True), _or(activation_noise, noise),
            _or(activation_strategy, strategy), _or(activation_mu, mu), _or(activation_sigma, sigma),
            _or(activation_backward_noise, backward_noise), blend)
        if weight_scale in LEARNED_SCALES:
            self.weight_quant = LearnedScaleANA(self.weight, weight_scale == LEARNED_SCALES[1], Quantizer.ternary(),
                                                noise, strategy, mu, sigma, backward_noise, blend)
        else:
            self.weight_quant = DynamicScaleANA(weight_scale, Quantizer.ternary(), noise, strategy, mu, sigma,
                                                backward_noise, blend)
        if device is not None:
            self.to(device)  # the quantisers' buffers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"anacuda.TernaryLinear: x must be a tensor, got {type(x).__name__}")
        if x.dim() < 2 or x.shape[-1] != self.in_features:
            raise ValueError(f"anacuda.TernaryLinear: the input must have shape (..., tokens, {self.in_features}) "
                             f"(a token dimension and in_features = {self.in_features}), got {tuple(x.shape)}")
        if self.norm is not None:
            x = self.norm(x)
        if self.input_quant is not None:
            x = self.input_quant(x)
        return nn.functional.linear(x, self.weight_quant(self.weight), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_scale={self.weight_quant.rule}"


class BitLinear(TernaryLinear):
    """BitNet b1.58's BitLinear ("The Era of 1-bit LLMs: Training Tips, Code and FAQ"): RMSNorm,
    8-bit per-token absmax activations, ternary absmean weights, the hard forward (σ = 0) and
    the unclipped straight-through estimator for both; no bias by default. The same layer as
    TernaryLinear(..., sigma=0, backward_noise="identity", norm=True, bias=False), so that it and
    ANA are compared on equal terms. ``blend=True``: with Hugging Face's λ warm-up (AlphaController)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None, dtype=None, *,
                 norm: bool = True, weight_scale: str = "absmean", activation_bits: Optional[int] = 8,
                 blend: bool = False):
        super().__init__(in_features, out_features, bias, device, dtype, sigma=0.0, backward_noise=IDENTITY,
                         weight_scale=weight_scale, activation_bits=activation_bits, norm=norm, blend=blend)
