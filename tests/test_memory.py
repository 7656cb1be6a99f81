"""What the backward keeps: the input, or a 1-byte code for a uniform backward noise."""

import pytest
import torch

from conftest import DEVICES

from anacuda import Quantizer
from anacuda import functional as F
from anacuda import reference as R


def saved_bytes(fn, x):
    """Bytes of the tensors autograd saves for the backward of fn(x) (the tiny quantiser tables
    and hyper-parameters included)."""
    total = []

    def pack(t):
        total.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(total)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("q", [Quantizer.binary(), Quantizer.ternary(), Quantizer.uniform(4)], ids=["K1", "K2", "K15"])
def test_uniform_backward_saves_one_byte_per_element(device, q):
    x = torch.randn(1 << 16, device=device, requires_grad=True)
    coded = saved_bytes(lambda t: F.ana(t, q, "uniform", 0.0, 0.5, "mode"), x)
    assert x.numel() <= coded < x.numel() + 1024  # one byte per element, plus the tables
    full = saved_bytes(lambda t: F.ana(t, q, "normal", 0.0, 0.5, "mode"), x)
    assert x.numel() * 4 <= full < x.numel() * 4 + 1024  # no more than its input


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("eps_shape", [(), (64, 1)], ids=["per_tensor", "per_channel"])
def test_learned_eps_saves_the_input_never_a_k_wide_temporary(device, eps_shape):
    """A learned eps needs u in the backward (SPEC §8): the input is saved, once, and nothing of
    the grid's width; a fixed eps keeps the 1-byte code."""
    q = Quantizer.uniform(4)
    x = torch.randn(64, 1024, device=device, requires_grad=True)
    eps = torch.full(eps_shape, 0.3, device=device, requires_grad=True)
    learned = saved_bytes(lambda t: F.ana(t, q, "uniform", 0.0, 0.5, "mode", eps=eps), x)
    assert x.numel() * 4 <= learned < x.numel() * 4 + 4096
    fixed = saved_bytes(lambda t: F.ana(t, q, "uniform", 0.0, 0.5, "mode", eps=eps.detach()), x)
    assert x.numel() <= fixed < x.numel() + 4096


def test_eight_bit_saves_the_input():
    x = torch.randn(1 << 14, requires_grad=True)
    b = saved_bytes(lambda t: F.ana(t, Quantizer.uniform(8), "uniform", 0.0, 0.5, "mode"), x)
    assert x.numel() * 4 <= b < x.numel() * 4 + 8192


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sigma", [0.0, 0.25, 0.5, 1.7])
def test_coded_gradient_equals_reference(device, dtype, sigma):
    q = Quantizer([-2.0, -0.5, 0.0, 1.0, 3.0], [-1.3, -0.2, 0.4, 2.0])  # uneven: boxes overlap for large sigma
    x0 = torch.linspace(-4, 4, 4099, dtype=torch.float64)
    x0 = torch.cat([x0, torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=torch.float64)])
    x = x0.to(device=device, dtype=dtype).requires_grad_()
    g = torch.cos(torch.nan_to_num(x0, nan=0.0, posinf=0.0, neginf=0.0) * 3).to(device=device, dtype=dtype)
    kw = dict(noise="logistic", mu=0.1, sigma=0.3, strategy="expectation", eps=0.7, backward_noise=("uniform", -0.2, sigma))
    (gx,) = torch.autograd.grad(F.ana(x, q, **kw), x, g)
    # bit for bit the uncoded backward kernel ...
    lv, th = q.tables(x.device, x.dtype)
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    full = torch.ops.anacuda._ana_backward(g, x.detach(), lv, th, q.uniform_grid, t(0.7), "uniform", t(-0.2), t(sigma))
    torch.testing.assert_close(gx, full, rtol=0, atol=0, equal_nan=True)
    # ... and the reference up to the rounding of 1/sigma
    xr = x.detach().clone().requires_grad_()
    (gr,) = torch.autograd.grad(R.ana(xr, q, **kw), xr, g)
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(gx, gr, rtol=tol, atol=tol, equal_nan=True)
    assert torch.isnan(gx[-3]) and gx[-2] == 0 and gx[-1] == 0


def test_opcheck_code_ops():
    q = Quantizer.uniform(3)
    x = torch.randn(6, 7).t()
    lv, th = q.tables(x.device, x.dtype)
    args = (x, lv, th, torch.tensor(0.5), torch.tensor(0.1), torch.tensor(0.5))
    torch.library.opcheck(torch.ops.anacuda._ana_code, args)
    code = torch.ops.anacuda._ana_code(*args)
    assert code.dtype == torch.uint8 and code.shape == x.shape
    torch.library.opcheck(torch.ops.anacuda._ana_backward_code, (torch.randn(7, 6), code, lv, torch.tensor(0.5)))


def test_code_op_rejects_large_grids_and_bad_codes():
    q = Quantizer.uniform(5)
    x = torch.randn(8)
    lv, th = q.tables(x.device, x.dtype)
    with pytest.raises(RuntimeError, match="at most 15 thresholds"):
        torch.ops.anacuda._ana_code(x, lv, th, torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.5))
    lv3, _ = Quantizer.ternary().tables(x.device, x.dtype)
    with pytest.raises(RuntimeError, match="uint8 tensor of the gradient's shape"):
        torch.ops.anacuda._ana_backward_code(x, torch.zeros(8, dtype=torch.int32), lv3, torch.tensor(0.5))
