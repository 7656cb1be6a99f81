"""The "identity" backward (docs/semantics.md §5): dL/du = dL/dy everywhere (±inf included), NaN
where the input is NaN; valid only as a backward noise. Kernels against the reference on both CPU
paths, the op's registration (opcheck, torch.compile) and its bad inputs."""

from __future__ import annotations

import pytest
import torch

from conftest import DEVICES, DTYPES, F, QUANTIZERS, R, assert_equal, op_args, span

pytestmark = pytest.mark.usefixtures("one_intra_op_thread", "cpu_path")  # every test on both CPU paths


def _inputs(q, dtype, device, eps=1.0):
    v = span(q, 0.5) * eps
    v = torch.cat([v, torch.tensor([float("nan"), float("inf"), float("-inf"), 0.0, -0.0], dtype=torch.float64)])
    return v.to(dtype=dtype, device=device)


@pytest.mark.parametrize("qname", ["binary", "ternary", "uniform4", "uniform8", "arbitrary", "arbitrary64"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("forward", [("uniform", 0.5, "expectation"), ("normal", 0.3, "mode"), ("logistic", 0.0, "mode")])
@pytest.mark.parametrize("device", DEVICES)
def test_identity_backward_matches_reference(device, forward, dtype, qname):
    q = QUANTIZERS[qname]
    noise, sigma, strategy = forward
    for eps in [1.0, 0.37, torch.tensor([[0.5], [2.0]], dtype=torch.float64, device=device)]:
        e = eps if not isinstance(eps, torch.Tensor) else 1.0
        x0 = _inputs(q, dtype, device, e)
        x0 = x0[: x0.numel() // 2 * 2].reshape(2, -1) if isinstance(eps, torch.Tensor) else x0
        g = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype).to(device)
        grads = []
        for fn in (F.ana, R.ana):
            x = x0.clone().requires_grad_(True)
            y = fn(x, q, noise, 0.1, sigma, strategy, eps=eps, backward_noise="identity")
            y.backward(g)
            grads.append(x.grad)
        assert_equal(grads[0], grads[1], msg=f"identity backward, eps {eps}")
        # the gradient itself: the upstream one, NaN only where x is NaN
        nan = torch.isnan(x0)
        assert_equal(grads[0][~nan], g[~nan], msg="passes unchanged")
        assert torch.isnan(grads[0][nan]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_identity_backward_op_directly(device):
    """_ana_backward with noise_b = "identity" (what autograd calls), channels_last included."""
    q = QUANTIZERS["uniform4"]
    x = torch.randn(2, 3, 4, 5, device=device).to(memory_format=torch.channels_last) * 5
    x[0, 1, 2, 3] = float("nan")
    g = torch.randn(2, 3, 4, 5, device=device).to(memory_format=torch.channels_last)
    lv, th = q.tables(x.device, x.dtype)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    gx = torch.ops.anacuda._ana_backward(g, x, lv, th, q.uniform_grid, f64(0.5), "identity", f64(0.0), f64(0.5))
    assert gx.is_contiguous(memory_format=torch.channels_last)
    expected = torch.where(torch.isnan(x), x, g)
    assert_equal(gx, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_identity_opcheck(device):
    q = QUANTIZERS["uniform4"]
    x = (torch.randn(6, 9, generator=torch.Generator().manual_seed(3)) * 4).to(device).requires_grad_(True)
    for eps in [torch.tensor(0.75, dtype=torch.float64), torch.full((6, 1), 0.5, device=device)]:
        for strategy in ["expectation", "mode"]:
            args = op_args(x, q, "normal", 0.1, 0.5, strategy, True, eps, None, "identity")
            torch.library.opcheck(torch.ops.anacuda.ana.default, args)
    lv, th = q.tables(x.device, x.dtype)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    g = torch.randn(x.shape, device=device)
    torch.library.opcheck(torch.ops.anacuda._ana_backward.default,
                          (g, x.detach(), lv, th, q.uniform_grid, f64(0.75), "identity", f64(0.0), f64(0.5)))


def test_identity_compiles_once():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    q = QUANTIZERS["ternary"]
    cnt = CompileCounterWithBackend("aot_eager")

    def f(x, sigma):
        return F.ana(x, q, "uniform", sigma=sigma, backward_noise="identity")

    cf = torch.compile(f, backend=cnt, fullgraph=True)
    for s in [0.5, 0.2, 0.0]:
        x = torch.linspace(-3, 3, 61, requires_grad=True)
        y = cf(x, torch.tensor(s))
        (gx,) = torch.autograd.grad(y, x, torch.cos(x.detach()))
        xe = x.detach().clone().requires_grad_(True)
        (ge,) = torch.autograd.grad(f(xe, torch.tensor(s)), xe, torch.cos(x.detach()))
        assert_equal(y, f(x.detach(), torch.tensor(s)))
        assert_equal(gx, ge)
        assert_equal(gx, torch.cos(x.detach()))
    assert cnt.frame_count == 1


def test_identity_is_a_backward_only():
    q = QUANTIZERS["ternary"]
    x = torch.randn(8)
    with pytest.raises(ValueError, match="backward noise only"):
        F.ana(x, q, "identity")
    with pytest.raises(ValueError, match="backward noise only"):
        R.ana(x, q, "identity")
    with pytest.raises(ValueError, match="no mu or sigma"):
        F.ana(x, q, backward_noise=("identity", 0.0, 1.0))
    with pytest.raises(ValueError, match="unknown noise"):
        F.ana(x, q, backward_noise="identical")
    lv, th = q.tables(x.device, x.dtype)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    with pytest.raises(RuntimeError, match="backward noise only"):
        torch.ops.anacuda.ana(x, lv, th, False, f64(1.0), "identity", f64(0.0), f64(0.5), "expectation", True, None,
                              "uniform", f64(0.0), f64(0.5))
    # the coded backward is the uniform noise's only
    with pytest.raises(RuntimeError, match="uniform backward noise"):
        torch.ops.anacuda._ana_coded(x, lv, th, False, f64(1.0), "uniform", f64(0.0), f64(0.5), "expectation", True,
                                     None, "identity", f64(0.0), f64(0.5))


def test_identity_in_a_layer():
    """The layers take it through Noise.of, as functional.ana does."""
    from anacuda.nn import ANAActivation

    layer = ANAActivation(QUANTIZERS["ternary"], noise="uniform", sigma=0.3, backward_noise="identity")
    x = torch.linspace(-4, 4, 33, requires_grad=True)
    layer(x).sum().backward()
    assert_equal(x.grad, torch.ones_like(x))
