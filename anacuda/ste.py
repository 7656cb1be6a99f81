"""Straight-through estimators and their relatives as presets of the ANA op (SPEC §5).

Every estimator here is one frozen choice of (quantiser, noise, σ, strategy, backward noise) for
:func:`anacuda.functional.ana` — an :class:`anacuda.ANAConfig`, which the layers and ``convert``
take as it is; nothing is re-implemented. ``tests/test_ste.py`` checks each preset against the
published formula it reproduces.

Presets, what they reproduce, and whether exactly:

- ``clipped_ste(q)``: the clipped STE, ``torch.fake_quantize_per_tensor_affine``. Exact except at
  ties (round half to even vs up) and on the half step beyond the range (torch's mask).
- ``ste_sign()``: Larq ``ste_sign`` (BinaryNet). Exact except the gradient at x = +1.
- ``approx_sign()``: ApproxSign of Bi-Real Net (Larq ``approx_sign``). Exact.
- ``stochastic_rounding(q)``: stochastic rounding. Exact in distribution.
- ``dsq_like(q, σ)``: a DSQ-style tanh soft stair. Approximate (not DSQ's parametrisation).
- ``gaussian_smoothing(q, σ)``: the probit soft stair. Exact (by definition).
- ``ana2019(q, σ)``: ANA 2019 (arXiv 1905.10452), forward σ annealed, backward fixed. Exact.
- ``hardtanh_ste()``: clamp forward, clipped gradient. Exact except the gradient at x = ±1.
- ``lsq(q)``: LSQ (learned step size), the clipped STE with a learned eps. Exact except at ties,
  u = q_K and PyTorch's half steps beyond the range.

SwishSign (BNN+) is not a special case: its gradient goes negative, an ANA gradient never does.

Usage::

    from anacuda import ste
    est = ste.approx_sign()
    y = est(x)                              # sign forward, 2 - 2|x| backward
    y = F.ana(x, **est.kwargs())            # the same call, spelled out
    est = ste.ana2019(sigma=0.3)            # anneal: ste.ana2019(sigma=s) or est.with_sigma(s)

The conventions that make the presets exact (SPEC §1, §3): an input on a threshold goes to the
upper level, and the uniform density is a half-open box ``[-σ, σ)``, so neighbouring boxes tile
without overlap. A clipped-STE gradient is therefore 1 on the half-open range ``[q_0, q_K)``
(in units of eps), where the libraries that write ``|x| <= 1`` use a closed one.

These hold down to the last bit, kernel and reference alike: in ``mode`` a tiny negative input
next to a threshold at 0 keeps the lower level (ste_sign of u = -1e-17 is -1), and the uniform
boxes tile just below 0 too (gradient 1 at u = -2^-54); tests/test_ste.py asserts both.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .config import ANAConfig
from .quantizer import Noise, Param, Quantizer, as_param

__all__ = [
    "Estimator",
    "clipped_ste",
    "ste_sign",
    "approx_sign",
    "stochastic_rounding",
    "dsq_like",
    "gaussian_smoothing",
    "ana2019",
    "hardtanh_ste",
    "lsq",
    "PRESETS",
]


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Estimator(ANAConfig):
    """A named STE preset: an :class:`anacuda.ANAConfig` (quantizer, noise, mu, sigma, strategy,
    backward_noise; eps left to the caller) with its provenance, validated once by ANAConfig.

    name: the preset's name. source: the estimator of the literature it reproduces and the
    formula that the tests check. exact: whether the preset reproduces that estimator exactly
    (``notes`` says where and why not). backward_noise: None (the forward noise, the CVPR 2022
    algorithm) or a :class:`anacuda.Noise`.

    Calling it runs the fused op: ``est(x, eps=1.0, training=True, generator=None)``.
    ``est.kwargs()`` gives the keyword arguments of :func:`anacuda.functional.ana` (quantizer
    included) for ``F.ana(x, **est.kwargs())``; a layer or ``convert`` takes the preset itself
    (``ANAActivation(config=est)``). The dataclass is frozen; a new σ (annealing) is
    ``est.with_sigma(s)``.
    """

    name: str
    source: str
    exact: bool
    notes: str = ""

    def __repr__(self) -> str:
        back = "" if self.backward_noise is None else f", backward_noise={tuple(self.backward_noise)!r}"
        return (
            f"Estimator({self.name!r}: {self.quantizer!r}, noise={self.noise!r}, mu={_show(self.mu)}, "
            f"sigma={_show(self.sigma)}, strategy={self.strategy!r}{back}, exact={self.exact})"
        )


def _show(v: Param) -> str:
    if isinstance(v, torch.Tensor):
        return f"tensor({v.item():g})" if v.device.type == "cpu" else f"tensor(on {v.device})"
    return f"{v:g}"


def _check_quantizer(quantizer, preset: str) -> Quantizer:
    if not isinstance(quantizer, Quantizer):
        raise TypeError(f"anacuda.ste.{preset}: quantizer must be an anacuda.Quantizer, got {quantizer!r}")
    return quantizer


def _check_sigma(sigma, preset: str) -> Param:
    as_param(sigma, f"ste.{preset}: sigma", "nonnegative")
    return sigma


def _check_unit_grid(quantizer, preset: str, why: str) -> Quantizer:
    """Levels equally spaced by exactly 1 (in units of eps) with every threshold halfway between
    its two levels, i.e. ``Quantizer.uniform(...)`` or a shift of it."""
    _check_quantizer(quantizer, preset)
    lv, th = quantizer.levels, quantizer.thresholds
    steps = lv[1:] - lv[:-1]
    mids = (lv[1:] + lv[:-1]) / 2
    if not bool(((steps - 1).abs() <= 1e-9).all()):
        raise ValueError(
            f"anacuda.ste.{preset}: the quantiser must have levels spaced by exactly 1 (in units of eps), "
            f"got level steps {steps.tolist()}; {why}. For a grid with another step, scale eps instead "
            "(levels -2, 0, 2 with eps e are levels -1, 0, 1 with eps 2e); for binary use ste_sign()."
        )
    if not bool(((th - mids).abs() <= 1e-9).all()):
        raise ValueError(
            f"anacuda.ste.{preset}: every threshold must lie halfway between its two levels (a uniform grid), "
            f"got thresholds {th.tolist()} for levels {lv.tolist()}; {why}."
        )
    return quantizer


# --- the presets --------------------------------------------------------------------------------
def clipped_ste(quantizer: Quantizer) -> Estimator:
    """The clipped straight-through estimator of a uniform grid: uniform noise σ = 0.5, mode.

    Forward: the hard stair (round to the nearest level, clamp to [q_0, q_K]); the probabilities
    of the levels under a half-step box are 1 − |t|, |t| for an input t away from its nearest
    level, so the most likely level is the nearest one. Backward: Σ Δq_i · 1[−½ ≤ u − θ_i < ½]
    = 1 on the half-open range [q_0, q_K) (the boxes of neighbouring thresholds tile it), 0
    elsewhere.

    Against ``torch.fake_quantize_per_tensor_affine(x, scale, 0, qmin, qmax)`` (levels
    qmin … qmax, ``eps = scale``) the forward and the gradient are equal except at two kinds of
    places, both in units of scale:

    - ties u = k + ½: torch rounds half to even, anacuda to the upper level (SPEC §1), so the
      forward differs where k is even (u = 0.5 gives torch 0, anacuda 1; u = −0.5 gives 0 in both);
    - the half step beyond the range: torch's mask keeps the gradient where the *rounded* input
      is in [qmin, qmax], i.e. on [qmin − ½, qmax + ½) (half to even, for the signed grids), while
      anacuda's is 1 on [qmin, qmax); on [qmin − ½, qmin) and [qmax, qmax + ½) torch's gradient
      is 1 and anacuda's 0 (the forward agrees there: both clamp).

    Also: torch keeps the scale in float32 even for float64 inputs.

    The quantiser must be a unit-step grid with midpoint thresholds (``Quantizer.uniform(nbits,
    signed, balanced)`` or a shift of it); anything else is rejected, since with σ = 0.5 the
    boxes would overlap or leave gaps and the gradient would not be 1.
    """
    _check_unit_grid(
        quantizer,
        "clipped_ste",
        "the clipped STE is uniform noise of half a step, whose boxes tile the range only on such a grid",
    )
    return Estimator(
        name="clipped_ste",
        quantizer=quantizer,
        noise="uniform",
        mu=0.0,
        sigma=0.5,
        strategy="mode",
        backward_noise=None,
        source=(
            "clipped STE (Bengio et al. 2013; Hubara et al. 2016); torch.fake_quantize_per_tensor_affine: "
            "forward clamp(round(u), qmin, qmax), gradient 1 inside the range"
        ),
        exact=True,
        notes=(
            "differs from torch.fake_quantize at ties u = k + 1/2 with k even (torch rounds half to even, anacuda up) "
            "and on the half step beyond the range, [qmin - 1/2, qmin) and [qmax, qmax + 1/2), where torch's mask "
            "passes the gradient and anacuda's half-open box [q_0, q_K) does not"
        ),
    )


def ste_sign() -> Estimator:
    """Larq's ``ste_sign`` (BinaryNet, Hubara et al. 2016): binary levels ±1, uniform noise σ = 1,
    mode.

    Forward: sign(u) with sign(0) = +1 (the upper level wins the tie at u = 0). Backward:
    2 · 1/(2σ) = 1 on [−1, 1), 0 elsewhere. Larq writes ``|x| <= 1``: the single point u = +1
    differs (Larq 1, anacuda 0; SPEC §3's half-open box).
    """
    return Estimator(
        name="ste_sign",
        quantizer=Quantizer.binary(),
        noise="uniform",
        mu=0.0,
        sigma=1.0,
        strategy="mode",
        backward_noise=None,
        source="Larq ste_sign (Hubara et al. 2016, BinaryNet): forward sign(x), sign(0) = +1; gradient 1 on |x| <= 1",
        exact=True,
        notes="the gradient at x = +1 exactly is 0 (half-open box [-1, 1)), Larq's is 1",
    )


def approx_sign() -> Estimator:
    """ApproxSign of Bi-Real Net (Liu et al. 2018; Larq ``approx_sign``): binary levels ±1,
    triangular noise σ = 1, mode.

    Forward: sign(u) with sign(0) = +1. Backward: 2 · (1 − |u|) = 2 − 2|u| on |u| ≤ 1, 0
    elsewhere (the triangle's density is continuous, so the ends agree too).
    """
    return Estimator(
        name="approx_sign",
        quantizer=Quantizer.binary(),
        noise="triangular",
        mu=0.0,
        sigma=1.0,
        strategy="mode",
        backward_noise=None,
        source=(
            "ApproxSign (Liu et al. 2018, Bi-Real Net; Larq approx_sign): forward sign(x); "
            "gradient 2 - 2|x| on |x| <= 1"
        ),
        exact=True,
    )


def stochastic_rounding(quantizer: Quantizer) -> Estimator:
    """Stochastic rounding on a uniform grid: uniform noise σ = 0.5, random.

    Forward: Q(u + ν), ν ~ U[−½, ½): an input u = k + t between levels k and k + 1 (0 ≤ t < 1)
    goes up with probability t and down with probability 1 − t, so E[y] = u on [q_0, q_K]
    (unbiased; the expectation forward of the same noise, clamp(u, q_0, q_K)) and every sample
    is one of the two neighbouring levels: the distribution of stochastic rounding (Gupta et al.
    2015), though not the same samples as another implementation's random numbers. Backward: the
    clipped STE, 1 on [q_0, q_K).

    The quantiser must be a unit-step grid with midpoint thresholds; otherwise the rounding is
    biased.
    """
    _check_unit_grid(
        quantizer,
        "stochastic_rounding",
        "only there does a half-step uniform noise round up with probability equal to the distance from the level "
        "below",
    )
    return Estimator(
        name="stochastic_rounding",
        quantizer=quantizer,
        noise="uniform",
        mu=0.0,
        sigma=0.5,
        strategy="random",
        backward_noise=None,
        source=(
            "stochastic rounding (Gupta et al. 2015): floor(u) + Bernoulli(u - floor(u)), E[y] = u; "
            "clipped-STE gradient"
        ),
        exact=True,
        notes="exact in distribution (the random numbers are anacuda's Philox stream)",
    )


def dsq_like(quantizer: Quantizer, sigma: Param) -> Estimator:
    """A DSQ-like soft stair: logistic noise of scale σ, expectation.

    Forward: q_0 + Σ Δq_i · sigmoid((u − θ_i)/σ), a sum of sigmoids; for one step of height 2
    (binary) it is exactly tanh(u / (2σ)). Backward: its exact derivative, Σ Δq_i · s(1 − s)/σ.

    Approximate with respect to DSQ (Gong et al. 2019), which puts one scaled tanh in each bin,
    s · tanh(k (u − m_i)), with a learned α setting k and s, and a straight-through gradient once
    quantised; anacuda's soft stair is the sum of sigmoids over all thresholds with σ set by the
    caller (annealed to 0 it becomes the hard stair). The two shapes coincide for a single step.
    """
    _check_quantizer(quantizer, "dsq_like")
    _check_sigma(sigma, "dsq_like")
    return Estimator(
        name="dsq_like",
        quantizer=quantizer,
        noise="logistic",
        mu=0.0,
        sigma=sigma,
        strategy="expectation",
        backward_noise=None,
        source="DSQ-like soft stair (after Gong et al. 2019, DSQ): sum of sigmoids; binary: tanh(x / (2 sigma))",
        exact=False,
        notes="DSQ uses a tanh per bin with a learned alpha; this is the sum of sigmoids (logistic-noise expectation)",
    )


def gaussian_smoothing(quantizer: Quantizer, sigma: Param) -> Estimator:
    """The probit soft stair: normal noise of standard deviation σ, expectation.

    Forward: q_0 + Σ Δq_i · Φ((u − θ_i)/σ); for binary 2Φ(u/σ) − 1 = erf(u / (σ√2)). Backward:
    its exact derivative Σ Δq_i · φ((u − θ_i)/σ)/σ: the stair convolved with a Gaussian.
    """
    _check_quantizer(quantizer, "gaussian_smoothing")
    _check_sigma(sigma, "gaussian_smoothing")
    return Estimator(
        name="gaussian_smoothing",
        quantizer=quantizer,
        noise="normal",
        mu=0.0,
        sigma=sigma,
        strategy="expectation",
        backward_noise=None,
        source="Gaussian smoothing of the stair (ANA, CVPR 2022, normal noise): binary: 2 Phi(x / sigma) - 1",
        exact=True,
    )


def ana2019(quantizer: Optional[Quantizer] = None, sigma: Param = 0.5) -> Estimator:
    """The 2019 ANA algorithm (Spallanzani et al., arXiv 1905.10452): uniform forward noise of
    half-width σ (annealed 0.5 → 0 during training), expectation; the backward noise fixed at
    uniform σ = 0.5.

    Forward: q_0 + Σ Δq_i · clamp((u − θ_i)/(2σ) + ½, 0, 1), the stair smoothed by the current σ
    (the hard stair at σ = 0). Backward: Σ Δq_i · 1[−½ ≤ u − θ_i < ½] whatever the forward σ;
    for ternary, 1 on [−1, 1). Default quantiser: ternary (the paper's weights and activations).
    Anneal with ``ana2019(q, s)`` or ``est.with_sigma(s)``; σ may be a tensor.
    """
    quantizer = Quantizer.ternary() if quantizer is None else _check_quantizer(quantizer, "ana2019")
    _check_sigma(sigma, "ana2019")
    return Estimator(
        name="ana2019",
        quantizer=quantizer,
        noise="uniform",
        mu=0.0,
        sigma=sigma,
        strategy="expectation",
        backward_noise=Noise("uniform", 0.0, 0.5),
        source=(
            "ANA 2019 (Spallanzani et al., arXiv 1905.10452): forward expectation, sigma annealed; "
            "backward uniform 0.5"
        ),
        exact=True,
    )


def hardtanh_ste() -> Estimator:
    """Hardtanh forward with the clipped-STE gradient: ternary levels, uniform noise σ = 0.5,
    expectation.

    Forward: −1 + Σ_{θ=±½} clamp(u − θ + ½, 0, 1) = clamp(u, −1, 1). Backward: 1 on [−1, 1), 0
    elsewhere. The ends are conventions: ``torch.nn.functional.hardtanh`` passes the gradient on
    the open (−1, 1) (at u = −1 torch gives 0, anacuda 1); a clipped identity written
    ``|x| <= 1`` (Larq) on the closed [−1, 1] (at u = +1 it gives 1, anacuda 0).
    """
    return Estimator(
        name="hardtanh_ste",
        quantizer=Quantizer.ternary(),
        noise="uniform",
        mu=0.0,
        sigma=0.5,
        strategy="expectation",
        backward_noise=None,
        source="hardtanh / clipped identity: forward clamp(x, -1, 1), gradient 1 on |x| <= 1",
        exact=True,
        notes="gradient on the half-open [-1, 1): torch's hardtanh uses the open (-1, 1), |x| <= 1 the closed [-1, 1]",
    )


def lsq(quantizer: Quantizer) -> Estimator:
    """LSQ, learned step size quantisation (Esser et al., ICLR 2020): the clipped STE
    (:func:`clipped_ste`) called with a learned eps, ``est(x, eps=s)`` with ``s`` an
    ``nn.Parameter`` (one value, or one per channel, e.g. shape (C, 1, 1, 1)).

    The gradient of eps is SPEC §8's ``g(u) − u·g'_b(u)``: ``round(u) − u`` on ``[q_0, q_K)``,
    ``q_0`` below and ``q_K`` at and above, LSQ's step-size gradient; the input's gradient is the
    clipped STE's. Against PyTorch's ``_fake_quantize_learnable_per_tensor_affine`` /
    ``_per_channel_affine`` (zero point 0, grad_factor 1) both gradients are equal except at ties
    u = k + ½ (half to even vs up), at the single point u = q_K, and on the half steps
    ``[q_0 − ½, q_0)`` and ``[q_K, q_K + ½)``, where PyTorch clips ``round(u)`` rather than u and
    so passes the input's gradient and gives ``round(u) − u`` for the scale.

    LSQ's gradient scale ``1 / sqrt(N · q_K)`` belongs to the layer that owns the parameter
    (SPEC §8), not to this preset. Any other noise with a learned eps is a smoothed LSQ. As σ → 0
    it becomes this one at every u away from the thresholds when its backward noise stays the
    clipped STE's (uniform σ_b = ½, as in :func:`ana2019`); with the backward noise equal to the
    forward one, only on average over each step (docs/lsq_smoothed.png, tests/test_lsq_smoothed.py).
    """
    _check_unit_grid(quantizer, "lsq", "LSQ is the clipped STE with a learned step, defined on such a grid")
    return dataclasses.replace(
        clipped_ste(quantizer),
        name="lsq",
        source=(
            "LSQ (Esser et al., ICLR 2020); torch._fake_quantize_learnable_per_tensor_affine / _per_channel_affine "
            "(zero point 0, grad_factor 1): gradient of the step round(u) - u inside the range, q_0 / q_K outside"
        ),
        notes=(
            "call with a learned eps: est(x, eps=nn.Parameter(...)). Differs from PyTorch's learnable ops at ties "
            "u = k + 1/2 (half to even vs up), at u = q_K, and on the half steps [q_0 - 1/2, q_0) and "
            "[q_K, q_K + 1/2), where PyTorch clips round(u) rather than u"
        ),
    )


#: Preset constructors by name.
PRESETS = {
    "clipped_ste": clipped_ste,
    "ste_sign": ste_sign,
    "approx_sign": approx_sign,
    "stochastic_rounding": stochastic_rounding,
    "dsq_like": dsq_like,
    "gaussian_smoothing": gaussian_smoothing,
    "ana2019": ana2019,
    "hardtanh_ste": hardtanh_ste,
    "lsq": lsq,
}
