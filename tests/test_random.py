"""The random strategy (SPEC §4, §7): reproducible from its seed, independent of threads, and
statistically right (Monte Carlo mean, level frequencies, independence of neighbours,
stochastic rounding)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from conftest import (
    DEVICES,
    DTYPES,
    F,
    HALF,
    NOISES,
    Q,
    QUANTIZERS,
    R,
    assert_close,
    assert_equal,
    level_probs,
    op_args,
    scale_of,
)

pytestmark = pytest.mark.usefixtures("one_intra_op_thread", "cpu_path")  # every test on both CPU paths


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
    args = lambda seed: op_args(x, q, "normal", 0.0, 0.7, "random", True,  # noqa: E731
                                 torch.tensor(1.0, dtype=torch.float64), seed)
    a = torch.ops.anacuda.ana(*args(torch.tensor([123, 7])))
    b = torch.ops.anacuda.ana(*args(torch.tensor([123, 7])))
    c = torch.ops.anacuda.ana(*args(torch.tensor([123, 8])))
    d = torch.ops.anacuda.ana(*args(torch.tensor([124, 7])))
    assert_equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, d)
    # element i's noise does not depend on the tensor's size: a prefix gives the prefix
    xp = x[:333].clone()
    e = torch.ops.anacuda.ana(*(op_args(xp, q, "normal", 0.0, 0.7, "random", True,
                                         torch.tensor(1.0, dtype=torch.float64), torch.tensor([123, 7]))))
    assert_equal(e, a[:333])


def test_random_independent_of_threads():
    """The CPU loop splits the elements into chunks per thread; an element's noise depends only on
    (seed, stream, index), so one thread and several give the same output (chunks that start
    inside a Philox block of 4 included: n is odd)."""
    q = QUANTIZERS["uniform4"]
    n = 3 * 16384 + 4099
    x = torch.linspace(-9, 8, n)
    args = op_args(x, q, "logistic", 0.1, 0.9, "random", True, torch.tensor(1.0, dtype=torch.float64),
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
    ys = torch.ops.anacuda.ana(*op_args(xs, q, "logistic", 0.1, 0.9, "random", True,
                                         torch.tensor(1.0, dtype=torch.float64), torch.tensor([77, 3])))
    assert_equal(torch.ops.anacuda.ana(*op_args(x[5:], q, "logistic", 0.1, 0.9, "random", True,
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
