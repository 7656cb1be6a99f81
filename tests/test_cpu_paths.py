"""The CPU kernels' two paths (anacuda._testing): "fast", the CPU's own loops, and "functors",
the GPU's code (csrc/common/functors.h in the CUDA loop's index arithmetic). The op suite runs on
both (conftest.cpu_path); here the switch itself, and the fast paths against the functors element
for element wherever they compute differently (the 256-entry table of the coded backward, Q by a
chain of selects, the box code and the blend over blocks, batched Philox rounds, per-channel eps
runs): bit for bit where both evaluate the same arithmetic, within rounding where the fast path
sums all thresholds or calls SIMD exp/erfc (SLEEF) instead of libm."""

from __future__ import annotations

import itertools

import pytest
import torch

from conftest import QUANTIZERS, F, Q, R, anacuda, assert_close, assert_equal, scale_of, span
from anacuda import _testing
from anacuda._testing import use_cpu_path

ops = torch.ops.anacuda
pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def f64(v):
    return torch.tensor(v, dtype=torch.float64)


def both(fn):
    """fn() on the fast path and on the functor path."""
    with use_cpu_path("fast"):
        fast = fn()
    with use_cpu_path("functors"):
        functors = fn()
    return fast, functors


def test_the_switch():
    start = _testing.cpu_path()  # "fast" unless ANACUDA_CPU_PATH says otherwise
    with use_cpu_path("functors"):
        assert _testing.cpu_path() == "functors" and anacuda._C._cpu_path() == "functors"
        with use_cpu_path("fast"):
            assert _testing.cpu_path() == "fast"
        assert _testing.cpu_path() == "functors"
    assert _testing.cpu_path() == start
    with pytest.raises(ValueError, match="'fast' or 'functors'"):
        with use_cpu_path("gpu"):
            pass
    with pytest.raises(ValueError, match="'fast' or 'functors'"):
        anacuda._C._set_cpu_path("gpu")
    assert _testing.cpu_path() == start


def test_the_fixture_switches(cpu_path):
    assert _testing.cpu_path() == cpu_path


def _inputs(q, dtype, sigma, mu):
    """Points over the quantiser's range with the box edges, NaN and infinities, 3 channels of
    eps (1.25 a power of two's neighbour, 0.5 and 2 powers of two), in NCHW and channels_last."""
    u = torch.cat([span(q, sigma, mu, n=331), f64([float("nan"), float("inf"), -float("inf"), 0.0])])
    u = u[: 6 * (u.numel() // 6)].reshape(2, 3, 1, -1)  # N, C, H, W
    eps = f64([0.5, 1.25, 2.0]).reshape(3, 1, 1)
    x = (u * eps).to(dtype)
    return [(x, eps), (x.contiguous(memory_format=torch.channels_last), eps), (x, f64(0.75))]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_coded_backward_table_is_the_functor(dtype):
    """The fast path's 256-entry table of code_derivative against the functor, for every byte
    (forged codes included), every K <= 15 and sigma, on gradients with 0, NaN and infinities."""
    grads = torch.tensor([1.0, -0.75, 0.0, 3.5, float("nan"), float("inf"), -float("inf")], dtype=dtype)
    codes = torch.arange(256, dtype=torch.uint8).repeat_interleave(grads.numel())
    g = grads.repeat(256)
    for k in [1, 2, 3, 7, 15]:
        levels = Q([float(v) * (1 + 0.1 * v) for v in range(k + 1)], [v + 0.5 for v in range(k)])
        lv, _ = levels.tables(g.device, dtype)
        for sigma in [0.0, 1e-40, 0.3, 0.5, 2.0]:
            fast, functors = both(lambda: ops._ana_backward_code(g, codes, lv, f64(sigma)))
            assert_equal(fast, functors, zero_sign=True, msg=f"K={k} sigma={sigma}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("qname", ["binary", "ternary", "uniform4", "arbitrary"])
def test_code_and_coded_forward_are_the_functors(dtype, qname):
    """_ana_code (block counts of boxes) and _ana_coded (the fused pass on the fast path, or the
    forward and code in two passes) against UniformBoxCode and AnaCoded: the codes bit for bit,
    the forward bit for bit where both compute the same arithmetic, else within rounding."""
    q = QUANTIZERS[qname]
    lv, th = q.tables(torch.device("cpu"), dtype)
    for (sigma_b, mu_b), (noise, strategy, sigma) in itertools.product(
            [(0.0, 0.0), (0.5, 0.0), (0.3, -0.2), (2.0, 0.1)],
            [("uniform", "mode", 0.2), ("uniform", "expectation", 0.5), ("triangular", "mode", 0.6),
             ("normal", "expectation", 0.4), ("logistic", "mode", 0.5), ("uniform", "random", 0.5),
             ("normal", "random", 0.3)]):
        for x, eps in _inputs(q, dtype, sigma_b, mu_b):
            code_args = (x, lv, th, eps, f64(mu_b), f64(sigma_b))
            fast, functors = both(lambda: ops._ana_code(*code_args))
            assert_equal(fast, functors, zero_sign=True, msg=f"code sigma_b={sigma_b}")
            seed = torch.tensor([3, 4]) if strategy == "random" else None
            args = (x, lv, th, q.uniform_grid, eps, noise, f64(0.1), f64(sigma), strategy, True, seed, "uniform",
                    f64(mu_b), f64(sigma_b))
            (yf, cf), (yg, cg) = both(lambda: ops._ana_coded(*args))
            msg = f"{noise} {strategy} sigma_b={sigma_b}"
            assert_equal(cf, cg, zero_sign=True, msg=msg)
            assert_equal(cf, fast, zero_sign=True, msg=msg)
            if noise in ("uniform", "triangular") or strategy == "random":
                assert_equal(yf, yg, zero_sign=True, msg=msg)
            else:
                assert_close(yf, yg, dtype, scale_of(q, 2.0), msg=msg)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_forward_backward_and_blend_are_the_functors(dtype):
    """The block forward (hard stair by selects, expectation over all thresholds, batched Philox),
    the smooth-noise window path, the block backward and blending against the functors."""
    for qname in ["ternary", "uniform4", "arbitrary", "uniform8"]:
        q = QUANTIZERS[qname]
        lv, th = q.tables(torch.device("cpu"), dtype)
        for x, eps in _inputs(q, dtype, 0.5, 0.0):
            blend = both(lambda: ops.alpha_blend(x, lv, th, q.uniform_grid, eps, f64(0.3)))
            assert_equal(*blend, zero_sign=True, msg=f"{qname} blend")
            for noise, strategy in itertools.product(anacuda.NOISES, ["expectation", "mode", "random"]):
                seed = torch.tensor([9, 2]) if strategy == "random" else None
                for training in [True, False]:
                    args = (x, lv, th, q.uniform_grid, eps, noise, f64(-0.1), f64(0.45), strategy, training, seed,
                            noise, f64(0.1), f64(0.45))
                    fast, functors = both(lambda: ops.ana(*args))
                    msg = f"{qname} {noise} {strategy} training={training}"
                    if not training or noise in ("uniform", "triangular") or strategy == "random":
                        if noise == "logistic" and strategy == "random":  # SIMD log vs libm: a level flips
                            assert (fast != functors).float().mean().item() < 0.01, msg  # at an ulp from a threshold
                        else:
                            assert_equal(fast, functors, zero_sign=True, msg=msg)
                    elif strategy == "expectation":
                        assert_close(fast, functors, dtype, scale_of(q, 2.0), msg=msg)
                g = torch.cos(torch.arange(x.numel(), dtype=torch.float64)).reshape(x.shape).to(dtype)
                bargs = (g, x, lv, th, q.uniform_grid, eps, noise, f64(0.1), f64(0.45))
                fast, functors = both(lambda: ops._ana_backward(*bargs))
                if noise in ("uniform", "triangular"):
                    assert_equal(fast, functors, zero_sign=True, msg=f"{qname} {noise} backward")
                else:
                    assert_close(fast, functors, dtype, 10 * scale_of(q, 2.0), msg=f"{qname} {noise} backward")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_arithmetic_grid_hard_stair_is_the_functor(dtype):
    """The hard stair of an evenly spaced grid with many thresholds (cpu/arithmetic_grid.h: Q by
    arithmetic, corrected by exact comparisons) against count_le's walk, bit for bit: on every
    threshold and the floats next to it, in eval and in mode with a box no wider than half a step,
    for grids with a power-of-two step (taken; exact in real arithmetic, where one comparison
    corrects the estimate, or only after rounding, where two do) and one without (the functors'
    own loop)."""
    grids = {
        "uniform8": Q.uniform(8),
        "unsigned8": Q.uniform(8, signed=False),
        "half_steps": Q([0.5 * k for k in range(-40, 41)], [0.5 * k + 0.25 for k in range(-40, 40)]),
        "step_0.3": Q([0.3 * k for k in range(50)], [0.3 * k + 0.15 for k in range(49)]),
        # theta_0 + t s equals each stored float32 threshold only after rounding: the two-sided correction
        "rounded": Q([float(k) for k in range(41)],
                     (torch.tensor(0.1, dtype=torch.float32) + torch.arange(40, dtype=torch.float32)).tolist()),
    }
    for name, q in grids.items():
        lv, th = q.tables(torch.device("cpu"), dtype)
        t = th.to(torch.float64)
        pts = torch.cat([t, torch.nextafter(t, t - 1), torch.nextafter(t, t + 1), span(q, 0.5, 0.0, n=301),
                         f64([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e30, -1e30])])
        for mu in [0.0, 0.25]:
            for eps in [f64(1.0), f64(0.75), f64([0.5, 2.0, 1.25]).reshape(3, 1)]:
                x = ((pts + mu).reshape(1, -1) * eps).to(dtype)
                for noise, strategy, training, sigma in [("uniform", "mode", False, 0.0), ("uniform", "mode", True, 0.5),
                                                         ("triangular", "mode", True, 0.25),
                                                         ("normal", "expectation", True, 0.0)]:
                    args = (x, lv, th, q.uniform_grid, eps, noise, f64(mu), f64(sigma), strategy, training, None,
                            noise, f64(mu), f64(max(sigma, 0.5)))
                    fast, functors = both(lambda: ops.ana(*args))
                    assert_equal(fast, functors, zero_sign=True, msg=f"{name} mu={mu} eps={eps.tolist()} {noise} {strategy} {training}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_identity_backward_is_the_functor(dtype):
    """The identity backward over runs of one eps (all_thresholds.h) against IdentityBackward's
    element-by-element lookup: the gradient where x is a number, NaN where it is NaN; per tensor,
    per channel in NCHW and channels_last, per token (runs of 1)."""
    q = Q.uniform(8)
    lv, th = q.tables(torch.device("cpu"), dtype)
    for x, eps in _inputs(q, dtype, 0.5, 0.0) + [(torch.randn(7, 3, dtype=dtype), f64([[0.5], [2.0], [1.5]] * 2 + [[3.0]]))]:
        g = torch.cos(torch.arange(x.numel(), dtype=torch.float64)).reshape(x.shape).to(dtype)
        args = (g, x, lv, th, q.uniform_grid, eps, "identity", f64(0.0), f64(0.0))
        fast, functors = both(lambda: ops._ana_backward(*args))
        assert_equal(fast, functors, zero_sign=True, msg=f"eps shape {tuple(eps.shape)}")
        assert torch.isnan(fast).sum() == torch.isnan(x).sum()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_learned_eps_backward_is_the_functor(dtype):
    """A learned eps's backward on the fast path (cpu/learned_scale.cpp: LSQ and its relatives, a
    hard forward with a uniform backward noise, blocks over every threshold) against the functors'
    loop, bit for bit: grad_x and eps's gradient, per channel and per tensor, on thresholds, box
    edges, NaN and infinities; and the configurations the fast path leaves to the functors."""
    for qname in ["ternary", "uniform4", "uniform5", "arbitrary", "uniform8"]:
        q = QUANTIZERS[qname]
        lv, th = q.tables(torch.device("cpu"), dtype)
        # LSQ's ties (u = theta exactly, x = u eps exact for eps a power of two) and their neighbours
        t = (th.to(torch.float64) if dtype == torch.float64 else th.to(torch.float32))
        ties = torch.cat([t, torch.nextafter(t, t - 1), torch.nextafter(t, t + 1)]).to(torch.float64)
        u = torch.cat([span(q, 0.5, 0.1, n=301), ties,
                       f64([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e30, -1e30])])
        u = u[: 6 * (u.numel() // 6)]
        eps_c = f64([0.5, 1.25, 2.0, 0.75, 1.0, 3.0]).reshape(6, 1)
        cases = [(u.reshape(6, -1), eps_c), (u, f64(0.75)), (u.reshape(2, 3, -1), f64([0.5, 1.25, 2.0]).reshape(3, 1))]
        for x64, eps in cases:
            x = (x64 * eps).to(dtype)
            g = torch.cos(torch.arange(x.numel(), dtype=torch.float64)).reshape(x.shape).to(dtype)
            for noise, strategy, sigma, training, mu, mu_b, sigma_b in [
                    ("uniform", "mode", 0.5, True, 0.0, 0.0, 0.5),      # LSQ (ste.lsq)
                    ("uniform", "mode", 0.2, True, 0.1, -0.1, 0.3),
                    ("normal", "expectation", 0.3, False, 0.1, 0.0, 0.5),  # eval: the hard stair
                    ("normal", "expectation", 0.3, True, 0.0, 0.0, 0.5)]:  # smooth: the functors' loop
                args = (g, x, lv, th, q.uniform_grid, eps.to(dtype if dtype != torch.bfloat16 else torch.float32),
                        noise, f64(mu), f64(sigma), strategy, training, None, "uniform", f64(mu_b), f64(sigma_b))
                (gx_f, ge_f), (gx_g, ge_g) = both(lambda: ops._ana_backward_eps(*args))
                msg = f"{qname} {noise} {strategy} sigma={sigma} training={training} eps {tuple(eps.shape)}"
                assert_equal(gx_f, gx_g, zero_sign=True, msg=msg)
                assert_equal(ge_f, ge_g, zero_sign=True, msg=msg)


def test_normal_cdf_of_the_simd_path_is_within_its_bound():
    """The fast path's float32 normal CDF (cpu/vec_math.h: Abramowitz & Stegun 7.1.26, within
    1.5e-7 of erfc): a ternary expectation within 5e-7 of the float64 result beyond the output's
    own rounding (SLEEF's erfcf: 2e-7), a 4-bit one within 3e-6, over a dense grid and windows of
    1 to 25 thresholds."""
    x = torch.linspace(-9, 9, 400_001, dtype=torch.float64)
    # float32 sums of up to 25 CDFs round on their own: SLEEF's erfcf gives 2.2e-6 on the 4-bit grid too
    for q, bound in ((Q.ternary(), 5e-7), (Q.uniform(4), 3e-6)):
        for sigma in (0.05, 0.25, 1.0, 3.0):
            y32 = F.ana(x.float(), q, "normal", 0.1, sigma, "expectation").double()
            y64 = R.ana(x.float().double(), q, "normal", 0.1, sigma, "expectation")
            err = ((y32 - y64).abs() - y64.abs() * 2.0**-24).max().item()  # beyond the output's rounding
            assert err < bound, (q.levels.numel(), sigma, err)
