"""The benchmark workloads (W1–W5, W7) and the implementations compared on each, in one place.

Used by the pytest-benchmark suite (test_kernels.py) and the table script (run.py). Every
implementation of a workload computes the same forward (run.py checks it before timing) and a
gradient of the same kind; the notes say where a peer's differs.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch

from anacuda import Quantizer
from anacuda import functional as F
from anacuda import reference as R
from anacuda import scale


@dataclass
class Workload:
    name: str
    title: str
    shape: tuple
    dtype: torch.dtype
    spread: float                       # inputs ~ N(0, spread^2)
    impls: Dict[str, Callable]          # name -> fn(x) -> y
    atol: float = 1e-5                  # forward agreement required before timing
    random: bool = False                # outputs are samples: compare means, not values
    notes: Dict[str, str] = field(default_factory=dict)

    def make_input(self, device) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return (torch.randn(self.shape, generator=g) * self.spread).to(device=device, dtype=self.dtype)


def chunked(fn, rows: int = 1 << 16):
    """fn over chunks of the flattened input: the O(K) reference's K-wide temporaries stay small."""
    def run(x):
        flat = x.reshape(-1)
        return torch.cat([fn(c) for c in flat.split(rows)]).reshape(x.shape)
    return run


@functools.lru_cache(maxsize=None)
def compiled(fn):
    return torch.compile(fn, dynamic=False)


# --- W1: ternary, uniform 0.5, mode (the clipped STE) --------------------------------------------
Q3 = Quantizer.ternary()


def w1_anacuda(x):
    return F.ana(x, Q3, "uniform", 0.0, 0.5, "mode")


def w1_reference(x):
    return R.ana(x, Q3, "uniform", 0.0, 0.5, "mode")


def w1_eager_ste(x):
    # Hard ternary forward, gradient 1 inside the range: the usual hand-written clipped STE.
    c = x.clamp(-1.0, 1.0)
    return c + (torch.floor(x + 0.5).clamp(-1.0, 1.0) - c).detach()


def w1_fake_quantize(x):
    # PyTorch's fused clipped STE (round half to even at +-0.5; gradient mask to +-1.5).
    return torch.fake_quantize_per_tensor_affine(x, 1.0, 0, -1, 1)


# --- W2: 8-bit signed grid, normal 0.25, expectation ----------------------------------------------
Q8 = Quantizer.uniform(8)


def w2_anacuda(x):
    return F.ana(x, Q8, "normal", 0.0, 0.25, "expectation")


def w2_reference(x):
    return R.ana(x, Q8, "normal", 0.0, 0.25, "expectation")


def w2_eager_window(x, sigma=0.25, lo=-128, hi=127):
    # The best eager form: only the 4 thresholds within 6 sigma of x (unit grid, thresholds at
    # k + 0.5) instead of all 255; autograd differentiates the normal CDFs.
    k = torch.floor(x).clamp(lo - 2, hi + 1)
    y = torch.clamp(k - 2, lo, hi)  # the thresholds below the window are all on
    for j in (-1, 0, 1, 2):
        th = k + j - 0.5
        inside = (th > lo) & (th < hi)
        y = y + inside * 0.5 * torch.special.erfc(-(x - th) / (sigma * math.sqrt(2)))
    return y


# --- W3: 4-bit signed grid, logistic 0.5, random ---------------------------------------------------
Q4 = Quantizer.uniform(4)


def w3_anacuda(x):
    return F.ana(x, Q4, "logistic", 0.0, 0.5, "random")


def w3_reference(x):
    return R.ana(x, Q4, "logistic", 0.0, 0.5, "random")


class _LogisticRounding(torch.autograd.Function):
    """clamp(floor(x + nu + 0.5)) with logistic nu; gradient: the sum of logistic densities."""

    @staticmethod
    def forward(ctx, x):
        r = torch.rand_like(x).clamp_(1e-7, 1 - 1e-7)
        nu = 0.5 * (torch.log(r) - torch.log1p(-r))
        ctx.save_for_backward(x)
        return torch.floor(x + nu + 0.5).clamp(-8, 7)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        th = torch.arange(-7.5, 7.0, 1.0, device=x.device, dtype=x.dtype)
        s = torch.sigmoid((x.unsqueeze(-1) - th) / 0.5)
        return g * (s * (1 - s)).sum(-1) / 0.5


def w3_eager(x):
    return _LogisticRounding.apply(x)


# --- W4: alpha-blending, 4-bit, per-channel eps, a (256, 256, 3, 3) weight ---------------------------
ALPHA = 0.3


def _eps4(w):
    return scale.max_abs(w, Q4, dim=0)


def w4_anacuda(w):
    return F.alpha_blend(w, Q4, ALPHA, _eps4(w))


def w4_composite(w):
    return R.alpha_blend(w, Q4, ALPHA, _eps4(w))


def w4_fake_quantize(w):
    # PyTorch's per-channel fake quantiser for the quantised term (its gradient detached).
    eps = _eps4(w).reshape(-1).float()
    q = torch.fake_quantize_per_channel_affine(w, eps, torch.zeros_like(eps, dtype=torch.int32), 0, -8, 7)
    return ALPHA * q.detach() + (1 - ALPHA) * w


# --- W6: learned scales (LSQ), fwd + bwd through x and the scale --------------------------------
class LearnedScale:
    """One learned scale (an nn.Parameter) per workload and device, initialised as LSQ does from
    the first input: 2 mean|x| / sqrt(q_K), per channel (dim 0) or per tensor."""

    def __init__(self, qmax: int, per_channel: bool):
        self.qmax, self.per_channel, self.params = qmax, per_channel, {}

    def __call__(self, x):
        p = self.params.get(x.device)
        if p is None:
            a = x.detach().float().abs()
            m = a.mean(dim=tuple(range(1, x.dim())), keepdim=True) if self.per_channel else a.mean()
            p = self.params[x.device] = torch.nn.Parameter(2 * m / math.sqrt(self.qmax))
        return p


def lsq_composite(x, s, qmin, qmax):
    """LSQ as its paper's code writes it (Esser et al. 2020): clamp, round with a straight-through
    gradient, rescale; autograd gives the step-size gradient round(u) - u inside, qmin/qmax outside."""
    u = (x / s).clamp(qmin, qmax)
    return (u + (u.round() - u).detach()) * s


W6A_SCALE, W6B_SCALE = LearnedScale(7, per_channel=True), LearnedScale(127, per_channel=False)


def w6a_anacuda(w):
    return F.ana(w, Q4, "uniform", 0.0, 0.5, "mode", eps=W6A_SCALE(w))  # = anacuda.ste.lsq(Q4)


def w6a_learnable(w):
    s = W6A_SCALE(w)
    return torch._fake_quantize_learnable_per_channel_affine(w, s.reshape(-1), torch.zeros(s.numel(), device=w.device),
                                                             0, -8, 7, 1.0)


def w6a_composite(w):
    return lsq_composite(w, W6A_SCALE(w), -8, 7)


def w6b_anacuda(x):
    return F.ana(x, Q8, "uniform", 0.0, 0.5, "mode", eps=W6B_SCALE(x))


def w6b_learnable(x):
    s = W6B_SCALE(x)
    return torch._fake_quantize_learnable_per_tensor_affine(x, s.reshape(1), torch.zeros(1, device=x.device),
                                                            -128, 127, 1.0)


def w6b_composite(x):
    return lsq_composite(x, W6B_SCALE(x), -128, 127)
# --- W7: BitNet b1.58's 8-bit per-token absmax activation quantiser with its STE, (8192, 1024) -------
def w7_anacuda(x):
    return F.ana(x, Q8, "uniform", 0.0, 0.0, "mode", eps="absmax_per_token", backward_noise="identity")


def _bitnet_activation_quant(x):  # as BitNet b1.58's training code writes it
    scale = 127.0 / x.abs().max(dim=-1, keepdim=True).values.clamp_(min=1e-5)
    return (x * scale).round().clamp_(-128, 127) / scale


def w7_bitnet(x):
    return x + (_bitnet_activation_quant(x) - x).detach()


def workloads(numel: int = 1 << 22):
    n = (numel,)
    w = (256, 256, 3, 3)
    w1 = dict(anacuda=w1_anacuda, reference=chunked(w1_reference), compiled_reference=compiled(w1_reference),
              eager_ste=w1_eager_ste, fake_quantize=w1_fake_quantize)
    w4 = dict(anacuda=w4_anacuda, composite=w4_composite, compiled_composite=compiled(w4_composite),
              fake_quantize=w4_fake_quantize)
    return [
        Workload("W1", "ternary, uniform 0.5, mode (clipped STE)", n, torch.float32, 1.0, w1, atol=0,
                 notes=dict(fake_quantize="ties at +-0.5 round to even; gradient mask reaches +-1.5")),
        Workload("W2", "8-bit, normal 0.25, expectation", n, torch.float32, 40.0,
                 dict(anacuda=w2_anacuda, reference=chunked(w2_reference), compiled_reference=compiled(w2_reference),
                      eager_window=w2_eager_window), atol=1e-3),
        Workload("W3", "4-bit, logistic 0.5, random", n, torch.float32, 4.0,
                 dict(anacuda=w3_anacuda, reference=chunked(w3_reference), compiled_reference=compiled(w3_reference),
                      eager_floor_noise=w3_eager), random=True),
        Workload("W4", "alpha-blend 4-bit, per-channel eps, (256,256,3,3)", w, torch.float32, 0.05, w4, atol=1e-6),
        Workload("W5a", "W1 in bfloat16", n, torch.bfloat16, 1.0, w1, atol=0),
        Workload("W5b", "W4 in bfloat16", w, torch.bfloat16, 0.05, w4, atol=2e-2),
        Workload("W6a", "LSQ 4-bit, learned per-channel scale, (256,256,3,3)", w, torch.float32, 0.05,
                 dict(anacuda=w6a_anacuda, pytorch_learnable=w6a_learnable, composite=w6a_composite,
                      compiled_composite=compiled(w6a_composite)), atol=1e-6,
                 notes=dict(pytorch_learnable="clips round(u): the half steps beyond the range differ")),
        Workload("W6b", "LSQ 8-bit, learned per-tensor scale", n, torch.float32, 1.0,
                 dict(anacuda=w6b_anacuda, pytorch_learnable=w6b_learnable, composite=w6b_composite,
                      compiled_composite=compiled(w6b_composite)), atol=1e-6,
                 notes=dict(pytorch_learnable="clips round(u): the half steps beyond the range differ")),
        Workload("W7", "8-bit absmax per token + identity STE, (8192,1024)", (8192, 1024), torch.float32, 1.0,
                 dict(anacuda=w7_anacuda, bitnet=w7_bitnet, compiled_bitnet=compiled(w7_bitnet)), atol=1e-5,
                 notes=dict(bitnet="rounds ties to even")),
    ]


def timed_calls(fn, x: torch.Tensor, g: torch.Tensor):
    """(fwd, fwdbwd): fn's no-grad forward on x, and its forward + backward (gradient g) on a
    copy of x that requires grad, its .grad reset every call."""
    xr = x.clone().requires_grad_()

    def fwd():
        with torch.no_grad():
            fn(x)

    def fwdbwd():
        xr.grad = None
        fn(xr).backward(g)

    return fwd, fwdbwd


def limits(x: torch.Tensor, g: Optional[torch.Tensor] = None):
    """The machine's limit for producing fresh tensors: a forward is at best x.clone(), a
    backward at best g * x."""
    return dict(fwd=lambda: x.clone(), bwd=lambda: g * x)
