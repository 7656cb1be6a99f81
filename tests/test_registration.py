"""The op as PyTorch sees it: autograd's numerical gradients (gradcheck), torch.library's
opcheck (schema, fake tensors, autograd registration), ana_coded against ana and ana_code,
functional.ana's arguments to the op, and torch.compile."""

from __future__ import annotations

import pytest
import torch

from conftest import (
    DEVICES,
    F,
    NOISES,
    Q,
    QUANTIZERS,
    assert_equal,
    op_args,
)

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


# --- gradcheck -------------------------------------------------------------------------------------
@pytest.mark.parametrize("qname", ["binary", "ternary", "arbitrary"])
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device, noise, qname):
    """Numerical vs analytic gradient of the smooth path (expectation) in float64."""
    q = QUANTIZERS[qname]
    mu, sigma, eps = 0.1, 0.6, 0.7
    u = torch.linspace(-3.3, 3.7, 41, dtype=torch.float64)
    if noise in ("uniform", "triangular"):
        # keep away from the kinks of F (a - theta = +-sigma, and 0 for the triangle's density)
        kinks = torch.cat([q.thresholds + mu + d for d in (-sigma, 0.0, sigma)])
        u = u[(u.unsqueeze(-1) - kinks).abs().amin(-1) > 1e-3]
    x = (u * eps).to(device).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: F.ana(t, q, noise, mu, sigma, "expectation", eps=eps), (x,),
                                    eps=1e-6, atol=1e-7, rtol=1e-5)
    # per-channel eps tensor too
    xe = (u[:40].reshape(4, 10) * 0.5).to(device).requires_grad_(True)
    e = torch.tensor([[0.5], [0.9], [1.3], [2.0]], dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(lambda t: F.ana(t, q, noise, mu, sigma, eps=e), (xe,), eps=1e-6, atol=1e-7,
                                    rtol=1e-5)


# --- opcheck ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["expectation", "mode", "random"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "noncontiguous"])
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, strategy, contiguous):
    q = QUANTIZERS["uniform4"]
    base = torch.randn(6, 9, generator=torch.Generator().manual_seed(3)) * 4
    x = base if contiguous else base.t()
    x = x.to(device).requires_grad_(True)
    assert x.is_contiguous() == contiguous
    seed = torch.tensor([123, 7]) if strategy == "random" else None
    for eps in [torch.tensor(0.75, dtype=torch.float64), torch.full((x.shape[0], 1), 0.5, device=device)]:
        for training in [True, False]:
            # normal backward noise: the input is saved; uniform on K = 15: a 1-byte code is
            # saved instead (anacuda.ops.CODE_MAX_THRESHOLDS), through ana_code/ana_backward_code
            for noise_b in ["normal", "uniform"]:
                args = op_args(x, q, "normal", 0.1, 0.5, strategy, training, eps, seed, noise_b)
                torch.library.opcheck(torch.ops.anacuda.ana.default, args)
            # the forward and the code in one pass (what functional.ana runs when x needs a gradient)
            args = op_args(x, q, "uniform", 0.1, 0.5, strategy, training, eps, seed)
            torch.library.opcheck(torch.ops.anacuda._ana_coded.default, args)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(4)).to(device)
    g = g if contiguous else g.t().contiguous().t()
    lv, th = q.tables(x.device, x.dtype)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    bargs = (g, x.detach(), lv, th, q.uniform_grid, f64(0.75), "logistic", f64(0.1), f64(0.5))
    torch.library.opcheck(torch.ops.anacuda._ana_backward.default, bargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_ana_coded_is_ana_and_ana_code(device, dtype):
    """The fused op returns what its two halves return, bit for bit, on every path: small grids
    (hard, expectation, random; mu_b equal to mu or not), the per-element walk (K = 15 with a
    wide triangular mode), NaN and infinities, scalar and per-channel eps."""
    gen = torch.Generator().manual_seed(11)
    x = (torch.randn(7, 300, generator=gen) * 3)
    x[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    x = x.to(device=device, dtype=dtype)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    for qn, noise, strategy, mu_b in [("ternary", "uniform", "mode", 0.0), ("uniform4", "uniform", "mode", 0.2),
                                      ("uniform4", "triangular", "mode", 0.0), ("uniform4", "normal", "expectation", 0.0),
                                      ("ternary", "logistic", "random", 0.1), ("arbitrary", "uniform", "expectation", 0.0)]:
        q = QUANTIZERS[qn]
        lv, th = q.tables(x.device, x.dtype)
        for eps in [f64(0.75), torch.rand(7, 1, generator=gen).to(device) + 0.5]:
            seed = torch.tensor([5, 6]) if strategy == "random" else None
            args = (x, lv, th, q.uniform_grid, eps, noise, f64(0.0), f64(0.6), strategy, True, seed, "uniform",
                    f64(mu_b), f64(0.5))
            y, code = torch.ops.anacuda._ana_coded(*args)
            assert_equal(y, torch.ops.anacuda.ana(*args))
            assert torch.equal(code, torch.ops.anacuda._ana_code(x, lv, th, eps, f64(mu_b), f64(0.5)))


def test_functional_calls_the_op_with_these_arguments():
    """op_args mirrors functional.ana: calling the op directly gives functional.ana's output."""
    q = QUANTIZERS["uniform4"]
    x = torch.randn(50, generator=torch.Generator().manual_seed(5)) * 4
    for strategy in ["expectation", "mode"]:
        direct = torch.ops.anacuda.ana(*op_args(x, q, "normal", 0.1, 0.5, strategy, True,
                                                 torch.tensor(0.75, dtype=torch.float64), None))
        assert_equal(direct, F.ana(x, q, "normal", 0.1, 0.5, strategy, eps=0.75))


# --- torch.compile ---------------------------------------------------------------------------------
def _compiled_pair(q, strategy, noise="normal"):
    def f(x, mu, sigma, eps):
        return F.ana(x, q, noise, mu=mu, sigma=sigma, strategy=strategy, eps=eps)

    return f


@pytest.mark.parametrize("noise", ["normal", "uniform"])  # uniform: the coded backward (K = 7)
@pytest.mark.parametrize("strategy", ["expectation", "mode"])
@pytest.mark.parametrize("device", DEVICES)
def test_compile_matches_eager(device, strategy, noise):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    q = Q.uniform(3)
    q.tables(torch.device(device), torch.float32)  # warm the table cache
    f = _compiled_pair(q, strategy, noise)
    cnt = CompileCounterWithBackend("aot_eager")  # traces the fake and the autograd formula
    cf = torch.compile(f, backend=cnt, fullgraph=True)
    x0 = torch.linspace(-6, 6, 97, device=device)
    for mu, sigma, eps in [(0.0, 0.5, 1.0), (-0.3, 0.2, 0.5), (0.4, 1.5, 2.0), (0.1, 0.0, 1.0)]:
        t = lambda v: torch.tensor(v, device=device)  # noqa: E731
        x = x0.clone().requires_grad_(True)
        y = cf(x, t(mu), t(sigma), t(eps))
        (gx,) = torch.autograd.grad(y, x, torch.cos(x0))
        xe = x0.clone().requires_grad_(True)
        ye = f(xe, t(mu), t(sigma), t(eps))
        (ge,) = torch.autograd.grad(ye, xe, torch.cos(x0))
        assert_equal(y, ye, msg="compiled forward")
        assert_equal(gx, ge, msg="compiled backward")
    # hyper-parameters passed as tensors changed four times: one compilation
    assert cnt.frame_count == 1


@pytest.mark.parametrize("device", DEVICES)
def test_compile_no_recompile_on_tensor_hyperparameters(device):
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    q = Q.ternary()
    q.tables(torch.device(device), torch.float32)
    cnt = CompileCounter()

    def f(x, mu, sigma, eps, mu_b, sigma_b):
        return F.ana(x, q, "logistic", mu=mu, sigma=sigma, strategy="expectation", eps=eps,
                     backward_noise=("uniform", mu_b, sigma_b))

    cf = torch.compile(f, backend=cnt, fullgraph=True)
    x = torch.randn(4, 16, device=device, requires_grad=True)
    t = lambda v: torch.tensor(v, device=device)  # noqa: E731
    for i in range(5):
        eps = torch.full((4, 1), 0.5 + 0.1 * i, device=device)
        y = cf(x, t(0.1 * i - 0.2), t(1.0 / (i + 1)), eps, t(0.05 * i), t(0.5 + 0.1 * i))
        y.sum().backward()
    assert cnt.frame_count == 1, f"recompiled: {cnt.frame_count} compilations"


def test_compile_fresh_quantizer_compiles_once():
    """A Quantizer whose table cache is cold when first traced: the cache must not be guarded on
    (a mutated cache would recompile the second call)."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    q = Q.uniform(2)  # cold table cache
    cnt = CompileCounter()
    cf = torch.compile(lambda x, s: F.ana(x, q, "normal", sigma=s), backend=cnt, fullgraph=True)
    x = torch.randn(16)
    for s in [0.5, 0.4, 0.3]:
        cf(x, torch.tensor(s))
    assert cnt.frame_count == 1


@pytest.mark.slow
def test_compile_inductor():
    torch._dynamo.reset()
    q = Q.uniform(3)
    f = _compiled_pair(q, "expectation")
    cf = torch.compile(f, fullgraph=True)
    x0 = torch.linspace(-6, 6, 97)
    x = x0.clone().requires_grad_(True)
    t = torch.tensor
    y = cf(x, t(0.1), t(0.5), t(0.7))
    (gx,) = torch.autograd.grad(y.sum(), x)
    xe = x0.clone().requires_grad_(True)
    ye = f(xe, t(0.1), t(0.5), t(0.7))
    (ge,) = torch.autograd.grad(ye.sum(), xe)
    assert_equal(y, ye)
    assert_equal(gx, ge)


def test_compile_random_strategy_matches_eager():
    """Random strategy under torch.compile (graph breaks allowed): the seed tensor is still drawn
    from torch's generator, so torch.manual_seed reproduces the eager output exactly."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    q = Q.uniform(3)
    cnt = CompileCounterWithBackend("aot_eager")
    f = lambda x, s: F.ana(x, q, "normal", sigma=s, strategy="random") * 2  # noqa: E731
    cf = torch.compile(f, backend=cnt)
    x = torch.linspace(-4, 4, 1000)
    torch.manual_seed(11)
    a = cf(x, torch.tensor(0.7))
    b = cf(x, torch.tensor(0.7))
    torch.manual_seed(11)
    c = cf(x, torch.tensor(0.7))
    torch.manual_seed(11)
    e = f(x, torch.tensor(0.7))
    assert_equal(a, c)
    assert_equal(a, e)
    assert not torch.equal(a, b)
    assert torch.isin(a, 2 * q.levels.float()).all()


def test_compile_fullgraph_random_strategy():
    """The seed is drawn with torch.randint, which Dynamo traces: no graph break, and under
    aot_eager the same draws as eager."""
    torch._dynamo.reset()
    q = Q.uniform(3)
    q.tables(torch.device("cpu"), torch.float32)
    cf = torch.compile(lambda x, s: F.ana(x, q, "normal", sigma=s, strategy="random"), backend="aot_eager",
                       fullgraph=True)
    x = torch.linspace(-4, 4, 1000)
    torch.manual_seed(11)
    a = cf(x, torch.tensor(0.7))
    torch.manual_seed(11)
    assert_equal(a, F.ana(x, q, "normal", sigma=0.7, strategy="random"))


# --- autograd in C++ (csrc/ops/autograd.cpp) -------------------------------------------------------
def test_autograd_is_cpp_and_records_nothing_without_a_gradient():
    """Every differentiable op's graph node is C++'s (torch.library's Python autograd costs more per
    call than a small layer's kernel), and a call that needs no gradient records no node."""
    q = Q.ternary()
    base = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    learned = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    calls = {  # node name: the call, given x
        "Ana": lambda x: F.ana(x, q, "normal", 0.0, 0.5),
        "AnaCoded": lambda x: F.ana(x, q, "uniform", 0.0, 0.5, "mode"),
        "AlphaBlend": lambda x: F.alpha_blend(x, q, 0.5),
        "AnaDynamic": lambda x: F.ana(x, q, eps="absmax_per_token"),
        "AlphaBlendDynamic": lambda x: F.alpha_blend(x, q, 0.5, eps="absmean"),
    }
    for name, call in calls.items():
        x = base.clone().requires_grad_(True)
        node = call(x).grad_fn
        assert node is not None and node.name().endswith(f"::{name}>"), (name, node)
        with torch.no_grad():
            assert call(x).grad_fn is None, name
        assert call(base).grad_fn is None, name
    # a learned eps alone needs the node (SPEC §8), and gets its gradient from it
    for call in (lambda: F.ana(base, q, "normal", 0.0, 0.5, eps=learned), lambda: F.alpha_blend(base, q, 0.5, learned)):
        y = call()
        assert y.grad_fn is not None and "CppNode" in y.grad_fn.name()
        (g,) = torch.autograd.grad(y.sum(), learned)
        assert torch.isfinite(g) and g != 0


def test_numbers_are_checked_once_per_minimum():
    """A number's tensor is made and checked once (the checks cost microseconds per call), but a
    number that passed one minimum's check is still checked against another's."""
    from anacuda.quantizer import as_param

    a, b = as_param(0.375, "mu"), as_param(0.375, "sigma", "nonnegative")
    assert a is as_param(0.375, "mu") and b is as_param(0.375, "sigma", "nonnegative")
    assert a.dtype == torch.float64 and a.item() == 0.375
    assert as_param(-0.375, "mu").item() == -0.375
    with pytest.raises(ValueError, match="sigma"):
        as_param(-0.375, "sigma", "nonnegative")
    assert torch.copysign(torch.ones(()), as_param(-0.0, "mu")).item() == -1.0  # -0.0 is not 0.0
    assert torch.copysign(torch.ones(()), as_param(0.0, "mu")).item() == 1.0
    assert as_param(2, "eps", "positive").item() == 2.0
    with pytest.raises(ValueError, match="eps"):
        as_param(0, "eps", "positive")


def test_backward_makes_nothing_for_the_code_or_the_scale():
    """The code and the scale are outputs without a gradient: the backward gets none for them (no
    zeros of the code's size made and filled on every step)."""
    q = Q.ternary()
    for call in (lambda t: F.ana(t, q, "uniform", 0.0, 0.5, "mode"),  # _ana_coded: (y, code)
                 lambda t: F.ana(t, q, "uniform", 0.0, 0.5, "mode", eps="absmax_per_token")):  # _ana_dynamic: (y, eps)
        x = torch.randn(64, 64, requires_grad=True)
        y = call(x)
        g = torch.ones_like(y)
        with torch.profiler.profile() as prof:
            y.backward(g)
        names = {e.key for e in prof.key_averages()}
        assert not names & {"aten::zeros", "aten::zero_", "aten::fill_"}, names
        assert x.grad is not None and torch.isfinite(x.grad).all()
