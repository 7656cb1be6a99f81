"""The PNG figures of an experiment folder (matplotlib, imported when a figure is drawn): the
spread of the synchronisation policies, alpha-blending vs the clipped STE, the σ schedules."""

from __future__ import annotations

import math
import os
from typing import List

import numpy as np

from anacuda.nn.controller import POWERS, WINDOWS

from .stats import marginals


def _figure(*args, **kw):
    from matplotlib.figure import Figure

    return Figure(*args, **kw)


def plot_spread(out, a, nn_, ss_, pp_, mu) -> List[str]:
    names = []
    fig = _figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True, width_ratios=[len(pp_), len(nn_), len(ss_)])
    for ax, axis, labels, title in ((axes[0], 2, pp_, "synchronisation policy (window/power)"),
                                    (axes[1], 0, nn_, "noise shape"), (axes[2], 1, ss_, "strategy")):
        m = marginals(a, axis)
        x = np.arange(len(labels))
        ax.errorbar(x, [v[0] for v in m], yerr=[0 if math.isnan(v[1]) else v[1] for v in m], fmt="o", capsize=4)
        # the spread of the cell means behind each marginal
        cell = np.moveaxis(a.mean(axis=3), axis, 0).reshape(len(labels), -1)
        for i in range(len(labels)):
            ax.scatter(np.full(cell.shape[1], x[i] + 0.25), cell[i], s=6, alpha=0.35, color="gray")
        short = [lab.replace("homogeneous", "homog.").replace("progressive", "progr.").replace("/", "\n")
                 for lab in labels]
        ax.set_xticks(x, short, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("frozen test accuracy (%)")
    fig.suptitle(f"Marginal means ± 95% CI over seeds (gray: cell means); σ annealed, μ {mu}", fontsize=10)
    name = f"experiments_spread_mu_{mu}.png"
    fig.savefig(os.path.join(out, name), dpi=110)
    names.append(name)

    fig = _figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.subplots()
    cell = a.mean(axis=3)  # noise, strategy, policy
    cols = [f"{n}\n{s}" for n in nn_ for s in ss_]
    img = cell.reshape(len(nn_) * len(ss_), len(pp_)).T
    im = ax.imshow(img, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(cols)), cols, fontsize=7)
    ax.set_yticks(range(len(pp_)), pp_, fontsize=8)
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            ax.text(j, i, f"{img[i, j]:.1f}", ha="center", va="center", fontsize=6,
                    color="white" if img[i, j] < img.mean() else "black")
    fig.colorbar(im, ax=ax, label="mean frozen test accuracy (%)")
    ax.set_title(f"ANA, σ annealed, μ {mu}: policy (rows) × noise/strategy (columns), mean over seeds", fontsize=10)
    name = f"experiments_heatmap_mu_{mu}.png"
    fig.savefig(os.path.join(out, name), dpi=110)
    names.append(name)
    return names


def plot_alpha(out, at, init) -> List[str]:
    fig = _figure(figsize=(6, 3.8), layout="constrained")
    ax = fig.subplots()
    bits = sorted({t["bits"] for t in at})
    ends = sorted({t["alpha_end"] for t in at})
    x = {b: i for i, b in enumerate(bits)}
    width = 0.5 / (len(ends) + 1)
    ste = {t["bits"]: t["ste"] for t in at}
    ax.errorbar([x[b] - 0.25 for b in bits], [ste[b][0] for b in bits],
                yerr=[0 if math.isnan(ste[b][1]) else ste[b][1] for b in bits], fmt="s", capsize=4, color="black",
                label="clipped STE")
    for k, e in enumerate(ends):
        ts = [t for t in at if t["alpha_end"] == e]
        ax.errorbar([x[t["bits"]] - 0.25 + (k + 1) * width for t in ts], [t["ab"][0] for t in ts],
                    yerr=[0 if math.isnan(t["ab"][1]) else t["ab"][1] for t in ts], fmt="o", capsize=4,
                    label=f"alpha-blending (α = 1 at {100 * e:.0f} %)")
    ax.set_xticks(range(len(bits)), [f"{b} bit{'s' if b > 1 else ''}" for b in bits])
    ax.set_ylabel("frozen test accuracy (%)")
    ax.set_title(f"Weights: alpha-blending vs clipped STE (start: {init}); ± 95% CI over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    name = f"experiments_alpha_{init}.png"
    fig.savefig(os.path.join(out, name), dpi=110)
    return [name]


def plot_schedules(path: str, epochs: float = 10.0) -> str:
    """σ(t)/σ0 of each layer group of the experiments' CNN for every window × power, as the
    NoiseController computes them."""
    from anacuda.nn import NoiseController, convert
    from .core import FLOAT_LAYERS, make_cnn

    model = convert(make_cnn(4), skip=FLOAT_LAYERS)
    fig = _figure(figsize=(10, 4.6), layout="constrained")
    axes = fig.subplots(len(POWERS), len(WINDOWS), sharex=True, sharey=True)
    t = np.linspace(0, epochs, 201)
    for i, pw in enumerate(POWERS):
        for j, w in enumerate(WINDOWS):
            ax = axes[i][j]
            ctrl = NoiseController(model, epochs, window=w, power=pw)
            curves = np.array([[v["sigma"] for v in ctrl.values(x)] for x in t]) / 0.5
            for k, g in enumerate(ctrl.groups):
                ax.plot(t, curves[:, k], label=f"group {k + 1}: {', '.join(g)}")
            ax.set_title(f"{w} / {pw}", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.supxlabel("epoch")
    fig.supylabel("σ / σ0")
    fig.savefig(path, dpi=110)
    return path
