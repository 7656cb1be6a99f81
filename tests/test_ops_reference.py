"""Tests of the fused ANA op (torch.ops.anacuda.ana / ana_backward through anacuda.functional.ana)
against the executable spec (anacuda.reference), an independent oracle (scipy.stats), autograd's
numerical gradients, opcheck, torch.compile, statistics of the random strategy, the
straight-through estimators of SPEC §5 and the edge cases of SPEC §7.

Run: python3 -m pytest tests -x -q. CUDA tests carry the `cuda` mark and skip without a GPU.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from scipy import special as sps
from scipy import stats

from conftest import (
    CUDA,
    DEVICES,
    DTYPES,
    HALF,
    LAYOUTS,
    anacuda,
    assert_close,
    assert_equal,
    compute_dtype,
    make_layout,
    scale_of,
    span,
)

F = anacuda.functional
R = anacuda.reference
Q = anacuda.Quantizer
NOISES = list(anacuda.NOISES)
assert NOISES == ["uniform", "triangular", "normal", "logistic"]


def _arbitrary(k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    th = torch.sort(torch.rand(k, generator=g, dtype=torch.float64) * 20 - 10).values
    lv = torch.randn(k + 1, generator=g, dtype=torch.float64) * 3  # not monotone: negative steps too
    return Q(lv, th)


def _arbitrary64():
    return _arbitrary(64, seed=2024)


QUANTIZERS = {
    "binary": Q.binary(),
    "ternary": Q.ternary(),
    "uniform4": Q.uniform(4),
    # 255 thresholds: the kernel visits only the window in the noise's reach (found by
    # arithmetic on a uniform grid); the reference sums all 255 terms.
    "uniform8": Q.uniform(8),
    "arbitrary": Q([-2.0, -0.5, 0.0, 1.0, 3.0], [-1.3, -0.2, 0.4, 2.0]),
    # A long non-uniform grid with non-monotone levels: the window is found by binary search.
    "arbitrary64": _arbitrary64(),
    # 16 <= K <= 32: the CPU small-grid path without the 1-byte code of the uniform backward
    "uniform5": Q.uniform(5),
    "arbitrary20": _arbitrary(20, seed=20),
}
SIGMAS = [0.0, 0.05, 0.5, 3.0]


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """The tensors here are small: on a busy machine torch's thread pool spends far longer waiting
    at its barriers than computing (the reference's K-wide temporaries once took 100 s instead of
    0.2 s). One thread keeps the suite fast and steady; test_random_independent_of_threads runs
    the kernel's parallel loop explicitly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
MUS = [0.0, -0.3]


def test_quantizer_grids():
    """The named quantisers of SPEC §1 and the uniform-grid hint that picks the kernel's search."""
    assert QUANTIZERS["binary"].levels.tolist() == [-1, 1] and QUANTIZERS["binary"].thresholds.tolist() == [0]
    assert QUANTIZERS["ternary"].levels.tolist() == [-1, 0, 1]
    assert QUANTIZERS["ternary"].thresholds.tolist() == [-0.5, 0.5]
    assert Q.uniform(2, signed=True, balanced=True) == Q.ternary()
    u8 = QUANTIZERS["uniform8"]
    assert u8.levels.tolist() == list(range(-128, 128)) and u8.thresholds.numel() == 255
    assert u8.uniform_grid and QUANTIZERS["uniform4"].uniform_grid
    assert Q.uniform(3, signed=False).levels.tolist() == list(range(8))
    assert not QUANTIZERS["arbitrary"].uniform_grid and not QUANTIZERS["arbitrary64"].uniform_grid
    assert QUANTIZERS["ternary"].levels.dtype == torch.float64


# --- helpers -------------------------------------------------------------------------------------
def level_probs(a: torch.Tensor, q, noise: str, sigma: float) -> torch.Tensor:
    """p_k (SPEC §4) in float64 for a = u - mu, shape (..., K + 1)."""
    th, lv = q.thresholds.to(a.device), q.levels
    P = R.cdf(noise, (a.double().unsqueeze(-1) - th) / sigma)
    one = torch.ones_like(P[..., :1])
    return torch.cat([one, P], -1) - torch.cat([P, 0 * one], -1)


def mode_safe(x, q, noise, mu, sigma, eps=1.0):
    """Elements whose most likely level wins by more than rounding can change (SPEC §4, mode).

    Kernel and reference compute the level probabilities in different ways (the kernel from the
    upper tails when a step is more than half on, and with x * (1/sigma) for x / sigma), so where
    the two largest p_k are within a few ulp of each other the argmax legitimately differs; that
    includes the exact ties over whole intervals of a uniform noise wider than a bin, which both
    sides resolve by rounding. Everywhere else the mode is compared exactly."""
    c = torch.finfo(compute_dtype(x.dtype)).eps
    e = eps.double().cpu() if isinstance(eps, torch.Tensor) else eps
    u = x.detach().double().cpu() / e
    a = u - mu
    p = level_probs(a, q, noise, sigma)
    top = torch.topk(p, 2, dim=-1).values
    gap = top[..., 0] - top[..., 1]
    margin = 64 * c * (1 + u.abs() + abs(mu)) / sigma + 64 * c
    return (gap > margin) | torch.isnan(u) | torch.isinf(u)


def scipy_edge_safe(u, q, noise, mu, sigma):
    """For the uniform law, elements not within rounding of a support edge (a - theta = +-sigma):
    scipy's support is closed [-s, s], SPEC's is half-open [-s, s) (the kernel and the reference
    both test a box by its edges, theta - sigma <= a < theta + sigma, and agree there exactly)."""
    u = u.detach().double().cpu()
    if noise != "uniform":
        return torch.ones_like(u, dtype=torch.bool)
    v = ((u - mu).unsqueeze(-1) - q.thresholds) / sigma
    return ((v.abs() - 1).abs()).amin(-1) > 1e-9


@functools.lru_cache(maxsize=None)
def _max_abs_derivative(q, noise: str, sigma: float) -> float:
    """max over u of sum_i |dq_i| f_sigma(u - theta_i): the largest magnitude the terms of the
    gradient sum can reach (their sum bounds its rounding error, cancellation included)."""
    th = q.thresholds
    a = torch.cat([torch.linspace(th[0].item() - 3 * sigma - 1, th[-1].item() + 3 * sigma + 1, 4001,
                                  dtype=torch.float64), th, th + sigma * 0.999, th - sigma])
    dq = (q.levels[1:] - q.levels[:-1]).abs()
    return ((dq * R.pdf(noise, (a.unsqueeze(-1) - th) / sigma)).sum(-1) / sigma).max().item()


def grad_scale(q, noise, sigma, upstream):
    """Scale of the absolute gradient tolerance: the largest gradient term sum times |upstream|."""
    m = upstream.detach().abs().max().item() if upstream.numel() else 1.0
    return max(1.0, _max_abs_derivative(q, noise, float(sigma))) * max(1.0, m)


def kernel_and_reference(x, q, **kw):
    return F.ana(x, q, **kw), R.ana(x, q, **kw)


def check_forward(x, q, noise, mu, sigma, strategy, eps=1.0, training=True, msg=""):
    y, r = kernel_and_reference(x, q, noise=noise, mu=mu, sigma=sigma, strategy=strategy, eps=eps,
                                training=training)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device and y.is_contiguous(), msg
    if sigma == 0 or not training:
        assert_equal(y, r, msg=msg + " (hard stair)")
        return y.numel(), y.numel()
    if strategy == "expectation":
        assert_close(y, r, x.dtype, scale_of(q, eps), msg=msg)
        return y.numel(), y.numel()
    safe = mode_safe(x, q, noise, mu, sigma, eps)
    assert_equal(y, r, mask=safe, msg=msg + " (mode)")
    return int(safe.sum()), y.numel()


# --- forward against the reference -----------------------------------------------------------------
@pytest.mark.parametrize("qname", list(QUANTIZERS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("strategy", ["expectation", "mode"])
@pytest.mark.parametrize("device", DEVICES)
def test_forward_matches_reference(device, strategy, noise, dtype, qname):
    q = QUANTIZERS[qname]
    compared = total = 0
    for sigma in SIGMAS:
        for mu in MUS:
            x = span(q, sigma, mu).to(device=device, dtype=dtype)
            c, t = check_forward(x, q, noise, mu, sigma, strategy, msg=f"{qname} {noise} sigma={sigma} mu={mu}")
            compared, total = compared + c, total + t
    # The near-tie exclusion must leave most of the inputs compared (it is not a blanket skip).
    assert compared >= 0.6 * total, (compared, total)


@pytest.mark.parametrize("strategy", ["expectation", "mode", "random"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_not_training_is_hard_stair(device, dtype, strategy):
    """training=False (and sigma = 0) give Q(x / eps - mu) * eps exactly, for every strategy."""
    for qname in ["ternary", "uniform8", "arbitrary", "arbitrary64"]:
        q = QUANTIZERS[qname]
        # eps a power of two and mu exact in every dtype: x / eps - mu is exact, so the hard stair
        # computed here by searchsorted must match bit for bit (inputs exactly on thresholds go up).
        eps, mu = 0.5, 0.25
        u = span(q, 0.5, mu)
        x = (u * eps).to(device=device, dtype=dtype)
        a = x.to(compute_dtype(dtype)) / eps - mu
        hard = (q(a) * eps).to(dtype)
        for noise in NOISES:
            y = F.ana(x, q, noise, mu, 0.7, strategy, training=False, eps=eps)
            assert_equal(y, hard, msg=f"{qname} {noise} training=False")
            y0 = F.ana(x, q, noise, mu, 0.0, strategy, training=True, eps=eps)
            assert_equal(y0, hard, msg=f"{qname} {noise} sigma=0")
            assert_equal(R.ana(x, q, noise, mu, 0.7, strategy, training=False, eps=eps), hard, msg="reference")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_mode_exact_ties_go_up(device, dtype):
    """SPEC §4: on a tie the upper level wins. An input exactly on an interior threshold of a
    uniform grid, under a symmetric noise, puts equal mass on the two neighbouring bins (the two
    most likely ones while sigma <= 0.5): an exact tie, so the upper level, i.e. the hard stair,
    whichever way the kernel computes the two probabilities. (mu and eps are powers of two, so
    x / eps - mu lands exactly on the threshold.)"""
    for q in [Q.uniform(4), Q.uniform(6), Q.uniform(8), Q.uniform(3, signed=False)]:
        th = q.thresholds[1:-1]  # interior: both neighbouring bins have width 1
        mu, eps = 0.25, 0.5
        x = ((th + mu) * eps).to(dtype)
        keep = x.double() == (th + mu) * eps  # exactly representable in dtype
        x = x[keep].to(device)
        assert x.numel() >= min(th.numel(), 100)
        expected = (q.levels[2:-1][keep] * eps).to(device=device, dtype=dtype)
        for noise in NOISES:
            for sigma in [0.05, 0.3, 0.5]:
                y = F.ana(x, q, noise, mu, sigma, "mode", eps=eps)
                assert_equal(y, expected, msg=f"K={q.thresholds.numel()} {noise} sigma={sigma}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_layouts(device, dtype, layout):
    """Every layout: output contiguous, of x's shape and dtype, equal to the reference; the
    gradient too. mu and eps are not trivial so that every step of u = x / eps - mu matters."""
    q = QUANTIZERS["uniform4"]
    mu, sigma, eps = 0.1, 0.5, 0.75
    vals = span(q, sigma, mu, n=4099) * eps
    for noise in NOISES:
        for strategy in ["expectation", "mode"]:
            x = make_layout(layout, vals, dtype, device)
            check_forward(x, q, noise, mu, sigma, strategy, eps=eps, msg=f"{layout} {noise} {strategy}")
        # backward through a non-contiguous input (and an upstream gradient of the same layout)
        x = make_layout(layout, vals, dtype, device).requires_grad_(True)
        g = make_layout(layout, torch.cos(torch.arange(vals.numel(), dtype=torch.float64)), dtype, device)
        (gx,) = torch.autograd.grad(F.ana(x, q, noise, mu, sigma, eps=eps), x, g)
        (gr,) = torch.autograd.grad(R.ana(x, q, noise, mu, sigma, eps=eps), x, g)
        assert gx.shape == x.shape and gx.dtype == x.dtype
        assert_close(gx, gr, dtype, grad_scale(q, noise, sigma, g),
                     msg=f"{layout} {noise} grad")


def test_misaligned_is_misaligned_for_every_dtype():
    for dtype in DTYPES:
        x = make_layout("misaligned", torch.arange(40, dtype=torch.float64), dtype, "cpu")
        assert x.data_ptr() % 16 != 0


# --- eps -------------------------------------------------------------------------------------------
def _eps_cases(device):
    """(name, x shape, eps) with eps a number, a 0-d tensor, per channel, full, etc."""
    g = torch.Generator().manual_seed(7)

    def rnd(*shape):
        return (0.2 + 1.8 * torch.rand(*shape, generator=g, dtype=torch.float64)).to(device)

    return [
        ("number", (3, 4, 5), 0.37),
        ("0-d tensor", (3, 4, 5), torch.tensor(0.37, dtype=torch.float64)),
        ("0-d float32 tensor on the host", (3, 4, 5), torch.tensor(1.7, dtype=torch.float32)),
        ("one-element (1, 1)", (3, 4, 5), torch.tensor([[0.6]], dtype=torch.float64)),
        ("per channel (C,1,1) of NCHW", (2, 3, 5, 7), rnd(3, 1, 1)),
        ("per channel (1,C,1,1) of NCHW", (2, 3, 5, 7), rnd(1, 3, 1, 1)),
        ("per channel (C,1) of (C,D)", (3, 11), rnd(3, 1)),
        ("per column (D,) of (C,D)", (4, 6), rnd(6)),
        ("full shape", (3, 11), rnd(3, 11)),
        ("per channel with a size-1 dim inside", (2, 3, 1, 5), rnd(3, 1, 1)),
        ("per channel, size-1 dims around", (3, 1, 5), rnd(3, 1, 1)),
        ("two separate axes (materialised)", (2, 3, 4), rnd(2, 1, 4)),
        ("non-contiguous eps", (5, 4), rnd(4, 5).t()),
        ("float32 eps on float64 x", (3, 11), rnd(3, 1).float()),
    ]


@pytest.mark.parametrize("strategy", ["expectation", "mode", "hard"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_eps(device, dtype, strategy):
    """eps scalar or tensor broadcast to x (SPEC §2): y = eps * g(x / eps), dy/dx = g'(x / eps)."""
    q = QUANTIZERS["arbitrary"]
    mu, sigma = -0.3, 0.5
    for name, shape, eps in _eps_cases(device):
        n = math.prod(shape)
        u = torch.linspace(-4.0, 4.5, n, dtype=torch.float64).reshape(shape)
        e = eps if isinstance(eps, float) else eps.double().cpu()
        for transpose in (False, True):
            x = (u * e).to(device=device, dtype=dtype)
            if transpose:  # the same values through a non-contiguous view
                x = x.transpose(0, -1).contiguous().transpose(0, -1)
                assert not x.is_contiguous() or x.dim() < 2 or 1 in x.shape
            training = strategy != "hard"
            st = "mode" if strategy == "hard" else strategy
            # normal: the per-element window walk; triangular: the CPU small-grid loops, which
            # walk eps in runs of equal value
            for noise in ["normal", "triangular"]:
                check_forward(x, q, noise, mu, sigma, st, eps=eps, training=training, msg=f"eps {name} {noise}")
                # eps cancels in the gradient: the kernel's gradient equals the reference's
                xg = x.detach().requires_grad_(True)
                g = torch.ones_like(xg)
                (gx,) = torch.autograd.grad(F.ana(xg, q, noise, mu, sigma, st, eps=eps), xg, g)
                (gr,) = torch.autograd.grad(R.ana(xg, q, noise, mu, sigma, st, eps=eps), xg, g)
                assert_close(gx, gr, dtype, grad_scale(q, noise, sigma, g), msg=f"eps {name} {noise} grad")


def test_per_channel_eps_is_per_channel():
    """An independent check of the indexing: per-channel eps equals a loop over the channels."""
    q = QUANTIZERS["uniform4"]
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 4
    eps = torch.tensor([0.5, 1.25, 3.0], dtype=torch.float64)
    y = F.ana(x, q, "logistic", 0.2, 0.3, eps=eps.reshape(3, 1, 1))
    for c in range(3):
        yc = F.ana(x[:, c].contiguous(), q, "logistic", 0.2, 0.3, eps=eps[c].item())
        assert_close(y[:, c], yc, msg=f"channel {c}")
    # (C, 1) for a (C, D) input
    x2 = x[0].reshape(3, 20)
    y2 = F.ana(x2, q, "logistic", 0.2, 0.3, eps=eps.reshape(3, 1))
    for c in range(3):
        assert_close(y2[c], F.ana(x2[c].contiguous(), q, "logistic", 0.2, 0.3, eps=eps[c].item()), msg=f"row {c}")


# --- backward against the reference ---------------------------------------------------------------
@pytest.mark.parametrize("qname", ["binary", "ternary", "uniform8", "arbitrary", "arbitrary64", "uniform5",
                                   "arbitrary20"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("device", DEVICES)
def test_backward_matches_reference(device, noise, dtype, qname):
    q = QUANTIZERS[qname]
    eps = 0.8
    for sigma in [0.05, 0.5, 3.0]:
        for mu in MUS:
            x = (span(q, sigma, mu) * eps).to(device=device, dtype=dtype).requires_grad_(True)
            g = torch.sin(torch.arange(x.numel(), dtype=torch.float64) * 0.7).to(device=device, dtype=dtype)
            grads = []
            for strategy in ["expectation", "mode", "random"]:
                (gx,) = torch.autograd.grad(F.ana(x, q, noise, mu, sigma, strategy, eps=eps), x, g)
                grads.append(gx)
            (gr,) = torch.autograd.grad(R.ana(x, q, noise, mu, sigma, eps=eps), x, g)
            assert_close(grads[0], gr, dtype, grad_scale(q, noise, sigma, g),
                         msg=f"{qname} {noise} sigma={sigma} mu={mu}")
            # SPEC §5: the same gradient whatever the forward strategy
            assert_equal(grads[1], grads[0], msg="mode vs expectation gradient")
            assert_equal(grads[2], grads[0], msg="random vs expectation gradient")


BACKWARD_NOISES = [
    ("uniform", 0.0, 0.5),
    ("triangular", 0.2, 1.0),
    ("normal", -0.1, 0.3),
    ("logistic", 0.0, 2.0),
]


@pytest.mark.parametrize("back", BACKWARD_NOISES, ids=lambda b: b[0])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_separate_backward_noise(device, dtype, back):
    """A backward noise of its own (SPEC §5): the gradient follows it, not the forward noise."""
    q = QUANTIZERS["uniform4"]
    name, mu_b, sigma_b = back
    x = (span(q, 1.0, 0.0) * 0.6).to(device=device, dtype=dtype).requires_grad_(True)
    g = torch.ones_like(x)
    for strategy in ["expectation", "mode"]:
        for fwd_sigma in [0.0, 0.4]:  # sigma = 0: hard forward, gradient from the backward noise
            for b in [back, anacuda.Noise(name, mu_b, sigma_b),
                      (name, torch.tensor(mu_b, dtype=torch.float64), torch.tensor(sigma_b, dtype=torch.float64))]:
                kw = dict(noise="normal", mu=0.3, sigma=fwd_sigma, strategy=strategy, eps=0.6, backward_noise=b)
                y = F.ana(x, q, **kw)
                if strategy == "expectation":  # the forward ignores the backward noise
                    assert_close(y, R.ana(x, q, **kw), dtype, scale_of(q, 0.6))
                    assert_equal(y, F.ana(x, q, "normal", 0.3, fwd_sigma, eps=0.6))
                (gx,) = torch.autograd.grad(y, x, g)
                (gr,) = torch.autograd.grad(R.ana(x, q, **kw), x, g)
                assert_close(gx, gr, dtype, grad_scale(q, name, sigma_b, g),
                             msg=f"backward {back}")
                # the gradient is the backward noise's: compare with the default-noise gradient of
                # a forward that uses that noise
                (gd,) = torch.autograd.grad(F.ana(x, q, name, mu_b, sigma_b, eps=0.6), x, g)
                assert_equal(gx, gd, msg="backward noise = that noise's own gradient")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_backward_sigma_zero_gives_zero_gradient(device, dtype):
    q = QUANTIZERS["ternary"]
    x = (span(q, 0.5, 0.0)).to(device=device, dtype=dtype).requires_grad_(True)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    for noise in NOISES:
        for kw in [dict(sigma=0.0), dict(sigma=0.5, backward_noise=(noise, 0.0, 0.0)),
                   dict(sigma=0.5, backward_noise=(noise, 0.2, torch.tensor(0.0)))]:
            for strategy in ["expectation", "mode", "random"]:
                (gx,) = torch.autograd.grad(F.ana(x, q, noise, strategy=strategy, **kw), x, g)
                # exactly zero (-0 where the upstream gradient is negative, as g * 0 gives)
                assert torch.equal(gx, torch.zeros_like(x)), (noise, kw, strategy)


def test_classic_ste_hard_forward_clipped_gradient():
    """sigma = 0 forward with a uniform sigma_b = 0.5 backward: the classic clipped STE."""
    q = QUANTIZERS["ternary"]
    x = torch.tensor([-2.0, -1.0, -0.7, 0.0, 0.3, 0.999, 1.0, 1.5], dtype=torch.float64, requires_grad=True)
    y = F.ana(x, q, "uniform", 0.0, 0.0, "mode", backward_noise=("uniform", 0.0, 0.5))
    assert y.tolist() == [-1, -1, -1, 0, 0, 1, 1, 1]
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert gx.tolist() == [0, 1, 1, 1, 1, 1, 0, 0]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_coded_backward_equals_uncoded(device, dtype):
    """A uniform backward noise on at most 15 thresholds saves a 1-byte code of the boxes that hold
    each element instead of the input; its gradient must be the uncoded one (the ana_backward op
    on the saved input) bit for bit, NaN and infinities included, for every eps layout."""
    for qname in ["binary", "ternary", "uniform4", "arbitrary", "arbitrary20"]:
        q = QUANTIZERS[qname]
        coded = qname != "arbitrary20"  # K <= 15 (anacuda.ops.CODE_MAX_THRESHOLDS); K = 20 is not
        lv, th = q.tables(torch.device(device), dtype)
        for sigma_b in [0.0, 0.3, 0.5, 2.0]:
            for mu_b in [0.0, -0.3]:
                for eps in [0.8, torch.tensor([[0.5], [1.25], [2.0]], dtype=torch.float64, device=device)]:
                    u = span(q, sigma_b, mu_b, n=96)
                    u = torch.cat([u, torch.tensor([float("nan"), float("inf"), -float("inf")])])
                    u = u[: 3 * (u.numel() // 3)].reshape(3, -1)
                    e = eps if isinstance(eps, float) else eps.cpu()
                    x = (u * e).to(device=device, dtype=dtype).requires_grad_(True)
                    g = torch.cos(torch.arange(x.numel(), dtype=torch.float64)).reshape(x.shape).to(x)
                    kw = dict(noise="normal", mu=0.1, sigma=0.4, eps=eps, backward_noise=("uniform", mu_b, sigma_b))
                    saved = []

                    def pack(t):
                        saved.append((t.dtype, tuple(t.shape)))
                        return t

                    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                        y = F.ana(x, q, **kw)
                    # what autograd keeps: the uint8 code instead of x on the coded path
                    assert ((torch.uint8, x.shape) in saved) == coded, saved
                    assert ((dtype, x.shape) in saved) != coded, saved
                    (gx,) = torch.autograd.grad(y, x, g)
                    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
                    et = eps if isinstance(eps, torch.Tensor) else f64(eps)
                    direct = torch.ops.anacuda.ana_backward(g, x.detach(), lv, th, q.uniform_grid, et, "uniform",
                                                            f64(mu_b), f64(sigma_b))
                    assert_equal(gx, direct, msg=f"{qname} sigma_b={sigma_b} mu_b={mu_b} coded={coded}")
                    (gr,) = torch.autograd.grad(R.ana(x, q, **kw), x, g)
                    assert_close(gx, gr, dtype, grad_scale(q, "uniform", max(sigma_b, 1e-3), g))


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


# --- gradcheck -------------------------------------------------------------------------------------
@pytest.mark.parametrize("qname", ["binary", "ternary", "arbitrary"])
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device, noise, qname):
    """Numerical vs analytic gradient of the smooth path (expectation) in float64."""
    q = QUANTIZERS[qname]
    mu, sigma, eps = 0.1, 0.6, 0.7
    u = torch.linspace(-3.3, 3.7, 41, dtype=torch.float64)
    if noise in ("uniform", "triangular"):
        # keep away from the kinks of F (a - theta = +-sigma, and 0 for the triangle's density)
        kinks = torch.cat([q.thresholds + mu + d for d in (-sigma, 0.0, sigma)])
        u = u[(u.unsqueeze(-1) - kinks).abs().amin(-1) > 1e-3]
    x = (u * eps).to(device).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: F.ana(t, q, noise, mu, sigma, "expectation", eps=eps), (x,),
                                    eps=1e-6, atol=1e-7, rtol=1e-5)
    # per-channel eps tensor too
    xe = (u[:40].reshape(4, 10) * 0.5).to(device).requires_grad_(True)
    e = torch.tensor([[0.5], [0.9], [1.3], [2.0]], dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(lambda t: F.ana(t, q, noise, mu, sigma, eps=e), (xe,), eps=1e-6, atol=1e-7,
                                    rtol=1e-5)


# --- opcheck ---------------------------------------------------------------------------------------
def _op_args(x, q, noise, mu, sigma, strategy, training, eps, seed, noise_b=None):
    """The arguments functional.ana passes to torch.ops.anacuda.ana (backward noise: the forward
    noise with the same mu and sigma, or `noise_b` with them)."""
    lv, th = q.tables(x.device, x.dtype)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return (x, lv, th, q.uniform_grid, eps, noise, f64(mu), f64(sigma), strategy, training, seed, noise_b or noise,
            f64(mu), f64(sigma))


@pytest.mark.parametrize("strategy", ["expectation", "mode", "random"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "noncontiguous"])
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, strategy, contiguous):
    q = QUANTIZERS["uniform4"]
    base = torch.randn(6, 9, generator=torch.Generator().manual_seed(3)) * 4
    x = base if contiguous else base.t()
    x = x.to(device).requires_grad_(True)
    assert x.is_contiguous() == contiguous
    seed = torch.tensor([123, 7]) if strategy == "random" else None
    for eps in [torch.tensor(0.75, dtype=torch.float64), torch.full((x.shape[0], 1), 0.5, device=device)]:
        for training in [True, False]:
            # normal backward noise: the input is saved; uniform on K = 15: a 1-byte code is
            # saved instead (anacuda.ops.CODE_MAX_THRESHOLDS), through ana_code/ana_backward_code
            for noise_b in ["normal", "uniform"]:
                args = _op_args(x, q, "normal", 0.1, 0.5, strategy, training, eps, seed, noise_b)
                torch.library.opcheck(torch.ops.anacuda.ana.default, args)
            # the forward and the code in one pass (what functional.ana runs when x needs a gradient)
            args = _op_args(x, q, "uniform", 0.1, 0.5, strategy, training, eps, seed)
            torch.library.opcheck(torch.ops.anacuda.ana_coded.default, args)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(4)).to(device)
    g = g if contiguous else g.t().contiguous().t()
    lv, th = q.tables(x.device, x.dtype)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    bargs = (g, x.detach(), lv, th, q.uniform_grid, f64(0.75), "logistic", f64(0.1), f64(0.5))
    torch.library.opcheck(torch.ops.anacuda.ana_backward.default, bargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_ana_coded_is_ana_and_ana_code(device, dtype):
    """The fused op returns what its two halves return, bit for bit, on every path: small grids
    (hard, expectation, random; mu_b equal to mu or not), the per-element walk (K = 15 with a
    wide triangular mode), NaN and infinities, scalar and per-channel eps."""
    gen = torch.Generator().manual_seed(11)
    x = (torch.randn(7, 300, generator=gen) * 3)
    x[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    x = x.to(device=device, dtype=dtype)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    for qn, noise, strategy, mu_b in [("ternary", "uniform", "mode", 0.0), ("uniform4", "uniform", "mode", 0.2),
                                      ("uniform4", "triangular", "mode", 0.0), ("uniform4", "normal", "expectation", 0.0),
                                      ("ternary", "logistic", "random", 0.1), ("arbitrary", "uniform", "expectation", 0.0)]:
        q = QUANTIZERS[qn]
        lv, th = q.tables(x.device, x.dtype)
        for eps in [f64(0.75), torch.rand(7, 1, generator=gen).to(device) + 0.5]:
            seed = torch.tensor([5, 6]) if strategy == "random" else None
            args = (x, lv, th, q.uniform_grid, eps, noise, f64(0.0), f64(0.6), strategy, True, seed, "uniform",
                    f64(mu_b), f64(0.5))
            y, code = torch.ops.anacuda.ana_coded(*args)
            assert_equal(y, torch.ops.anacuda.ana(*args))
            assert torch.equal(code, torch.ops.anacuda.ana_code(x, lv, th, eps, f64(mu_b), f64(0.5)))


def test_functional_calls_the_op_with_these_arguments():
    """_op_args mirrors functional.ana: calling the op directly gives functional.ana's output."""
    q = QUANTIZERS["uniform4"]
    x = torch.randn(50, generator=torch.Generator().manual_seed(5)) * 4
    for strategy in ["expectation", "mode"]:
        direct = torch.ops.anacuda.ana(*_op_args(x, q, "normal", 0.1, 0.5, strategy, True,
                                                 torch.tensor(0.75, dtype=torch.float64), None))
        assert_equal(direct, F.ana(x, q, "normal", 0.1, 0.5, strategy, eps=0.75))


# --- torch.compile ---------------------------------------------------------------------------------
def _compiled_pair(q, strategy, noise="normal"):
    def f(x, mu, sigma, eps):
        return F.ana(x, q, noise, mu=mu, sigma=sigma, strategy=strategy, eps=eps)

    return f


@pytest.mark.parametrize("noise", ["normal", "uniform"])  # uniform: the coded backward (K = 7)
@pytest.mark.parametrize("strategy", ["expectation", "mode"])
@pytest.mark.parametrize("device", DEVICES)
def test_compile_matches_eager(device, strategy, noise):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    q = Q.uniform(3)
    q.tables(torch.device(device), torch.float32)  # warm the table cache
    f = _compiled_pair(q, strategy, noise)
    cnt = CompileCounterWithBackend("aot_eager")  # traces the fake and the autograd formula
    cf = torch.compile(f, backend=cnt, fullgraph=True)
    x0 = torch.linspace(-6, 6, 97, device=device)
    for mu, sigma, eps in [(0.0, 0.5, 1.0), (-0.3, 0.2, 0.5), (0.4, 1.5, 2.0), (0.1, 0.0, 1.0)]:
        t = lambda v: torch.tensor(v, device=device)  # noqa: E731
        x = x0.clone().requires_grad_(True)
        y = cf(x, t(mu), t(sigma), t(eps))
        (gx,) = torch.autograd.grad(y, x, torch.cos(x0))
        xe = x0.clone().requires_grad_(True)
        ye = f(xe, t(mu), t(sigma), t(eps))
        (ge,) = torch.autograd.grad(ye, xe, torch.cos(x0))
        assert_equal(y, ye, msg="compiled forward")
        assert_equal(gx, ge, msg="compiled backward")
    # hyper-parameters passed as tensors changed four times: one compilation
    assert cnt.frame_count == 1


@pytest.mark.parametrize("device", DEVICES)
def test_compile_no_recompile_on_tensor_hyperparameters(device):
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    q = Q.ternary()
    q.tables(torch.device(device), torch.float32)
    cnt = CompileCounter()

    def f(x, mu, sigma, eps, mu_b, sigma_b):
        return F.ana(x, q, "logistic", mu=mu, sigma=sigma, strategy="expectation", eps=eps,
                     backward_noise=("uniform", mu_b, sigma_b))

    cf = torch.compile(f, backend=cnt, fullgraph=True)
    x = torch.randn(4, 16, device=device, requires_grad=True)
    t = lambda v: torch.tensor(v, device=device)  # noqa: E731
    for i in range(5):
        eps = torch.full((4, 1), 0.5 + 0.1 * i, device=device)
        y = cf(x, t(0.1 * i - 0.2), t(1.0 / (i + 1)), eps, t(0.05 * i), t(0.5 + 0.1 * i))
        y.sum().backward()
    assert cnt.frame_count == 1, f"recompiled: {cnt.frame_count} compilations"


def test_compile_fresh_quantizer_compiles_once():
    """A Quantizer whose table cache is cold when first traced: the cache must not be guarded on
    (a mutated cache would recompile the second call)."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    q = Q.uniform(2)  # cold table cache
    cnt = CompileCounter()
    cf = torch.compile(lambda x, s: F.ana(x, q, "normal", sigma=s), backend=cnt, fullgraph=True)
    x = torch.randn(16)
    for s in [0.5, 0.4, 0.3]:
        cf(x, torch.tensor(s))
    assert cnt.frame_count == 1


@pytest.mark.slow
def test_compile_inductor():
    torch._dynamo.reset()
    q = Q.uniform(3)
    f = _compiled_pair(q, "expectation")
    cf = torch.compile(f, fullgraph=True)
    x0 = torch.linspace(-6, 6, 97)
    x = x0.clone().requires_grad_(True)
    t = torch.tensor
    y = cf(x, t(0.1), t(0.5), t(0.7))
    (gx,) = torch.autograd.grad(y.sum(), x)
    xe = x0.clone().requires_grad_(True)
    ye = f(xe, t(0.1), t(0.5), t(0.7))
    (ge,) = torch.autograd.grad(ye.sum(), xe)
    assert_equal(y, ye)
    assert_equal(gx, ge)


def test_compile_random_strategy_matches_eager():
    """Random strategy under torch.compile (graph breaks allowed): the seed tensor is still drawn
    from torch's generator, so torch.manual_seed reproduces the eager output exactly."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    q = Q.uniform(3)
    cnt = CompileCounterWithBackend("aot_eager")
    f = lambda x, s: F.ana(x, q, "normal", sigma=s, strategy="random") * 2  # noqa: E731
    cf = torch.compile(f, backend=cnt)
    x = torch.linspace(-4, 4, 1000)
    torch.manual_seed(11)
    a = cf(x, torch.tensor(0.7))
    b = cf(x, torch.tensor(0.7))
    torch.manual_seed(11)
    c = cf(x, torch.tensor(0.7))
    torch.manual_seed(11)
    e = f(x, torch.tensor(0.7))
    assert_equal(a, c)
    assert_equal(a, e)
    assert not torch.equal(a, b)
    assert torch.isin(a, 2 * q.levels.float()).all()


def test_compile_fullgraph_random_strategy():
    """The seed is drawn with torch.randint, which Dynamo traces: no graph break, and under
    aot_eager the same draws as eager."""
    torch._dynamo.reset()
    q = Q.uniform(3)
    q.tables(torch.device("cpu"), torch.float32)
    cf = torch.compile(lambda x, s: F.ana(x, q, "normal", sigma=s, strategy="random"), backend="aot_eager",
                       fullgraph=True)
    x = torch.linspace(-4, 4, 1000)
    torch.manual_seed(11)
    a = cf(x, torch.tensor(0.7))
    torch.manual_seed(11)
    assert_equal(a, F.ana(x, q, "normal", sigma=0.7, strategy="random"))


# --- random strategy -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_random_reproducible(device, dtype):
    q = QUANTIZERS["uniform4"]
    x = torch.cat([torch.linspace(-9, 8, 4096, dtype=torch.float64), torch.tensor([-1e3, 1e3] * 8)])
    x = x.to(device=device, dtype=dtype)
    for noise in NOISES:
        kw = dict(noise=noise, mu=0.1, sigma=0.8, strategy="random", eps=1.0)
        torch.manual_seed(1234)
        a = F.ana(x, q, **kw)
        b = F.ana(x, q, **kw)
        torch.manual_seed(1234)
        c = F.ana(x, q, **kw)
        assert_equal(a, c, msg="torch.manual_seed reproduces")
        assert not torch.equal(a, b), "consecutive calls draw new noise"
        assert torch.isin(a.double().cpu(), q.levels).all(), "outputs are levels"
        # an explicit generator reproduces, and leaves the default generator alone
        torch.manual_seed(99)
        ref_next = torch.rand(3, device=device)
        torch.manual_seed(99)
        gen = torch.Generator(device=device).manual_seed(5)
        d = F.ana(x, q, generator=gen, **kw)
        assert torch.equal(torch.rand(3, device=device), ref_next), "the default generator was used"
        e = F.ana(x, q, generator=torch.Generator(device=device).manual_seed(5), **kw)
        assert_equal(d, e, msg="explicit generator reproduces")
        assert not torch.equal(d, F.ana(x, q, generator=gen, **kw))
        # the reference draws from torch.rand: equal in distribution only, but the hard parts agree
        # (the noise reaches at most 0.8 * 17 = 14 units: 1e3 away every draw gives the end level)
        far = x.double().cpu().abs() > 100
        assert far.sum() == 16
        assert_equal(a, R.ana(x, q, **kw), mask=far)


def test_random_seed_tensor_determines_output():
    """The op's output depends only on the (seed, stream) tensor and the element index."""
    q = QUANTIZERS["uniform4"]
    x = torch.linspace(-9, 8, 1001)
    args = lambda seed: _op_args(x, q, "normal", 0.0, 0.7, "random", True,  # noqa: E731
                                 torch.tensor(1.0, dtype=torch.float64), seed)
    a = torch.ops.anacuda.ana(*args(torch.tensor([123, 7])))
    b = torch.ops.anacuda.ana(*args(torch.tensor([123, 7])))
    c = torch.ops.anacuda.ana(*args(torch.tensor([123, 8])))
    d = torch.ops.anacuda.ana(*args(torch.tensor([124, 7])))
    assert_equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, d)
    # element i's noise does not depend on the tensor's size: a prefix gives the prefix
    xp = x[:333].clone()
    e = torch.ops.anacuda.ana(*(_op_args(xp, q, "normal", 0.0, 0.7, "random", True,
                                         torch.tensor(1.0, dtype=torch.float64), torch.tensor([123, 7]))))
    assert_equal(e, a[:333])


def test_random_independent_of_threads():
    """The CPU loop splits the elements into chunks per thread; an element's noise depends only on
    (seed, stream, index), so one thread and several give the same output (chunks that start
    inside a Philox block of 4 included: n is odd)."""
    q = QUANTIZERS["uniform4"]
    n = 3 * 16384 + 4099
    x = torch.linspace(-9, 8, n)
    args = _op_args(x, q, "logistic", 0.1, 0.9, "random", True, torch.tensor(1.0, dtype=torch.float64),
                    torch.tensor([77, 3]))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.anacuda.ana(*args)
        torch.set_num_threads(4)  # more threads than cores is fine: chunks are what matters
        assert torch.get_num_threads() == 4
        many = torch.ops.anacuda.ana(*args)
    finally:
        torch.set_num_threads(threads)
    assert_equal(many, one)
    # and a suffix view (offset data) gives the suffix of a fresh call on the copy, not shifted noise
    xs = x[5:].clone()
    ys = torch.ops.anacuda.ana(*_op_args(xs, q, "logistic", 0.1, 0.9, "random", True,
                                         torch.tensor(1.0, dtype=torch.float64), torch.tensor([77, 3])))
    assert_equal(torch.ops.anacuda.ana(*_op_args(x[5:], q, "logistic", 0.1, 0.9, "random", True,
                                                 torch.tensor(1.0, dtype=torch.float64),
                                                 torch.tensor([77, 3]))), ys)


def bernstein_radius(n: int, var, spread: float, delta: float):
    """t such that P(|mean of n iid draws - E| >= t) <= delta (Bernstein's inequality, draws within
    `spread` of their mean, variance var)."""
    L = math.log(2 / delta)
    b = spread * L / 3
    return (b + torch.sqrt(b * b + 2 * n * var * L)) / n


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("device", DEVICES)
def test_random_monte_carlo_mean(device, noise, dtype):
    """E[y] = the expectation forward (SPEC §4): 2000 draws of 64 elements, one call on the
    repeated input. Bounds from Bernstein's inequality with a total false-alarm rate of 1e-6."""
    q = QUANTIZERS["arbitrary"]
    mu, sigma, eps, n = -0.2, 0.8, 0.5, 2000
    u = torch.linspace(-3.5, 4.0, 64, dtype=torch.float64)
    x = (u * eps).to(device=device, dtype=dtype)
    y = F.ana(x.repeat(n), q, noise, mu, sigma, "random", eps=eps).double().cpu().reshape(n, 64) / eps
    assert torch.isin(y, q.levels).all()
    p = level_probs(u - mu, q, noise, sigma)
    mean = (p * q.levels).sum(-1)
    var = (p * q.levels**2).sum(-1) - mean**2
    # the expectation forward is that mean (checked against the reference elsewhere; here vs p)
    ex = F.ana(x, q, noise, mu, sigma, "expectation", eps=eps).double().cpu() / eps
    assert_close(ex, mean, dtype=dtype, scale=scale_of(q))
    spread = (q.levels.max() - q.levels.min()).item()
    per_elem = bernstein_radius(n, var.clamp(min=0), spread, 0.5e-6 / 64)
    err = (y.mean(0) - mean).abs()
    assert (err <= per_elem).all(), f"worst {(err - per_elem).max().item()} at {int((err - per_elem).argmax())}"
    # aggregate over all 128000 draws: sensitive to a small bias common to all elements
    total = bernstein_radius(n * 64, var.mean(), spread, 0.5e-6)
    assert abs((y - mean).mean().item()) <= total.item()


@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("device", DEVICES)
def test_random_level_frequencies(device, noise):
    """Level counts of one element over 20000 draws vs n p_k: Pearson's chi-square at a 1e-6
    false-alarm rate; levels with p_k = 0 must never appear."""
    q = Q.uniform(2)  # levels -2..1
    mu, sigma, eps, u, n = -0.1, 1.0, 0.5, 0.1, 20000
    x = torch.full((n,), u * eps, dtype=torch.float32, device=device)
    y = F.ana(x, q, noise, mu, sigma, "random", eps=eps).double().cpu() / eps
    p = level_probs(torch.tensor(u - mu, dtype=torch.float64), q, noise, sigma)
    counts = torch.stack([(y == lv).sum() for lv in q.levels]).double()
    assert counts.sum() == n, "outputs are levels"
    pos = p > 0
    assert (counts[~pos] == 0).all(), f"impossible levels drawn: {counts.tolist()} vs p {p.tolist()}"
    exp = n * p[pos]
    assert (exp > 50).all()  # the chi-square approximation holds
    chi2 = ((counts[pos] - exp) ** 2 / exp).sum().item()
    df = int(pos.sum()) - 1
    assert chi2 < stats.chi2.isf(1e-6, df), (chi2, counts.tolist(), exp.tolist())


@pytest.mark.parametrize("device", DEVICES)
def test_random_adjacent_elements_independent(device):
    """The 4 words of a Philox block (elements 4i..4i+3) are independent: with p = 1/2 per element,
    the 16 joint patterns of 4 neighbours are equally likely (chi-square, 1e-6)."""
    q = QUANTIZERS["binary"]
    n = 16000
    x = torch.zeros(4 * n, device=device)
    for offset in [0, 2]:  # aligned to the blocks, and straddling two blocks
        y = F.ana(x, q, "uniform", 0.0, 1.0, "random").cpu()
        bits = (y[offset:offset + 4 * (n - 1)].reshape(-1, 4) > 0).long()
        code = bits @ torch.tensor([1, 2, 4, 8])
        counts = torch.bincount(code, minlength=16).double()
        exp = counts.sum() / 16
        chi2 = ((counts - exp) ** 2 / exp).sum().item()
        assert chi2 < stats.chi2.isf(1e-6, 15), (offset, counts.tolist())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_stochastic_rounding(device, dtype):
    """SPEC §5: uniform noise sigma = 0.5, random = stochastic rounding: every output is floor(u) or
    floor(u) + 1 (clamped to the grid), and E[y] = u = the expectation forward (unbiased)."""
    q = QUANTIZERS["uniform4"]  # levels -8..7
    n = 1000
    u = torch.linspace(-7.9, 6.93, 64, dtype=torch.float64).to(dtype).double()  # exact in dtype
    x = u.to(device=device, dtype=dtype)
    y = F.ana(x.repeat(n), q, "uniform", 0.0, 0.5, "random").double().cpu().reshape(n, 64)
    lo = torch.floor(u)
    assert ((y == lo) | (y == lo + 1)).all()
    ex = F.ana(x, q, "uniform", 0.0, 0.5, "expectation").double().cpu()
    assert_close(ex, u, dtype=torch.float32 if dtype in HALF else dtype, scale=8)  # clamp(u, -8, 7) = u here
    var = (u - lo) * (1 - (u - lo))
    t = bernstein_radius(n, var, 1.0, 1e-6 / 64)
    assert ((y.mean(0) - u).abs() <= t).all()


# --- straight-through estimators (SPEC §5) ---------------------------------------------------------
STE_DTYPES = [torch.float64, torch.float32]


def _grad(x, **kw):
    x = x.detach().requires_grad_(True)
    y = F.ana(x, **kw)
    (g,) = torch.autograd.grad(y.sum(), x)
    return y, g


@pytest.mark.parametrize("dtype", STE_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_ste_hardtanh(device, dtype):
    """ternary, uniform sigma = 0.5, expectation: clamp(u, -1, 1), gradient 1 on [-1, 1), 0 outside.

    u = 1 exactly gets gradient 0, not 1 as SPEC §5's "|u| <= 1" reads: the uniform support is
    half-open (SPEC §3), and at u = 1 the only threshold in reach (0.5) sits at a - theta = sigma,
    the open end of its box. u = -1 exactly gets 1 (a - theta = -sigma, the closed end), and u = 0
    gets 1, not 2 (the boxes of the two thresholds tile). The neighbours of the box edges -1, 0, 1
    (and tiny magnitudes) are included: the boxes are decided by their edges, exactly."""
    u = torch.cat([torch.arange(-250, 251, dtype=torch.float64) / 100,
                   torch.tensor([1e-3, -1e-3, 0.999, -0.999, 1.001, -1.001, 2e-8, -2e-8, 4e-17, -4e-17])])
    x = torch.cat([u.to(dtype), _nextafters(torch.tensor([-1.0, 0.0, 1.0], dtype=dtype))]).to(device)
    y, g = _grad(x, quantizer=Q.ternary(), noise="uniform", sigma=0.5, strategy="expectation")
    assert_close(y, x.clamp(-1, 1))
    assert_equal(g, ((x >= -1) & (x < 1)).to(dtype))
    assert g[x == 1.0].unique().tolist() == [0] and g[x == -1.0].unique().tolist() == [1]
    assert g[x == 0.0].unique().tolist() == [1]
    # the same boxes inside a 255-threshold grid (the windowed path, not the small-grid one):
    # identity with gradient 1 everywhere in [-2.5, 2.5], box edges included
    y, g = _grad(x, quantizer=Q.uniform(8), noise="uniform", sigma=0.5, strategy="expectation")
    assert_close(y, x, scale=128)
    assert_equal(g, torch.ones_like(x))


def _nextafters(t: torch.Tensor):
    return torch.cat([t, torch.nextafter(t, t - 1), torch.nextafter(t, t + 1)])


@pytest.mark.parametrize("qargs", [(1,), (2,), (4,), (8,), (3, False), (3, True, True)], ids=str)
@pytest.mark.parametrize("dtype", STE_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_ste_uniform_mode_is_hard_stair(device, dtype, qargs):
    """Any uniform quantiser, uniform sigma = 0.5, mode: the hard stair exactly (inputs on, just
    below and just above every threshold included: on a tie the upper level wins), gradient 1 from
    the lowest level (included) to the highest (excluded: half-open support)."""
    q = Q.uniform(*qargs)
    lv = q.levels
    pts = torch.cat([torch.linspace(lv[0].item() - 2, lv[-1].item() + 2, 301, dtype=torch.float64), lv,
                     q.thresholds]).to(dtype)
    x = _nextafters(pts).to(device)
    y, g = _grad(x, quantizer=q, noise="uniform", sigma=0.5, strategy="mode")
    assert_equal(y, q(x))
    lo, hi = lv[0].item(), lv[-1].item()
    # The box edges of the gradient are the levels (theta +- 0.5), checked on and an ulp off them.
    assert_equal(g, ((x >= lo) & (x < hi)).to(dtype))


def _sign_points(dtype, device):
    """Multiples of 1/100 in [-2, 2] (exact 0 and +-1), tiny magnitudes, and the neighbours of -1,
    0 and 1: sign(-tiny) = -1 exactly (with a compact noise no wider than the gap, the mode is the
    hard stair; SPEC §4, whatever F(tiny) rounds to)."""
    x = torch.cat([torch.arange(-200, 201, dtype=torch.float64) / 100,
                   torch.tensor([1e-6, -1e-6, 2e-8, -2e-8, 1e-30, -1e-30, 0.0])]).to(dtype)
    return torch.cat([x, _nextafters(torch.tensor([-1.0, 0.0, 1.0], dtype=dtype))]).to(device)


@pytest.mark.parametrize("dtype", STE_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_ste_sign_larq(device, dtype):
    """binary, uniform sigma = 1, mode: sign with sign(0) = +1, gradient 1 on [-1, 1) (half-open:
    u = 1 gets 0, u = -1 gets 1)."""
    x = _sign_points(dtype, device)
    y, g = _grad(x, quantizer=Q.binary(), noise="uniform", sigma=1.0, strategy="mode")
    assert_equal(y, torch.where(x >= 0, 1.0, -1.0).to(dtype))
    assert_equal(g, ((x >= -1) & (x < 1)).to(dtype))
    assert g[x == 1].unique().tolist() == [0] and g[x == -1].unique().tolist() == [1]


@pytest.mark.parametrize("dtype", STE_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_ste_approxsign(device, dtype):
    """binary, triangular sigma = 1, mode: sign forward, gradient 2 - 2|u| on |u| <= 1 (Bi-Real)."""
    x = _sign_points(dtype, device)
    y, g = _grad(x, quantizer=Q.binary(), noise="triangular", sigma=1.0, strategy="mode")
    assert_equal(y, torch.where(x >= 0, 1.0, -1.0).to(dtype))
    assert_close(g, (2 - 2 * x.abs()).clamp(min=0), scale=2)
    assert g[x == 0].unique().tolist() == [2]


@pytest.mark.parametrize("dtype", STE_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_soft_stairs(device, dtype):
    """logistic: binary expectation = tanh(u / (2 sigma)); normal: binary expectation = 2 Phi(u/sigma) - 1;
    a tanh-shaped soft stair on a uniform grid (sum of shifted tanh)."""
    x = torch.linspace(-4, 4, 321, dtype=torch.float64)
    for sigma in [0.1, 0.5, 2.0]:
        xd = x.to(device=device, dtype=dtype)
        y = F.ana(xd, Q.binary(), "logistic", 0.0, sigma)
        assert_close(y, torch.tanh(x / (2 * sigma)).to(dtype), scale=1, msg=f"logistic sigma={sigma}")
        y = F.ana(xd, Q.binary(), "normal", 0.0, sigma)
        assert_close(y, torch.from_numpy(2 * sps.ndtr(x.numpy() / sigma) - 1).to(dtype), scale=1,
                     msg=f"normal sigma={sigma}")
        q = QUANTIZERS["uniform4"]
        y = F.ana(xd * 2, q, "logistic", 0.0, sigma)
        exp = q.levels[0] + sum(0.5 * (1 + torch.tanh((2 * x - t) / (2 * sigma))) for t in q.thresholds)
        assert_close(y, exp.to(dtype), scale=8, msg="soft stair")


# --- NaN and infinities (SPEC §7) -----------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["expectation", "mode", "random"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_nan_and_inf(device, dtype, strategy):
    for qname in ["ternary", "uniform8", "arbitrary64"]:
        q = QUANTIZERS[qname]
        x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.3, float("nan")] * 3, dtype=dtype,
                         device=device)
        eps = 0.5
        # the end levels as the kernel writes them: eps * q in the compute dtype, rounded to dtype
        q0, qK = ((q.levels[[0, -1]].to(compute_dtype(dtype)) * eps).to(dtype).double()).tolist()
        for noise in NOISES:
            for sigma, training in [(0.7, True), (0.0, True), (0.7, False), (50.0, True)]:
                xr = x.detach().requires_grad_(True)
                y = F.ana(xr, q, noise, 0.2, sigma, strategy, training=training, eps=eps)
                msg = f"{qname} {noise} sigma={sigma} training={training}"
                yc = y.detach().double().cpu()
                assert torch.isnan(yc[0::5]).all() and torch.isnan(yc[4::5]).all(), msg
                assert (yc[1::5] == qK).all() and (yc[2::5] == q0).all(), msg
                assert torch.isfinite(yc[3::5]).all(), msg
                (g,) = torch.autograd.grad(y, xr, torch.ones_like(y))
                gc = g.double().cpu()
                assert torch.isnan(gc[0::5]).all() and torch.isnan(gc[4::5]).all(), msg + " grad"
                assert (gc[1::5] == 0).all() and (gc[2::5] == 0).all(), msg + " grad"
                assert torch.isfinite(gc[3::5]).all(), msg + " grad"


# --- bad input -------------------------------------------------------------------------------------
def test_quantizer_errors():
    with pytest.raises(ValueError, match="strictly increasing"):
        Q([0, 1, 2], [0.5, -0.5])
    with pytest.raises(ValueError, match="strictly increasing"):
        Q([0, 1, 2], [0.5, 0.5])
    with pytest.raises(ValueError, match="K thresholds need K \\+ 1 levels"):
        Q([0, 1, 2, 3], [0.5, 1.5])
    with pytest.raises(ValueError, match="K thresholds need K \\+ 1 levels"):
        Q([0, 1], [0.5, 1.5])
    with pytest.raises(ValueError, match="levels must be finite"):
        Q([0, float("inf")], [0.5])
    with pytest.raises(ValueError, match="levels must be finite"):
        Q([float("nan"), 1], [0.5])
    with pytest.raises(ValueError, match="thresholds must be finite"):
        Q([0, 1], [float("nan")])
    with pytest.raises(ValueError, match="at least one threshold"):
        Q([1.0], [])
    with pytest.raises(ValueError, match="one-dimensional"):
        Q(torch.zeros(2, 2), torch.zeros(3))
    with pytest.raises(TypeError, match="sequence of numbers"):
        Q(["a", "b"], [0.5])
    with pytest.raises(ValueError, match="nbits must be an integer"):
        Q.uniform(0)
    with pytest.raises(ValueError, match="single level"):
        Q.uniform(1, signed=True, balanced=True)


def _ana(x=None, q=None, **kw):
    x = torch.linspace(-2, 2, 12).reshape(3, 4) if x is None else x
    return F.ana(x, q or Q.ternary(), **kw)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(sigma=-0.1), ValueError, "sigma must be >= 0"),
    (dict(sigma=float("nan")), ValueError, "sigma must be finite"),
    (dict(sigma=float("inf")), ValueError, "sigma must be finite"),
    (dict(sigma=torch.tensor(-0.5)), RuntimeError, "sigma must be >= 0"),
    (dict(sigma=torch.tensor(float("nan"))), RuntimeError, "sigma must be finite"),
    (dict(mu=float("nan")), ValueError, "mu must be finite"),
    (dict(mu=torch.tensor(float("inf"))), RuntimeError, "mu must be finite"),
    (dict(eps=0.0), ValueError, "eps must be > 0"),
    (dict(eps=-1.0), ValueError, "eps must be > 0"),
    (dict(eps=torch.tensor(0.0)), RuntimeError, "eps must be finite and > 0"),
    (dict(eps=torch.tensor(-2.0)), RuntimeError, "eps must be finite and > 0"),
    (dict(eps=torch.tensor([[1.0], [0.0], [2.0]])), RuntimeError, "every eps must be finite and > 0"),
    (dict(eps=torch.tensor([[1.0], [-3.0], [2.0]])), RuntimeError, "every eps must be finite and > 0"),
    (dict(eps=torch.tensor([[1.0], [float("nan")], [2.0]])), RuntimeError, "every eps must be finite and > 0"),
    (dict(eps=torch.ones(3)), RuntimeError, "does not broadcast"),
    (dict(eps=torch.ones(2, 1)), RuntimeError, "does not broadcast"),
    (dict(eps=torch.ones(1, 3, 4)), RuntimeError, "does not broadcast"),
    (dict(eps=torch.ones(3, 1, dtype=torch.int64)), TypeError, "eps must be a floating tensor"),
    (dict(noise="gaussian"), ValueError, "unknown noise 'gaussian'"),
    (dict(strategy="sample"), ValueError, "unknown strategy 'sample'"),
    (dict(mu=torch.tensor([0.0, 1.0])), ValueError, "mu must be a number or a one-element tensor"),
    (dict(sigma=torch.ones(2)), ValueError, "sigma must be a number or a one-element tensor"),
    (dict(sigma=torch.tensor(0.5, requires_grad=True)), ValueError, "sigma takes no gradient"),
    (dict(mu=torch.tensor(0.5, requires_grad=True)), ValueError, "mu takes no gradient"),
    (dict(eps=torch.tensor(0.5, requires_grad=True)), ValueError, "eps takes no gradient"),
    (dict(mu=torch.tensor(1)), TypeError, "mu must be a floating tensor"),
    (dict(sigma="0.5"), TypeError, "sigma must be a number or a tensor"),
    (dict(sigma=True), TypeError, "sigma must be a number or a tensor"),
    (dict(backward_noise=("uniform", 0.0)), TypeError, "a noise is a name or a \\(name, mu, sigma\\) tuple"),
    (dict(backward_noise=42), TypeError, "a noise is a name or a \\(name, mu, sigma\\) tuple"),
    (dict(backward_noise=("box", 0.0, 0.5)), ValueError, "unknown noise 'box'"),
    (dict(backward_noise=("uniform", 0.0, -0.5)), ValueError, "backward sigma must be >= 0"),
    (dict(backward_noise=("uniform", float("nan"), 0.5)), ValueError, "backward mu must be finite"),
    (dict(backward_noise=("uniform", 0.0, torch.tensor(-1.0))), RuntimeError, "backward sigma must be >= 0"),
    (dict(backward_noise=("uniform", torch.zeros(2), 0.5)), ValueError,
     "backward mu must be a number or a one-element tensor"),
    (dict(backward_noise=("uniform", 0.0, torch.tensor(0.5, requires_grad=True))), ValueError,
     "backward sigma takes no gradient"),
])
def test_bad_arguments(kw, exc, match):
    for strategy in ["expectation", "mode", "random"]:
        with pytest.raises(exc, match=match):
            _ana(**{"strategy": strategy, **kw})


def test_bad_inputs():
    with pytest.raises(TypeError, match="x must be float64, float32, float16 or bfloat16"):
        F.ana(torch.arange(5), Q.ternary())
    with pytest.raises(TypeError, match="x must be float64, float32, float16 or bfloat16"):
        F.ana(torch.ones(3, dtype=torch.complex64), Q.ternary())
    with pytest.raises(TypeError, match="x must be a tensor"):
        F.ana([1.0, 2.0], Q.ternary())
    with pytest.raises(TypeError, match="quantizer must be an anacuda.Quantizer"):
        F.ana(torch.ones(3), ([-1, 1], [0]))
    # the op itself checks what the wrapper would have caught
    x = torch.ones(4)
    q = Q.ternary()
    lv, th = q.tables(x.device, x.dtype)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    one = f64(1.0)
    ana = torch.ops.anacuda.ana
    with pytest.raises(RuntimeError, match="input must be float64, float32, float16 or bfloat16"):
        ana(torch.ones(4, dtype=torch.int32), lv, th, False, one, "normal", f64(0), f64(1), "mode", True, None,
            "normal", f64(0), f64(1))
    with pytest.raises(RuntimeError, match="unknown noise 'foo'"):
        ana(x, lv, th, False, one, "foo", f64(0), f64(1), "mode", True, None, "normal", f64(0), f64(1))
    with pytest.raises(RuntimeError, match="unknown noise 'bar'"):
        ana(x, lv, th, False, one, "normal", f64(0), f64(1), "mode", True, None, "bar", f64(0), f64(1))
    with pytest.raises(RuntimeError, match="unknown strategy 'foo'"):
        ana(x, lv, th, False, one, "normal", f64(0), f64(1), "foo", True, None, "normal", f64(0), f64(1))
    with pytest.raises(RuntimeError, match="the random strategy needs a seed tensor"):
        ana(x, lv, th, False, one, "normal", f64(0), f64(1), "random", True, None, "normal", f64(0), f64(1))
    with pytest.raises(RuntimeError, match="seed must be an int64 tensor of 2 elements"):
        ana(x, lv, th, False, one, "normal", f64(0), f64(1), "random", True, torch.tensor([1, 2, 3]), "normal",
            f64(0), f64(1))
    with pytest.raises(RuntimeError, match="levels and thresholds must be"):
        ana(x, lv.double(), th.double(), False, one, "normal", f64(0), f64(1), "mode", True, None, "normal",
            f64(0), f64(1))
    with pytest.raises(RuntimeError, match="needs K \\+ 1 levels"):
        ana(x, lv[:2], th, False, one, "normal", f64(0), f64(1), "mode", True, None, "normal", f64(0), f64(1))
    with pytest.raises(RuntimeError, match="thresholds must be a non-empty 1-D tensor"):
        ana(x, lv[:1], th[:0], False, one, "normal", f64(0), f64(1), "mode", True, None, "normal", f64(0),
            f64(1))
    with pytest.raises(RuntimeError, match="backward sigma must be >= 0"):
        ana(x, lv, th, False, one, "normal", f64(0), f64(1), "mode", True, None, "normal", f64(0), f64(-1))
    with pytest.raises(RuntimeError, match="the gradient must have the input's shape"):
        torch.ops.anacuda.ana_backward(torch.ones(5), x, lv, th, False, one, "normal", f64(0), f64(1))


# --- sizes and outputs -----------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["expectation", "mode", "random"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_sizes_and_output_properties(device, dtype, strategy):
    q = QUANTIZERS["uniform4"]
    cases = [
        torch.tensor(1.3, dtype=dtype, device=device),
        torch.empty(0, dtype=dtype, device=device),
        torch.empty(4, 0, 3, dtype=dtype, device=device),
        torch.linspace(-9, 9, 4099, dtype=dtype, device=device),
        torch.linspace(-9, 9, 4099 * 3, dtype=dtype, device=device).reshape(3, 4099).t(),
        torch.linspace(-9, 9, 20, dtype=dtype, device=device).reshape(4, 5)[:, ::2],
        torch.tensor([0.7], dtype=dtype, device=device).expand(3, 4),
    ]
    for x in cases:
        xr = x.detach().requires_grad_(True)
        y = F.ana(xr, q, "normal", 0.1, 0.6, strategy, eps=0.9)
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert y.is_contiguous()
        (g,) = torch.autograd.grad(y, xr, torch.ones_like(y))
        assert g.shape == x.shape and g.dtype == x.dtype
        if strategy != "random":
            r = R.ana(x, q, "normal", 0.1, 0.6, strategy, eps=0.9)
            if strategy == "expectation":
                assert_close(y, r, dtype, scale_of(q))
            else:
                assert_equal(y, r, mask=mode_safe(x, q, "normal", 0.1, 0.6, 0.9))
    y = F.ana(torch.tensor(1.3, dtype=dtype, device=device), q, "normal", 0.0, 0.6, "mode")
    assert y.dim() == 0 and y.item() == 1.0


@pytest.mark.parametrize("device", DEVICES)
def test_tensor_hyperparameters_equal_numbers(device):
    """mu, sigma, eps and the backward noise as 0-d tensors (float64 or float32, on the host or
    the device) give bit for bit what the same numbers give."""
    q = QUANTIZERS["arbitrary"]
    x = torch.linspace(-4, 4, 1001, dtype=torch.float64, device=device).requires_grad_(True)
    g = torch.cos(torch.arange(1001.0, dtype=torch.float64, device=device))
    for strategy in ["expectation", "mode"]:
        for dtype in [torch.float64, torch.float32]:
            xs = x.detach().to(dtype).requires_grad_(True)
            gs = g.to(dtype)
            for where in ["cpu", device]:
                t = lambda v: torch.tensor(v, dtype=torch.float64, device=where)  # noqa: E731
                a = F.ana(xs, q, "logistic", -0.25, 0.375, strategy, eps=0.75,
                          backward_noise=("triangular", 0.125, 1.5))
                b = F.ana(xs, q, "logistic", t(-0.25), t(0.375), strategy, eps=t(0.75),
                          backward_noise=("triangular", t(0.125), t(1.5)))
                assert_equal(a, b)
                (ga,) = torch.autograd.grad(a, xs, gs)
                (gb,) = torch.autograd.grad(b, xs, gs)
                assert_equal(ga, gb)


def test_input_not_modified():
    q = QUANTIZERS["uniform4"]
    x = torch.linspace(-5, 5, 100)
    x0 = x.clone()
    for strategy in ["expectation", "mode", "random"]:
        F.ana(x, q, "normal", 0.1, 0.6, strategy, eps=0.9)
        assert torch.equal(x, x0)


def test_kernel_window_far_thresholds():
    """Documented difference: normal/logistic thresholds beyond 6 sigma / 20 sigma (float32) or
    9 sigma / 40 sigma (float64) count as fully on/off. The error stays below 1e-8 absolute per
    unit step, even summed over the 255 steps of an 8-bit grid."""
    q = QUANTIZERS["uniform8"]
    u = torch.linspace(-140, 140, 2801, dtype=torch.float64)
    th, lv = q.thresholds, q.levels
    for noise, sigma in [("normal", 0.3), ("logistic", 0.2), ("logistic", 1.0)]:
        exact = lv[0] + R.cdf(noise, (u.unsqueeze(-1) - th) / sigma).sum(-1)
        for dtype, atol in [(torch.float64, 1e-8), (torch.float32, 1e-8 * 255 + 130 * 2.4e-7)]:
            y = F.ana(u.to(dtype), q, noise, 0.0, sigma).double()
            assert (y - exact).abs().max().item() < atol, (noise, sigma, dtype)


# --- CUDA-only properties (run on a GPU machine) --------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs the CUDA kernels and a GPU")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("noise", NOISES)
def test_cuda_random_matches_cpu_for_the_same_seed(noise, dtype):
    """SPEC §7: the same seed gives the same noise on CPU and CUDA. Uniform noise: bit for bit
    (sigma = 0.5: the products are exact, so no rounding can differ). Other noises: erfinv, log,
    sqrt may differ by an ulp between the CPU and CUDA libraries, which can move an element
    lying within an ulp of a threshold to the neighbouring level: at most 1 per 1e5 elements, and
    only to an adjacent level."""
    q = QUANTIZERS["uniform4"]
    n = 200_003  # odd: vector body and scalar tail on the GPU
    x = torch.linspace(-9.5, 8.5, n, dtype=torch.float64).to(dtype)
    eps = torch.tensor(1.0, dtype=torch.float64)
    seed = torch.tensor([123, 7])
    for mu, sigma in [(0.0, 0.5), (0.25, 1.0)]:
        ycpu = torch.ops.anacuda.ana(*_op_args(x, q, noise, mu, sigma, "random", True, eps, seed))
        for s in [seed, seed.cuda()]:
            ycuda = torch.ops.anacuda.ana(*_op_args(x.cuda(), q, noise, mu, sigma, "random", True, eps, s)).cpu()
            if noise == "uniform":
                assert_equal(ycuda, ycpu, msg=f"uniform sigma={sigma}")
            else:
                diff = ycuda != ycpu
                assert int(diff.sum()) <= math.ceil(n / 100_000), int(diff.sum())
                assert ((ycuda - ycpu).abs()[diff] == 1).all()
        # misaligned input on the GPU: scalar path, same words per element
        big = torch.cat([x[:1], x]).cuda()
        ym = torch.ops.anacuda.ana(*_op_args(big[1:], q, noise, mu, sigma, "random", True, eps, seed)).cpu()
        yc = torch.ops.anacuda.ana(*_op_args(x.cuda(), q, noise, mu, sigma, "random", True, eps, seed)).cpu()
        assert_equal(ym, yc, msg="misaligned vs aligned on the GPU")


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs the CUDA kernels and a GPU")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_cpu(dtype):
    """Deterministic strategies and the gradient: CUDA vs CPU kernel on the same input."""
    q = QUANTIZERS["uniform8"]
    x = (span(q, 0.5, -0.3, n=20011) * 0.7).to(dtype)
    g = torch.cos(torch.arange(x.numel(), dtype=torch.float64)).to(dtype)
    for noise in NOISES:
        for strategy in ["expectation", "mode"]:
            xc = x.clone().requires_grad_(True)
            xg = x.cuda().requires_grad_(True)
            yc = F.ana(xc, q, noise, -0.3, 0.5, strategy, eps=0.7)
            yg = F.ana(xg, q, noise, -0.3, 0.5, strategy, eps=0.7)
            if strategy == "expectation":
                assert_close(yg.cpu(), yc, dtype, scale_of(q, 0.7))
            else:
                assert_equal(yg.cpu(), yc, mask=mode_safe(x, q, noise, -0.3, 0.5, 0.7))
            (gc,) = torch.autograd.grad(yc, xc, g)
            (gg,) = torch.autograd.grad(yg, xg, g.cuda())
            assert_close(gg.cpu(), gc, dtype, grad_scale(q, noise, 0.5, g))


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs the CUDA kernels and a GPU")
def test_cuda_device_hyperparameters():
    """mu, sigma, eps as tensors on the GPU: same results as host values; invalid device values
    (which are never read on the host, SPEC §7: no synchronisation) give NaN instead of an error."""
    q = QUANTIZERS["arbitrary"]
    x = torch.linspace(-4, 4, 1001, device="cuda")
    d = lambda v: torch.tensor(v, device="cuda")  # noqa: E731
    for strategy in ["expectation", "mode"]:
        host = F.ana(x, q, "normal", -0.3, 0.5, strategy, eps=0.7)
        dev = F.ana(x, q, "normal", d(-0.3), d(0.5), strategy, eps=d(0.7))
        assert_equal(dev, host)
        e = torch.full((1001,), 0.7, device="cuda")
        assert_equal(F.ana(x, q, "normal", d(-0.3), d(0.5), strategy, eps=e), host)
        for bad in [dict(sigma=d(-1.0)), dict(sigma=d(float("nan"))), dict(mu=d(float("inf"))), dict(eps=d(0.0)),
                    dict(eps=torch.zeros(1001, device="cuda"))]:
            kw = {"noise": "normal", "mu": -0.3, "sigma": 0.5, "eps": 0.7, "strategy": strategy, **bad}
            assert torch.isnan(F.ana(x, q, **kw)).all(), bad


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(not CUDA, reason="needs the CUDA kernels and a GPU")
def test_cuda_more_than_2_31_elements():
    """SPEC §7: more than 2^31 elements (64-bit indexing), checked at the end of the tensor."""
    q = QUANTIZERS["ternary"]
    n = 2**31 + 37
    x = torch.empty(n, dtype=torch.float16, device="cuda")
    x[: n - 4096].fill_(0.3)
    tail = torch.linspace(-2, 2, 4096, dtype=torch.float16, device="cuda")
    x[n - 4096:] = tail
    for strategy in ["expectation", "mode"]:
        y = F.ana(x, q, "normal", 0.0, 0.5, strategy)
        assert_equal(y[n - 4096:], F.ana(tail, q, "normal", 0.0, 0.5, strategy))
        assert y[n - 4097].item() == F.ana(x[:1], q, "normal", 0.0, 0.5, strategy).item()
        del y
    seed = torch.tensor([5, 9])
    y = torch.ops.anacuda.ana(*_op_args(x, q, "uniform", 0.0, 0.5, "random", True,
                                        torch.tensor(1.0, dtype=torch.float64), seed))
    assert torch.isin(y[n - 4096:].float().cpu(), torch.tensor([-1.0, 0.0, 1.0])).all()
