"""anacuda.plot runs headless and writes a PNG; without matplotlib it says how to install it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import _ROOT, anacuda

from anacuda import plot, ste

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
Q = anacuda.Quantizer


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_MAGIC


def test_plot_family_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "family.png"
    fig = plot.plot_family(
        [ste.ste_sign(), ste.stochastic_rounding(Q.uniform(2)), [ste.ana2019(sigma=s) for s in (0.5, 0.0)]],
        out, ncols=2, dpi=40,
    )
    assert _is_png(out)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 6  # forward + gradient for 3 entries
    assert len(fig.axes) == 8  # a 2 x 2 grid of entries, the last cell hidden


def test_plot_estimator_draws_forward_and_gradient(tmp_path):
    pytest.importorskip("matplotlib")
    sigmas = (0.5, 0.2, 0.05)
    fig = plot.plot_estimator(Q.ternary(), "logistic", "expectation", sigmas=sigmas)
    ax_f, ax_g = fig.axes
    # the hard stair plus one curve per sigma on the left, one gradient per sigma on the right
    assert len(ax_f.get_lines()) == 1 + len(sigmas)
    assert len(ax_g.get_lines()) == len(sigmas)
    # the curves are the fused op's: the gradient of the smallest sigma peaks at 1 / (4 sigma)
    x, g = ax_g.get_lines()[-1].get_data()
    assert abs(g.max() - 1 / (4 * 0.05)) < 1e-6
    out = tmp_path / "estimator.png"
    fig.savefig(out, dpi=40)
    assert _is_png(out)


def test_plot_estimator_random_and_given_axes(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    fig = Figure()
    axes = fig.subplots(1, 2)
    got = plot.plot_estimator(Q.uniform(2), "uniform", "random", sigmas=0.5, x=torch.linspace(-3, 2, 201),
                              backward_noise=("uniform", 0.0, 0.5), ax=axes)
    assert got is fig
    # expectation curve, samples, hard stair
    assert any(line.get_linestyle() == "None" for line in axes[0].get_lines())


def test_plot_checks_its_arguments():
    pytest.importorskip("matplotlib")
    with pytest.raises(TypeError, match="Quantizer"):
        plot.plot_estimator("ternary")
    with pytest.raises(ValueError, match="unknown noise"):
        plot.plot_estimator(Q.ternary(), "cauchy")
    with pytest.raises(ValueError, match="no estimators"):
        plot.plot_family([], None)
    with pytest.raises(TypeError, match="Estimator"):
        plot.plot_family(["ste_sign"], None)


def test_missing_matplotlib_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot.plot_estimator(Q.ternary())
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot.plot_family([ste.ste_sign()], None)


def test_script_runs_headless(tmp_path):
    """scripts/ste_family.py in a fresh interpreter with no display."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "ste_family.png"
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    res = subprocess.run([sys.executable, f"{_ROOT}/scripts/ste_family.py", str(out)], env=env, cwd=_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert _is_png(out)
    assert out.stat().st_size < 300 * 1024
