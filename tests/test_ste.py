"""The straight-through-estimator presets of anacuda.ste against the published formulas they
reproduce (SPEC §5): ApproxSign (Bi-Real Net), Larq's ste_sign, the clipped STE of
torch.fake_quantize_per_tensor_affine, stochastic rounding, the DSQ-like tanh stair, the
Gaussian (probit) stair, the 2019 ANA algorithm and hardtanh. Where a preset differs from its
published counterpart by a convention (round half to even, the ends of a clipping interval), the
difference is asserted at exactly those points, so that the docstrings of anacuda/ste.py that
describe it cannot rot. Last, SwishSign (BNN+) is shown not to be a special case.

The expected values are computed here from the formulas (math, scipy), not with anacuda.reference.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from scipy import special as sps
from scipy import stats

from conftest import DEVICES, QUANTIZERS, anacuda, assert_close, assert_equal

from anacuda import reference as R
from anacuda import ste

F = anacuda.functional
Q = anacuda.Quantizer

FLOATS = [torch.float64, torch.float32]


def forward_and_grad(est, u, eps=1.0, device="cpu", dtype=torch.float64, **kw):
    """(y, dy/dx) of a preset at x = u * eps (u in units of eps), as tensors of `dtype` on the host."""
    x = (u.to(torch.float64) * eps).to(device=device, dtype=dtype).requires_grad_()
    y = est(x, eps=eps, **kw)
    (g,) = torch.autograd.grad(y.sum(), x)
    return y.detach().cpu(), g.cpu()


def grid(lo, hi, n=2001, extra=()):
    """About n points from lo to hi on a dyadic grid (multiples of a power of two, exact in float32
    and float64, so 0 is exactly 0; a linspace gives e.g. -4.2e-17 instead, see
    test_mode_sign_of_tiny_negative_inputs), plus the `extra` points."""
    step = 2.0 ** math.floor(math.log2((hi - lo) / (n - 1)))
    k = torch.arange(math.ceil(lo / step), math.floor(hi / step) + 1, dtype=torch.float64)
    return torch.cat([k * step, torch.tensor(list(extra), dtype=torch.float64)])


def sign_plus(u):
    """Larq's sign: -1 for x < 0, +1 for x >= 0 (sign(0) = +1; -0.0 counts as 0)."""
    return torch.where(u >= 0, 1.0, -1.0).to(torch.float64)


# --- ApproxSign (Bi-Real Net) ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS)
def test_approx_sign_is_bireal_approxsign(device, dtype):
    est = ste.approx_sign()
    u = grid(-2.5, 2.5, extra=(0.0, -0.0, 1e-6, -1e-6, 1.0, -1.0, 0.5, -0.5, 1 + 1e-6, -1 - 1e-6))
    u = u.to(dtype).double()  # points exactly representable in dtype
    y, g = forward_and_grad(est, u, device=device, dtype=dtype)
    assert_equal(y, sign_plus(u).to(dtype), msg="ApproxSign forward = sign, sign(0) = +1")
    published = torch.where(u.abs() <= 1, 2 - 2 * u.abs(), torch.zeros_like(u))  # Liu et al. 2018, eq. (5)
    assert_close(g, published.to(dtype), msg="ApproxSign gradient = 2 - 2|x| on |x| <= 1, 0 outside")
    assert g[u == 0].eq(2).all() and g[u.abs() > 1].eq(0).all()


# --- Larq ste_sign -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS)
def test_ste_sign_is_larq_ste_sign(device, dtype):
    est = ste.ste_sign()
    u = grid(-2.5, 2.5, extra=(0.0, -0.0, 1e-6, -1e-6, -1.0, 1.0 - 2**-20, 1.0 + 2**-20, -1.0 - 2**-20))
    y, g = forward_and_grad(est, u, device=device, dtype=dtype)
    assert_equal(y, sign_plus(u).to(dtype), msg="ste_sign forward = sign, sign(0) = +1")
    expected = ((u >= -1) & (u < 1)).to(dtype)  # Larq's |x| <= 1, with the half-open box of SPEC §3
    assert_equal(g, expected, msg="ste_sign gradient = 1 on [-1, 1)")
    assert g[u == -1].eq(1).all()


@pytest.mark.parametrize("dtype,tiny", [(torch.float64, [-1e-300, -1e-30, -1e-17]),
                                        (torch.float32, [-1e-30, -1e-12, -1e-9])])
def test_mode_sign_of_tiny_negative_inputs(device, dtype, tiny):
    """Mode compares level probabilities in a form rounding cannot tie (stair.h): an input a hair
    below the threshold keeps its level, in the kernel and in the reference."""
    u = torch.tensor(tiny, dtype=dtype, device=device)
    for est in (ste.ste_sign(), ste.approx_sign()):
        assert_equal(est(u).cpu(), -torch.ones(len(tiny), dtype=dtype), msg=f"{est.name} of {tiny}")
        ref = R.ana(u, est.quantizer, est.noise, est.mu, est.sigma, est.strategy)
        assert_equal(ref.cpu(), -torch.ones(len(tiny), dtype=dtype), msg=f"reference {est.name} of {tiny}")


@pytest.mark.parametrize("dtype,u0", [(torch.float64, -4.163336342344337e-17), (torch.float64, -2.0**-54),
                                      (torch.float32, -2.0**-25), (torch.float32, -2e-8)])
def test_box_tiling_just_below_zero(device, dtype, u0):
    """The uniform boxes are tested by their edges (theta - sigma <= a < theta + sigma), so they
    tile exactly where a - theta would round differently on either side of 0."""
    u = torch.tensor([u0], dtype=torch.float64)
    for est in (ste.hardtanh_ste(), ste.clipped_ste(Q.uniform(4)), ste.ana2019(sigma=0.1)):
        _, g = forward_and_grad(est, u, device=device, dtype=dtype)
        assert g.tolist() == [1.0], f"{est.name}: gradient at u = {u0!r} ({dtype}) is {g.item()}, expected 1"
        x = u.to(device=device, dtype=dtype).clone().requires_grad_()
        bn = est.backward_noise or (est.noise, est.mu, est.sigma)
        R.ana(x, est.quantizer, est.noise, est.mu, est.sigma, est.strategy, backward_noise=bn).sum().backward()
        assert x.grad.tolist() == [1.0], f"reference {est.name}: gradient at u = {u0!r} ({dtype}) is {x.grad.item()}"


def test_ste_sign_documented_difference_at_plus_one():
    """ste.py: Larq's gradient is 1 on the closed |x| <= 1; anacuda's box is half-open, so at
    x = +1 exactly Larq gives 1 and anacuda 0 (and both give 1 at x = -1)."""
    u = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    _, g = forward_and_grad(ste.ste_sign(), u)
    larq = (u.abs() <= 1).double()
    assert larq.tolist() == [1.0, 1.0]
    assert g.tolist() == [1.0, 0.0]


# --- the clipped STE against torch.fake_quantize_per_tensor_affine ------------------------------
FQ_GRIDS = [(2, True), (4, True), (8, True), (4, False)]
DELTA = 1e-3  # distance (in units of scale) kept from ties and from the mask's edges


def _fq_setup(nbits, signed):
    quantizer = Q.uniform(nbits, signed=signed)
    lv = quantizer.levels
    return quantizer, int(lv[0]), int(lv[-1])


def _torch_fq(x, scale, qmin, qmax):
    xt = x.detach().clone().requires_grad_()
    y = torch.fake_quantize_per_tensor_affine(xt, scale, 0, qmin, qmax)
    (g,) = torch.autograd.grad(y.sum(), xt)
    return y.detach().cpu(), g.cpu()


@pytest.mark.parametrize("nbits,signed", FQ_GRIDS)
@pytest.mark.parametrize("dtype,scale", [(torch.float32, 0.1), (torch.float32, 0.037), (torch.float64, 0.1)])
def test_clipped_ste_equals_torch_fake_quantize(device, nbits, signed, dtype, scale):
    """Forward and gradient equal torch's fake quantisation away from the two documented places:
    ties u = k + 1/2 and the half step [qmin - 1/2, qmin) / [qmax, qmax + 1/2) beyond the range
    (both asserted in the next tests)."""
    quantizer, qmin, qmax = _fq_setup(nbits, signed)
    if dtype == torch.float64:
        # torch keeps the scale in float32 even for float64 input (documented in ste.py): give both
        # sides the float32 value so that they see the same quantum.
        scale = float(torch.tensor(scale, dtype=torch.float32))
    gen = torch.Generator().manual_seed(nbits)
    u = torch.cat([
        torch.linspace(qmin - 3, qmax + 3, 4001, dtype=torch.float64),
        (qmin - 3) + (qmax - qmin + 6) * torch.rand(4000, generator=gen, dtype=torch.float64),
        torch.arange(qmin, qmax + 1, dtype=torch.float64),  # the levels
    ])
    frac = u - torch.floor(u)
    keep = (frac - 0.5).abs() > DELTA  # away from ties
    keep &= ~((u > qmin - 0.5 - DELTA) & (u < qmin + DELTA))  # away from the lower mask edge
    keep &= ~((u > qmax - DELTA) & (u < qmax + 0.5 + DELTA))  # away from the upper mask edge
    u = u[keep]
    x = (u * scale).to(device=device, dtype=dtype)
    assert ((x.double().cpu() / scale - u).abs() < DELTA / 2).all()  # rounding x kept the margins
    y_t, g_t = _torch_fq(x, scale, qmin, qmax)
    xa = x.detach().clone().requires_grad_()
    y_a = ste.clipped_ste(quantizer)(xa, eps=scale)
    (g_a,) = torch.autograd.grad(y_a.sum(), xa)
    if dtype == torch.float64:
        # torch also computes a float64 fake quantisation in float32: its output is the product
        # level * scale rounded to float32. anacuda's float64 product is exact (a level of at most
        # 8 bits times a 24-bit scale), so rounding it to float32 must give torch's value exactly.
        assert_equal(y_a.detach().cpu().float(), y_t.float(), msg="clipped STE forward vs fake_quantize (float64)")
    else:
        assert_close(y_a.detach().cpu(), y_t, scale=scale_levels(quantizer, scale),
                     msg="clipped STE forward vs fake_quantize")
    assert_equal(g_a.cpu(), g_t, msg="clipped STE gradient vs fake_quantize mask")
    # Not vacuous: both regions of the gradient are present.
    assert g_t.eq(1).any() and g_t.eq(0).any()


def scale_levels(quantizer, scale):
    return max(1.0, quantizer.levels.abs().max().item()) * scale


@pytest.mark.parametrize("nbits,signed", FQ_GRIDS)
def test_clipped_ste_documented_difference_at_ties(device, nbits, signed):
    """ste.py: at ties u = k + 1/2 anacuda goes to the upper level (SPEC §1); torch rounds half to
    even, so the two differ exactly where k is even. A power-of-two scale makes the ties exact."""
    quantizer, qmin, qmax = _fq_setup(nbits, signed)
    scale = 0.125
    k = torch.arange(qmin, qmax, dtype=torch.float64)
    x = ((k + 0.5) * scale).to(device=device, dtype=torch.float32)
    y_t, g_t = _torch_fq(x, scale, qmin, qmax)
    y_a = ste.clipped_ste(quantizer)(x, eps=scale).cpu()
    assert_equal(y_a, ((k + 1) * scale).float(), msg="anacuda: a tie goes up")
    half_even = torch.where(k.remainder(2) == 0, k, k + 1)
    assert_equal(y_t, (half_even * scale).float(), msg="torch: round half to even")
    differs = y_a != y_t
    assert torch.equal(differs, k.remainder(2) == 0)
    assert g_t.eq(1).all()  # inside the range both pass the gradient at ties
    _, g_a = forward_and_grad(ste.clipped_ste(quantizer), k + 0.5, eps=scale, device=device, dtype=torch.float32)
    assert g_a.eq(1).all()


@pytest.mark.parametrize("nbits,signed", FQ_GRIDS)
def test_clipped_ste_documented_difference_beyond_range(device, nbits, signed):
    """ste.py: torch's mask passes the gradient on [qmin - 1/2, qmax + 1/2) (the rounded input in
    [qmin, qmax], half to even), anacuda's on [qmin, qmax): on [qmin - 1/2, qmin) and
    [qmax, qmax + 1/2) torch's gradient is 1 and anacuda's 0. The forward agrees there (clamp)."""
    quantizer, qmin, qmax = _fq_setup(nbits, signed)
    scale = 0.125
    inside_torch_only = torch.tensor(
        [qmin - 0.5, qmin - 0.25, qmin - 2**-10, qmax, qmax + 2**-10, qmax + 0.25, qmax + 0.5 - 2**-10],
        dtype=torch.float64,
    )
    both_zero = torch.tensor([qmin - 0.5 - 2**-10, qmax + 0.5, qmax + 0.5 + 2**-10], dtype=torch.float64)
    both_one = torch.tensor([qmin, qmin + 2**-10, qmax - 2**-10], dtype=torch.float64)
    u = torch.cat([inside_torch_only, both_zero, both_one])
    x = (u * scale).to(device=device, dtype=torch.float32)
    y_t, g_t = _torch_fq(x, scale, qmin, qmax)
    y_a, g_a = forward_and_grad(ste.clipped_ste(quantizer), u, eps=scale, device=device, dtype=torch.float32)
    assert_equal(y_a, y_t, msg="forward at the mask edges")
    n, m = inside_torch_only.numel(), both_zero.numel()
    assert g_t[:n].eq(1).all() and g_a[:n].eq(0).all(), (g_t[:n], g_a[:n])
    assert g_t[n:n + m].eq(0).all() and g_a[n:n + m].eq(0).all()
    assert g_t[n + m:].eq(1).all() and g_a[n + m:].eq(1).all()


def test_clipped_ste_gradient_is_one_on_the_half_open_range():
    """SPEC §5: gradient 1 between the lowest and the highest level, [q_0, q_K), also for a
    balanced and an unsigned grid."""
    for quantizer in (Q.uniform(3, signed=True, balanced=True), Q.uniform(3, signed=False), Q.ternary()):
        lo, hi = quantizer.levels[0].item(), quantizer.levels[-1].item()
        u = grid(lo - 2, hi + 2, extra=(lo, hi, lo - 2**-20, hi - 2**-20))
        y, g = forward_and_grad(ste.clipped_ste(quantizer), u)
        assert_equal(g, ((u >= lo) & (u < hi)).double(), msg=f"{quantizer}")
        hard = torch.floor(u + 0.5).clamp(lo, hi)  # round half up, clamp
        assert_equal(y, hard, msg=f"{quantizer} forward")


def test_grid_presets_reject_non_uniform_grids():
    with pytest.raises(ValueError, match="spaced by exactly 1"):
        ste.clipped_ste(Q.binary())
    with pytest.raises(ValueError, match="spaced by exactly 1"):
        ste.clipped_ste(Q([0.0, 1.0, 3.0], [0.5, 2.0]))
    with pytest.raises(ValueError, match="halfway between"):
        ste.clipped_ste(Q([-1.0, 0.0, 1.0], [-0.3, 0.3]))
    with pytest.raises(ValueError, match="stochastic_rounding.*spaced by exactly 1"):
        ste.stochastic_rounding(Q([0.0, 1.0, 3.0], [0.5, 2.0]))
    with pytest.raises(TypeError, match="anacuda.Quantizer"):
        ste.clipped_ste([-1, 0, 1])
    with pytest.raises(TypeError, match="anacuda.Quantizer"):
        ste.dsq_like("ternary", 0.2)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        ste.dsq_like(Q.ternary(), -0.1)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        ste.gaussian_smoothing(Q.ternary(), -1.0)
    with pytest.raises(ValueError, match="unknown noise"):
        dataclasses.replace(ste.hardtanh_ste(), noise="cauchy")
    with pytest.raises(ValueError, match="unknown strategy"):
        dataclasses.replace(ste.hardtanh_ste(), strategy="median")
    # a shifted unit grid is still a uniform grid
    ste.clipped_ste(Q([0.0, 1.0, 2.0], [0.5, 1.5]))


# --- stochastic rounding -------------------------------------------------------------------------
def test_stochastic_rounding_is_unbiased_and_two_point(device):
    """Every sample is one of the two levels around u (clamped to the range) and the Monte-Carlo
    mean is u (clamped): a two-point law is fixed by its mean, so this is stochastic rounding in
    distribution. Bound: samples lie in an interval of width 1 (in units of eps), so by Hoeffding
    P(|mean - E| >= d) <= 2 exp(-2 N d^2); with d chosen for 1e-6 over all M points, a correct
    kernel fails this test less than once in a million seeds. A biased rule (round to nearest)
    misses by up to 0.5 >> d."""
    quantizer = Q.uniform(4, signed=True)
    est = ste.stochastic_rounding(quantizer)
    eps = 0.1
    u = torch.cat([torch.linspace(-7.93, 6.91, 37, dtype=torch.float64),
                   torch.tensor([-8.0, 0.0, 7.0, -9.3, 8.2], dtype=torch.float64)])
    M, N = u.numel(), 50_000
    d = math.sqrt(math.log(2 * M / 1e-6) / (2 * N))
    assert d < 0.015
    x = (u * eps).reshape(M, 1).expand(M, N).to(device)
    gen = torch.Generator(device=device).manual_seed(1234)
    y = est(x, eps=eps, generator=gen).cpu()
    lo = torch.floor(u).clamp(-8, 7).reshape(M, 1)
    hi = torch.ceil(u).clamp(-8, 7).reshape(M, 1)
    k = torch.round(y / eps)
    assert ((k - y / eps).abs() < 1e-9).all(), "samples are levels times eps"
    assert ((k == lo) | (k == hi)).all(), "every sample is one of the two neighbouring levels"
    mean = k.mean(1)
    target = u.clamp(-8, 7)
    err = (mean - target).abs()
    assert (err < d).all(), f"worst |mean - u| = {err.max().item():.4g} at u = {u[err.argmax()].item()} (bound {d:.4g})"
    # and E[y] is the expectation forward of the same noise (SPEC §5), which is clamp(u, q_0, q_K)
    expect = F.ana(u * eps, quantizer, noise="uniform", sigma=0.5, strategy="expectation", eps=eps)
    assert_close(expect, target * eps, msg="expectation forward = clamp(u, q_0, q_K)")
    # the gradient is the clipped STE's
    _, g = forward_and_grad(est, u, eps=eps, device=device, generator=gen)
    assert_equal(g, ((u >= -8) & (u < 7)).double(), msg="stochastic rounding gradient")


# --- DSQ-like and Gaussian soft stairs -----------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.1, 0.3, 1.0])
def test_dsq_like_binary_is_tanh(device, sigma):
    est = ste.dsq_like(Q.binary(), sigma)
    u = grid(-5, 5, extra=(0.0,))
    y, g = forward_and_grad(est, u, device=device)
    t = torch.tensor([math.tanh(v / (2 * sigma)) for v in u.tolist()], dtype=torch.float64)
    dt = torch.tensor([1 / (2 * sigma * math.cosh(v / (2 * sigma)) ** 2) for v in u.tolist()], dtype=torch.float64)
    assert_close(y, t, msg="DSQ-like binary forward = tanh(x / (2 sigma))")
    assert_close(g, dt, msg="DSQ-like binary gradient = sech^2(x / (2 sigma)) / (2 sigma)")


def test_dsq_like_multilevel_is_a_tanh_stair(device):
    """On a unit grid every step is (1 + tanh((u - theta_i) / (2 sigma))) / 2: a tanh-shaped stair."""
    quantizer, sigma = Q.uniform(3, signed=True), 0.15
    u = grid(-6, 5)
    y, _ = forward_and_grad(ste.dsq_like(quantizer, sigma), u, device=device)
    th = quantizer.thresholds.tolist()
    expected = torch.tensor([-4 + sum((1 + math.tanh((v - t) / (2 * sigma))) / 2 for t in th) for v in u.tolist()],
                            dtype=torch.float64)
    assert_close(y, expected, scale=4.0, msg="DSQ-like stair")


@pytest.mark.parametrize("sigma", [0.1, 0.25511, 1.0])
def test_gaussian_smoothing_binary_is_probit(device, sigma):
    est = ste.gaussian_smoothing(Q.binary(), sigma)
    u = grid(-5, 5, extra=(0.0,))
    y, g = forward_and_grad(est, u, device=device)
    expected = torch.from_numpy(2 * stats.norm.cdf(u.numpy() / sigma) - 1)
    dexpected = torch.from_numpy(2 * stats.norm.pdf(u.numpy() / sigma) / sigma)
    assert_close(y, expected, msg="Gaussian binary forward = 2 Phi(x / sigma) - 1")
    assert_close(g, dexpected, msg="Gaussian binary gradient = 2 phi(x / sigma) / sigma")


# --- the 2019 algorithm --------------------------------------------------------------------------
def _uniform_expectation(u, quantizer, sigma):
    lv, th = quantizer.levels.tolist(), quantizer.thresholds.tolist()
    out = []
    for v in u.tolist():
        acc = lv[0]
        for i, t in enumerate(th):
            dq = lv[i + 1] - lv[i]
            if sigma == 0:
                acc += dq * (v >= t)
            else:
                acc += dq * min(1.0, max(0.0, (v - t) / (2 * sigma) + 0.5))
        out.append(acc)
    return torch.tensor(out, dtype=torch.float64)


def _box_derivative(u, quantizer, half_width=0.5):
    lv, th = quantizer.levels.tolist(), quantizer.thresholds.tolist()
    out = []
    for v in u.tolist():
        out.append(sum((lv[i + 1] - lv[i]) / (2 * half_width) * (-half_width <= v - t < half_width)
                       for i, t in enumerate(th)))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("quantizer", [Q.ternary(), Q.uniform(3, signed=True), Q([0.0, 1.0, 3.0], [0.4, 2.5])],
                         ids=["ternary", "int3", "irregular"])
@pytest.mark.parametrize("sigma", [0.5, 0.3, 0.1, 0.0])
def test_ana2019_forward_sigma_backward_fixed(device, quantizer, sigma):
    est = ste.ana2019(quantizer, sigma)
    lv = quantizer.levels
    u = grid(lv[0].item() - 2, lv[-1].item() + 2, n=1601, extra=tuple(quantizer.thresholds.tolist()))
    y, g = forward_and_grad(est, u, device=device)
    assert_close(y, _uniform_expectation(u, quantizer, sigma), scale=4.0, msg=f"ana2019 forward, sigma {sigma}")
    assert_equal(g, _box_derivative(u, quantizer), msg=f"ana2019 gradient, sigma {sigma}")
    if quantizer == Q.ternary():
        assert_equal(g, ((u >= -1) & (u < 1)).double(), msg="ternary: 1 on [-1, 1)")


def test_ana2019_sigma_as_tensor_and_with_sigma(device):
    est = ste.ana2019().with_sigma(torch.tensor(0.2, dtype=torch.float64))
    assert est.backward_noise == anacuda.Noise("uniform", 0.0, 0.5)
    u = grid(-2, 2, n=401)
    y, g = forward_and_grad(est, u, device=device)
    assert_close(y, _uniform_expectation(u, Q.ternary(), 0.2), msg="tensor sigma")
    assert_equal(g, ((u >= -1) & (u < 1)).double())


# --- hardtanh ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS)
def test_hardtanh_ste_is_clamp(device, dtype):
    est = ste.hardtanh_ste()
    u = grid(-3, 3, extra=(-1.0, 1.0, 0.5, -0.5, 1 - 2**-20, -1 - 2**-20))
    y, g = forward_and_grad(est, u, device=device, dtype=dtype)
    assert_close(y, u.clamp(-1, 1).to(dtype), msg="hardtanh forward = clamp(x, -1, 1)")
    assert_equal(g, ((u >= -1) & (u < 1)).to(dtype), msg="hardtanh gradient = 1 on [-1, 1)")
    # against torch's hardtanh, away from the ends of the interval
    xt = u.to(dtype).clone().requires_grad_()
    yt = torch.nn.functional.hardtanh(xt)
    (gt,) = torch.autograd.grad(yt.sum(), xt)
    assert_close(y, yt.detach(), msg="vs torch hardtanh forward")
    away = (u.abs() - 1).abs() > 1e-9
    assert_equal(g[away], gt[away], msg="vs torch hardtanh gradient away from +-1")


def test_hardtanh_ste_documented_difference_at_the_ends():
    """ste.py: torch's hardtanh passes the gradient on the open (-1, 1): at x = -1 it gives 0 and
    anacuda 1; a clipped identity written |x| <= 1 gives 1 at x = +1, anacuda 0."""
    u = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    _, g = forward_and_grad(ste.hardtanh_ste(), u)
    xt = u.clone().requires_grad_()
    (gt,) = torch.autograd.grad(torch.nn.functional.hardtanh(xt).sum(), xt)
    assert gt.tolist() == [0.0, 0.0]
    assert g.tolist() == [1.0, 0.0]


# --- SwishSign is not a special case ---------------------------------------------------------------
def swish_sign(x, beta):
    """SS_beta(x) = 2 sigmoid(beta x) (1 + beta x (1 - sigmoid(beta x))) - 1 (Darabi et al., BNN+)."""
    s = torch.sigmoid(beta * x)
    return 2 * s * (1 + beta * x * (1 - s)) - 1


def larq_swish_sign_grad(x, beta):
    """Larq's swish_sign pseudo-gradient: beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x))."""
    bx = beta * x
    return beta * (2 - bx * torch.tanh(bx / 2)) / (1 + torch.cosh(bx))


def _all_presets():
    return [
        ste.clipped_ste(Q.uniform(2)),
        ste.clipped_ste(Q.uniform(4, signed=False)),
        ste.ste_sign(),
        ste.approx_sign(),
        ste.stochastic_rounding(Q.uniform(3)),
        ste.dsq_like(Q.binary(), 0.2),
        ste.dsq_like(Q.uniform(3), 0.13648),
        ste.gaussian_smoothing(Q.ternary(), 0.25511),
        ste.gaussian_smoothing(Q([0.0, 0.5, 3.0], [0.2, 1.0]), 0.4),
        ste.ana2019(sigma=0.5),
        ste.ana2019(Q.uniform(3), sigma=0.1),
        ste.ana2019(sigma=0.0),
        ste.hardtanh_ste(),
        ste.lsq(Q.uniform(4)),
    ]


def test_swish_sign_is_not_a_special_case(device):
    """SwishSign's derivative goes negative (for |x| a little beyond 2.4 / beta); the gradient of
    any ANA configuration with non-decreasing levels is a sum of Δq_i >= 0 times densities >= 0,
    so it is never negative: no preset, noise or sigma reproduces SwishSign."""
    beta = 5.0
    xs = torch.linspace(-3, 3, 6001, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(swish_sign(xs, beta).sum(), xs)
    assert_close(larq_swish_sign_grad(xs.detach(), beta), auto, msg="Larq's formula is SS_beta's derivative")
    x0 = torch.tensor([0.5, -0.5, 1.0], dtype=torch.float64)
    neg = larq_swish_sign_grad(x0, beta)
    assert (neg < 0).all(), neg  # beta x = 2.5: 2 - 2.5 tanh(1.25) = -0.12 < 0
    assert larq_swish_sign_grad(xs.detach(), beta).min() < -0.1

    u = grid(-10, 10, n=4001, extra=(-1.0, 0.0, 1.0, 0.5, -0.5))
    for est in _all_presets():
        assert bool((est.quantizer.levels.diff() >= 0).all())
        _, g = forward_and_grad(est, u, device=device, generator=torch.Generator(device=device).manual_seed(0))
        assert not torch.isnan(g).any(), est
        assert (g >= 0).all(), f"{est}: gradient {g.min().item()} < 0 at u = {u[g.argmin()].item()}"
        assert g.max() > 0, est  # not vacuous
    # and beyond the presets: every noise, sigma and strategy on a few stairs
    for quantizer in (Q.binary(), Q.ternary(), Q([0.0, 0.5, 3.0], [0.2, 1.0])):
        for noise in anacuda.NOISES:
            for sigma in (0.05, 0.5, 2.0):
                x = u.to(device).requires_grad_()
                y = F.ana(x, quantizer, noise=noise, sigma=sigma, strategy="expectation", mu=0.3)
                (g,) = torch.autograd.grad(y.sum(), x)
                assert (g >= 0).all(), (quantizer, noise, sigma, g.min().item())


# --- the Estimator object ------------------------------------------------------------------------
def test_estimator_api(device):
    u = grid(-3, 3, n=301).to(device)
    for est in _all_presets():
        kw = est.kwargs()
        assert set(kw) == {"quantizer", "noise", "mu", "sigma", "strategy", "backward_noise"}
        gen_a = torch.Generator(device=device).manual_seed(7)
        gen_b = torch.Generator(device=device).manual_seed(7)
        assert_equal(est(u, eps=0.5, generator=gen_a), F.ana(u, eps=0.5, generator=gen_b, **kw), msg=est.name)
        # eval: every preset is the hard stair
        assert_equal(est(u, training=False), est.quantizer(u), msg=f"{est.name} eval")
        assert est.source and isinstance(est.exact, bool)
        assert est.name in repr(est)
    est = ste.hardtanh_ste()
    with pytest.raises(dataclasses.FrozenInstanceError):
        est.sigma = 0.1
    assert est.with_sigma(0.1).sigma == 0.1 and est.sigma == 0.5
    assert ste.dsq_like(Q.ternary(), 0.2).exact is False
    for name, ctor in ste.PRESETS.items():
        made = ctor(Q.uniform(2), 0.3) if name in ("dsq_like", "gaussian_smoothing") else (
            ctor(Q.uniform(2)) if name in ("clipped_ste", "stochastic_rounding", "lsq") else ctor())
        assert made.name == name


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
