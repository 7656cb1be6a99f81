"""A smoothed LSQ (a noise with σ > 0 and a learned eps) against LSQ as σ → 0, with the curves of
scripts/lsq_smoothed.py (which draws docs/lsq_smoothed.png), and that script run headless."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("lsq_smoothed", os.path.join(_ROOT, "scripts", "lsq_smoothed.py"))
L = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(L)


@pytest.fixture(scope="module")
def curves():
    q = L.quantizer()
    u = L.grid(q)
    return q, u, L.lsq(u, q)


def _away_from_thresholds(u, q, d=0.25):
    return (u.unsqueeze(1) - q.thresholds.to(u)).abs().min(1).values >= d


def test_lsq_is_the_clipped_stes_step_gradient(curves):
    q, u, (y, g) = curves
    inside = (u >= q.min_level) & (u < q.max_level)
    assert torch.equal(y, q(u))
    assert torch.equal(g[inside], (q(u) - u)[inside])
    assert torch.all(g[u < q.min_level] == q.min_level) and torch.all(g[u >= q.max_level] == q.max_level)


def test_with_the_clipped_stes_backward_the_eps_gradient_tends_to_lsq_pointwise(curves):
    q, u, (_, g_lsq) = curves
    far = _away_from_thresholds(u, q)
    errs = [float((L.smoothed(u, q, s, L.STE_BACKWARD)[1] - g_lsq)[far].abs().max()) for s in (0.5, 0.2, 0.05, 0.02)]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs  # shrinks with σ
    assert errs[0] > 0.1  # not LSQ at a large σ
    assert errs[-1] < 1e-6  # normal tail beyond 0.25 / 0.02 = 12.5 σ


def test_with_the_forward_noise_as_backward_it_tends_to_lsq_only_on_average_per_step(curves):
    """Backward = forward noise: g'_b concentrates on the thresholds, so between them the eps
    gradient tends to Q(u), not LSQ's Q(u) − u; over each step between two levels both average
    to 0, and over the whole stair they have the same integral for every σ."""
    q, u, (_, g_lsq) = curves
    far = _away_from_thresholds(u, q)
    inside = far & (u >= q.min_level) & (u < q.max_level)
    h = 2.0 ** -10  # midpoints of a grid wide enough for the noise to saturate at both ends (8 σ at σ = 0.5)
    mid = torch.arange(int(q.min_level) - 4, int(q.max_level) + 4, h, dtype=torch.float64) + h / 2
    _, m_lsq = L.lsq(mid, q)
    for s in (0.5, 0.2, 0.05):
        _, g = L.smoothed(u, q, s)
        _, m = L.smoothed(mid, q, s)
        assert float(m.mean()) == pytest.approx(float(m_lsq.mean()), abs=1e-9)  # the same integral, any σ
        if s == 0.05:
            assert float((g - q(u))[far].abs().max()) < 1e-4
            assert float((g - g_lsq)[inside].abs().max()) > 1.9  # |u| up to 2 apart from LSQ's
            for k in range(int(q.min_level), int(q.max_level)):
                step = (mid >= k) & (mid < k + 1)
                assert float(m[step].mean()) == pytest.approx(float(m_lsq[step].mean()), abs=1e-6)


def test_script_runs_headless(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "lsq_smoothed.png"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    res = subprocess.run([sys.executable, os.path.join(_ROOT, "scripts", "lsq_smoothed.py"), str(out)], env=env,
                         cwd=_ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size < 300 * 1024
