"""alpha_blend (SPEC §6) against the reference, its gradient, opcheck, compile; scale helpers."""

import pytest
import torch

from conftest import DEVICES, DTYPES

from anacuda import Quantizer, scale
from anacuda import functional as F
from anacuda import reference as R


def _weight(device, dtype, shape=(8, 5, 3, 3)):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(shape, generator=g) * 0.7).to(device=device, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("per_channel", [False, True])
def test_matches_reference(device, dtype, alpha, per_channel):
    q = Quantizer.uniform(4)
    w = _weight(device, dtype).requires_grad_()
    eps = scale.max_abs(w, q, dim=0) if per_channel else 0.1
    y = F.alpha_blend(w, q, alpha, eps)
    wr = w.detach().clone().requires_grad_()
    yr = R.alpha_blend(wr, q, alpha, eps)
    assert y.dtype == dtype and y.shape == w.shape
    torch.testing.assert_close(y, yr, rtol=0, atol=0)
    g = torch.randn_like(y)
    y.backward(g)
    yr.backward(g)
    torch.testing.assert_close(w.grad, wr.grad, rtol=0, atol=0)
    # the gradient is exactly (1 - alpha) * grad: nothing through the quantised term
    torch.testing.assert_close(w.grad, (g.to(torch.float64) * (1 - alpha)).to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_alpha_one_is_the_hard_quantiser_and_alpha_zero_the_identity(device):
    q = Quantizer.ternary()
    w = _weight(device, torch.float32)
    torch.testing.assert_close(F.alpha_blend(w, q, 1.0, 0.5), 0.5 * q(w / 0.5), rtol=0, atol=0)
    torch.testing.assert_close(F.alpha_blend(w, q, 0.0, 0.5), w, rtol=0, atol=0)
    inf = torch.tensor([float("inf"), -float("inf"), float("nan")], device=device)
    y = F.alpha_blend(inf, q, 1.0, 0.5)
    assert y[0].item() == 0.5 and y[1].item() == -0.5 and torch.isnan(y[2])


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_tensor_alpha(device):
    q = Quantizer.uniform(2)
    w = _weight(device, torch.float32, (16, 12)).t()
    alpha = torch.tensor(0.4, device=device)
    torch.testing.assert_close(F.alpha_blend(w, q, alpha), R.alpha_blend(w, q, alpha), rtol=0, atol=0)


def test_opcheck():
    q = Quantizer.uniform(3)
    w = _weight("cpu", torch.float32).requires_grad_()
    for ww in (w, w.detach().transpose(1, 2)):
        eps = scale.max_abs(ww, q, dim=0)
        torch.library.opcheck(torch.ops.anacuda.alpha_blend,
                              (ww, *q.tables(ww.device, ww.dtype), q.uniform_grid, eps, torch.tensor(0.3)))


def test_compile_no_recompile_when_alpha_changes():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    q = Quantizer.uniform(4)
    counter = CompileCounter()
    fn = torch.compile(lambda w, a: F.alpha_blend(w, q, a, 0.1).sum(), backend=counter, fullgraph=True)
    w = _weight("cpu", torch.float32).requires_grad_()
    for a in (0.0, 0.5, 0.9):
        alpha = torch.tensor(a)
        out = fn(w, alpha)
        torch.testing.assert_close(out, R.alpha_blend(w, q, alpha, 0.1).sum())
    assert counter.frame_count == 1


@pytest.mark.parametrize("bad, match", [
    (dict(alpha=1.5), r"alpha must be in \[0, 1\]"),
    (dict(alpha=-0.1), r"alpha must be in \[0, 1\]"),
    (dict(alpha=float("nan")), "alpha must be finite"),
    (dict(alpha=torch.tensor(2.0)), r"alpha must be in \[0, 1\]"),
    (dict(alpha=torch.tensor([0.1, 0.2])), "one-element"),
    (dict(eps=0.0), "eps must be > 0"),
])
def test_bad_arguments(bad, match):
    kw = dict(alpha=0.5, eps=1.0)
    kw.update(bad)
    with pytest.raises((ValueError, RuntimeError), match=match):
        F.alpha_blend(torch.randn(4), Quantizer.ternary(), **kw)


def test_integer_weight_is_rejected():
    with pytest.raises(TypeError, match="float64, float32, float16 or bfloat16"):
        F.alpha_blend(torch.ones(3, dtype=torch.int32), Quantizer.ternary(), 0.5)


# --- scale helpers ----------------------------------------------------------------------------
def test_max_abs_per_tensor_and_per_channel():
    q = Quantizer.uniform(4)  # levels -8 .. 7: the shorter side is 7
    w = torch.tensor([[1.0, -4.0], [0.5, 2.0], [0.0, 0.0]])
    nudge = 1 + 2.0**-20  # the largest magnitude a hair inside its level: see the next test
    assert scale.max_abs(w, q).item() == pytest.approx(4.0 / 7 * nudge, rel=2.5e-7)  # rounded up in float32
    e = scale.max_abs(w, q, dim=0)
    assert e.shape == (3, 1)
    torch.testing.assert_close(e[:2, 0], torch.tensor([4.0 / 7, 2.0 / 7]) * nudge, rtol=2.5e-7, atol=0)
    assert e[2, 0] > 0  # an all-zero channel still gets a positive scale
    assert not e.requires_grad
    # the largest magnitude of either sign is not clipped
    y = F.ana(torch.cat([w, -w], 1), q, training=False, eps=e)
    torch.testing.assert_close(y.abs().amax(dim=1)[:2], torch.tensor([4.0, 2.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_the_weight_that_sets_the_scale_gets_a_gradient(dtype):
    """With eps = max|w| / m exactly, a channel's largest positive weight would sit at u = m, the
    excluded edge of the clipped STE's half-open box [θ − σ, θ + σ): zero gradient, so the weight
    that sets the scale would never move. The helpers nudge eps up (by 2^-20, rounded up in the
    dtype) so every u stays below the top level (the lower edge of a box is included: u may equal
    the bottom level); the forward still maps the largest magnitude to the outermost level."""
    for q in [Quantizer.ternary(), Quantizer.uniform(4), Quantizer.uniform(8)]:
        m = min(-q.min_level, q.max_level)
        w = (torch.randn(32, 40, generator=torch.Generator().manual_seed(2))).to(dtype)
        for eps in [scale.max_abs(w, q, dim=0), scale.max_abs(w, q), scale.min_max(w, q, dim=0)]:
            u = w.float() / eps.float()
            assert (u < q.max_level).all() and (u >= q.min_level).all()
        wr = w.clone().requires_grad_()
        F.ana(wr, q, "uniform", 0.0, 0.5, "mode", eps=scale.max_abs(w, q, dim=0)).sum().backward()
        top = w.float().abs().argmax(dim=1)
        assert (wr.grad[torch.arange(32), top] != 0).all()
        if q.num_levels <= 16:  # bfloat16 cannot place eps to 1/127 of a step
            e = scale.max_abs(w, q, dim=0)
            y = F.ana(w, q, training=False, eps=e)
            levels = (y.float()[torch.arange(32), top] / e.float().reshape(-1)).round().abs()
            assert (levels == m).all()


def test_min_max_and_bad_dim():
    q = Quantizer.uniform(2, signed=False)  # levels 0 .. 3
    x = torch.tensor([[0.0, 6.0], [1.0, 2.0]])
    nudge = 1 + 2.0**-20
    assert scale.min_max(x, q).item() == pytest.approx(2.0 * nudge, rel=2.5e-7)  # rounded up in float32
    torch.testing.assert_close(scale.min_max(x, q, dim=0), torch.tensor([[2.0], [2.0 / 3]]) * nudge, rtol=2.5e-7, atol=0)
    torch.testing.assert_close(scale.min_max(x, q, dim=1), torch.tensor([[1.0 / 3, 2.0]]) * nudge, rtol=2.5e-7, atol=0)
    q4 = Quantizer.uniform(4)  # -8 .. 7: max 7 -> eps 1, min -16 -> eps 2
    assert scale.min_max(torch.tensor([7.0, -16.0]), q4).item() == pytest.approx(2.0 * nudge, rel=2.5e-7)  # rounded up in float32
    with pytest.raises(ValueError, match="out of range"):
        scale.max_abs(x, q, dim=2)
    with pytest.raises(ValueError, match="empty"):
        scale.max_abs(torch.empty(0), q)
