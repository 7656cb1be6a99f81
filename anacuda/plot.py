"""Pictures of ANA estimators: the forward curve and its gradient, computed with the fused op.

matplotlib is optional; it is imported inside the functions (``pip install matplotlib``).
Figures made here without an ``ax`` of yours are drawn on matplotlib's Agg canvas (no display
needed) unless ``matplotlib.pyplot`` is already in use, in which case they are pyplot figures
that ``plt.show()`` can display.

Example::

    from anacuda import Quantizer, plot, ste
    fig = plot.plot_estimator(Quantizer.ternary(), "logistic", "expectation", sigmas=(0.5, 0.2, 0.05))
    fig.savefig("ternary_logistic.png")
    plot.plot_family([ste.ste_sign(), ste.approx_sign()], "signs.png")
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Optional, Sequence, Union

import torch

from .quantizer import Noise, Quantizer, check_noise_name, check_strategy
from .ste import Estimator

__all__ = ["plot_estimator", "plot_family"]

_INSTALL_HINT = "anacuda.plot needs matplotlib: pip install matplotlib"


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return matplotlib


def _new_figure(figsize):
    """A pyplot figure when pyplot is already in use (interactive sessions, notebooks), else a
    bare Figure on the Agg canvas: no display, no global backend change, no pyplot bookkeeping."""
    _matplotlib()
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _sigma_value(s) -> float:
    return float(s.detach().cpu().item()) if isinstance(s, torch.Tensor) else float(s)


def _default_x(quantizer: Quantizer, reach: float, n: int = 1601) -> torch.Tensor:
    """About n points over the stair and the noise's reach beyond it, on a dyadic grid (multiples
    of a power of two): 0, the levels and the half-integer thresholds are hit exactly, where a
    linspace would give values like -4e-17 next to the jumps of the stair and of the boxes."""
    lv, th = quantizer.levels, quantizer.thresholds
    lo = min(lv.min().item(), th.min().item()) - 0.5 - reach
    hi = max(lv.max().item(), th.max().item()) + 0.5 + reach
    step = 2.0 ** math.floor(math.log2((hi - lo) / (n - 1)))
    k = torch.arange(math.floor(lo / step), math.ceil(hi / step) + 1, dtype=torch.float64)
    return k * step


_DASHES = ["-", "--", "-.", ":"]
_SPREAD = {"uniform": 1.0, "triangular": 1.0, "normal": 3.0, "logistic": 4.0}  # reach per unit of sigma


def _reach(est: Estimator) -> float:
    """How far beyond the stair the curves are worth drawing (in units of eps)."""
    noises = [(est.noise, est.sigma)]
    if est.backward_noise is not None:
        noises.append((est.backward_noise.name, est.backward_noise.sigma))
    return max(0.5, max(_SPREAD[name] * _sigma_value(s) for name, s in noises))


def _evaluate(est: Estimator, x: torch.Tensor, generator=None):
    """(y, dy/dx) of the fused op at x (float64, units of eps), on the host."""
    xg = x.detach().clone().requires_grad_()
    y = est(xg, generator=generator)
    (g,) = torch.autograd.grad(y.sum(), xg)
    return y.detach(), g


def _label(est: Estimator, what: str) -> str:
    if what == "sigma":
        return f"σ = {_sigma_value(est.sigma):g}"
    return est.name


def _draw(ax_f, ax_g, estimators: Sequence[Estimator], x: Optional[torch.Tensor], title: Optional[str],
          samples: int = 3, label_by: str = "sigma"):
    """Draws forward curves on ax_f and gradients on ax_g for estimators that share a quantiser."""
    import matplotlib as mpl

    ests = list(estimators)
    quantizer = ests[0].quantizer
    if x is None:
        x = _default_x(quantizer, max(_reach(e) for e in ests))
    x = x.detach().to(torch.float64).cpu()
    xs = x.numpy()
    hard = quantizer(x).numpy()
    ax_f.plot(xs, hard, color="0.75", lw=1.0, ls="-", zorder=1, label="hard stair")
    cmap = mpl.colormaps["viridis"]
    gen = torch.Generator().manual_seed(0)
    for i, est in enumerate(ests):
        color = cmap(0.15 + 0.7 * i / max(1, len(ests) - 1)) if len(ests) > 1 else "C0"
        label = _label(est, label_by)
        if est.strategy == "random":
            expect = dataclasses.replace(est, strategy="expectation")
            y_e, g = _evaluate(expect, x)
            ax_f.plot(xs, y_e.numpy(), color=color, lw=1.8, label=f"{label}: E[y]", zorder=3)
            sparse = x[:: max(1, x.numel() // 160)]
            for j in range(samples):
                y_s, _ = _evaluate(est, sparse, generator=gen)
                ax_f.plot(sparse.numpy(), y_s.numpy(), ls="none", marker="o", ms=2.2, alpha=0.55, color=color,
                          label=f"{label}: samples" if j == 0 else None, zorder=2)
        else:
            y, g = _evaluate(est, x)
            ax_f.plot(xs, y.numpy(), color=color, lw=1.8, label=label, zorder=3)
        # several curves may coincide (ana2019's fixed backward noise): vary the dashes so all show
        ax_g.plot(xs, g.numpy(), color=color, lw=1.8, ls=_DASHES[i % len(_DASHES)], label=label, zorder=3)
    ax_f.set_ylabel("forward y / eps")
    ax_g.set_ylabel("gradient dy/dx")
    for ax in (ax_f, ax_g):
        ax.set_xlabel("x / eps")
        ax.grid(True, lw=0.4, alpha=0.5)
        ax.set_xlim(xs[0], xs[-1])
    ax_g.set_ylim(bottom=min(0.0, ax_g.get_ylim()[0]))
    if title:
        ax_f.set_title(title, fontsize=10)
    ax_f.legend(fontsize=7, loc="upper left", framealpha=0.85)
    if len(ests) > 1 or label_by != "sigma":
        ax_g.legend(fontsize=7, loc="best", framealpha=0.85)
    return x


def plot_estimator(
    quantizer: Quantizer,
    noise: str = "uniform",
    strategy: str = "expectation",
    sigmas: Sequence[float] = (1.0, 0.5, 0.25, 0.1),
    mu: float = 0.0,
    backward_noise=None,
    x: Optional[torch.Tensor] = None,
    ax=None,
):
    """Draws ``ana(x, quantizer, noise, mu, σ, strategy, backward_noise=...)`` (left) and its
    gradient (right) for each σ in `sigmas`, over x in units of eps, with the fused op.

    The hard stair is drawn in grey behind the forward curves. For the random strategy the forward
    panel shows the expectation curve and a few samples (fixed seed). x: the points (default:
    the quantiser's range and the noise's reach beyond it). ax: a pair of axes (forward,
    gradient) to draw on; by default a new figure with two side-by-side axes. Returns the figure.
    """
    if not isinstance(quantizer, Quantizer):
        raise TypeError(f"anacuda.plot.plot_estimator: quantizer must be an anacuda.Quantizer, got {quantizer!r}")
    check_noise_name(noise)
    check_strategy(strategy)
    if isinstance(sigmas, (int, float, torch.Tensor)):
        sigmas = (sigmas,)
    if len(sigmas) == 0:
        raise ValueError("anacuda.plot.plot_estimator: sigmas is empty; give at least one sigma")
    back = None if backward_noise is None else Noise.of(backward_noise)
    ests = [
        Estimator(name=f"{noise} {strategy}", quantizer=quantizer, noise=noise, mu=mu, sigma=s, strategy=strategy,
                  backward_noise=back, source="plot", exact=True)
        for s in sigmas
    ]
    if ax is None:
        fig = _new_figure((10, 3.6))
        ax_f, ax_g = fig.subplots(1, 2)
    else:
        try:
            ax_f, ax_g = ax
        except (TypeError, ValueError):
            raise TypeError("anacuda.plot.plot_estimator: ax must be a pair of axes (forward, gradient)") from None
        fig = ax_f.figure
    title = f"{noise} noise, {strategy}"
    if back is not None:
        title += f", backward {back.name} σ = {_sigma_value(back.sigma):g}"
    _draw(ax_f, ax_g, ests, x, title)
    ax_g.legend(fontsize=7, loc="best", framealpha=0.85)
    ax_g.set_title("gradient", fontsize=10)
    if ax is None:
        fig.tight_layout()
    return fig


def plot_family(
    estimators: Sequence[Union[Estimator, Sequence[Estimator]]],
    path: Union[str, os.PathLike, None] = None,
    ncols: int = 4,
    x: Optional[torch.Tensor] = None,
    dpi: int = 100,
    titles: Optional[Sequence[str]] = None,
    suptitle: Optional[str] = None,
):
    """A grid of panels, one column per estimator: its forward curve on top and its gradient
    below. An entry may be a list of estimators with the same quantiser (e.g. one preset at
    several σ: drawn together, labelled by σ). Saves a PNG to `path` (when given) on the Agg
    canvas, needing no display, and returns the figure. titles: one per entry (default: the
    preset's name and configuration); suptitle: a title over the whole grid.
    """
    groups = [list(e) if isinstance(e, (list, tuple)) else [e] for e in estimators]
    if not groups:
        raise ValueError("anacuda.plot.plot_family: no estimators given")
    for g in groups:
        if not g or not all(isinstance(e, Estimator) for e in g):
            raise TypeError("anacuda.plot.plot_family: each entry must be an anacuda.ste.Estimator or a list of them")
    if titles is not None and len(titles) != len(groups):
        raise ValueError(f"anacuda.plot.plot_family: {len(titles)} titles for {len(groups)} entries")
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, len(groups)))
    nrows = -(-len(groups) // ncols)
    fig = Figure(figsize=(4.1 * ncols, 5.6 * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 * nrows, ncols, squeeze=False)
    for i, group in enumerate(groups):
        r, c = divmod(i, ncols)
        ax_f, ax_g = axes[2 * r][c], axes[2 * r + 1][c]
        title = titles[i] if titles is not None else _group_title(group)
        _draw(ax_f, ax_g, group, x, title)
    for j in range(len(groups), nrows * ncols):  # unused cells
        r, c = divmod(j, ncols)
        axes[2 * r][c].set_visible(False)
        axes[2 * r + 1][c].set_visible(False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=12)
    fig.tight_layout(h_pad=1.2, w_pad=1.0)
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi)
    return fig


def _group_title(group: Sequence[Estimator]) -> str:
    e = group[0]
    sig = ", ".join(f"{_sigma_value(g.sigma):g}" for g in group)
    back = ""
    if e.backward_noise is not None:
        back = f"; back {e.backward_noise.name} {_sigma_value(e.backward_noise.sigma):g}"
    return f"{e.name}\n{e.noise} σ={sig}, {e.strategy}{back}"
