"""Outputs keep the input's memory format (contiguous, channels_last, channels_last_3d, as
Tensor.suggest_memory_format says), in the kernels and in the fakes: a channels_last model stays
channels_last through its quantisers, with no copy of a dense input. The values are those of the
contiguous computation, bit for bit, on both CPU paths."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import DEVICES, F, Q, anacuda, assert_equal

ops = torch.ops.anacuda
pytestmark = pytest.mark.usefixtures("one_intra_op_thread", "cpu_path")


def f64(v):
    return torch.tensor(v, dtype=torch.float64)


def conv_like(device, dtype=torch.float32, shape=(2, 5, 6, 7), memory_format=torch.channels_last, specials=True):
    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(shape, generator=gen) * 2).to(dtype)
    if specials:
        x.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype)
    return x.to(device).contiguous(memory_format=memory_format)


def channel_eps(c, device, dims=2):
    return (torch.linspace(0.5, 2.0, c, dtype=torch.float64).reshape((c,) + (1,) * dims) * 1.1).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("noise, strategy, backward_noise", [
    ("uniform", "mode", None),  # coded backward (_ana_coded, _ana_backward_code)
    ("normal", "expectation", None),  # _ana_backward
    ("logistic", "random", ("uniform", 0.1, 0.3)),
    ("triangular", "expectation", ("normal", 0.0, 0.6)),
], ids=str)
@pytest.mark.parametrize("memory_format, dims", [(torch.channels_last, 2), (torch.channels_last_3d, 3)], ids=str)
def test_channels_last_in_channels_last_out(device, dtype, noise, strategy, backward_noise, memory_format, dims):
    """A conv-like input with a per-channel eps (C, 1, 1): the output and grad_x have the input's
    strides and the values of the NCHW computation."""
    shape = (2, 5, 6, 7) if dims == 2 else (2, 5, 3, 4, 3)
    x = conv_like(device, dtype, shape, memory_format)
    eps = channel_eps(5, device, dims)
    g = torch.cos(torch.arange(x.numel(), dtype=torch.float64)).reshape(shape).to(device, dtype)
    outs = {}
    for name, fmt in [("in", memory_format), ("nchw", torch.contiguous_format)]:
        xr = x.contiguous(memory_format=fmt).detach().requires_grad_(True)
        torch.manual_seed(5)
        y = F.ana(xr, Q.uniform(3), noise, 0.1, 0.45, strategy, eps=eps, backward_noise=backward_noise)
        y.backward(g.contiguous(memory_format=fmt))
        assert y.stride() == xr.stride() and xr.grad.stride() == xr.stride(), name
        outs[name] = (y.detach(), xr.grad)
    assert x.is_contiguous(memory_format=memory_format) and not x.is_contiguous()
    for a, b in zip(outs["in"], outs["nchw"]):
        assert_equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_every_op_keeps_the_format(device):
    """Each op on its own (the helpers included), against its contiguous result; a gradient in
    another format than the input's is taken in the input's."""
    x = conv_like(device)
    q = Q.ternary()
    lv, th = q.tables(x.device, x.dtype)
    eps = channel_eps(5, device)
    xc = x.contiguous()
    code = ops._ana_code(x, lv, th, eps, f64(0.0), f64(0.5))
    assert code.stride() == x.stride() and code.dtype == torch.uint8
    assert torch.equal(code, ops._ana_code(xc, lv, th, eps, f64(0.0), f64(0.5)))
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(device)  # NCHW
    gx = ops._ana_backward_code(g, code, lv, f64(0.5))
    assert gx.stride() == x.stride()
    assert_equal(gx, ops._ana_backward_code(g, code.contiguous(), lv, f64(0.5)))
    gb = ops._ana_backward(g, x, lv, th, True, eps, "normal", f64(0.0), f64(0.5))
    assert gb.stride() == x.stride()
    assert_equal(gb, ops._ana_backward(g, xc, lv, th, True, eps, "normal", f64(0.0), f64(0.5)))
    args = (True, eps, "uniform", f64(0.0), f64(0.5), "expectation", True, None, "uniform", f64(0.1), f64(0.5))
    y, c = ops._ana_coded(x, lv, th, *args)
    assert y.stride() == x.stride() and c.stride() == x.stride()
    yc, cc = ops._ana_coded(xc, lv, th, *args)
    assert_equal(y, yc)
    assert torch.equal(c, cc)


@pytest.mark.parametrize("device", DEVICES)
def test_alpha_blend_keeps_the_format(device):
    """A channels_last conv weight (O, I, kh, kw) with one eps per output channel (O, 1, 1, 1)."""
    w = conv_like(device, shape=(6, 4, 3, 3))
    eps = channel_eps(6, device, 3)
    wr = w.detach().requires_grad_(True)
    y = F.alpha_blend(wr, Q.ternary(), 0.3, eps)
    y.backward(torch.ones_like(y))
    assert y.stride() == w.stride() and wr.grad.stride() == w.stride()
    assert_equal(y, F.alpha_blend(w.contiguous(), Q.ternary(), 0.3, eps))


def _copies_of(x, fn):
    """The copies of tensors of x's size that fn() makes (the small ones of eps and the tables
    aside)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    names = {e.name for e in prof.events()}
    assert "anacuda::ana" in names or "anacuda::_ana_coded" in names, names
    return [e.name for e in prof.events() if e.name in ("aten::copy_", "aten::clone")
            and any(s and math.prod(s) == x.numel() for s in e.input_shapes)]


def test_no_copy_of_a_dense_channels_last_input():
    """The kernels read a dense channels_last input in place: no copy of it in the op, forward or
    coded forward (a strided input is copied, which the check sees)."""
    x = conv_like("cpu", shape=(4, 16, 8, 8))
    eps = channel_eps(16, "cpu")
    assert not _copies_of(x, lambda: F.ana(x, Q.ternary(), "uniform", 0.0, 0.5, "mode", eps=eps))
    xr = x.detach().requires_grad_(True)
    assert not _copies_of(x, lambda: F.ana(xr, Q.ternary(), "uniform", 0.0, 0.5, "mode", eps=eps))
    strided = torch.randn(4, 16, 8, 16)[..., ::2]
    assert _copies_of(x, lambda: F.ana(strided, Q.ternary(), "uniform", 0.0, 0.5, "mode", eps=eps))


def test_other_layouts_give_contiguous_outputs():
    """Only the memory formats torch names are kept: a transposed matrix, a non-dense slice and a
    broadcast input give contiguous outputs; a channels_last slice (not dense) gives channels_last."""
    q = Q.ternary()
    base = torch.randn(6, 9)
    for x in [base.t(), base[:, ::2], torch.randn(1, 9).expand(4, 9)]:
        assert F.ana(x, q).is_contiguous()
    x = conv_like("cpu", shape=(2, 5, 6, 8))[..., ::2]
    y = F.ana(x, q, eps=channel_eps(5, "cpu"))
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    assert_equal(y, F.ana(x.contiguous(), q, eps=channel_eps(5, "cpu")))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, memory_format", [
    ((2, 5, 6, 7), torch.channels_last), ((2, 3, 4, 5, 3), torch.channels_last_3d),
    ((1, 5, 1, 1), torch.channels_last), ((3, 1, 4, 4), torch.channels_last),  # ambiguous: torch's rule
], ids=str)
def test_fakes_have_the_kernels_strides(device, shape, memory_format):
    """opcheck compares the fakes' strides with the kernels' (and the ambiguous size-1 cases of
    channels_last follow torch's own rule on both sides)."""
    x = conv_like(device, shape=shape, memory_format=memory_format, specials=False)  # opcheck: no NaN
    q = Q.uniform(2)
    lv, th = q.tables(x.device, x.dtype)
    eps = channel_eps(shape[1], device, len(shape) - 2)
    fwd = (eps, "normal", f64(0.1), f64(0.5), "expectation", True, None, "uniform", f64(0.0), f64(0.5))
    torch.library.opcheck(ops.ana.default, (x.requires_grad_(), lv, th, True) + fwd)
    torch.library.opcheck(ops._ana_coded.default, (x, lv, th, True) + fwd)
    g = torch.randn(shape).to(device)
    torch.library.opcheck(ops._ana_backward.default, (g, x.detach(), lv, th, True, eps, "logistic", f64(0.0), f64(0.5)))
    code = ops._ana_code(x.detach(), lv, th, eps, f64(0.0), f64(0.5))
    torch.library.opcheck(ops._ana_code.default, (x.detach(), lv, th, eps, f64(0.0), f64(0.5)))
    torch.library.opcheck(ops._ana_backward_code.default, (g, code, lv, f64(0.5)))
    torch.library.opcheck(ops.alpha_blend.default, (x.detach(), lv, th, True, eps, f64(0.3)))
