"""The ANA op against an independent oracle: the level probabilities and densities of
scipy.stats's laws (SPEC §3, §4), not anacuda.reference."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from conftest import (
    DEVICES,
    F,
    MUS,
    NOISES,
    QUANTIZERS,
    assert_close,
    grad_scale,
    scale_of,
    scipy_edge_safe,
    span,
)

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


# --- independent oracle: scipy.stats ---------------------------------------------------------------
def scipy_law(noise, s):
    return {
        "uniform": stats.uniform(loc=-s, scale=2 * s),
        "triangular": stats.triang(c=0.5, loc=-s, scale=2 * s),
        "normal": stats.norm(scale=s),
        "logistic": stats.logistic(scale=s),
    }[noise]


@pytest.mark.parametrize("qname", ["binary", "ternary", "uniform4", "arbitrary", "arbitrary64"])
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("device", DEVICES)
def test_scipy_oracle(device, noise, qname):
    """Expectation forward = q0 + sum dq F(u - mu - theta), gradient = sum dq f(u - mu - theta), with
    scipy's laws (float64)."""
    q = QUANTIZERS[qname]
    th, lv = q.thresholds.numpy(), q.levels.numpy()
    dq = lv[1:] - lv[:-1]
    for sigma in [0.05, 0.5, 3.0]:
        for mu in MUS:
            law = scipy_law(noise, sigma)
            u = span(q, sigma, mu)
            z = (u.numpy() - mu)[:, None] - th
            exp_y = torch.from_numpy(lv[0] + (dq * law.cdf(z)).sum(-1))
            exp_g = torch.from_numpy((dq * law.pdf(z)).sum(-1))
            x = u.to(device).requires_grad_(True)
            y = F.ana(x, q, noise, mu, sigma)
            (gx,) = torch.autograd.grad(y.sum(), x)
            assert_close(y.cpu(), exp_y, scale=scale_of(q), msg=f"{noise} sigma={sigma} forward")
            # scipy's uniform support is closed [-s, s]; SPEC's is half-open: skip the edges.
            safe = scipy_edge_safe(u, q, noise, mu, sigma)
            assert safe.float().mean() > 0.8
            assert_close(gx.cpu(), exp_g, scale=grad_scale(q, noise, sigma, torch.ones(1)), mask=safe,
                         msg=f"{noise} sigma={sigma} gradient")
