"""CUDA-only properties (run on a GPU machine; skipped without one): the same seed gives the same
noise on CPU and CUDA, CUDA matches CPU, hyper-parameters on the device, more than 2^31 elements."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import (
    CUDA,
    DTYPES,
    F,
    NOISES,
    QUANTIZERS,
    assert_close,
    assert_equal,
    grad_scale,
    mode_safe,
    op_args,
    scale_of,
    span,
)

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


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
        ycpu = torch.ops.anacuda.ana(*op_args(x, q, noise, mu, sigma, "random", True, eps, seed))
        for s in [seed, seed.cuda()]:
            ycuda = torch.ops.anacuda.ana(*op_args(x.cuda(), q, noise, mu, sigma, "random", True, eps, s)).cpu()
            if noise == "uniform":
                assert_equal(ycuda, ycpu, msg=f"uniform sigma={sigma}")
            else:
                diff = ycuda != ycpu
                assert int(diff.sum()) <= math.ceil(n / 100_000), int(diff.sum())
                assert ((ycuda - ycpu).abs()[diff] == 1).all()
        # misaligned input on the GPU: scalar path, same words per element
        big = torch.cat([x[:1], x]).cuda()
        ym = torch.ops.anacuda.ana(*op_args(big[1:], q, noise, mu, sigma, "random", True, eps, seed)).cpu()
        yc = torch.ops.anacuda.ana(*op_args(x.cuda(), q, noise, mu, sigma, "random", True, eps, seed)).cpu()
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
    y = torch.ops.anacuda.ana(*op_args(x, q, "uniform", 0.0, 0.5, "random", True,
                                        torch.tensor(1.0, dtype=torch.float64), seed))
    assert torch.isin(y[n - 4096:].float().cpu(), torch.tensor([-1.0, 0.0, 1.0])).all()
