"""Robustness of the ops (SPEC §7, docs/guarantees.md): more than 2^31 elements, calls from
several Python threads, the random strategy's reproducibility and independence (and CUDA graphs),
memory that does not grow over repeated calls, and numerics (half types against float32, 8-bit
grids and tiny sigma against exact float64 values, finite gradients from sigma = 1e-6 to 1e3).

The >2^31-element test is marked slow and runs only when selected (-m slow): it needs about
9 GiB of memory and a few minutes on two cores.
"""

from __future__ import annotations

import gc
import math
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import CUDA, DEVICES, HALF, anacuda, assert_close, assert_equal

F = anacuda.functional
R = anacuda.reference
Q = anacuda.Quantizer
ops = torch.ops.anacuda
NOISES = list(anacuda.NOISES)

#: Set by scripts/sanitize.sh: the extension is built with ASan + UBSan.
SANITIZE = os.environ.get("ANACUDA_SANITIZE") == "1"

ARBITRARY = Q([-2.0, -0.5, 0.0, 1.0, 3.0], [-1.3, -0.2, 0.4, 2.0])


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Small tensors: on a busy machine torch's thread pool spends far longer at its barriers than
    computing (the batched CPU path of normal/logistic noise starts several parallel ATen ops per
    block). Tests that want the parallel loops set the thread count themselves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def f64(v):
    return torch.tensor(v, dtype=torch.float64)


def op_args(x, q, noise, mu, sigma, strategy, eps, seed, training=True):
    """The arguments functional.ana passes to torch.ops.anacuda.ana, with an explicit seed."""
    lv, th = q.tables(x.device, x.dtype)
    eps = eps if isinstance(eps, torch.Tensor) else f64(eps)
    return (x, lv, th, q.uniform_grid, eps, noise, f64(mu), f64(sigma), strategy, training, seed, noise, f64(mu),
            f64(sigma))


# --- Philox4x32-10, in Python: what the random strategy draws for element i -------------------------
_MASK = 0xFFFFFFFF


def philox4x32_10(block: int, stream: int, seed: int):
    c0, c1, c2, c3 = block & _MASK, (block >> 32) & _MASK, stream & _MASK, (stream >> 32) & _MASK
    k0, k1 = seed & _MASK, (seed >> 32) & _MASK
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & _MASK, (p0 >> 32) ^ c3 ^ k1, p0 & _MASK
        k0, k1 = (k0 + 0x9E3779B9) & _MASK, (k1 + 0xBB67AE85) & _MASK
    return c0, c1, c2, c3


def uniform_draws(index: np.ndarray, seed: int, stream: int) -> torch.Tensor:
    """r_i in (0, 1) (float32, 24 bits) of the elements `index` for the key (seed, stream): word
    i % 4 of the block philox(counter = (i / 4, stream), key = seed) (csrc/common/philox.h)."""
    words = np.array([philox4x32_10(int(i) >> 2, stream, seed)[int(i) & 3] for i in index], dtype=np.uint64)
    r = (np.float32(1) * (words >> np.uint64(8)).astype(np.float32) + np.float32(0.5)) * np.float32(2.0**-24)
    return torch.from_numpy(r.astype(np.float32))


def emulated_random(x, q, noise, mu, sigma, eps_per_element, index, seed, stream):
    """The random strategy of SPEC §4 for elements `index` of a float32-compute input, with the
    kernel's own draws: eps · Q(x / eps − mu + sigma · quantile(r_i)), all in float32."""
    r = uniform_draws(index, seed, stream)
    one, two = torch.tensor(1.0), torch.tensor(2.0)
    if noise == "uniform":
        nu = two * r - one
    elif noise == "normal":
        nu = torch.tensor(1.41421356237309504880, dtype=torch.float32) * torch.erfinv(two * r - one)
    else:
        raise ValueError(noise)
    e = eps_per_element.to(torch.float32)
    a = x.float() / e - torch.tensor(mu, dtype=torch.float64).float()
    a = a + torch.tensor(sigma, dtype=torch.float64).float() * nu
    lv, th = q.tables(torch.device("cpu"), torch.float32)
    return (e * lv[(a.unsqueeze(-1) >= th).sum(-1)]).to(x.dtype)


@pytest.mark.parametrize("noise", ["uniform", "normal"])
@pytest.mark.parametrize("q", [Q.ternary(), Q.uniform(8)], ids=["ternary", "uniform8"])
def test_random_strategy_is_counter_based_philox(q, noise):
    """Element i's noise is word i % 4 of philox(i / 4, stream; seed), whatever the size, the
    thread split or which other elements there are; keys with high bits set included. (The
    >2^31 test relies on this to check the random strategy at the end of a huge tensor.)"""
    seed, stream = 0x3FFF_1234_5678_9ABC, 0x0123_4567_89AB_CDEF
    n = 4099
    x = torch.linspace(-130, 130, n, dtype=torch.float32)
    y = ops.ana(*op_args(x, q, noise, 0.1, 0.7, "random", 0.5, torch.tensor([seed, stream])))
    got = emulated_random(x, q, noise, 0.1, 0.7, torch.full((n,), 0.5), np.arange(n), seed, stream)
    assert_equal(y, got)


# --- (a) more than 2^31 elements ------------------------------------------------------------------------
def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _slow_selected(config) -> bool:
    return "slow" in (config.getoption("markexpr") or "")


@pytest.mark.slow
def test_more_than_2_31_elements_cpu(request):
    """SPEC §7: 5 × 429496730 = 2^31 + 2 float16 elements (4 GiB in, 4 GiB out), one eps per row:
    expectation (small-grid loop), the hard stair and the random strategy on the 8-bit grid
    (generic loop, window found by arithmetic; the random draws checked one by one against
    Philox at indices past 2^31) and the backward (small-grid loop), each at sampled positions,
    around 2^31 and at the last elements, against the reference."""
    if not _slow_selected(request.config):
        pytest.skip("about 9 GiB and minutes: run with -m slow")
    if _available_bytes() < 12 * 2**30:
        pytest.skip(f"needs ~12 GiB of free memory, {_available_bytes() / 2**30:.1f} GiB available")
    torch.set_num_threads(max(2, os.cpu_count() or 1))
    rows, cols = 5, 429_496_730
    n = rows * cols
    assert n > 2**31
    x = torch.empty(rows, cols, dtype=torch.float16)
    flat = x.view(-1)
    period = 4096
    pattern = torch.linspace(-3.0, 3.0, period, dtype=torch.float16)
    body = (n // period) * period
    flat[:body].view(-1, period).copy_(pattern.expand(body // period, period))
    flat[body:] = pattern[: n - body]
    tail = torch.linspace(-2.9, 2.9, 4096, dtype=torch.float64)[torch.randperm(4096, generator=torch.Generator().manual_seed(0))]
    flat[n - 4096:] = tail.to(torch.float16)
    eps = torch.tensor([[0.5], [0.25], [1.0], [2.0], [0.125]], dtype=torch.float64)

    g = torch.Generator().manual_seed(1)
    idx = torch.cat([torch.tensor([0, 1, 2, 3, 4, cols - 1, cols, 2**31 - 2, 2**31 - 1, 2**31, 2**31 + 1, n - 1]),
                     torch.randint(0, n, (64,), generator=g), torch.arange(n - 4096, n)]).unique()
    xs = flat[idx]
    es = eps.view(-1)[idx // cols]

    def check(y, ref, exact, what):
        ys = y.view(-1)[idx]
        if exact:
            assert_equal(ys, ref, msg=what)
        else:
            assert_close(ys, ref, torch.float16, 2.0, msg=what)

    q3, q8 = Q.ternary(), Q.uniform(8)
    y = F.ana(x, q3, "uniform", 0.1, 0.6, "expectation", eps=eps)
    check(y, R.ana(xs, q3, "uniform", 0.1, 0.6, "expectation", eps=es), False, "expectation")
    del y
    y = F.ana(x, q8, "uniform", 0.1, 0.6, "mode", training=False, eps=eps)
    check(y, R.ana(xs, q8, "uniform", 0.1, 0.6, "mode", training=False, eps=es), True, "hard stair")
    del y
    seed, stream = 0x1234_5678_9ABC, 0x0FED_CBA9_8765
    # (the 8-bit grid's windowed loop: the small-grid random path would add an 8 GiB temporary, see
    # test_peak_memory_is_the_output)
    y = ops.ana(*op_args(x, q8, "uniform", 0.1, 1.6, "random", eps, torch.tensor([seed, stream])))
    check(y, emulated_random(xs, q8, "uniform", 0.1, 1.6, es, idx.numpy(), seed, stream), True, "random")
    del y
    lv, th = q3.tables(x.device, x.dtype)
    gx = ops._ana_backward(x, x, lv, th, q3.uniform_grid, eps, "uniform", f64(0.1), f64(0.6))  # grad = x
    xr = xs.detach().requires_grad_(True)
    (ref,) = torch.autograd.grad(R.ana(xr, q3, "uniform", 0.1, 0.6, "expectation", eps=es), xr, xs)
    check(gx, ref, False, "backward")


# --- (b) threads -----------------------------------------------------------------------------------------
def _calls(q3, q8, qa):
    """Each returns tensors (outputs and gradients) that depend only on the arguments."""
    x = torch.linspace(-6, 6, 20011, dtype=torch.float32)
    xh = x.to(torch.bfloat16)
    eps = torch.linspace(0.5, 1.5, 7, dtype=torch.float64).reshape(7, 1)
    x7 = torch.linspace(-4, 4, 7 * 3001).reshape(7, 3001)

    def fwd_bwd(xin, q, **kw):
        xr = xin.detach().requires_grad_(True)
        y = F.ana(xr, q, **kw)
        (gx,) = torch.autograd.grad(y, xr, torch.ones_like(y))
        return y, gx

    def random(seed, **kw):
        return (F.ana(x, q8, strategy="random", generator=torch.Generator().manual_seed(seed), **kw),)

    return [
        lambda: fwd_bwd(x, q3, noise="uniform", sigma=0.5, strategy="expectation"),
        lambda: fwd_bwd(x, q8, noise="normal", mu=0.2, sigma=0.7, strategy="mode"),
        lambda: fwd_bwd(x, qa, noise="logistic", sigma=0.3, strategy="expectation", backward_noise=("triangular", 0.0, 1.0)),
        lambda: fwd_bwd(xh, q8, noise="triangular", sigma=2.0, strategy="expectation"),
        lambda: fwd_bwd(x7, qa, noise="normal", sigma=0.4, strategy="mode", eps=eps),
        lambda: random(11, noise="uniform", sigma=0.5),
        lambda: random(12, noise="logistic", sigma=1.5),
        lambda: (F.alpha_blend(x7, q8, 0.3, eps),),
        lambda: (F.ana(x, qa, training=False),),
    ]


def test_threads_give_the_serial_results():
    """The same calls from 4 Python threads, interleaved and repeated, give bit for bit what they
    give one after the other; the threads share fresh Quantizer objects, so that they also race
    to fill the quantisers' table caches."""
    torch.set_num_threads(2)  # the kernels' own parallel loops run inside each Python thread too
    serial = [call() for call in _calls(Q.ternary(), Q.uniform(8), ARBITRARY)]
    shared = _calls(Q.ternary(), Q.uniform(8), Q(ARBITRARY.levels, ARBITRARY.thresholds))  # fresh caches
    jobs = [i for _ in range(4) for i in range(len(shared))]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: (i, shared[i]()), jobs))
    assert len(results) == len(jobs)
    for i, got in results:
        for a, b in zip(got, serial[i]):
            assert_equal(a, b, msg=f"call {i}")


# --- (c) the random strategy ---------------------------------------------------------------------------------
def test_random_consumes_one_seed_pair_from_the_generator():
    """functional.ana draws its key with torch.randint(0, 2**62, (2,), generator=...): one such
    draw per call of the random strategy in training, none otherwise. So torch.manual_seed or a
    generator reproduces a run, and the generator's stream after the call is the same as after
    that one randint."""
    q = Q.uniform(3)
    x = torch.linspace(-5, 5, 1000)
    gen = torch.Generator().manual_seed(7)
    twin = torch.Generator().manual_seed(7)
    F.ana(x, q, "normal", 0.0, 0.5, "random", generator=gen)
    key = torch.randint(0, 2**62, (2,), dtype=torch.int64, generator=twin)
    assert torch.equal(gen.get_state(), twin.get_state())
    # the op is a pure function of that key: the call with the twin's key gives the same sample
    gen2 = torch.Generator().manual_seed(7)
    a = F.ana(x, q, "normal", 0.0, 0.5, "random", generator=gen2)
    b = ops.ana(*op_args(x, q, "normal", 0.0, 0.5, "random", 1.0, key))
    assert_equal(a, b)
    # nothing is drawn by the other strategies, in eval mode or with sigma = 0 ... (sigma = 0 in training
    # still draws: the key is taken before the op looks at sigma)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    for kw in [dict(strategy="expectation"), dict(strategy="mode"), dict(strategy="random", training=False)]:
        F.ana(x, q, "normal", 0.0, 0.5, **kw)
    assert torch.equal(torch.get_rng_state(), before)
    F.ana(x, q, "normal", 0.0, 0.0, "random")
    assert not torch.equal(torch.get_rng_state(), before)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return (a * b).sum().item() / math.sqrt((a * a).sum().item() * (b * b).sum().item())


@pytest.mark.parametrize("device", DEVICES)
def test_random_calls_and_elements_are_independent(device):
    """Binary quantiser, uniform noise sigma = 1 at u = 0: each output is ±1 with probability 1/2.
    Two consecutive calls, two seeds, and elements at lags 1..9 within a call (across the 4-word
    Philox blocks) are uncorrelated: |r| < 5.5 / sqrt(n) (a false alarm below 1e-7 each)."""
    q = Q.binary()
    n = 1 << 17
    x = torch.zeros(n, device=device)
    torch.manual_seed(123)
    a = F.ana(x, q, "uniform", 0.0, 1.0, "random").cpu()
    b = F.ana(x, q, "uniform", 0.0, 1.0, "random").cpu()
    torch.manual_seed(124)
    c = F.ana(x, q, "uniform", 0.0, 1.0, "random").cpu()
    d = F.ana(x, q, "uniform", 0.0, 1.0, "random", generator=torch.Generator(device=device).manual_seed(125)).cpu()
    # a generator seeded like the global one draws the same key: the same sample
    e = F.ana(x, q, "uniform", 0.0, 1.0, "random", generator=torch.Generator(device=device).manual_seed(123)).cpu()
    assert torch.equal(a, e)
    bound = 5.5 / math.sqrt(n)
    assert torch.isin(a, torch.tensor([-1.0, 1.0])).all()
    assert abs(a.mean().item()) < bound, "P(+1) = 1/2"
    for other, what in [(b, "consecutive calls"), (c, "seeds 123 and 124"), (d, "global seed 123, generator 125")]:
        assert abs(_corr(a, other)) < bound, what
    for lag in range(1, 10):
        assert abs(_corr(a[:-lag], a[lag:])) < bound, f"lag {lag}"


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs the CUDA kernels and a GPU")
def test_random_under_cuda_graph_capture_and_replay():
    """The key is drawn by torch.randint on the CUDA generator, which is graph-safe: a captured
    call reads the generator's seed and offset at each replay, so every replay draws fresh noise,
    and torch.manual_seed before a replay reproduces it. Outputs are levels with the right mean."""
    q = Q.binary()
    n = 1 << 16
    x = torch.zeros(n, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            F.ana(x, q, "uniform", 0.0, 1.0, "random")
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = F.ana(x, q, "uniform", 0.0, 1.0, "random")
    outs = []
    for _ in range(3):
        graph.replay()
        outs.append(y.clone())
    torch.cuda.synchronize()
    for o in outs:
        assert torch.isin(o.cpu(), torch.tensor([-1.0, 1.0])).all()
        assert abs(o.mean().item()) < 5.5 / math.sqrt(n)
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2]), "replays draw fresh noise"
    assert abs(_corr(outs[0].cpu(), outs[1].cpu())) < 5.5 / math.sqrt(n)
    torch.manual_seed(5)
    graph.replay()
    first = y.clone()
    torch.manual_seed(5)
    graph.replay()
    assert torch.equal(first, y), "torch.manual_seed before a replay reproduces it"


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs the CUDA kernels and a GPU")
def test_no_host_device_synchronisation():
    """SPEC §7: hyper-parameters as Python numbers or as tensors on the GPU cost no host-device
    synchronisation (torch.cuda.set_sync_debug_mode("error") turns one into an error), forward
    and backward of every strategy and alpha_blend. (The first call of a quantiser on a device
    copies its tables there: done before, in the warm-up.)"""
    q = Q.uniform(4)
    x = torch.linspace(-9, 9, 4099, device="cuda")
    dev = lambda v: torch.tensor(v, device="cuda")  # noqa: E731
    settings = [dict(mu=0.1, sigma=0.5, eps=0.75),
                dict(mu=dev(0.1), sigma=dev(0.5), eps=dev(0.75)),
                dict(mu=dev(0.1), sigma=dev(0.5), eps=torch.full((4099,), 0.75, device="cuda"),
                     backward_noise=("normal", dev(0.0), dev(0.3)))]

    def run():
        for kw in settings:
            for strategy in ["expectation", "mode", "random"]:
                for noise in NOISES:
                    xr = x.detach().requires_grad_(True)
                    y = F.ana(xr, q, noise, strategy=strategy, **kw)
                    y.backward(torch.ones_like(y))
        for alpha in [0.3, dev(0.3)]:
            w = x.detach().requires_grad_(True)
            F.alpha_blend(w, q, alpha, 0.5).backward(torch.ones_like(w))

    run()  # warm-up: the quantiser's tables are copied to the GPU once
    torch.cuda.synchronize()
    try:
        torch.cuda.set_sync_debug_mode("error")
        run()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


# --- (d) memory --------------------------------------------------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _live_tensors() -> int:
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def _round_of_calls(x, q8, qa):
    """Forward and backward of each strategy (the uniform backward saves a 1-byte code, the others
    the input), on the small-grid and the windowed paths, and alpha_blend."""
    for q, strategy, noise in [(qa, "expectation", "uniform"), (qa, "mode", "normal"), (q8, "random", "logistic")]:
        xr = x.detach().requires_grad_(True)
        y = F.ana(xr, q, noise, 0.1, 0.6, strategy, eps=0.5)
        y.backward(torch.ones_like(y))
    w = x.detach().requires_grad_(True)
    F.alpha_blend(w, q8, 0.4, 0.25).sum().backward()


@pytest.mark.parametrize("device", DEVICES)
def test_repeated_calls_do_not_grow_memory(device):
    """After a warm-up, 200 rounds of calls (forward and backward of every strategy and of
    alpha_blend, 32 Ki float32 elements each) leave the same number of live tensors and, on the
    CPU, the resident set within 16 MiB (one leaked 128 KiB output per call of a single kind would
    add 25 MiB); on a GPU the allocated memory is the same to the byte. In a fresh interpreter:
    the count is the whole process's, and garbage left by earlier tests (torch.compile's, freed
    at times no gc pass controls) moved it in either direction depending on the test order."""
    tests = os.path.dirname(os.path.abspath(__file__))
    code = (f"import sys; sys.path.insert(0, {tests!r}); import test_robustness as t; "
            f"t._check_repeated_calls({device!r})")
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(tests), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _check_repeated_calls(device):
    q8, qa = Q.uniform(8), Q(ARBITRARY.levels, ARBITRARY.thresholds)
    x = torch.linspace(-9, 9, 1 << 15, device=device)
    for _ in range(20):
        _round_of_calls(x, q8, qa)
    while gc.collect():  # settle: one pass can leave garbage a later pass frees (torch.compile FakeTensors)
        pass
    tensors, rss = _live_tensors(), _rss()
    cuda_bytes = torch.cuda.memory_allocated() if device == "cuda" else 0
    for _ in range(200):
        _round_of_calls(x, q8, qa)
    while gc.collect():
        pass
    assert _live_tensors() == tensors
    assert len(q8._tables) == 1 and len(qa._tables) == 1, "one cached table per (device, dtype)"
    if device == "cuda":
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() == cuda_bytes
    elif not SANITIZE:  # ASan keeps freed memory in quarantine (up to 256 MiB): its RSS grows by design
        grown = _rss() - rss
        assert grown < 16 * 2**20, f"resident set grew by {grown / 2**20:.1f} MiB over 200 rounds"


def _peak_rss_reset() -> bool:
    """Resets the process's peak resident set (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


_N_PEAK = 1 << 22
_PEAK_CASES = [
    pytest.param(lambda x: F.ana(x, Q.ternary(), "uniform", 0.1, 0.6, "expectation"), id="expectation-small-grid"),
    pytest.param(lambda x: F.ana(x, Q.uniform(8), "normal", 0.1, 0.6, "expectation"), id="expectation-batched"),
    pytest.param(lambda x: F.ana(x, Q.uniform(8), "logistic", 0.1, 0.6, "mode"), id="mode-windowed"),
    pytest.param(lambda x: F.ana(x, Q.uniform(8), "normal", 0.1, 0.6, "random"), id="random-windowed"),
    pytest.param(lambda x: F.ana(x, Q.ternary(), "uniform", 0.1, 0.6, "random"), id="random-small-grid"),
    pytest.param(lambda x: ops._ana_backward(x, x, *Q.uniform(8).tables(x.device, x.dtype), True, f64(1.0), "normal",
                                            f64(0.1), f64(0.6)), id="backward"),
    pytest.param(lambda x: F.alpha_blend(x, Q.uniform(8), 0.3, 0.5), id="alpha_blend"),
]


@pytest.mark.skipif(SANITIZE, reason="ASan's allocator and quarantine change the resident set")
@pytest.mark.parametrize("call", _PEAK_CASES)
def test_peak_memory_is_the_output(call):
    """An op's peak memory is its output plus a bounded scratch (4 MiB here), not a temporary the
    size of the input: 4 Mi float16 elements (an 8 MiB output; a float32 temporary of the input's
    size would add 16 MiB)."""
    x = torch.linspace(-150, 150, _N_PEAK, dtype=torch.float16)
    call(x[:4097])  # warm-up: tables, thread pool
    gc.collect()
    if not _peak_rss_reset():
        pytest.skip("/proc/self/clear_refs cannot reset the peak resident set here")
    base = _peak_rss()
    y = call(x)
    grown = _peak_rss() - base
    out = y.numel() * y.element_size()
    assert grown <= out + 4 * 2**20, f"peak grew by {grown / 2**20:.0f} MiB for an output of {out / 2**20:.0f} MiB"


# --- (e) numerics -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_half_types_are_float32_rounded_once(device, dtype):
    """SPEC §7: a half input is computed in float32: its output and gradient are, bit for bit, those
    of the float32 op on the same values, rounded once to the half type (so within half an ulp of
    the half type of the float32 result)."""
    xs = torch.cat([torch.linspace(-140, 140, 2801), torch.tensor([0.5, -0.5, 127.5, float("inf"), float("nan")])])
    xh = xs.to(device=device, dtype=dtype)
    x32 = xh.float()
    g = torch.cos(torch.arange(xh.numel(), dtype=torch.float32, device=device))
    gh = g.to(dtype)
    eps = torch.tensor([0.75], dtype=torch.float64)
    for q in [Q.ternary(), Q.uniform(8), ARBITRARY]:
        for noise in NOISES:
            for strategy, sigma in [("expectation", 0.6), ("mode", 0.6), ("expectation", 3.0), ("mode", 0.05)]:
                kw = dict(noise=noise, mu=0.1, sigma=sigma, strategy=strategy, eps=eps)
                a = xh.detach().requires_grad_(True)
                b = x32.detach().requires_grad_(True)
                ya, yb = F.ana(a, q, **kw), F.ana(b, q, **kw)
                msg = f"{q} {noise} {strategy} sigma={sigma}"
                assert_equal(ya, yb.to(dtype), msg=msg)
                (ga,) = torch.autograd.grad(ya, a, gh)
                (gb,) = torch.autograd.grad(yb, b, gh.float())
                assert_equal(ga, gb.to(dtype), msg=msg + " (gradient)")
            key = torch.tensor([99, 3], device=device)
            ya = ops.ana(*op_args(xh, q, noise, 0.1, 0.6, "random", 0.75, key))
            yb = ops.ana(*op_args(x32, q, noise, 0.1, 0.6, "random", 0.75, key))
            assert_equal(ya, yb.to(dtype), msg=f"{q} {noise} random")


_LAWS = {
    "uniform": lambda s: stats.uniform(loc=-s, scale=2 * s),
    "triangular": lambda s: stats.triang(0.5, loc=-s, scale=2 * s),
    "normal": lambda s: stats.norm(scale=s),
    "logistic": lambda s: stats.logistic(scale=s),
}


def exact_level_probs(a: np.ndarray, th: np.ndarray, noise: str, sigma: float) -> np.ndarray:
    """p_k = F(z_{k-1}) − F(z_k) of SPEC §4 (z_{-1} = +inf, z_K = −inf) in float64 from scipy,
    from the upper tails (sf) where both steps are likely on, so that no p_k is lost to
    cancellation; shape (n, K + 1)."""
    law = _LAWS[noise](sigma)
    z = a[:, None] - th[None, :]
    inf = np.full((a.size, 1), np.inf)
    zp, zn = np.concatenate([inf, z], 1), np.concatenate([z, -inf], 1)
    return np.where(zn >= 0, law.sf(zn) - law.sf(zp), law.cdf(zp) - law.cdf(zn))


def exact_mode(p: np.ndarray) -> np.ndarray:
    """argmax_k p_k, the upper level on a tie."""
    rev = p[:, ::-1]
    return p.shape[1] - 1 - np.argmax(rev, axis=1)


@pytest.mark.parametrize("sigma", [1e-4, 1e-7])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("device", DEVICES)
def test_eight_bit_tiny_sigma_loses_no_accuracy(device, noise, dtype, sigma):
    """On the 8-bit grid with sigma = 1e-4 and 1e-7 the mode is the most likely level computed
    exactly (float64, scipy), ties to the upper level included, and the expectation is the exact
    value to 2 ulp of the dtype plus 4 ulp of 1 (the steps' size); inputs on the thresholds,
    a fraction of sigma and a few sigma away (in float32 the nearest neighbours of a threshold are
    already ~76 sigma away at 1e-7), between them and beyond the grid."""
    q = Q.uniform(8)
    th = q.thresholds.numpy()
    fin = torch.finfo(dtype)
    offsets = np.array([0.0, 1e-3, -1e-3, 0.3, -0.3, 1.0, -1.0, 2.5, -2.5, 7.0]) * sigma
    pts = [th[:, None] + offsets[None, :]]
    t32 = torch.tensor(th)
    pts.append(torch.nextafter(t32, t32 + 1).numpy()[:, None])
    pts.append(torch.nextafter(t32, t32 - 1).numpy()[:, None])
    pts.append(np.array([[0.0, 0.25, -0.75, 200.0, -200.0, 1e6, -1e6]]).T)
    x = torch.tensor(np.concatenate([p.reshape(-1) for p in pts])).to(dtype)
    a = x.double().numpy()  # eps = 1, mu = 0: a = x exactly
    yk_mode = F.ana(x.to(device), q, noise, 0.0, sigma, "mode").cpu()
    yk_exp = F.ana(x.to(device), q, noise, 0.0, sigma, "expectation").cpu()
    sig = float(torch.tensor(sigma, dtype=torch.float64).to(dtype))  # the sigma the kernel computes with
    p = exact_level_probs(a, th, noise, sig)
    lv = q.levels.numpy()
    mode = torch.tensor(lv[exact_mode(p)]).to(dtype)
    assert_equal(yk_mode, mode, msg=f"{noise} {dtype} sigma={sigma} mode")
    law = _LAWS[noise](sig)
    terms = np.concatenate([np.full((a.size, 1), lv[0]), np.diff(lv)[None, :] * law.cdf(a[:, None] - th[None, :])], 1)
    exact = np.array([math.fsum(row) for row in terms])  # the sum correctly rounded (the terms are exact
    # for the integer steps up to scipy's rounding of F)
    exact_t = torch.tensor(exact)
    ulp = torch.tensor(np.spacing(np.abs(exact).astype(np.float64 if dtype == torch.float64 else np.float32)),
                       dtype=torch.float64)
    tol = 2 * ulp + 4 * fin.eps  # 2 ulp of the value, plus 4 ulp of 1 (the size of the summed steps)
    err = (yk_exp.double() - exact_t).abs()
    assert (err <= tol).all(), (f"{noise} {dtype} sigma={sigma} expectation: worst |err| {err.max().item():.3g} at "
                                f"x={x[int(torch.argmax(err - tol))].item()!r}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_gradients_finite_for_finite_inputs(device, dtype):
    """For finite inputs the output and the gradient are finite for sigma from 1e-6 to 1e3 (every
    noise, strategy, grid; eps small and large; inputs on and near the thresholds, between them,
    far away and at the edge of the dtype's range)."""
    top = torch.finfo(dtype).max
    for q in [Q.ternary(), Q.uniform(8), ARBITRARY]:
        th = q.thresholds.to(torch.float64)
        for sigma in np.logspace(-6, 3, 10):
            near = torch.cat([th, th + sigma, th - sigma, th + 0.3 * sigma, th - 3 * sigma])
            for eps in [1e-3, 1.0, 40.0]:
                u = torch.cat([near, torch.linspace(-300, 300, 61, dtype=torch.float64)])
                x = torch.cat([(u * eps).to(dtype), torch.tensor([top, -top, top / 3, 0.0], dtype=dtype)])
                assert torch.isfinite(x).all()
                for noise in NOISES:
                    for strategy in ["expectation", "mode", "random"]:
                        xr = x.to(device).requires_grad_(True)
                        y = F.ana(xr, q, noise, 0.1 * sigma, sigma, strategy, eps=eps)
                        (g,) = torch.autograd.grad(y, xr, torch.ones_like(y))
                        msg = f"{q} sigma={sigma:g} eps={eps} {noise} {strategy}"
                        assert torch.isfinite(y).all(), msg
                        assert torch.isfinite(g).all(), msg + " (gradient)"


@pytest.mark.parametrize("device", DEVICES)
def test_subnormal_sigma_is_not_nan(device):
    """A sigma so small that 1 / sigma overflows float32 (a subnormal, as an annealed sigma can
    reach): the standardised distance 0 / sigma stays 0 (the kernels divide there instead of
    multiplying by inf), so outputs and gradients are the reference's, with no NaN: a half step
    and an infinite density on a threshold, zero elsewhere."""
    x = torch.tensor([0.5, -0.5, 0.3, 1.5, 0.0], device=device)
    for noise in NOISES:
        for strategy in ["expectation", "mode"]:
            for sigma in [1e-40, 1e-44]:
                got, want = [], []
                for fn, out in [(F.ana, got), (anacuda.reference.ana, want)]:
                    xr = x.clone().requires_grad_(True)
                    y = fn(xr, Q.ternary(), noise, 0.0, sigma, strategy)
                    (g,) = torch.autograd.grad(y, xr, torch.ones_like(y))
                    out += [y, g]
                for a, b in zip(got, want):
                    assert not a.isnan().any(), (noise, strategy, sigma, a)
                    assert_equal(a, b)


# --- undefined behaviour that only the sanitizers see -----------------------------------------------------
def run_probe(code: str, tmp_path) -> tuple[int, str]:
    """Runs `code` in a fresh interpreter with this one's environment (under scripts/sanitize.sh:
    the instrumented build and the sanitizers). Sanitizer reports go to tmp_path, not to the run's
    report folder, and come back with the probe's stderr."""
    env = dict(os.environ)
    for var, name in [("ASAN_OPTIONS", "asan"), ("UBSAN_OPTIONS", "ubsan")]:
        if var in env:
            env[var] = re.sub(r"log_path=[^:]*", f"log_path={tmp_path}/{name}", env[var])
    root = os.path.dirname(os.path.dirname(os.path.abspath(anacuda.__file__)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    reports = "".join(p.read_text() for p in sorted(tmp_path.glob("*san*")))
    return proc.returncode, proc.stderr + reports


_INF_HUGE_SIGMA = """
import torch, anacuda
from anacuda import Quantizer as Q, functional as F, reference as R
inf = float("inf")
for dtype, sigma in [(torch.float32, 1e38), (torch.float64, 1e307)]:
    x = torch.tensor([-inf, inf, 0.0, 1.0], dtype=dtype)
    for q in [Q.ternary(), Q.uniform(8)]:
        for noise in ["normal", "logistic"]:
            for strategy in ["expectation", "mode"]:
                y = F.ana(x, q, noise, 0.0, sigma, strategy)
                r = R.ana(x, q, noise, 0.0, sigma, strategy)
                assert torch.equal(y, r), (dtype, q, noise, strategy, y, r)
"""

_COLLAPSED_GRID = """
import torch, anacuda
from anacuda import Quantizer as Q
K = 100
q = Q([float(i) for i in range(K + 1)], [1.0 + i * 2.0**-40 for i in range(K)])
assert q.uniform_grid  # equally spaced in float64 ...
lv, th = q.tables(torch.device("cpu"), torch.float32)
assert (th == 1.0).all()  # ... and all equal in float32
# The very tables functional.ana would pass, inside larger buffers of ours, so that what the kernel
# reads past them is known (and stays in memory we own).
tbuf = torch.full((128,), 0.5)
tbuf[:K] = th
tbuf[K + 10:] = 2.0
lbuf = torch.full((128,), 777.0)
lbuf[:K + 1] = lv
x = torch.tensor([1.0, 0.5, 2.0])
f64 = lambda v: torch.tensor(v, dtype=torch.float64)
y = torch.ops.anacuda.ana(x, lbuf[:K + 1], tbuf[:K], True, f64(1.0), "uniform", f64(0.0), f64(0.5), "mode", False,
                          None, "uniform", f64(0.0), f64(0.5))
assert y.tolist() == [100.0, 0.0, 100.0], y.tolist()  # the stair of these tables (and the reference's answer)
"""


def _probe_or_inline(code, tmp_path):
    if SANITIZE:
        rc, err = run_probe(code, tmp_path)
        assert rc == 0 and "runtime error" not in err and "AddressSanitizer" not in err, err[-3000:]
    else:
        exec(compile(code, "<probe>", "exec"), {})


def test_infinite_input_with_huge_sigma(tmp_path):
    """±inf saturate to the end levels (SPEC §7) for every sigma, also one whose noise reach
    overflows the compute dtype (a ∓ R·sigma is then NaN: Grid::count_le used to convert that NaN
    to int64, undefined behaviour that only UBSan saw; under scripts/sanitize.sh this runs in a
    child interpreter and fails on any sanitizer report)."""
    _probe_or_inline(_INF_HUGE_SIGMA, tmp_path)


def test_thresholds_that_collapse_in_float32(tmp_path):
    """A grid finer than float32's resolution: the float32 op still gives the stair of the float32
    tables (the reference's answer), without reading past them. Regression: with uniform_grid set
    and a zero float32 step, Grid::count_le converted 0 · inf = NaN to int64 (INT64_MIN), walked
    theta past its end and read the level from past the levels: 777 from the buffer here, garbage
    through functional.ana (-2.6e20, 2.8e32, ... in successive runs)."""
    _probe_or_inline(_COLLAPSED_GRID, tmp_path)
