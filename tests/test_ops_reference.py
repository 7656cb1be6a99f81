"""The fused ANA op (torch.ops.anacuda.ana / ana_backward through anacuda.functional.ana) against
the executable semantics (anacuda.reference): forward and backward for every quantiser, noise,
strategy and dtype, eps (scalar and per channel), input layouts, exact ties, the coded backward,
NaN and infinities (SPEC §7), output sizes and properties.

Run: python3 -m pytest tests -x -q. CUDA tests carry the `cuda` mark and skip without a GPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import (
    DEVICES,
    DTYPES,
    F,
    LAYOUTS,
    MUS,
    NOISES,
    Q,
    QUANTIZERS,
    R,
    SIGMAS,
    anacuda,
    assert_close,
    assert_equal,
    check_forward,
    compute_dtype,
    grad_scale,
    make_layout,
    mode_safe,
    scale_of,
    span,
)

pytestmark = pytest.mark.usefixtures("one_intra_op_thread", "cpu_path")  # every test on both CPU paths


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
                    direct = torch.ops.anacuda._ana_backward(g, x.detach(), lv, th, q.uniform_grid, et, "uniform",
                                                            f64(mu_b), f64(sigma_b))
                    assert_equal(gx, direct, msg=f"{qname} sigma_b={sigma_b} mu_b={mu_b} coded={coded}")
                    (gr,) = torch.autograd.grad(R.ana(x, q, **kw), x, g)
                    assert_close(gx, gr, dtype, grad_scale(q, "uniform", max(sigma_b, 1e-3), g))


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
