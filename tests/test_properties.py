"""Property tests (hypothesis) of anacuda.functional.ana and anacuda.functional.alpha_blend
against the executable spec, anacuda.reference: random quantisers (named grids, a single
threshold, non-uniform sorted grids with monotone or arbitrary levels, the 8-bit grid), noises,
strategies, sigma from 0 through 1e-6 to 50 steps, mu, eps (a number, a 0-d tensor, one value per
channel along any axis, one per element), shapes (0-d, empty, odd, up to ~3000 elements),
layouts (contiguous, transposed, sliced, offset, expanded), dtypes, and the backward.

What is compared, and how closely (the bounds are written down in docs/guarantees.md):
- the hard stair (eval, sigma = 0): bit for bit;
- expectation: within conftest.tolerance (rtol·|ref| + atol·scale, plus one ulp for half types);
- mode: bit for bit wherever the two most likely levels are further apart than rounding can move
  them (see `mode_decidable`); exact ties and near-ties are left to test_ops_reference's tie tests;
- random: shape, dtype, NaN pattern, every output a level (eps·q_k rounded to the dtype), within
  the noise's reach of u − mu; sigma = 0 is the hard stair;
- the gradient (every strategy): within (K + 32)·u·M·|g| + the window truncation, where u is the
  unit roundoff of the compute dtype and M = Σ|Δq_i| (f(v_i) + 2|v_i||f'(v_i)|)/σ_b the magnitude
  of the terms summed and of the rounding of v_i = (a − θ_i)/σ_b (cancellation included), plus one
  ulp for half types.

Run by itself: python3 -m pytest tests/test_properties.py -q. With CI set in the environment the
"ci" profile derandomises the examples (the same ones every run); otherwise each run explores new
examples (and hypothesis replays failures it has seen from .hypothesis/).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DEVICES, DTYPES, HALF, anacuda, assert_close, assert_equal, compute_dtype, half_ulp_tol, scale_of

F = anacuda.functional
R = anacuda.reference
Q = anacuda.Quantizer
NOISES = list(anacuda.NOISES)

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
               print_blob=True)
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("dev", **_COMMON)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

#: Examples per test: the whole file runs in well under a minute on 2 busy cores. For a longer
#: search set ANACUDA_PROPERTY_SCALE (e.g. 20: twenty times as many examples).
_SCALE = float(os.environ.get("ANACUDA_PROPERTY_SCALE", "1"))
N_ANA, N_RANDOM, N_BLEND = (max(1, int(n * _SCALE)) for n in (600, 200, 150))


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """Small tensors: torch's thread pool would spend longer at its barriers than computing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- strategies ------------------------------------------------------------------------------------
NAMED = {
    "binary": Q.binary(),
    "ternary": Q.ternary(),
    "uniform8": Q.uniform(8),  # 255 thresholds: the kernel's window, located by arithmetic
    "uniform3_unsigned": Q.uniform(3, signed=False),
    "uniform4_balanced": Q.uniform(4, signed=True, balanced=True),
}

dyadic = st.integers(-512, 512).map(lambda i: i / 64)  # exact in every dtype's tables


@st.composite
def quantizers(draw):
    """(description, Quantizer, typical step)."""
    kind = draw(st.sampled_from(["named", "single", "sorted", "sorted_any_levels"]))
    if kind == "named":
        name = draw(st.sampled_from(sorted(NAMED)))
        return name, NAMED[name], 1.0
    if kind == "single":
        t = draw(st.floats(-3, 3))
        lv = draw(st.lists(dyadic, min_size=2, max_size=2))
        return f"single({t:.3g})", Q(lv, [t]), 1.0
    k = draw(st.integers(2, 40))
    start = draw(st.floats(-6, 2))
    gaps = draw(st.lists(st.floats(0.02, 2.0), min_size=k - 1, max_size=k - 1))
    th = [start]
    for g in gaps:
        th.append(th[-1] + g)
    if kind == "sorted":
        q0 = draw(dyadic)
        steps = draw(st.lists(st.integers(1, 128).map(lambda i: i / 64), min_size=k, max_size=k))
        lv = [q0]
        for s in steps:
            lv.append(lv[-1] + s)
    else:
        lv = draw(st.lists(dyadic, min_size=k + 1, max_size=k + 1))
    step = sorted(gaps)[len(gaps) // 2]
    return f"{kind}(K={k})", Q(lv, th), step


sigmas = st.one_of(st.just(0.0), st.sampled_from([1e-6, 1e-3]), st.floats(0.01, 3.0), st.just(50.0))


@st.composite
def shapes(draw, max_numel=3000):
    """0-d to 4-d, empty included; about a third of them with 1000 to 3000 elements (spread over
    several of the CPU loop's blocks and, on a GPU, over many thread blocks)."""
    ndim = draw(st.integers(0, 4))
    if ndim == 0:
        return ()
    if draw(st.integers(0, 2)) == 0:  # large: a long last axis of any length, the others small
        lead = [draw(st.integers(1, 3)) for _ in range(ndim - 1)]
        per = max_numel // math.prod(lead)
        return tuple(lead) + (draw(st.integers(per // 3, per)),)
    shape, budget = [], 300
    for _ in range(ndim):
        n = draw(st.integers(0, min(budget, 40)))
        shape.append(n)
        budget = max(1, budget // max(1, n))
    return tuple(shape)


def _as_layout(values: torch.Tensor, layout: str, dim: int) -> torch.Tensor:
    """`values` (contiguous) with the same elements in another memory layout."""
    if layout == "transposed" and values.dim() >= 2:
        return values.transpose(0, -1).contiguous().transpose(0, -1)
    if layout == "sliced" and values.dim() >= 1:
        big = torch.zeros(values.shape[:-1] + (2 * values.shape[-1],), dtype=values.dtype, device=values.device)
        big[..., ::2] = values
        return big[..., ::2]
    if layout == "offset":
        big = torch.zeros(values.numel() + 1, dtype=values.dtype, device=values.device)
        big[1:] = values.reshape(-1)
        return big[1:].view(values.shape)
    if layout == "expanded" and values.dim() >= 1 and values.shape[dim] > 0:
        one = values.narrow(dim, 0, 1).contiguous()
        return one.expand(values.shape)
    return values


@st.composite
def ana_cases(draw, strategies=("expectation", "mode")):
    desc, q, step = draw(quantizers())
    noise = draw(st.sampled_from(NOISES))
    strategy = draw(st.sampled_from(strategies))
    sigma = draw(sigmas) * step
    mu = draw(st.one_of(st.just(0.0), st.floats(-1.5, 1.5))) * step
    training = draw(st.booleans().map(lambda b: b or None))  # mostly True
    training = training is not None or draw(st.booleans())
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(shapes())
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced", "offset", "expanded"]))
    ndim = len(shape)
    dim = draw(st.integers(0, ndim - 1)) if ndim else 0
    eps_kind = draw(st.sampled_from(["number", "tensor0d", "channel", "trailing", "full"] if ndim else
                                    ["number", "tensor0d"]))
    eps_scale = draw(st.floats(0.05, 4.0))
    specials = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    as_tensor = draw(st.booleans())  # mu and sigma as 0-d tensors (float32 or float64)
    back = draw(st.one_of(st.none(), st.tuples(st.sampled_from(NOISES),
                                               st.floats(-1, 1).map(lambda m: m * step),
                                               sigmas.map(lambda s: s * step))))
    return dict(desc=desc, q=q, noise=noise, strategy=strategy, sigma=sigma, mu=mu, training=training, dtype=dtype,
                shape=shape, layout=layout, dim=dim, eps_kind=eps_kind, eps_scale=eps_scale, specials=specials,
                seed=seed, as_tensor=as_tensor, back=back)


def _eps(case, device):
    """eps as the case says, and as a float64 tensor broadcastable to the input."""
    shape, dim, kind, s = case["shape"], case["dim"], case["eps_kind"], case["eps_scale"]
    g = torch.Generator().manual_seed(case["seed"] + 1)
    if kind == "number":
        return s, torch.tensor(s, dtype=torch.float64)
    if kind == "tensor0d":
        e = torch.tensor(s, dtype=torch.float64)
        return e.to(device), e
    if kind == "channel":  # (C, 1, ..., 1) along `dim`
        eshape = (shape[dim],) + (1,) * (len(shape) - 1 - dim)
    elif kind == "trailing":  # the last axis, right-aligned
        eshape = (shape[-1],)
    else:  # one value per element: the kernel materialises the broadcast
        eshape = shape
    e = s * (0.25 + torch.rand(eshape, generator=g, dtype=torch.float64))
    return e.to(device), e


def _inputs(case, eps64, device):
    """x = u · eps (float64, then the dtype) in the case's layout, with u spread over the stair, the
    thresholds (shifted by mu) and the edges of the noise's reach, far values and, if the case
    says so, ±inf and NaN."""
    q, sigma, mu, shape = case["q"], case["sigma"], case["mu"], case["shape"]
    th, lv = q.thresholds, q.levels
    g = torch.Generator().manual_seed(case["seed"])
    n = math.prod(shape)
    lo = min(th[0].item(), lv.min().item()) - 2 - 2 * sigma + mu
    hi = max(th[-1].item(), lv.max().item()) + 2 + 2 * sigma + mu
    pool = [th + mu, th + mu + sigma, th + mu - sigma, th + mu + 1e-3 * sigma, th + mu - 1e-3 * sigma,
            torch.tensor([lo - 1e3, hi + 1e3], dtype=torch.float64)]
    if case["specials"]:
        pool.append(torch.tensor([float("inf"), -float("inf"), float("nan")], dtype=torch.float64))
    pool = torch.cat(pool)
    u = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
    pick = torch.rand(n, generator=g) < 0.3
    u[pick] = pool[torch.randint(pool.numel(), (int(pick.sum()),), generator=g)]
    x = (u.reshape(shape) * eps64).to(case["dtype"]).to(device)
    return _as_layout(x, case["layout"], case["dim"])


def _param(v, case, device):
    if not case["as_tensor"]:
        return v
    dt = torch.float64 if case["seed"] % 2 else torch.float32
    return torch.tensor(v, dtype=dt, device=device if case["seed"] % 3 else "cpu")


def _value(p) -> float:
    """A hyper-parameter's value as the op receives it (a float32 tensor's rounding included)."""
    return float(p.detach().cpu().double()) if isinstance(p, torch.Tensor) else float(p)


def _shifted(x, eps64, mu):
    """a = x / eps − mu as the kernels compute it (in the compute dtype), then in float64."""
    acc = compute_dtype(x.dtype)
    mu_acc = torch.tensor(_value(mu), dtype=torch.float64).to(acc)
    return (x.detach().cpu().to(acc) / eps64.to(acc) - mu_acc).double()


def _tables64(q, dtype):
    """The quantiser's tables as the kernels see them (compute dtype), in float64."""
    acc = compute_dtype(dtype)
    return q.levels.to(acc).double(), q.thresholds.to(acc).double()


def level_probs(a, th, noise, sigma):
    """p_k (SPEC §4) in float64, shape (..., K + 1), each difference in its cancellation-free
    form (upper tails when both steps are on, lower tails when both are off)."""
    z = (a.unsqueeze(-1) - th) / sigma
    inf = torch.full_like(z[..., :1], float("inf"))
    zp, zn = torch.cat([inf, z], -1), torch.cat([z, -inf], -1)  # z_{k-1}, z_k
    return torch.where(zn >= 0, R.cdf(noise, -zn) - R.cdf(noise, -zp),
                       torch.where(zp < 0, R.cdf(noise, zp) - R.cdf(noise, zn),
                                   R.centered(noise, zp) - R.centered(noise, zn)))


def mode_decidable(a, q, noise, sigma, dtype):
    """Elements whose most likely level beats the runner-up by more than the compute dtype's
    rounding of the p_k can move it (64 ulp of 1), computed from the very a the kernels see; and
    NaN/±inf (decided by SPEC §7, not by probabilities)."""
    _, th = _tables64(q, dtype)
    sig = float(torch.tensor(_value(sigma), dtype=torch.float64).to(compute_dtype(dtype)))
    finite = torch.isfinite(a)
    p = level_probs(torch.where(finite, a, torch.zeros_like(a)), th, noise, sig)
    top = torch.topk(p, 2, dim=-1).values
    margin = 64 * torch.finfo(compute_dtype(dtype)).eps
    return (top[..., 0] - top[..., 1] > margin) | ~finite


def _pdf64(name, v):
    """The standardised density in float64 without underflow in the logistic's upper tail (the
    reference's F(1 − F) is 0 there once F rounds to 1)."""
    if name == "logistic":
        e = torch.exp(-v.abs())
        return e / (1 + e) ** 2
    return R.pdf(name, v)


def gradient_tolerance(x, eps64, q, back, upstream):
    """(K + 32)·u·M·|g| + Σ|Δq|·f(R)/σ_b·|g| (+ one ulp for half types, in assert_grad_close):
    u the unit roundoff of the compute dtype, M = Σ|Δq_i| (f(v_i) + 2|v_i||f'(v_i)|)/σ_b the
    magnitude of the summed terms and of their rounding (so cancellation between levels that go
    down and up is allowed for), f(R) the density where the kernel's window stops (thresholds
    beyond count as 0: README)."""
    name, mu_b, sigma_b = back
    acc = compute_dtype(x.dtype)
    a = _shifted(x, eps64, mu_b)
    lv, th = _tables64(q, x.dtype)
    sig = float(torch.tensor(_value(sigma_b), dtype=torch.float64).to(acc))
    g = upstream.detach().cpu().double().abs()
    if sig == 0:
        return torch.zeros_like(a)
    dq = (lv[1:] - lv[:-1]).abs()
    safe_a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
    v = (safe_a.unsqueeze(-1) - th) / sig
    f = _pdf64(name, v)
    if name == "uniform":  # the box as the kernels test it: θ − σ <= a < θ + σ in the compute dtype
        a_c, th_c, s_c = safe_a.to(acc).unsqueeze(-1), th.to(acc), torch.tensor(sig, dtype=acc)
        f = ((a_c >= th_c - s_c) & (a_c < th_c + s_c)).double() * 0.5
    # f(v) to a few ulp, and v = (a − θ)/σ to an ulp of v, which moves f by |f'(v)|·|v|·u:
    # relative for normal (|f'| = |v| f) and logistic (|f'| <= f), absolute for triangular
    # (|f'| = 1 on the support, so near its edge, where f is small, the error is not), none for
    # uniform (its box is tested by exact comparisons of a with θ ± σ). The reference's logistic
    # density F(1 − F) cancels where F is near 1 (v > 0): there its error is u absolute, not
    # relative (the kernel's e^{-|v|}/(1 + e^{-|v|})^2 is the accurate one).
    # The triangular's |f'| = 1 holds wherever the kernel's v, within a few ulp of this one, can
    # still fall inside the support: an a whose exact v is a hair past 1 gets a density of an ulp.
    u = torch.finfo(acc).eps / 2
    term = {"uniform": f, "triangular": f + 2 * v.abs() * (v.abs() <= 1 + 4 * u), "normal": f * (1 + 2 * v * v),
            "logistic": f * (1 + 2 * v.abs()) + (v > 0)}[name]
    M = (dq * term).sum(-1) / sig
    radius = {"uniform": 1.0, "triangular": 1.0, "normal": 6.0 if acc == torch.float32 else 9.0,
              "logistic": 20.0 if acc == torch.float32 else 40.0}[name]
    cut = _pdf64(name, torch.tensor(radius, dtype=torch.float64)).item() * dq.sum().item() / sig
    tol = ((th.numel() + 32) * u * M + cut) * g
    return tol


def assert_grad_close(actual, expected, tol, dtype, msg):
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, msg
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    assert torch.equal(nan_a, nan_e), f"{msg}: NaN pattern of the gradient differs"
    keep = ~nan_e
    a, e, tol = a[keep], e[keep], tol.reshape(-1)[keep.reshape(-1)] if tol.numel() else tol
    inf = torch.isinf(a) | torch.isinf(e)
    assert torch.equal(a[inf], e[inf]), f"{msg}: infinities of the gradient differ"
    a, e, tol = a[~inf], e[~inf], tol[~inf]
    if dtype in HALF:
        tol = tol + half_ulp_tol(torch.maximum(a.abs(), e.abs()), dtype)
    err = (a - e).abs()
    bad = err > tol
    if bad.any():
        i = int(torch.argmax(torch.where(bad, err - tol, torch.full_like(err, -1.0))))
        raise AssertionError(f"{msg}: {int(bad.sum())} of {a.numel()} gradient elements differ; worst: got "
                             f"{a[i].item()!r}, expected {e[i].item()!r}, |diff| {err[i].item():.3g} > "
                             f"tol {tol[i].item():.3g}")


def _scale(q, eps64) -> float:
    """conftest.scale_of with eps as a (possibly empty) tensor: the largest |level|·eps."""
    return scale_of(q, eps64.abs().max().item() if eps64.numel() else 1.0)


def _describe(case):
    keys = ["desc", "noise", "strategy", "sigma", "mu", "training", "dtype", "shape", "layout", "eps_kind", "back"]
    return ", ".join(f"{k}={case[k]}" for k in keys)


def _run_both(case, device):
    q = case["q"]
    eps, eps64 = _eps(case, device)
    x = _inputs(case, eps64, device)
    kw = dict(noise=case["noise"], mu=_param(case["mu"], case, device), sigma=_param(case["sigma"], case, device),
              strategy=case["strategy"], training=case["training"], eps=eps, backward_noise=case["back"])
    xk = x.detach().requires_grad_(True)
    xr = x.detach().clone().requires_grad_(True)
    y = F.ana(xk, q, **kw)
    r = R.ana(xr, q, **kw)
    return x, xk, xr, y, r, eps64, kw


# --- ana: expectation and mode, forward and backward -------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=N_ANA)
@given(case=ana_cases())
def test_ana_matches_reference(device, case):
    q, dtype, sigma = case["q"], case["dtype"], case["sigma"]
    msg = _describe(case)
    x, xk, xr, y, r, eps64, kw = _run_both(case, device)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device and y.is_contiguous(), msg
    scale = _scale(q, eps64)
    if sigma == 0 or not case["training"]:
        assert_equal(y, r, msg=msg + " (hard stair)")
    elif case["strategy"] == "expectation":
        assert_close(y, r, dtype, scale, msg=msg)
    else:
        a = _shifted(x, eps64, kw["mu"]).reshape(x.shape)
        assert_equal(y, r, mask=mode_decidable(a, q, case["noise"], kw["sigma"], dtype), msg=msg + " (mode)")
    if x.numel() == 0:
        return
    g = torch.cos(torch.arange(x.numel(), dtype=torch.float64)).reshape(x.shape).to(dtype=dtype, device=x.device)
    (gk,) = torch.autograd.grad(y, xk, g)
    (gr,) = torch.autograd.grad(r, xr, g)
    back = case["back"] or (case["noise"], kw["mu"], kw["sigma"])
    tol = gradient_tolerance(x, eps64, q, back, g).reshape(-1)
    assert_grad_close(gk, gr, tol, dtype, msg + " (gradient)")


# --- ana: random ---------------------------------------------------------------------------------------
#: How far a random sample can move a (in units of sigma): the support of the compact laws; for
#: normal and logistic the quantile of the most extreme uniform draw (24-bit resolution in
#: float32, 32-bit in float64: |nu| <= 5.4 / 6.3 sigma normal, 17.3 / 22.9 sigma logistic).
REACH = {"uniform": 1.0, "triangular": 1.0, "normal": 6.5, "logistic": 23.0}


def _count_le(a, th):
    return (a.unsqueeze(-1) >= th).sum(-1)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=N_RANDOM)
@given(case=ana_cases(strategies=("random",)))
def test_ana_random_properties(device, case):
    q, dtype, sigma, noise = case["q"], case["dtype"], case["sigma"], case["noise"]
    msg = _describe(case)
    x, xk, xr, y, r, eps64, kw = _run_both(case, device)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device and y.is_contiguous(), msg
    if sigma == 0 or not case["training"]:
        assert_equal(y, r, msg=msg + " (hard stair)")
    else:
        acc = compute_dtype(dtype)
        yc = y.detach().cpu().double().reshape(-1)
        a = _shifted(x, eps64, kw["mu"]).reshape(-1)
        assert torch.equal(torch.isnan(yc), torch.isnan(a)), msg + ": NaN where (and only where) x is NaN"
        # every output is a level: eps · q_k in the compute dtype, rounded to the dtype
        e = eps64.to(acc).expand(x.shape).reshape(-1, 1)
        lv, th = _tables64(q, dtype)
        cand = (e * q.levels.to(acc)).to(dtype).double()  # (n, K + 1)
        hit = (yc.unsqueeze(-1) == cand)
        ok = torch.isnan(yc)
        assert (hit.any(-1) | ok).all(), msg + ": an output is not a level"
        # ... and one the noise can reach from a (±inf: the end level)
        sig = float(torch.tensor(_value(kw["sigma"]), dtype=torch.float64).to(acc))
        slack = REACH[noise] * sig * (1 + 1e-5) + 8 * torch.finfo(acc).eps * (a.abs() + sig)
        finite = torch.isfinite(a)
        af = torch.where(finite, a, torch.zeros_like(a))
        lo = torch.where(finite, _count_le(af - slack, th), _count_le(a, th))
        hi = torch.where(finite, _count_le(af + slack, th), _count_le(a, th))
        k = torch.arange(q.num_levels)
        reach = (k >= lo.unsqueeze(-1)) & (k <= hi.unsqueeze(-1))
        assert ((hit & reach).any(-1) | ok).all(), msg + ": an output level is beyond the noise's reach"
    if x.numel() == 0:
        return
    # the gradient does not depend on the sample: the backward noise's closed form
    g = torch.sin(torch.arange(x.numel(), dtype=torch.float64)).reshape(x.shape).to(dtype=dtype, device=x.device)
    (gk,) = torch.autograd.grad(y, xk, g)
    (gr,) = torch.autograd.grad(r, xr, g)
    back = case["back"] or (case["noise"], kw["mu"], kw["sigma"])
    assert_grad_close(gk, gr, gradient_tolerance(x, eps64, q, back, g).reshape(-1), dtype, msg + " (gradient)")


# --- alpha_blend -----------------------------------------------------------------------------------------
@st.composite
def blend_cases(draw):
    case = draw(ana_cases())
    case["alpha"] = draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0)))
    case["alpha_tensor"] = draw(st.booleans())
    return case


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=N_BLEND)
@given(case=blend_cases())
def test_alpha_blend_matches_reference(device, case):
    q, dtype, alpha = case["q"], case["dtype"], case["alpha"]
    msg = _describe(case) + f", alpha={alpha}"
    case = dict(case, mu=0.0, sigma=0.0)
    eps, eps64 = _eps(case, device)
    w = _inputs(case, eps64, device)
    a = torch.tensor(alpha, dtype=torch.float64, device=device) if case["alpha_tensor"] else alpha
    wk = w.detach().requires_grad_(True)
    wr = w.detach().clone().requires_grad_(True)
    y = F.alpha_blend(wk, q, a, eps)
    r = R.alpha_blend(wr, q, a, eps)
    assert y.shape == w.shape and y.dtype == dtype and y.is_contiguous(), msg
    wmax = w.detach().double().abs().nan_to_num(posinf=0.0).max().item() if w.numel() else 0.0
    assert_close(y, r, dtype, max(_scale(q, eps64), wmax), msg=msg)
    if w.numel() == 0:
        return
    g = torch.cos(torch.arange(w.numel(), dtype=torch.float64)).reshape(w.shape).to(dtype=dtype, device=device)
    (gk,) = torch.autograd.grad(y, wk, g)
    (gr,) = torch.autograd.grad(r, wr, g)
    # SPEC §6: (1 − α)·g, computed in the compute dtype (SPEC §7) and rounded once
    assert_close(gk, gr, dtype, 1.0, msg=msg + " (gradient)")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_alpha_blend_half_gradient(device, dtype):
    """Regression: the alpha_blend backward of a half input computes (1 − α)·g in float32 (SPEC §7)
    and rounds once. It used to round α to the half type first: several ulp off, and α close to 1
    (0.9999 in float16, 0.999 in bfloat16) rounded to 1, which zeroed the gradient."""
    q = Q.uniform(3)
    x = torch.linspace(-4, 4, 257, dtype=torch.float64).to(dtype=dtype, device=device)
    g = torch.cos(torch.arange(x.numel(), dtype=torch.float64)).to(dtype=dtype, device=device)
    for alpha in [0.9999, 0.999, 0.8487913462404977, 0.3, 1 / 3]:
        for a in [alpha, torch.tensor(alpha, dtype=torch.float64, device=device)]:
            xk = x.detach().requires_grad_(True)
            (gk,) = torch.autograd.grad(F.alpha_blend(xk, q, a, 0.5), xk, g)
            expected = (g.cpu().double() * (1 - alpha)).to(dtype)  # (1 − α)·g, rounded once
            assert_close(gk, expected, dtype, 1.0, msg=f"alpha={alpha} {dtype} (gradient)")
            assert (gk != 0).all(), "no gradient lost to α rounding to 1"
