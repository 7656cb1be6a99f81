"""The executable spec of learned and dynamic scales (docs/semantics.md §8, §9) against outside
oracles: PyTorch's own learnable fake-quantisation ops (LSQ), finite differences, and BitNet
b1.58's public quantisers. The kernels are tested against this reference elsewhere."""

import pytest
import torch

from anacuda import Quantizer, reference
from conftest import bitnet_activation_quant, bitnet_weight_quant

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _away_from(u, points, margin):
    """True where u is farther than margin from every point."""
    return ((u.unsqueeze(-1) - points).abs() > margin).all(-1)


def _lsq_inputs(shape, scale, q, dtype, seed=0):
    """x / scale spread over and beyond the grid, away from ties (half-integers, where LSQ rounds
    to even and §1 rounds up), from u = q_K (where §8 and LSQ differ by design), and outside the
    half steps [q_0 - 1/2, q_0) and [q_K, q_K + 1/2): there PyTorch's learnable ops clip the
    rounded value rather than u (test_pytorch_lsq_clips_after_rounding pins the difference)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = float(q.levels[0]), float(q.levels[-1])
    u = torch.empty(shape, dtype=torch.float64).uniform_(lo - 2, hi + 2, generator=g)
    u = torch.where((u >= lo - 0.5) & (u < lo), u - 0.5, u)
    u = torch.where((u >= hi) & (u < hi + 0.5), u + 0.5, u)
    keep = _away_from(u, torch.cat([q.thresholds, q.levels[-1:]]), 1e-3)
    u = torch.where(keep, u, u + 0.25)
    return (u * scale).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("nbits", [2, 4, 8])
def test_clipped_ste_with_learned_eps_is_lsq_per_tensor(dtype, nbits):
    q = Quantizer.uniform(nbits)
    scale = 0.37
    x = _lsq_inputs((4096,), scale, q, dtype)
    grad = torch.randn(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))

    xa = x.clone().requires_grad_()
    eps = torch.tensor(scale, dtype=dtype, requires_grad=True)
    y = reference.ana(xa, q, "uniform", 0.0, 0.5, "mode", eps=eps)
    y.backward(grad)

    xb = x.float().requires_grad_()  # PyTorch's learnable ops compute in float32 only
    s = torch.tensor([scale], dtype=torch.float32, requires_grad=True)
    zp = torch.zeros(1, dtype=torch.float32)
    yb = torch._fake_quantize_learnable_per_tensor_affine(
        xb, s, zp, int(q.levels[0]), int(q.levels[-1]), 1.0)
    yb.backward(grad.float())

    torch.testing.assert_close(y, yb.to(dtype), rtol=1e-6, atol=1e-6)
    # The same mask; the values differ only by PyTorch's float32 copy of a float64 gradient.
    torch.testing.assert_close(xa.grad, xb.grad.to(dtype), rtol=2**-24, atol=0)
    assert torch.equal(xa.grad != 0, xb.grad != 0)
    # A sum of 4096 terms of size ~q_K: compare relative to the sum of magnitudes.
    mag = float((grad.abs() * (q.levels.abs().max())).sum())
    assert abs(float(eps.grad) - float(s.grad)) <= 1e-5 * mag


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_clipped_ste_with_learned_eps_is_lsq_per_channel(dtype):
    q = Quantizer.uniform(4)
    scales = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64)
    x = torch.stack([_lsq_inputs((64, 5), float(s), q, dtype, seed=i) for i, s in enumerate(scales)], 1)  # (64, 3, 5)
    grad = torch.randn(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(2))

    xa = x.clone().requires_grad_()
    eps = scales.to(dtype).reshape(3, 1).clone().requires_grad_()
    reference.ana(xa, q, "uniform", 0.0, 0.5, "mode", eps=eps).backward(grad)

    xb = x.float().requires_grad_()  # PyTorch's learnable ops compute in float32 only
    s = scales.float().clone().requires_grad_()
    zp = torch.zeros(3, dtype=torch.float32)
    torch._fake_quantize_learnable_per_channel_affine(xb, s, zp, 1, -8, 7, 1.0).backward(grad.float())

    # The same mask; the values differ only by PyTorch's float32 copy of a float64 gradient.
    torch.testing.assert_close(xa.grad, xb.grad.to(dtype), rtol=2**-24, atol=0)
    assert torch.equal(xa.grad != 0, xb.grad != 0)
    mag = (grad.abs() * 8).sum(dim=(0, 2))
    assert ((eps.grad.reshape(3).double() - s.grad.double()).abs() <= 1e-5 * mag.double()).all()


def test_pytorch_lsq_clips_after_rounding():
    """LSQ (Esser et al., eq. 3) and §8 clip u: gradient 1 on [q_0, q_K], step-size gradient q_0
    below and q_K above. PyTorch's learnable fake-quantisation clips round(u) instead, so in the
    half steps just outside the grid it passes the gradient and gives round(u) - u. Pinned here
    so that the difference is known, not rediscovered."""
    q = Quantizer.uniform(2)  # levels -2 … 1
    u = torch.tensor([-2.25, 1.25])
    x = u.clone().requires_grad_()
    eps = torch.tensor(1.0, requires_grad=True)
    reference.ana(x, q, "uniform", 0.0, 0.5, "mode", eps=eps).backward(torch.tensor([1.0, 0.0]))
    xb, s = u.clone().requires_grad_(), torch.tensor([1.0], requires_grad=True)
    torch._fake_quantize_learnable_per_tensor_affine(xb, s, torch.zeros(1), -2, 1, 1.0).backward(
        torch.tensor([1.0, 0.0]))
    assert x.grad.tolist() == [0.0, 0.0] and xb.grad.tolist() == [1.0, 0.0]
    assert float(eps.grad) == -2.0 and float(s.grad) == 0.25  # q_0 vs round(u) - u


@pytest.mark.parametrize("noise", ["uniform", "triangular", "normal", "logistic"])
@pytest.mark.parametrize("eps_shape", [(), (3, 1), (1, 4)], ids=str)
def test_learned_eps_gradient_is_the_derivative(noise, eps_shape):
    """The expectation with the forward noise as backward noise is smooth in eps: §8's formula
    must be its derivative (finite differences in float64)."""
    q = Quantizer.uniform(2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, dtype=torch.float64, generator=g) * 2
    eps = (0.5 + torch.rand(eps_shape, dtype=torch.float64, generator=g)).requires_grad_()
    xr = x.clone().requires_grad_()
    sigma = 0.7 if noise in ("uniform", "triangular") else 0.4  # wide enough to be smooth here
    fn = lambda xx, ee: reference.ana(xx, q, noise, 0.1, sigma, "expectation", eps=ee)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (xr, eps), atol=1e-6, rtol=1e-4)


def test_learned_eps_at_infinities_and_nan():
    q = Quantizer.ternary()
    x = torch.tensor([float("inf"), -float("inf"), 0.2])
    for grad, expected in (([1.0, 0.0, 0.0], 1.0), ([0.0, 1.0, 0.0], -1.0)):  # q_K at +inf, q_0 at -inf
        eps = torch.tensor(0.5, requires_grad=True)
        reference.ana(x, q, "uniform", 0.0, 0.5, "mode", eps=eps).backward(torch.tensor(grad))
        assert float(eps.grad) == expected  # never inf * 0
    # A NaN input makes the gradient of the eps it shares NaN (as autograd of eps * g(x / eps) does).
    eps = torch.tensor(0.5, requires_grad=True)
    reference.ana(torch.tensor([float("nan"), 0.2]), q, "uniform", 0.0, 0.5, "mode", eps=eps).backward(
        torch.tensor([0.0, 1.0]))
    assert torch.isnan(eps.grad)


def test_alpha_blend_learned_eps_gradient():
    q = Quantizer.ternary()
    w = torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    eps = torch.full((8, 1), 0.6, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    reference.alpha_blend(w, q, 0.3, eps=eps).backward(grad)
    expected = (grad * 0.3 * q(w / 0.6)).sum(1, keepdim=True)  # §8: alpha * Q(u)
    torch.testing.assert_close(eps.grad, expected)


# --- dynamic scales against BitNet b1.58's public code (§9; conftest writes it) --------------------


def _near_a_tie(u, thresholds):
    return ~_away_from(u, thresholds, 1e-4 * (1 + u.abs().unsqueeze(-1)))


def test_absmax_per_token_is_bitnet_activation_quant():
    q = Quantizer.uniform(8)
    x = torch.randn(16, 33, 64, generator=torch.Generator().manual_seed(6))
    x[3, 5] = 0  # an all-zero token quantises to 0
    y = reference.ana(x, q, "uniform", 0.0, 0.0, "mode", eps="absmax_per_token")
    eps = reference.dynamic_eps(x, q, "absmax_per_token")
    assert eps.shape == (16, 33, 1)
    ok = ~_near_a_tie(x / eps, q.thresholds.float())
    assert ok.float().mean() > 0.99
    torch.testing.assert_close(y[ok], bitnet_activation_quant(x)[ok], rtol=1e-6, atol=1e-7)
    assert (y[3, 5] == 0).all()


@pytest.mark.parametrize("rule", ["absmean", "absmean_per_channel"])
def test_absmean_is_bitnet_weight_quant(rule):
    q = Quantizer.ternary()
    w = torch.randn(32, 48, generator=torch.Generator().manual_seed(7))
    y = reference.ana(w, q, "uniform", 0.0, 0.0, "mode", eps=rule)
    eps = reference.dynamic_eps(w, q, rule)
    if rule == "absmean":
        ok = ~_near_a_tie(w / eps, q.thresholds)
        torch.testing.assert_close(y[ok], bitnet_weight_quant(w)[ok], rtol=1e-6, atol=1e-7)
    else:  # one BitNet quantiser per output channel
        assert eps.shape == (32, 1)
        expected = torch.stack([bitnet_weight_quant(r) for r in w])
        ok = ~_near_a_tie(w / eps, q.thresholds)
        torch.testing.assert_close(y[ok], expected[ok], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rule, shape", [("absmax_per_token", ()), ("absmax_per_token", (5,)),
                                         ("absmean_per_channel", ())])
def test_dynamic_rule_needs_its_dimensions(rule, shape):
    with pytest.raises(ValueError, match="needs an input of at least"):
        reference.dynamic_eps(torch.ones(shape), Quantizer.ternary(), rule)


def test_dynamic_rule_unknown_and_empty():
    with pytest.raises(ValueError, match="unknown scale rule"):
        reference.dynamic_eps(torch.ones(2, 2), Quantizer.ternary(), "absmax_per_row")
    y = reference.ana(torch.ones(0, 8), Quantizer.uniform(8), sigma=0.0, strategy="mode", eps="absmax_per_token")
    assert y.shape == (0, 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [None, 0])
def test_mean_abs_by_the_op_is_the_float64_mean(dtype, dim):
    """The mean-based weight rules take mean|x| from the op's reduction (one read of x, no
    temporaries): the float64 mean rounded once to x's dtype, as `x.abs().double().mean()`."""
    from anacuda import scale

    for shape in [(64, 32, 3, 3), (7,), (300, 1000)]:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(8), dtype=dtype) * 0.05
        got = scale._mean_abs(x, dim)
        flat = x.abs().double().reshape(1 if dim is None else shape[0], -1)
        want = flat.mean() if dim is None else flat.mean(1).reshape((shape[0],) + (1,) * (len(shape) - 1))
        assert got.shape == want.shape and got.dtype == dtype
        if dtype == torch.float32:
            assert torch.equal(got, want.float()), shape
        else:  # the double sums differ in order only
            torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
