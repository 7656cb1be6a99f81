"""Shared helpers of the anacuda test suite: devices, dtypes and their tolerances, input layouts,
and for the op tests the named quantisers, hyper-parameters and checks against the reference.

The semantics under test are docs/semantics.md's (SPEC §n); anacuda.reference is its executable
form. Kernels and reference compute in the same precision (float64 for float64 inputs, float32
otherwise, SPEC §7), so the tolerances below only absorb rounding: the kernel multiplies by
1/sigma where the reference divides, sums only the thresholds inside the noise's reach, and sums
in another order.
"""

from __future__ import annotations

import functools
import os
import sys
import time

import pytest
import torch

# Run from a checkout without installing: the in-tree build (anacuda/_C*.so) is importable.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def _import_anacuda():
    # Another engineer may be rebuilding the extension in place (setup.py build_ext --inplace):
    # the .so can be missing for a few seconds. Retry a few times before giving up.
    last = None
    for _ in range(6):
        try:
            import anacuda  # noqa: F401

            return sys.modules["anacuda"]
        except ImportError as err:  # pragma: no cover - depends on a concurrent build
            last = err
            for name in [m for m in sys.modules if m == "anacuda" or m.startswith("anacuda.")]:
                del sys.modules[name]
            time.sleep(30)
    raise last


anacuda = _import_anacuda()

CUDA = anacuda.cuda_available()

# --- devices -----------------------------------------------------------------------------------
cuda_mark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs the CUDA kernels and a GPU")]

#: Parametrise a test over these: cpu always, cuda marked `cuda` and skipped without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=cuda_mark, id="cuda")]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


# --- CPU paths ---------------------------------------------------------------------------------
#: The CPU kernels' two paths (anacuda._testing): their own fast loops, and the GPU's code (the
#: functors of csrc/common in the CUDA loop's index arithmetic).
import anacuda._testing as _testing  # noqa: E402

CPU_PATHS = list(_testing.CPU_PATHS)


@pytest.fixture(params=CPU_PATHS)
def cpu_path(request):
    """Runs a test once per CPU path (`pytestmark = pytest.mark.usefixtures("cpu_path")`), so
    that the op suite checks the GPU's code on every machine. A test on the "cuda" device runs
    once: the path is the CPU's."""
    callspec = getattr(request.node, "callspec", None)
    if request.param != "fast" and callspec is not None and callspec.params.get("device") == "cuda":
        pytest.skip("the CPU path does not apply on CUDA (the fast copy of this test runs it)")
    with _testing.use_cpu_path(request.param):
        yield request.param


# --- dtypes and tolerances -----------------------------------------------------------------------
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
HALF = (torch.float16, torch.bfloat16)

#: (rtol, atol) of the compute dtype. atol is relative to the output's scale (largest level
#: magnitude times eps): a reference that sums 255 steps from q_0 = -128 loses about 128 ulp(1)
#: by cancellation, so an absolute bound must grow with the stair's range.
COMPUTE_TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
}


def compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def half_ulp_tol(magnitude: torch.Tensor, dtype) -> torch.Tensor:
    """One ulp of `dtype` at |magnitude| (elementwise, float64): the spacing of the numbers of
    `dtype` around each value. Two results computed in float32 that differ by d and are each
    rounded once to `dtype` differ by at most d + 1 ulp."""
    fi = torch.finfo(dtype)
    m = magnitude.double().abs().clamp(min=fi.tiny)
    _, e = torch.frexp(m)  # m = f * 2^e with f in [0.5, 1): the ulp is 2^(e - 1 - mantissa bits)
    mant = {torch.float16: 10, torch.bfloat16: 7}[dtype]
    return torch.ldexp(torch.ones_like(m), (e - 1 - mant).to(torch.int32))


def tolerance(expected: torch.Tensor, dtype, scale: float = 1.0, actual: torch.Tensor | None = None):
    """Elementwise absolute tolerance (float64) for comparing a kernel's output of `dtype` with the
    reference's on the same input. Half types: the float32 compute tolerance plus one ulp of the
    half type at the magnitude of the values (each side rounds once from float32)."""
    rtol, atol = COMPUTE_TOL[compute_dtype(dtype)]
    e = expected.double()
    tol = rtol * e.abs() + atol * scale
    if dtype in HALF:
        mag = e.abs() if actual is None else torch.maximum(e.abs(), actual.double().abs())
        tol = tol + half_ulp_tol(mag, dtype)
    return tol


def assert_close(actual, expected, dtype=None, scale: float = 1.0, mask=None, msg: str = ""):
    """|actual - expected| <= tolerance elementwise; NaN where (and only where) expected is NaN;
    infinities equal. Both must have the same shape and dtype."""
    dtype = dtype or expected.dtype
    assert actual.shape == expected.shape, f"{msg}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{msg}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    if mask is not None:
        m = mask.detach().cpu().expand(a.shape)
        a, e = a[m], e[m]
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    assert torch.equal(nan_a, nan_e), f"{msg}: NaN pattern differs at {torch.nonzero(nan_a != nan_e)[:5].tolist()}"
    a, e = a[~nan_e], e[~nan_e]
    inf = torch.isinf(e) | torch.isinf(a)
    assert torch.equal(a[inf], e[inf]), f"{msg}: infinities differ"
    a, e = a[~inf], e[~inf]
    tol = tolerance(e, dtype, scale, a)
    err = (a - e).abs()
    bad = err > tol
    if bad.any():
        i = int(torch.argmax((err - tol).where(bad, torch.full_like(err, -1.0))))
        raise AssertionError(
            f"{msg}: {int(bad.sum())} of {a.numel()} elements differ; worst: got {a[i].item()!r}, "
            f"expected {e[i].item()!r}, |diff| {err[i].item():.3g} > tol {tol[i].item():.3g}"
        )


def assert_equal(actual, expected, mask=None, msg: str = "", zero_sign: bool = False):
    """Equal values (NaN matching NaN), same shape and dtype; with zero_sign, -0 is not +0 (the
    same bits, for two paths of one kernel; a reference's arithmetic may give either zero)."""
    assert actual.shape == expected.shape, f"{msg}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{msg}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.detach().cpu(), expected.detach().cpu()
    if mask is not None:
        m = mask.detach().cpu().expand(a.shape)
        a, e = a[m], e[m]
    same = (a == e) | (torch.isnan(a) & torch.isnan(e))
    if zero_sign:
        same &= torch.isnan(a) | (torch.signbit(a) == torch.signbit(e))
    if not bool(same.all()):
        idx = torch.nonzero(~same)[:5].flatten().tolist()
        raise AssertionError(
            f"{msg}: {int((~same).sum())} of {a.numel()} elements differ; e.g. at {idx}: got "
            f"{a[~same][:5].tolist()}, expected {e[~same][:5].tolist()}"
        )


# --- layouts -----------------------------------------------------------------------------------
LAYOUTS = ["contiguous", "transposed", "misaligned", "broadcast", "empty", "scalar", "odd1", "odd3", "odd1023",
           "odd4099"]


def pick(values: torch.Tensor, n: int) -> torch.Tensor:
    """n of `values` spread evenly over it (all of them, in order, when n == len(values);
    repeated cyclically when n is larger), so that small sizes still see both ends."""
    m = values.numel()
    if n <= m:
        idx = torch.linspace(0, m - 1, n).round().long() if n > 1 else torch.tensor([m // 2])
        return values[idx]
    return values[torch.arange(n) % m]


def make_layout(layout: str, values: torch.Tensor, dtype, device) -> torch.Tensor:
    """An input of the given layout whose elements are taken from the 1-D float64 `values`.

    contiguous: (7, n/7) row-major; transposed: .t() of a contiguous 2-D tensor (not contiguous);
    misaligned: big[1:] of a 1-D tensor, so the data pointer is not 16-byte aligned (the CUDA
    kernels must fall back from their 16-byte vector loads); broadcast: a row expanded to 5 rows
    (stride 0); empty: shape (0, 3); scalar: a 0-d tensor; oddN: 1-D of N elements."""
    v = values.to(torch.float64)
    kw = dict(dtype=dtype, device=device)
    if layout == "contiguous":
        cols = max(1, v.numel() // 7)
        x = pick(v, 7 * cols).reshape(7, cols).to(**kw)
        assert x.is_contiguous()
    elif layout == "transposed":
        cols = max(2, v.numel() // 7)
        x = pick(v, 7 * cols).reshape(cols, 7).to(**kw).t()
        assert not x.is_contiguous() and x.shape == (7, cols)
    elif layout == "misaligned":
        big = torch.cat([v[:1], v]).to(**kw)
        x = big[1:]
        assert x.data_ptr() % 16 != 0 and x.is_contiguous()
    elif layout == "broadcast":
        x = v.to(**kw).reshape(1, -1).expand(5, -1)
        assert x.stride(0) == 0
    elif layout == "empty":
        x = torch.empty(0, 3, **kw)
    elif layout == "scalar":
        x = v[v.numel() // 3].to(**kw).reshape(())
        assert x.dim() == 0
    elif layout.startswith("odd"):
        x = pick(v, int(layout[3:])).to(**kw)
    else:
        raise ValueError(layout)
    return x


def span(quantizer, sigma: float = 0.5, mu: float = 0.0, n: int = 401) -> torch.Tensor:
    """Float64 test points over the whole quantiser range and beyond (in units of eps): a grid,
    the thresholds and levels (shifted by mu) exactly, the edges of the noise's reach, and far
    values on both sides."""
    th, lv = quantizer.thresholds, quantizer.levels
    lo = min(th[0].item(), lv.min().item()) - 1.5 - 2 * sigma + mu
    hi = max(th[-1].item(), lv.max().item()) + 1.5 + 2 * sigma + mu
    pts = [torch.linspace(lo, hi, n, dtype=torch.float64), th + mu, lv + mu, th + mu + sigma, th + mu - sigma,
           torch.tensor([-1e3, 1e3, lo - 40.0, hi + 40.0], dtype=torch.float64)]
    return torch.cat(pts)


def scale_of(quantizer, eps=1.0) -> float:
    """The largest output magnitude (times eps): the scale of absolute tolerances."""
    e = eps.abs().max().item() if isinstance(eps, torch.Tensor) else abs(eps)
    return max(1.0, quantizer.levels.abs().max().item()) * max(1.0, e)


# --- the ANA op: quantisers, hyper-parameters and the checks of the op tests ---------------------
F = anacuda.functional
R = anacuda.reference
Q = anacuda.Quantizer
NOISES = list(anacuda.NOISES)
assert NOISES == ["uniform", "triangular", "normal", "logistic"]


def _arbitrary(k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    th = torch.sort(torch.rand(k, generator=g, dtype=torch.float64) * 20 - 10).values
    lv = torch.randn(k + 1, generator=g, dtype=torch.float64) * 3  # not monotone: negative steps too
    return Q(lv, th)


def _arbitrary64():
    return _arbitrary(64, seed=2024)


QUANTIZERS = {
    "binary": Q.binary(),
    "ternary": Q.ternary(),
    "uniform4": Q.uniform(4),
    # 255 thresholds: the kernel visits only the window in the noise's reach (found by
    # arithmetic on a uniform grid); the reference sums all 255 terms.
    "uniform8": Q.uniform(8),
    "arbitrary": Q([-2.0, -0.5, 0.0, 1.0, 3.0], [-1.3, -0.2, 0.4, 2.0]),
    # A long non-uniform grid with non-monotone levels: the window is found by binary search.
    "arbitrary64": _arbitrary64(),
    # 16 <= K <= 32: the CPU small-grid path without the 1-byte code of the uniform backward
    "uniform5": Q.uniform(5),
    "arbitrary20": _arbitrary(20, seed=20),
}
SIGMAS = [0.0, 0.05, 0.5, 3.0]
MUS = [0.0, -0.3]


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """One intra-op thread for a module (`pytestmark = pytest.mark.usefixtures(...)`). The op
    tests' tensors are small: on a busy machine torch's thread pool spends far longer waiting at
    its barriers than computing (the reference's K-wide temporaries once took 100 s instead of
    0.2 s). One thread keeps the suite fast and steady; test_random_independent_of_threads runs
    the kernel's parallel loop explicitly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def level_probs(a: torch.Tensor, q, noise: str, sigma: float) -> torch.Tensor:
    """p_k (SPEC §4) in float64 for a = u - mu, shape (..., K + 1)."""
    th, lv = q.thresholds.to(a.device), q.levels
    P = R.cdf(noise, (a.double().unsqueeze(-1) - th) / sigma)
    one = torch.ones_like(P[..., :1])
    return torch.cat([one, P], -1) - torch.cat([P, 0 * one], -1)


def mode_safe(x, q, noise, mu, sigma, eps=1.0):
    """Elements whose most likely level wins by more than rounding can change (SPEC §4, mode).

    Kernel and reference compute the level probabilities in different ways (the kernel from the
    upper tails when a step is more than half on, and with x * (1/sigma) for x / sigma), so where
    the two largest p_k are within a few ulp of each other the argmax legitimately differs; that
    includes the exact ties over whole intervals of a uniform noise wider than a bin, which both
    sides resolve by rounding. Everywhere else the mode is compared exactly."""
    c = torch.finfo(compute_dtype(x.dtype)).eps
    e = eps.double().cpu() if isinstance(eps, torch.Tensor) else eps
    u = x.detach().double().cpu() / e
    a = u - mu
    p = level_probs(a, q, noise, sigma)
    top = torch.topk(p, 2, dim=-1).values
    gap = top[..., 0] - top[..., 1]
    margin = 64 * c * (1 + u.abs() + abs(mu)) / sigma + 64 * c
    return (gap > margin) | torch.isnan(u) | torch.isinf(u)


def scipy_edge_safe(u, q, noise, mu, sigma):
    """For the uniform law, elements not within rounding of a support edge (a - theta = +-sigma):
    scipy's support is closed [-s, s], SPEC's is half-open [-s, s) (the kernel and the reference
    both test a box by its edges, theta - sigma <= a < theta + sigma, and agree there exactly)."""
    u = u.detach().double().cpu()
    if noise != "uniform":
        return torch.ones_like(u, dtype=torch.bool)
    v = ((u - mu).unsqueeze(-1) - q.thresholds) / sigma
    return ((v.abs() - 1).abs()).amin(-1) > 1e-9


@functools.lru_cache(maxsize=None)
def _max_abs_derivative(q, noise: str, sigma: float) -> float:
    """max over u of sum_i |dq_i| f_sigma(u - theta_i): the largest magnitude the terms of the
    gradient sum can reach (their sum bounds its rounding error, cancellation included)."""
    th = q.thresholds
    a = torch.cat([torch.linspace(th[0].item() - 3 * sigma - 1, th[-1].item() + 3 * sigma + 1, 4001,
                                  dtype=torch.float64), th, th + sigma * 0.999, th - sigma])
    dq = (q.levels[1:] - q.levels[:-1]).abs()
    return ((dq * R.pdf(noise, (a.unsqueeze(-1) - th) / sigma)).sum(-1) / sigma).max().item()


def grad_scale(q, noise, sigma, upstream):
    """Scale of the absolute gradient tolerance: the largest gradient term sum times |upstream|."""
    m = upstream.detach().abs().max().item() if upstream.numel() else 1.0
    return max(1.0, _max_abs_derivative(q, noise, float(sigma))) * max(1.0, m)


def kernel_and_reference(x, q, **kw):
    return F.ana(x, q, **kw), R.ana(x, q, **kw)


def check_forward(x, q, noise, mu, sigma, strategy, eps=1.0, training=True, msg=""):
    y, r = kernel_and_reference(x, q, noise=noise, mu=mu, sigma=sigma, strategy=strategy, eps=eps,
                                training=training)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device and y.is_contiguous(), msg
    if sigma == 0 or not training:
        assert_equal(y, r, msg=msg + " (hard stair)")
        return y.numel(), y.numel()
    if strategy == "expectation":
        assert_close(y, r, x.dtype, scale_of(q, eps), msg=msg)
        return y.numel(), y.numel()
    safe = mode_safe(x, q, noise, mu, sigma, eps)
    assert_equal(y, r, mask=safe, msg=msg + " (mode)")
    return int(safe.sum()), y.numel()



def op_args(x, q, noise, mu, sigma, strategy, training, eps, seed, noise_b=None):
    """The arguments functional.ana passes to torch.ops.anacuda.ana (backward noise: the forward
    noise with the same mu and sigma, or `noise_b` with them)."""
    lv, th = q.tables(x.device, x.dtype)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return (x, lv, th, q.uniform_grid, eps, noise, f64(mu), f64(sigma), strategy, training, seed, noise_b or noise,
            f64(mu), f64(sigma))


# --- BitNet b1.58's public quantisers, as its training code writes them (an outside oracle) ----------
def bitnet_activation_quant(x):
    """ Per-token quantization to 8 bits. No grouping is needed for quantization. """
    scale = 127.0 / x.abs().max(dim=-1, keepdim=True).values.clamp_(min=1e-5)
    y = (x * scale).round().clamp_(-128, 127) / scale
    return y


def bitnet_weight_quant(w):
    """ Per-tensor quantization to 1.58 bits. No grouping is needed for quantization. """
    scale = 1.0 / w.abs().mean().clamp_(min=1e-5)
    u = (w * scale).round().clamp_(-1, 1) / scale
    return u
