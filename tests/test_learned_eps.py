"""A learned eps (SPEC §8): the fused backward (_ana_backward_eps, _alpha_blend_backward_eps)
against anacuda.reference on both CPU paths and on CUDA (the kernels run on the device, the
reference and the checks on the host), gradcheck, opcheck, compile, determinism, NaN/inf and bad
input; the ste.lsq preset against PyTorch's own learnable fake-quantisation ops."""

from __future__ import annotations

import pytest
import torch

from conftest import CUDA, DEVICES, DTYPES, HALF, F, Q, R, assert_equal, compute_dtype, mode_safe
from test_scales_reference import _lsq_inputs

from anacuda import ste

pytestmark = [pytest.mark.usefixtures("cpu_path"), pytest.mark.filterwarnings("ignore::UserWarning")]

SHAPE = (6, 5, 7)
#: eps's shapes for x of SHAPE: one value, one per channel along dim 0 and along dim 1, one per
#: element, and a broadcast that is no block of channels (the generic fallback).
EPS_SHAPES = {"tensor": (), "dim0": (6, 1, 1), "dim1": (5, 1), "element": SHAPE, "split": (6, 1, 7)}


def _eps(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (0.3 + 0.9 * torch.rand(shape, generator=g, dtype=torch.float64)).to(dtype)


def _x(q, eps, shape=SHAPE, dtype=torch.float32, seed=1):
    """x = eps * u, u spread over the grid and two levels beyond it on either side."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = float(q.levels[0]), float(q.levels[-1])
    u = torch.empty(shape, dtype=torch.float64).uniform_(lo - 2, hi + 2, generator=g)
    return (u * eps.double()).to(dtype)


def _eps_dtype(dtype):
    return compute_dtype(dtype)  # a float32 parameter for half inputs, as in mixed precision


def _levels_of(y, eps, q):
    """The level of each element of a hard-stair output y = eps * level (any dtype's rounding)."""
    lv = q.levels
    u = y.double() / eps.double()
    return lv[(u.unsqueeze(-1) - lv).abs().argmin(-1)]


def _grads(fn, x, eps, grad, device="cpu", **kw):
    """fn's output and gradients on `device` (x, eps and grad copied there), returned on the host."""
    xa = x.detach().clone().to(device).requires_grad_()
    ea = eps.detach().clone().to(device).requires_grad_()
    y = fn(xa, eps=ea, **kw)
    y.backward(grad.to(device))
    return y.detach().cpu(), xa.grad.cpu(), ea.grad.cpu()


def _check_eps_grad(actual, terms, eps_shape, dtype, msg):
    """actual == the sum of terms[0] to eps's shape, to within the rounding of the terms' parts
    (terms[1]: their magnitudes) in dtype's compute type."""
    values, magnitudes = terms
    c = torch.finfo(compute_dtype(dtype)).eps
    expected = values.sum_to_size(eps_shape) if eps_shape else values.sum()
    tol = 64 * c * (magnitudes.sum_to_size(eps_shape) if eps_shape else magnitudes.sum()) + 1e-30
    assert actual.shape == torch.Size(eps_shape), msg
    err = (actual.double() - expected).abs()
    assert bool((err <= tol).all()), f"{msg}: worst excess {float((err - tol).max()):.3g}; got {actual}, " \
                                     f"expected {expected}"


def _terms(x, eps, q, level, back, grad):
    """grad * (level - u g'_b(u)) in float64 from the compute-type u (SPEC §8), and the
    magnitudes its rounding is relative to."""
    ct = compute_dtype(x.dtype)
    u = (x.to(ct) / eps.to(ct)).double()
    name, mu_b, sigma_b = back
    d = R.stair_derivative((u - mu_b).to(ct), q.levels.to(ct), q.thresholds.to(ct), name,
                           torch.tensor(float(sigma_b), dtype=ct)).double()
    ud = torch.where(torch.isinf(u), torch.zeros_like(u), u * d)
    g = grad.double()
    # a smoothed level is a sum from q_0 or q_lo: its rounding is relative to the levels' scale
    return g * (level.double() - ud), g.abs() * (q.levels.abs().max() + ud.abs())


def _g(x, eps, q, noise, mu, sigma, strategy, training):
    """The reference's g(u) in the compute type (deterministic strategies)."""
    ct = compute_dtype(x.dtype)
    u = x.to(ct) / eps.to(ct)
    return R._ana_forward(u - mu, q.levels.to(ct), q.thresholds.to(ct), noise, torch.tensor(sigma, dtype=ct),
                          strategy, training, None)


CONFIGS = {  # (training, backward noise or None for the forward's)
    "train": (True, None),
    "train_separate_backward": (True, "separate"),
    "eval": (False, None),
}


def _backward_noise(noise):
    return ("normal", 0.1, 0.4) if noise != "normal" else ("triangular", -0.1, 0.6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("strategy", ["expectation", "mode", "random"])
@pytest.mark.parametrize("noise", ["uniform", "triangular", "normal", "logistic"])
@pytest.mark.parametrize("device", DEVICES)
def test_against_reference(device, noise, strategy, dtype):
    q = Q.uniform(4)
    sigma, mu = 0.3, 0.05
    for config, (training, back) in CONFIGS.items():
        backward_noise = _backward_noise(noise) if back else None
        b = backward_noise or (noise, mu, sigma)
        for kind, shape in EPS_SHAPES.items():
            msg = f"{noise} {strategy} {dtype} {config} eps {kind}"
            eps = _eps(shape, _eps_dtype(dtype))
            x = _x(q, eps, dtype=dtype)
            grad = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)
            if strategy == "mode" and training:  # near-ties of the most likely level: no gradient there
                grad = torch.where(mode_safe(x, q, noise, mu, sigma, eps), grad, torch.zeros_like(grad))
            kw = dict(quantizer=q, noise=noise, mu=mu, sigma=sigma, strategy=strategy, training=training,
                      backward_noise=backward_noise)
            y, gx, ge = _grads(F.ana, x, eps, grad, device, **kw)
            yr, gxr, ger = _grads(R.ana, x, eps, grad, **kw)
            assert gx.dtype == dtype and ge.dtype == eps.dtype, msg
            # grad_x: the backward of SPEC §5, as ana's own backward computes it
            tol = 64 * torch.finfo(compute_dtype(dtype)).eps * (1 + gxr.double().abs())
            if dtype in HALF:
                tol = tol + 2 * gxr.double().abs() * torch.finfo(dtype).eps
            assert bool(((gx.double() - gxr.double()).abs() <= tol).all()), f"{msg}: grad_x"
            if strategy == "random" and training:
                # the reference's sample is not the kernel's: the terms of the kernel's own levels
                terms = _terms(x, eps, q, _levels_of(y, eps, q), b, grad)
                _check_eps_grad(ge, terms, shape, dtype, msg)
            else:
                terms = _terms(x, eps, q, _g(x, eps, q, noise, mu, sigma, strategy, training), b, grad)
                _check_eps_grad(ge, terms, shape, dtype, msg)
                _check_eps_grad(ger, terms, shape, dtype, msg + " (the reference itself)")


@pytest.mark.parametrize("shape, eps_shape, memory_format", [
    ((3 * 4096 + 17,), (), torch.contiguous_format),            # many pieces and a ragged last one
    ((2, 3, 40, 70), (3, 1, 1), torch.channels_last),          # per channel, inner = 1 in memory order
    ((2, 3, 40, 70), (2, 1, 1, 1), torch.channels_last),       # per sample
    ((2, 3, 4, 5), (1, 3, 4, 1), torch.channels_last),         # no block in memory order: the fallback
    ((70, 3, 40), (70, 1, 1), torch.contiguous_format),        # 70 channels of 120
])
@pytest.mark.parametrize("strategy", ["expectation", "random"])
@pytest.mark.parametrize("device", DEVICES)
def test_layouts_and_sizes(device, shape, eps_shape, memory_format, strategy):
    q = Q.uniform(3)
    eps = _eps(eps_shape, torch.float32)
    x = _x(q, eps.expand(shape) if eps_shape else eps, shape=shape).contiguous(memory_format=memory_format)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    kw = dict(quantizer=q, noise="logistic", sigma=0.4, strategy=strategy)
    y, gx, ge = _grads(F.ana, x, eps, grad, device, **kw)
    assert gx.is_contiguous(memory_format=memory_format)
    if strategy == "random":
        level = _levels_of(y, eps, q)
    else:
        level = _g(x, eps, q, "logistic", 0.0, 0.4, strategy, True)
    terms = _terms(x, eps, q, level, ("logistic", 0.0, 0.4), grad)
    _check_eps_grad(ge, terms, eps_shape, torch.float32, f"{shape} {eps_shape}")


@pytest.mark.parametrize("qname", ["binary", "ternary", "uniform8", "arbitrary", "arbitrary64"])
@pytest.mark.parametrize("device", DEVICES)
def test_quantizers(device, qname):
    from conftest import QUANTIZERS

    q = QUANTIZERS[qname]
    eps = _eps((4, 1), torch.float64)
    x = _x(q, eps, shape=(4, 300), dtype=torch.float64)
    grad = torch.randn(4, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    kw = dict(quantizer=q, noise="normal", sigma=0.3, strategy="expectation", backward_noise=("uniform", 0.0, 0.5))
    _, gx, ge = _grads(F.ana, x, eps, grad, device, **kw)
    _, gxr, ger = _grads(R.ana, x, eps, grad, **kw)
    torch.testing.assert_close(gx, gxr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ge, ger, rtol=1e-10, atol=1e-10 * float(grad.abs().sum()))


@pytest.mark.parametrize("noise", ["uniform", "triangular", "normal", "logistic"])
@pytest.mark.parametrize("eps_shape", [(), (3, 1), (1, 4), (3, 4)], ids=str)
def test_gradcheck(noise, eps_shape):
    """The expectation with its own noise as backward noise is smooth: SPEC §8's gradient is the
    derivative, for x and eps together (finite differences, float64)."""
    q = Q.uniform(2)
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(3, 4, dtype=torch.float64, generator=g) * 2).requires_grad_()
    eps = (0.5 + torch.rand(eps_shape, dtype=torch.float64, generator=g)).requires_grad_()
    sigma = 0.7 if noise in ("uniform", "triangular") else 0.4
    fn = lambda xx, ee: F.ana(xx, q, noise, 0.1, sigma, "expectation", eps=ee)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, eps), atol=1e-6, rtol=1e-4)


def test_opcheck():
    q = Q.uniform(3)
    lv, th = q.tables("cpu", torch.float32)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    x = _x(q, torch.tensor(0.5), shape=(4, 3, 5))
    for eps in (torch.tensor(0.5), _eps((3, 1), torch.float32), _eps((4, 3, 5), torch.float32)):
        for strategy, seed in (("expectation", None), ("random", torch.tensor([11, 3]))):
            fwd = (eps, "normal", f64(0.0), f64(0.4), strategy, True, seed, "uniform", f64(0.0), f64(0.5))
            torch.library.opcheck(torch.ops.anacuda._ana_backward_eps.default, (torch.randn_like(x), x, lv, th, True) + fwd)
            torch.library.opcheck(torch.ops.anacuda.ana.default,
                                  (x.clone().requires_grad_(), lv, th, True, eps.clone().requires_grad_()) + fwd[1:])
        torch.library.opcheck(torch.ops.anacuda._alpha_blend_backward_eps.default,
                              (torch.randn_like(x), x, lv, th, True, eps, f64(0.3)))
        torch.library.opcheck(torch.ops.anacuda.alpha_blend.default,
                              (x.clone().requires_grad_(), lv, th, True, eps.clone().requires_grad_(), f64(0.3)))


def test_compile_no_recompilation():
    from torch._dynamo.testing import CompileCounter

    q = Q.uniform(4)
    counter = CompileCounter()
    eps = torch.nn.Parameter(_eps((6, 1, 1), torch.float32))

    def step(x, e):
        return F.ana(x, q, "uniform", 0.0, 0.5, "mode", eps=e).square().sum()

    compiled = torch.compile(step, backend=counter, fullgraph=True)
    for k in range(3):
        x = _x(q, eps.detach(), seed=k).requires_grad_()
        xe = x.detach().clone().requires_grad_()
        (gx, ge) = torch.autograd.grad(compiled(x, eps), (x, eps))
        (gxe, gee) = torch.autograd.grad(step(xe, eps), (xe, eps))
        assert_equal(gx, gxe)
        assert_equal(ge, gee)
        with torch.no_grad():
            eps.mul_(1.1)  # a new value: no recompilation
    assert counter.frame_count == 1


@pytest.mark.parametrize("eps_shape", [(), (16, 1)], ids=str)
@pytest.mark.parametrize("strategy", ["mode", "random"])
def test_deterministic_whatever_the_thread_count(eps_shape, strategy):
    q = Q.uniform(4)
    eps = _eps(eps_shape, torch.float32)
    x = _x(q, eps, shape=(16, 20000))
    grad = torch.randn(16, 20000, generator=torch.Generator().manual_seed(6))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            torch.manual_seed(0)
            results.append(_grads(F.ana, x, eps, grad, quantizer=q, noise="normal", sigma=0.3, strategy=strategy))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert_equal(a, b)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs the CUDA kernels and a GPU")
@pytest.mark.parametrize("eps_shape", [(), (16, 1)], ids=str)
def test_deterministic_on_cuda(eps_shape):
    """Block partials and a second pass, no atomics: the same eps gradient on every call."""
    q = Q.uniform(4)
    eps = _eps(eps_shape, torch.float32)
    x = _x(q, eps, shape=(16, 200000))
    grad = torch.randn(16, 200000, generator=torch.Generator().manual_seed(6))
    results = [_grads(F.ana, x, eps, grad, "cuda", quantizer=q, noise="normal", sigma=0.3, strategy="expectation")
               for _ in range(3)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert_equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_infinities_and_nan(device):
    q = Q.ternary()
    x = torch.tensor([[float("inf"), 0.2], [-float("inf"), 0.2], [float("nan"), 0.2]], device=device)
    eps = torch.full((3, 1), 0.5, requires_grad=True, device=device)
    xa = x.clone().requires_grad_()
    F.ana(xa, q, "uniform", 0.0, 0.5, "mode", eps=eps).backward(
        torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], device=device))
    assert eps.grad[0].item() == 1.0 and eps.grad[1].item() == -1.0  # q_K at +inf, q_0 at -inf: never inf * 0
    assert torch.isnan(eps.grad[2]).item()  # a NaN input: NaN for the eps it shares
    assert xa.grad[0, 0].item() == 0.0 and torch.isnan(xa.grad[2, 0]).item()
    # one value for all: NaN
    e = torch.tensor(0.5, requires_grad=True, device=device)
    F.ana(x, q, eps=e).sum().backward()
    assert torch.isnan(e.grad)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", list(EPS_SHAPES))
@pytest.mark.parametrize("device", DEVICES)
def test_alpha_blend(device, dtype, kind):
    q = Q.uniform(3)
    eps = _eps(EPS_SHAPES[kind], _eps_dtype(dtype))
    w = _x(q, eps, dtype=dtype)
    grad = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(dtype)
    for alpha in (0.0, 0.3, 1.0):
        _, gw, ge = _grads(lambda ww, eps: F.alpha_blend(ww, q, alpha, eps), w, eps, grad, device)
        _, gwr, ger = _grads(lambda ww, eps: R.alpha_blend(ww, q, alpha, eps), w, eps, grad)
        assert_equal(gw, gwr)
        ct = compute_dtype(dtype)
        level = q((w.to(ct) / eps.to(ct))).double()
        terms = grad.double() * alpha * level
        _check_eps_grad(ge, (terms, terms.abs()), EPS_SHAPES[kind], dtype, f"{kind} alpha {alpha}")


def test_bad_input():
    q = Q.ternary()
    x = torch.randn(3, 4)
    for name in ("mu", "sigma"):
        with pytest.raises(ValueError, match=f"{name} takes no gradient"):
            F.ana(x, q, **{name: torch.tensor(0.3, requires_grad=True)})
    with pytest.raises(ValueError, match="backward sigma takes no gradient"):
        F.ana(x, q, backward_noise=("uniform", 0.0, torch.tensor(0.5, requires_grad=True)))
    with pytest.raises(RuntimeError, match="does not broadcast"):
        F.ana(x, q, eps=torch.ones(2, 1, requires_grad=True))
    for bad in (torch.tensor(-0.5), torch.tensor([[0.5], [0.0], [1.0]]), torch.tensor(float("nan"))):
        with pytest.raises(ValueError, match="eps must be"):
            F.ana(x, q, eps=bad.requires_grad_())
        with pytest.raises(ValueError, match="eps must be"):
            F.alpha_blend(x, q, 0.5, eps=bad.detach().requires_grad_())


# --- ste.lsq against PyTorch's learnable fake-quantisation ops ------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("nbits", [2, 4, 8])
def test_lsq_is_pytorch_learnable_per_tensor(dtype, nbits):
    q = Q.uniform(nbits)
    scale = 0.37
    x = _lsq_inputs((4096,), scale, q, dtype)
    grad = torch.randn(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(8))
    est = ste.lsq(q)
    y, gx, ge = _grads(est, x, torch.tensor(scale, dtype=dtype), grad)

    xb = x.float().requires_grad_()  # PyTorch's learnable ops compute in float32 only
    s = torch.tensor([scale], dtype=torch.float32, requires_grad=True)
    yb = torch._fake_quantize_learnable_per_tensor_affine(xb, s, torch.zeros(1), int(q.levels[0]),
                                                          int(q.levels[-1]), 1.0)
    yb.backward(grad.float())
    torch.testing.assert_close(y, yb.to(dtype), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx, xb.grad.to(dtype), rtol=2**-24, atol=0)
    assert torch.equal(gx != 0, xb.grad != 0)
    mag = float((grad.abs() * q.levels.abs().max()).sum())
    assert abs(float(ge) - float(s.grad)) <= 1e-5 * mag


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_lsq_is_pytorch_learnable_per_channel(dtype):
    q = Q.uniform(4)
    scales = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64)
    x = torch.stack([_lsq_inputs((64, 5), float(s), q, dtype, seed=i) for i, s in enumerate(scales)], 1)  # (64, 3, 5)
    grad = torch.randn(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(9))
    _, gx, ge = _grads(ste.lsq(q), x, scales.to(dtype).reshape(3, 1), grad)

    xb = x.float().requires_grad_()
    s = scales.float().clone().requires_grad_()
    torch._fake_quantize_learnable_per_channel_affine(xb, s, torch.zeros(3), 1, -8, 7, 1.0).backward(grad.float())
    torch.testing.assert_close(gx, xb.grad.to(dtype), rtol=2**-24, atol=0)
    assert torch.equal(gx != 0, xb.grad != 0)
    mag = (grad.abs() * 8).sum(dim=(0, 2))
    assert ((ge.reshape(3).double() - s.grad.double()).abs() <= 1e-5 * mag.double()).all()


def test_lsq_preset():
    est = ste.lsq(Q.uniform(4))
    assert est.name == "lsq" and est.strategy == "mode" and est.sigma == 0.5 and est.noise == "uniform"
    with pytest.raises(ValueError, match="ste.lsq"):
        ste.lsq(Q([-2.0, 0.0, 2.0], [-1.0, 1.0]))
