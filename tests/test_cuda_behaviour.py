"""What only a GPU can show (all marked `cuda`; skipped without one; `make gpu-check` runs them):

- CUDA graphs: a converted model's whole training step (forward, backward, optimiser step)
  captured once and replayed while a NoiseController anneals mu and sigma, which live in the
  layers as device tensors: every replay reads the current values (nothing was baked into the
  graph) and trains exactly as the same steps run eagerly.
- No host-device synchronisation (torch.cuda.set_sync_debug_mode("error") turns one into an
  error) in the forward and backward of ana (every dtype, every strategy, random included, every
  path of the kernels) and alpha_blend, nor in a training step of converted models whose
  controllers step between iterations.
- Streams: the ops run on the current stream. On a side stream that is still busy writing the
  input, the op waits for it (a kernel launched on another stream would read the input before it
  is written); two streams at once give the results of one.
- A second GPU (skipped when there is none): the ops run on their input's device, whatever the
  current device, and give the same results as on the first.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import DTYPES, anacuda, assert_equal, cuda_mark

F = anacuda.functional
Q = anacuda.Quantizer
pytestmark = cuda_mark

STRATEGIES = list(anacuda.STRATEGIES)
# Busy-waits the GPU for about 30 ms (2^26 clock cycles): long enough that a kernel launched on
# another stream would run before the wait ends.
BUSY_CYCLES = 1 << 26


def _net(device, backward_noise=None) -> nn.Module:
    """A small MLP converted to ANA (ternary weights and activations), strategy expectation: the
    output is continuous in the weights, so graph and eager runs can be compared closely."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    return anacuda.convert(net.to(device), strategy="expectation", backward_noise=backward_noise)


def _batches(device, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(64, 16, generator=g).to(device), torch.randn(64, 4, generator=g).to(device))
            for _ in range(n)]


def _train_step(model, opt, x, y) -> torch.Tensor:
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss


def _eager_step(model, opt, x, y) -> torch.Tensor:
    opt.zero_grad(set_to_none=True)
    return _train_step(model, opt, x, y).detach()


def _noise_layers(model):
    return [m for m in model.modules() if isinstance(m, anacuda.nn.activation.NoiseHyperParams)]


@pytest.mark.parametrize("backward_noise", [None, ("normal", 0.0, 0.5)], ids=["coded-backward", "normal-backward"])
def test_cuda_graph_replays_a_training_step_while_the_controller_anneals(backward_noise):
    """Three copies of one model: A's step is captured in a CUDA graph and replayed, B runs the
    same steps eagerly, both with a NoiseController stepped before every iteration; C runs them
    eagerly without stepping its controller. A must match B (the graph reads mu and sigma from
    the buffers the controller writes) and B must differ from C (the annealing mattered)."""
    dev = torch.device("cuda")
    models = [_net(dev, backward_noise) for _ in range(3)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    ctrls = [anacuda.NoiseController(m, epochs=12, mu0=-0.2) for m in models]
    a, b, c = models
    warm, batches = _batches(dev, 3, seed=1), _batches(dev, 8, seed=2)

    # Warm-up on a side stream (as torch.cuda.graphs asks: lazy initialisation, the quantisers'
    # tables copied to the GPU), the same steps on B and C to keep the three equal.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for x, y in warm:
            _eager_step(a, opts[0], x, y)
    torch.cuda.current_stream().wait_stream(side)
    for m, opt in zip((b, c), opts[1:]):
        for x, y in warm:
            _eager_step(m, opt, x, y)

    static_x, static_y = torch.zeros_like(batches[0][0]), torch.zeros_like(batches[0][1])
    graph = torch.cuda.CUDAGraph()
    opts[0].zero_grad(set_to_none=True)  # the captured backward allocates the gradients from the graph's pool
    with torch.cuda.graph(graph):
        static_loss = _train_step(a, opts[0], static_x, static_y)

    losses = [[], [], []]
    for x, y in batches:
        ctrls[0].step()
        ctrls[1].step()
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        losses[0].append(static_loss.detach().clone())
        losses[1].append(_eager_step(b, opts[1], x, y))
        losses[2].append(_eager_step(c, opts[2], x, y))
    torch.cuda.synchronize()
    la, lb, lc = (torch.stack(ls).cpu() for ls in losses)

    for la_, lb_ in zip(_noise_layers(a), _noise_layers(b)):
        assert la_.sigma.device.type == "cuda" and la_.mu.device.type == "cuda"
        assert torch.equal(la_.sigma, lb_.sigma) and torch.equal(la_.mu, lb_.mu)
        assert 0 < la_.sigma.item() < 0.2 and -0.2 < la_.mu.item() < 0, "the controller annealed mu and sigma"
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6, msg=lambda m: f"graph vs eager losses: {m}")
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=lambda m: f"graph vs eager {name}: {m}")
    assert (lb - lc).abs().max().item() > 1e-3, "annealing sigma and mu changed nothing: the comparison proves nothing"


def _ops_round(device):
    """Forward and backward of ana in every dtype and strategy (random: the global generator and
    a generator of its own) on the coded, plain, windowed and arbitrary-grid paths, with host and
    device hyper-parameters and per-channel eps; alpha_blend in every dtype. Returns the round
    as a function; every tensor it needs is made here, before."""
    dev = torch.device(device)
    t = lambda v: torch.tensor(v, device=dev)  # noqa: E731
    q4, q8 = Q.uniform(4), Q.uniform(8)
    q_arbitrary = Q([-2.0, -0.5, 0.0, 1.0, 3.0], [-1.3, -0.2, 0.4, 2.0])
    gen = torch.Generator(device=dev).manual_seed(7)
    xs = {dtype: torch.linspace(-9, 9, 4099, dtype=dtype, device=dev) for dtype in DTYPES}
    w = torch.linspace(-1, 1, 32 * 27, device=dev).reshape(32, 3, 3, 3)
    w_eps = w.abs().amax(dim=(1, 2, 3), keepdim=True) / 7
    settings = [(q4, dict(mu=0.1, sigma=0.5, eps=0.75)),
                (q4, dict(mu=t(0.1), sigma=t(0.5), eps=t(0.75))),
                (q8, dict(noise="normal", sigma=t(0.5), backward_noise=("uniform", t(0.0), t(0.5)))),
                (q_arbitrary, dict(noise="logistic", sigma=0.3, backward_noise=("triangular", 0.0, t(0.4))))]

    def run():
        for dtype, x in xs.items():
            for q, kw in settings:
                for strategy in STRATEGIES:
                    xr = x.detach().requires_grad_(True)
                    F.ana(xr, q, strategy=strategy, **kw).backward(torch.ones_like(xr))
            xr = x.detach().requires_grad_(True)
            F.ana(xr, q4, "uniform", 0.0, t(0.5), "random", generator=gen).backward(torch.ones_like(xr))
            F.ana(x, q4, "normal", 0.0, 0.5, "expectation", training=False)
            wr = w.detach().to(dtype).requires_grad_(True)
            F.ana(wr, q4, eps=w_eps, strategy="mode").backward(torch.ones_like(wr))
            for alpha, eps in [(0.3, w_eps), (t(0.3), 0.05)]:
                F.alpha_blend(wr, q4, alpha, eps).backward(torch.ones_like(wr))

    return run


def _nn_round(device):
    """A training step of an ANA model and of an alpha-blending model, each followed by its
    controller's step (which writes the new mu, sigma or alpha into the layers' buffers)."""
    dev = torch.device(device)
    ana_model = _net(dev)
    torch.manual_seed(0)
    blend_model = anacuda.convert(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).to(dev),
                                  weights="alpha_blend")
    steps = [(ana_model, anacuda.NoiseController(ana_model, epochs=10), torch.randn(64, 16, device=dev),
              torch.randn(64, 4, device=dev)),
             (blend_model, anacuda.AlphaController(blend_model, end=10), torch.randn(64, 16, device=dev),
              torch.randn(64, 4, device=dev))]
    opts = [torch.optim.SGD(m.parameters(), lr=0.01) for m, *_ in steps]

    def run():
        for (model, ctrl, x, y), opt in zip(steps, opts):
            _eager_step(model, opt, x, y)
            ctrl.step()

    return run


def _sync_free(run):
    run()  # warm-up: lazy initialisation, the quantisers' tables copied to the GPU once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


def test_ops_do_not_synchronise():
    _sync_free(_ops_round("cuda"))


def test_training_steps_and_controllers_do_not_synchronise():
    _sync_free(_nn_round("cuda"))


# (noise, strategy, backward noise): every strategy and both backward kernels.
STREAM_CASES = [("uniform", "mode", None), ("normal", "expectation", None), ("logistic", "random", None),
                ("triangular", "expectation", ("normal", 0.0, 0.3))]


def _ana_and_grad(q, x, g, noise, strategy, backward_noise):
    xr = x.detach().requires_grad_(True)
    torch.manual_seed(11)  # the random strategy's key: the same on every stream
    y = F.ana(xr, q, noise, 0.1, 0.6, strategy, backward_noise=backward_noise)
    (gx,) = torch.autograd.grad(y, xr, g)
    return y.detach(), gx


@pytest.mark.parametrize("misaligned", [False, True], ids=["aligned", "misaligned"])
def test_ops_run_on_the_current_stream(misaligned):
    """On a side stream kept busy before it writes the input and the upstream gradient, ana's
    forward and backward and alpha_blend's give exactly the default stream's results: they ran on
    the side stream after the writes. (A launch on the legacy default stream does not wait for
    torch's side streams, which are non-blocking: it would read the zeros first.)

    For the check to bite, nothing may make the host wait for the busy side stream before the
    ops are launched, and no cudaMalloc may serialise the streams: one quantiser throughout (its
    tables are copied to the GPU before), and a first pass that fills the caching allocator's
    blocks for the side stream, so that the checked pass allocates none."""
    q = Q.uniform(4)
    n = (1 << 20) + 3
    src = torch.linspace(-9, 9, n + 1, device="cuda")
    gsrc = torch.cos(torch.arange(n + 1, device="cuda", dtype=torch.float32))
    cut = slice(1, None) if misaligned else slice(None, n)
    expected = [_ana_and_grad(q, src[cut], gsrc[cut], *case) for case in STREAM_CASES]
    blend_expected = F.alpha_blend(src[cut], q, 0.4, 0.5)
    torch.cuda.synchronize()

    side = torch.cuda.Stream()

    def on_busy_side_stream():
        with torch.cuda.stream(side):
            x, g = torch.zeros_like(src), torch.zeros_like(gsrc)
            torch.cuda._sleep(BUSY_CYCLES)
            x.copy_(src)
            g.copy_(gsrc)
            got = [_ana_and_grad(q, x[cut], g[cut], *case) for case in STREAM_CASES]
            blend = F.alpha_blend(x[cut], q, 0.4, 0.5)
        torch.cuda.current_stream().wait_stream(side)
        return [x, g, blend], got

    on_busy_side_stream()  # the warm-up pass; its tensors go back to the side stream's cache
    tensors, got = on_busy_side_stream()
    for t in tensors + [r for pair in got for r in pair]:
        t.record_stream(torch.cuda.current_stream())  # read here, allocated on the side stream
    for case, (y, gx), (y_ref, gx_ref) in zip(STREAM_CASES, got, expected):
        assert_equal(y, y_ref, msg=f"forward {case} on a side stream")
        assert_equal(gx, gx_ref, msg=f"backward {case} on a side stream")
    assert_equal(tensors[2], blend_expected, msg="alpha_blend on a side stream")


def test_two_streams_at_once():
    """The same ops on two streams at the same time (no shared scratch memory, no state between
    calls) give the results of one stream."""
    q = Q.uniform(4)
    n = (1 << 22) + 1
    xs = [torch.linspace(-9, 9, n, device="cuda"), torch.linspace(9, -9, n, device="cuda")]
    expected = [F.ana(x, q, "normal", 0.0, 0.5, "expectation") for x in xs]
    torch.cuda.synchronize()
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    outs = []
    for s, x in zip(streams, xs):
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            outs.append([F.ana(x, q, "normal", 0.0, 0.5, "expectation") for _ in range(4)])
    for s, ys in zip(streams, outs):
        torch.cuda.current_stream().wait_stream(s)
        for y in ys:
            y.record_stream(torch.cuda.current_stream())
    for ys, y_ref in zip(outs, expected):
        for y in ys:
            assert_equal(y, y_ref, msg="two streams at once")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_second_device():
    """On cuda:1 while the current device is cuda:0: outputs and gradients on cuda:1, equal to
    cuda:0's (random: the same seed through a generator of each device)."""
    q = Q.uniform(4)
    x0 = torch.linspace(-9, 9, 4099, device="cuda:0")
    w0 = torch.linspace(-1, 1, 32 * 27, device="cuda:0").reshape(32, 27)
    w_eps0 = w0.abs().amax(dim=1, keepdim=True) / 7

    def run(device):
        x, w = x0.to(device), w0.to(device)
        t = lambda v: torch.tensor(v, device=device)  # noqa: E731
        out = []
        for noise, strategy, back in STREAM_CASES:
            xr = x.detach().requires_grad_(True)
            gen = torch.Generator(device=device).manual_seed(5)
            y = F.ana(xr, q, noise, t(0.1), t(0.6), strategy, eps=t(0.9), backward_noise=back, generator=gen)
            (gx,) = torch.autograd.grad(y, xr, torch.ones_like(y))
            out += [y, gx]
        wr = w.detach().requires_grad_(True)
        y = F.alpha_blend(wr, q, t(0.3), w_eps0.to(device))
        (gw,) = torch.autograd.grad(y, wr, torch.ones_like(y))
        out += [y, gw]
        assert all(o.device == torch.device(device) for o in out)
        return [o.detach().cpu() for o in out]

    with torch.cuda.device(0):
        on0, on1 = run("cuda:0"), run("cuda:1")
        assert torch.cuda.current_device() == 0
    for i, (a, b) in enumerate(zip(on0, on1)):
        assert_equal(b, a, msg=f"cuda:1 vs cuda:0, result {i}")
