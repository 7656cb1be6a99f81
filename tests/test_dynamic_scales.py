"""Dynamic scales computed by the op (docs/semantics.md §9): eps="absmax_per_token", "absmean",
"absmax", "absmean_per_channel", "absmax_per_channel".

The scale (torch.ops.anacuda._dynamic_eps) against the reference; ana and alpha_blend at a rule
against the same op at that eps and against the reference, forward and backward, on both CPU
paths; BitNet b1.58's quantisers as its public code writes them; gradcheck where the scale stays
put; opcheck; torch.compile; determinism across thread counts; bad input."""

from __future__ import annotations

import pytest
import torch

from conftest import DEVICES, DTYPES, F, Q, R, assert_close, assert_equal, grad_scale, scale_of
from conftest import bitnet_activation_quant as activation_quant, bitnet_weight_quant as weight_quant

pytestmark = pytest.mark.usefixtures("one_intra_op_thread", "cpu_path")  # every test on both CPU paths

RULES = ["absmax_per_token", "absmean", "absmax", "absmean_per_channel", "absmax_per_channel"]
QUANTIZERS = {"ternary": Q.ternary(), "int8": Q.uniform(8), "uint4": Q.uniform(4, signed=False)}
FLOOR = 1e-5


def _eps_op(x, q, rule):
    return torch.ops.anacuda._dynamic_eps(x, rule, R.grid_reach(q), FLOOR)


def _input(shape, dtype, device, seed=0):
    """Rows of different magnitudes, an all-zero row and a row of tiny values (below the floor)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x = x * torch.logspace(-1, 1, shape[0], dtype=torch.float64).reshape((-1,) + (1,) * (len(shape) - 1))
    x[1] = 0
    x[2] = x[2] * 1e-7
    return x.to(dtype=dtype, device=device)


def _eps_tol(dtype):
    return 1e-12 if dtype == torch.float64 else 2e-6


# --- the scale --------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(6, 40), (5, 3, 4100), (4, 2, 3, 5)], ids=str)  # 4100 x 3: several CPU chunks
@pytest.mark.parametrize("device", DEVICES)
def test_dynamic_eps_matches_reference(device, shape, dtype, rule):
    q = QUANTIZERS["int8"]
    x = _input(shape, dtype, device)
    eps = _eps_op(x, q, rule)
    ref = R.dynamic_eps(x, q, rule)
    assert eps.shape == ref.shape and eps.dtype == ref.dtype and eps.device == x.device
    if "absmax" in rule:  # a max is exact, and so is everything after it
        assert_equal(eps, ref)
    else:
        torch.testing.assert_close(eps, ref, rtol=_eps_tol(dtype), atol=0)
    assert (eps >= FLOOR / 127 * (1 - 1e-6)).all()


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("device", DEVICES)
def test_dynamic_eps_nonfinite_groups(device, rule):
    """A group holding a NaN or ±inf has no scale (NaN); the others are unaffected."""
    q = QUANTIZERS["ternary"]
    x = _input((5, 16), torch.float32, device)
    x[3, 4] = float("nan")
    x[4, 0] = float("-inf")
    eps, ref = _eps_op(x, q, rule), R.dynamic_eps(x, q, rule)
    assert torch.equal(torch.isnan(eps), torch.isnan(ref))
    if rule.endswith(("token", "channel")):
        assert torch.isnan(eps[3:]).all() and not torch.isnan(eps[:3]).any()
    else:
        assert torch.isnan(eps).all()


# --- ana at a rule ------------------------------------------------------------------------------------
FORWARDS = [("uniform", 0.5, "expectation"), ("normal", 0.3, "mode"), ("uniform", 0.0, "mode")]


@pytest.mark.parametrize("qname", list(QUANTIZERS))
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("forward", FORWARDS, ids=lambda f: f"{f[0]}-{f[1]}-{f[2]}")
@pytest.mark.parametrize("backward", [None, "identity"])
@pytest.mark.parametrize("device", DEVICES)
def test_ana_at_a_rule(device, backward, forward, dtype, rule, qname):
    """F.ana(x, eps=rule) is F.ana(x, eps=that scale) bit for bit, forward and backward, and the
    reference at that scale to within rounding; the scale is the reference's (test above)."""
    q = QUANTIZERS[qname]
    noise, sigma, strategy = forward
    x0 = _input((7, 3, 33), dtype, device, seed=1)
    g = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype).to(device)
    eps = _eps_op(x0, q, rule)
    kw = dict(noise=noise, mu=0.05, sigma=sigma, strategy=strategy, backward_noise=backward)
    out = {}
    for name, fn, e in [("rule", F.ana, rule), ("tensor", F.ana, eps), ("reference", R.ana, eps)]:
        x = x0.clone().requires_grad_(True)
        y = fn(x, q, eps=e, **kw)
        y.backward(g)
        out[name] = (y, x.grad)
    assert_equal(out["rule"][0], out["tensor"][0], msg="forward: rule vs its eps")
    assert_equal(out["rule"][1], out["tensor"][1], msg="backward: rule vs its eps")
    y, r = out["rule"][0], out["reference"][0]
    if sigma == 0 or strategy == "mode":
        from conftest import mode_safe

        safe = mode_safe(x0, q, noise, 0.05, sigma, eps) if sigma > 0 else None
        assert_equal(y, r, mask=safe, msg="forward vs reference")
    else:
        assert_close(y, r, dtype, scale_of(q, eps), msg="forward vs reference")
    gb = out["reference"][1]
    if backward == "identity":
        assert_equal(out["rule"][1], gb, msg="identity backward vs reference")
    else:
        assert_close(out["rule"][1], gb, dtype, grad_scale(q, noise, sigma if sigma > 0 else 0.5, g),
                     msg="backward vs reference")


@pytest.mark.parametrize("device", DEVICES)
def test_ana_at_a_rule_bad_rows(device):
    """An all-zero row quantises to 0 with a finite gradient; a row holding a NaN or inf gives
    NaN outputs and gradients in that row only; an empty batch gives an empty result."""
    q = QUANTIZERS["int8"]
    x = _input((4, 32), torch.float32, device).requires_grad_(True)
    with torch.no_grad():
        x[2, 3] = float("nan")
        x[3, 0] = float("inf")
    y = F.ana(x, q, "uniform", sigma=0.5, eps="absmax_per_token")
    y.backward(torch.ones_like(y))
    assert (y[1] == 0).all() and torch.isfinite(x.grad[:2]).all()
    assert torch.isnan(y[2:]).all() and torch.isnan(x.grad[2:]).all()
    assert torch.isfinite(y[:2]).all()
    for rule in RULES:
        e = torch.empty(0, 16, device=device, requires_grad=True)
        ye = F.ana(e, q, eps=rule, backward_noise="identity")
        ye.sum().backward()
        assert ye.shape == (0, 16) and e.grad.shape == (0, 16)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("device", DEVICES)
def test_identity_backward_keeps_no_input(device, rule):
    """With the identity backward the op saves nothing of x's size (BitNet's x + (q - x).detach()
    saves nothing either), and still gives NaN where x / eps is NaN: a group holding a NaN or inf
    has a NaN scale, and nowhere else."""
    q = QUANTIZERS["int8"]
    x0 = _input((4, 6, 32), torch.float32, device)
    x0[1, 2, 3], x0[2, 0, 0] = float("nan"), float("-inf")
    g = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4)).to(device)
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        x = x0.clone().requires_grad_(True)
        F.ana(x, q, "uniform", sigma=0.0, eps=rule, backward_noise="identity").backward(g)
    assert sizes and max(sizes) < x0.numel(), sizes
    eps = _eps_op(x0, q, rule)
    assert_equal(x.grad, torch.where(torch.isnan(eps), float("nan"), g))
    assert torch.isnan(x.grad).any() and torch.isfinite(x.grad).any() == (rule not in ("absmean", "absmax"))


@pytest.mark.parametrize("rule", RULES)
def test_identity_backward_at_valid_scales_is_the_gradient_itself(rule):
    """On the CPU, where every scale is valid, the identity backward returns the incoming gradient
    itself (no pass over memory, as autograd's backward of a clone); where one is not, the kernel's
    NaN pattern (above), and under torch.compile the same values."""
    q = QUANTIZERS["int8"]
    x = _input((4, 6, 32), torch.float32, "cpu").requires_grad_(True)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    f = lambda t: F.ana(t, q, "uniform", sigma=0.0, eps=rule, backward_noise="identity")  # noqa: E731
    (gx,) = torch.autograd.grad(f(x), x, g)
    assert gx.data_ptr() == g.data_ptr() and torch.equal(gx, g)
    xc = x.detach().clone().requires_grad_(True)
    (gc,) = torch.autograd.grad(torch.compile(f, backend="aot_eager", fullgraph=True)(xc), xc, g)
    assert_equal(gc, g)
    bad = x.detach().clone()
    bad[1, 2, 3] = float("inf")
    (gb,) = torch.autograd.grad(f(bad.requires_grad_(True)), bad, g)
    assert_equal(gb, torch.where(torch.isnan(_eps_op(bad.detach(), q, rule)), float("nan"), g))
    assert gb.data_ptr() != g.data_ptr() and torch.isnan(gb).any()


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("device", DEVICES)
def test_alpha_blend_at_a_rule(device, rule):
    q = QUANTIZERS["ternary"]
    w0 = _input((6, 5, 7), torch.float32, device, seed=3)
    eps = _eps_op(w0, q, rule)
    for alpha in [0.0, 0.3, 1.0]:
        a, b = w0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        ya, yb = F.alpha_blend(a, q, alpha, eps=rule), F.alpha_blend(b, q, alpha, eps=eps)
        assert_equal(ya, yb)
        assert_close(ya, R.alpha_blend(w0, q, alpha, eps=eps), torch.float32, scale_of(q, eps))
        ya.sum().backward()
        yb.sum().backward()
        assert_equal(a.grad, b.grad)


# --- BitNet b1.58, as its public code writes it (conftest) ----------------------------------------
def _away_from_ties(u, thresholds):
    return ((u.unsqueeze(-1) - thresholds.to(u)).abs() > 1e-4 * (1 + u.abs().unsqueeze(-1))).all(-1)


def test_bitnet_activation_and_weight_quant():
    """Forward: equal except within rounding of a threshold. Backward: BitNet's STE, x + (q(x) -
    x).detach(), is the identity backward."""
    x = torch.randn(16, 33, 64, generator=torch.Generator().manual_seed(6)) * 3
    x[3, 5] = 0
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(7)) * 0.02
    for t, quant, rule, q in [(x, activation_quant, "absmax_per_token", Q.uniform(8)),
                              (w, weight_quant, "absmean", Q.ternary())]:
        a, b = t.clone().requires_grad_(True), t.clone().requires_grad_(True)
        y = F.ana(a, q, training=False, eps=rule, backward_noise="identity")
        yb = b + (quant(b) - b).detach()
        ok = _away_from_ties(t / _eps_op(t, q, rule), q.thresholds)
        assert ok.float().mean() > 0.99
        torch.testing.assert_close(y[ok], yb.detach()[ok], rtol=1e-6, atol=1e-7)
        g = torch.randn(t.shape, generator=torch.Generator().manual_seed(8))
        y.backward(g)
        yb.backward(g)
        assert_equal(a.grad, b.grad)
    assert (F.ana(x, Q.uniform(8), training=False, eps="absmax_per_token")[3, 5] == 0).all()


# --- autograd, registration, compile ----------------------------------------------------------------
@pytest.mark.parametrize("rule", ["absmax_per_token", "absmax", "absmax_per_channel"])
def test_gradcheck_where_the_scale_stays(rule):
    """gradcheck of the smooth path in float64; the scale is a constant of the step, so each row
    (and the tensor) carries a fixed anchor element, its max, which gradcheck does not perturb."""
    q = QUANTIZERS["int8"]
    t0 = torch.randn(5, 12, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    anchor = torch.full((5, 1), 40.0, dtype=torch.float64)

    def f(t):
        return F.ana(torch.cat([t, anchor], -1), q, "normal", 0.1, 0.6, eps=rule)[:, :-1]

    assert torch.autograd.gradcheck(f, (t0.clone().requires_grad_(True),), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    q = QUANTIZERS["int8"]
    lv, th = q.tables(torch.device(device), torch.float32)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    x = _input((6, 9), torch.float32, device).requires_grad_(True)
    for rule in RULES:
        torch.library.opcheck(torch.ops.anacuda._dynamic_eps.default, (x.detach(), rule, 127.0, FLOOR))
        for noise_b in ["normal", "identity"]:
            args = (x, lv, th, q.uniform_grid, rule, 127.0, FLOOR, "uniform", f64(0.0), f64(0.5), "expectation", True,
                    None, noise_b, f64(0.0), f64(0.5))
            torch.library.opcheck(torch.ops.anacuda._ana_dynamic.default, args)
        torch.library.opcheck(torch.ops.anacuda._alpha_blend_dynamic.default,
                              (x, lv, th, q.uniform_grid, rule, 127.0, FLOOR, f64(0.4)))
    eps = _eps_op(x.detach(), q, "absmax_per_token")
    g = torch.randn(x.shape, device=device)
    torch.library.opcheck(torch.ops.anacuda._ana_dynamic_backward.default,
                          (g, x.detach(), eps, lv, th, q.uniform_grid, "normal", f64(0.0), f64(0.5)))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph_once(device):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    q = QUANTIZERS["int8"]
    q.tables(torch.device(device), torch.float32)
    cnt = CompileCounterWithBackend("aot_eager")

    def f(x, sigma):
        return F.ana(x, q, "uniform", sigma=sigma, eps="absmax_per_token", backward_noise="identity")

    cf = torch.compile(f, backend=cnt, fullgraph=True)
    for i in range(3):
        x0 = _input((8, 32), torch.float32, device, seed=10 + i)
        s = torch.tensor(0.5 - 0.2 * i, device=device)
        x, xe = x0.clone().requires_grad_(True), x0.clone().requires_grad_(True)
        y, ye = cf(x, s), f(xe, s)
        y.backward(torch.cos(x0))
        ye.backward(torch.cos(x0))
        assert_equal(y, ye)
        assert_equal(x.grad, xe.grad)
    assert cnt.frame_count == 1, f"recompiled: {cnt.frame_count} compilations"


def test_deterministic_across_thread_counts():
    """Fixed chunks, partials combined in a fixed order: the same bits with 1, 2 and 4 threads."""
    q = QUANTIZERS["int8"]
    x = _input((3, 70001), torch.float32, "cpu", seed=11)
    xt = _input((4096, 64), torch.float32, "cpu", seed=12)
    results = []
    old = torch.get_num_threads()
    try:
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            results.append([_eps_op(x, q, r) for r in RULES] + [F.ana(xt, q, eps="absmax_per_token")])
    finally:
        torch.set_num_threads(old)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert_equal(a, b)


# --- bad input ------------------------------------------------------------------------------------
def test_bad_input():
    q = QUANTIZERS["int8"]
    with pytest.raises(ValueError, match="needs an input of at least 2 dimensions"):
        F.ana(torch.randn(5), q, eps="absmax_per_token")
    with pytest.raises(ValueError, match="needs an input of at least 2 dimensions"):
        F.ana(torch.tensor(1.0), q, eps="absmax_per_token")
    with pytest.raises(ValueError, match="needs an input of at least 1 dimensions"):
        F.alpha_blend(torch.tensor(1.0), q, 0.5, eps="absmean_per_channel")
    with pytest.raises(ValueError, match="unknown scale rule"):
        F.ana(torch.randn(4, 4), q, eps="absmax_per_row")
    with pytest.raises(ValueError, match="reaches above 0"):
        F.ana(torch.randn(4, 4), Q([-2.0, -1.0], [-1.5]), eps="absmax")
    with pytest.raises(RuntimeError, match="at least 2 dimensions"):
        torch.ops.anacuda._dynamic_eps(torch.randn(5), "absmax_per_token", 127.0, FLOOR)
    with pytest.raises(RuntimeError, match="unknown scale rule"):
        torch.ops.anacuda._dynamic_eps(torch.randn(5), "absmax_per_row", 127.0, FLOOR)
    with pytest.raises(RuntimeError, match="r_min"):
        torch.ops.anacuda._dynamic_eps(torch.randn(5, 2), "absmax", 127.0, 0.0)
    # a 0-d input per tensor and a 1-d input per channel are fine: one value per group
    assert F.ana(torch.tensor(0.3), q, eps="absmax").shape == ()
    assert_equal(_eps_op(torch.tensor([2.0, -4.0]), q, "absmax_per_channel"),
                 torch.tensor([2.0, 4.0]) / 127)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("device", DEVICES)
def test_rule_in_one_pass_or_two_is_the_same(device, rule):
    """A rule over rows (per token, per channel) runs in one pass where it can: on the CPU, blocks
    of rows quantised right after they are reduced (csrc/cpu/dynamic_eps.cpp) where x is row-major
    and its rows fit in cache; on CUDA, a block per row of at most 4,096 elements under a max rule
    (csrc/cuda/dynamic_eps.cu). Elsewhere the reduction and the elementwise kernel run apart. The
    same bits either way: a transposed input, channels_last, rows at and past 4,096 elements,
    rows longer than a CPU block, a single row, NaN and inf rows, half types, the random strategy
    outside training."""
    q = QUANTIZERS["int8"]
    g = torch.Generator().manual_seed(9)
    nonfinite = torch.randn(6, 4096, generator=g)
    nonfinite[1, 7], nonfinite[4, 4095] = float("nan"), float("-inf")
    for x in [torch.randn(33, 7, 40, generator=g).transpose(0, 2), torch.randn(3, 50, 2000, generator=g),
              torch.randn(4, 6, 5, 9, generator=g).to(memory_format=torch.channels_last),
              torch.randn(1, 20000, generator=g), torch.randn(300, 64, generator=g).to(torch.bfloat16),
              nonfinite, torch.randn(5, 4097, generator=g), torch.randn(700, 1, generator=g),
              torch.randn(64, 1000, generator=g).to(torch.float16)]:
        x = x.to(device)
        if rule == "absmax_per_token" and x.dim() < 2:
            continue
        eps = _eps_op(x, q, rule)
        for noise, sigma, strategy, training in [("uniform", 0.0, "mode", True), ("normal", 0.3, "expectation", True),
                                                 ("logistic", 0.3, "random", False)]:
            a = F.ana(x, q, noise, 0.0, sigma, strategy, eps=rule, training=training)
            if eps.isfinite().all():
                b = F.ana(x, q, noise, 0.0, sigma, strategy, eps=eps, training=training)
            else:  # no such eps can be passed: the rule on a column-major copy (two passes)
                b = F.ana(x.t().contiguous().t(), q, noise, 0.0, sigma, strategy, eps=rule, training=training)
                assert a.isnan().any()
            assert_equal(a, b, msg=f"{tuple(x.shape)} {rule} {noise}")


def test_rows_of_no_elements_still_have_a_scale():
    """x of shape (3, 0): three empty tokens; the op's scale output is r_min / reach for each (an
    empty group's r is 0), as _dynamic_eps gives, never uninitialised memory."""
    q = QUANTIZERS["int8"]
    x = torch.empty(3, 0)
    lv, th = q.tables(x.device, x.dtype)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    y, eps = torch.ops.anacuda._ana_dynamic(x, lv, th, q.uniform_grid, "absmax_per_token", R.grid_reach(q), FLOOR,
                                            "uniform", f64(0.0), f64(0.0), "mode", True, None, "identity", f64(0.0),
                                            f64(0.0))
    assert y.shape == (3, 0)
    assert_equal(eps, _eps_op(x, q, "absmax_per_token"))
    assert torch.equal(eps, (torch.tensor(FLOOR) / R.grid_reach(q)).expand(3, 1))  # float32 arithmetic
