"""Draws docs/lsq_smoothed.png: a smoothed LSQ (normal noise σ, strategy expectation, learned
eps) against LSQ (anacuda.ste.lsq) as σ → 0, on a 2-bit grid (levels −2 … 1), all computed with
the fused op.

    python3 scripts/lsq_smoothed.py [output.png]

With y = eps·g(u), u = x/eps, the gradient with respect to eps is g(u) − u·g'_b(u) (SPEC §8),
taken here with one eps per element at eps = 1 (so x = u). Three panels: the forward g(u); the
eps gradient with the backward noise = the forward noise (the default of functional.ana), which
tends to Q(u) between the thresholds and to LSQ's only on average over each step; the eps
gradient with the backward noise fixed at the clipped STE's (uniform σ_b = ½), which tends to
LSQ's at every u away from the thresholds.
"""

from __future__ import annotations

import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from anacuda import Quantizer, functional as F, ste  # noqa: E402

SIGMAS = (0.5, 0.2, 0.05)
NOISE = "normal"
#: The clipped STE's backward noise: its box density is 1 on [q_0, q_K), so g'_b is LSQ's.
STE_BACKWARD = ("uniform", 0.0, 0.5)


def quantizer() -> Quantizer:
    return Quantizer.uniform(2, signed=True)


def grid(q: Quantizer, step: float = 2.0 ** -7) -> torch.Tensor:
    """u over the stair and a level beyond each end, on a dyadic grid (the thresholds and the
    levels are hit exactly)."""
    lo, hi = float(q.min_level) - 1.5, float(q.max_level) + 1.5
    return torch.arange(math.floor(lo / step), math.ceil(hi / step) + 1, dtype=torch.float64) * step


def forward_and_eps_grad(u: torch.Tensor, fn):
    """(y, dy/d eps) at eps = 1 of fn(x, eps), one eps per element, so the gradient is per u."""
    eps = torch.ones_like(u, requires_grad=True)
    y = fn(u, eps)
    (g,) = torch.autograd.grad(y.sum(), eps)
    return y.detach(), g


def lsq(u: torch.Tensor, q: Quantizer):
    return forward_and_eps_grad(u, lambda x, e: ste.lsq(q)(x, eps=e))


def smoothed(u: torch.Tensor, q: Quantizer, sigma: float, backward_noise=None):
    """A smoothed LSQ: NOISE with σ, strategy expectation, learned eps; `backward_noise` None is
    the forward noise."""
    return forward_and_eps_grad(u, lambda x, e: F.ana(x, q, NOISE, sigma=sigma, strategy="expectation", eps=e,
                                                      backward_noise=backward_noise))


def main(argv):
    out = argv[1] if len(argv) > 1 else os.path.join(ROOT, "docs", "lsq_smoothed.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    import matplotlib as mpl
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    q = quantizer()
    u = grid(q)
    us = u.numpy()
    y_lsq, g_lsq = lsq(u, q)
    fig = Figure(figsize=(13.5, 3.9))
    FigureCanvasAgg(fig)
    ax_f, ax_same, ax_ste = fig.subplots(1, 3)
    cmap = mpl.colormaps["viridis"]
    for i, s in enumerate(SIGMAS):
        color = cmap(0.15 + 0.7 * i / max(1, len(SIGMAS) - 1))
        y, g_same = smoothed(u, q, s)
        _, g_ste = smoothed(u, q, s, STE_BACKWARD)
        ax_f.plot(us, y.numpy(), color=color, lw=1.6, label=f"σ = {s:g}")
        ax_same.plot(us, g_same.numpy(), color=color, lw=1.4, label=f"σ = {s:g}")
        ax_ste.plot(us, g_ste.numpy(), color=color, lw=1.6, label=f"σ = {s:g}")
    for ax, g in ((ax_f, y_lsq), (ax_same, g_lsq), (ax_ste, g_lsq)):
        ax.plot(us, g.numpy(), color="black", lw=1.1, ls="--", label="LSQ (ste.lsq)", zorder=4)
        ax.set_xlabel("u = x / eps")
        ax.grid(True, lw=0.4, alpha=0.5)
        ax.set_xlim(us[0], us[-1])
        ax.legend(fontsize=7, loc="upper left", framealpha=0.85)
    ax_f.set_ylabel("forward y / eps")
    ax_f.set_title(f"forward: {NOISE} noise, expectation", fontsize=10)
    ax_same.set_ylabel("dy / d eps")
    ax_same.set_title("eps gradient, backward = forward noise\n(→ Q(u) between thresholds; LSQ's on average per step)",
                      fontsize=9)
    ax_same.set_ylim(-3.5, 3.5)  # the spikes −θ·φ(0)/σ at the thresholds are clipped
    ax_ste.set_title("eps gradient, backward fixed at the clipped STE's\n(uniform σ_b = ½: → LSQ away from thresholds)",
                     fontsize=9)
    ax_ste.set_ylim(-3.5, 3.5)
    fig.suptitle("Smoothed LSQ (learned eps, 2-bit grid −2…1) as σ → 0, computed with functional.ana", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print(f"wrote {out} ({os.path.getsize(out) / 1024:.0f} KB)")


if __name__ == "__main__":
    main(sys.argv)
