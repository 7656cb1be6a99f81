"""Layers, conversion, controllers, compile, DDP and freeze (anacuda.nn)."""

import math
import os

import pytest
import torch
from torch import nn

from anacuda import Quantizer
from anacuda import functional as F
from anacuda.nn import (ANAActivation, ANAConv1d, ANAConv2d, ANAConv3d, ANALinear, AlphaBlendConv2d,
                        AlphaBlendLinear, AlphaController, Decay, NoiseController, auto_groups, convert, freeze)


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 16), nn.Hardtanh(), nn.Linear(16, 10))


# --- layers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, shape, args", [
    (ANALinear, (5, 7), (7, 3)),
    (ANAConv1d, (2, 3, 9), (3, 4, 3)),
    (ANAConv2d, (2, 3, 6, 6), (3, 4, 3)),
    (ANAConv3d, (1, 2, 4, 4, 4), (2, 3, 2)),
])
def test_ana_layer_equals_functional_on_weight(cls, shape, args):
    torch.manual_seed(0)
    layer = cls(*args, quantizer=Quantizer.uniform(2), noise="normal", strategy="expectation", sigma=0.3, eps=0.05)
    x = torch.randn(shape)
    base = getattr(nn, cls.__name__.replace("ANA", ""))
    ref = base(*args)
    ref.load_state_dict({k: v for k, v in layer.state_dict().items() if k in ref.state_dict()})
    wq = F.ana(layer.weight, layer.quantizer, "normal", 0.0, 0.3, "expectation", True, 0.05)
    ref.weight.data = wq.detach()
    torch.testing.assert_close(layer(x), ref(x))
    # eval: the hard stair on the weight
    layer.eval()
    wq = F.ana(layer.weight, layer.quantizer, training=False, eps=0.05)
    ref.weight.data = wq.detach()
    torch.testing.assert_close(layer(x), ref(x))
    assert "noise=normal" in repr(layer) and "sigma=0.3" in repr(layer)


def test_buffers_in_state_dict_and_to_and_half():
    act = ANAActivation(sigma=0.25, mu=-0.5, backward_noise=("uniform", 0.0, 0.5))
    lin = ANALinear(4, 3, sigma=0.2)
    sd = act.state_dict()
    assert set(sd) == {"mu", "sigma", "mu_b", "sigma_b", "eps"}
    assert sd["sigma"].item() == 0.25 and sd["mu"].item() == -0.5
    other = ANAActivation(backward_noise=("uniform", 0.0, 0.5))
    other.load_state_dict(sd)
    assert other.sigma.item() == 0.25
    assert lin.to(torch.float64).sigma.dtype == torch.float64
    h = lin.half()
    assert h.weight.dtype == torch.float16
    y = h(torch.randn(2, 4, dtype=torch.float16))
    assert y.dtype == torch.float16 and torch.isfinite(y).all()


def test_eval_mode_is_the_hard_quantiser():
    act = ANAActivation(Quantizer.ternary(), noise="logistic", strategy="expectation", sigma=0.3, eps=0.5)
    x = torch.linspace(-2, 2, 101)
    assert not torch.equal(act(x), F.ana(x, Quantizer.ternary(), training=False, eps=0.5))
    act.eval()
    torch.testing.assert_close(act(x), F.ana(x, Quantizer.ternary(), training=False, eps=0.5), rtol=0, atol=0)


def test_alpha_blend_layers():
    torch.manual_seed(0)
    lin = AlphaBlendLinear(6, 4, quantizer=Quantizer.uniform(3), alpha=0.3, eps=0.1)
    x = torch.randn(2, 6)
    expected = nn.functional.linear(x, F.alpha_blend(lin.weight, lin.quantizer, 0.3, 0.1), lin.bias)
    torch.testing.assert_close(lin(x), expected)
    lin.eval()  # deployed: fully quantised whatever alpha
    expected = nn.functional.linear(x, F.alpha_blend(lin.weight, lin.quantizer, 1.0, 0.1), lin.bias)
    torch.testing.assert_close(lin(x), expected)
    conv = AlphaBlendConv2d(2, 3, 3, alpha=0.5)
    assert conv(torch.randn(1, 2, 5, 5)).shape == (1, 3, 3, 3)


def test_init_near_thresholds():
    torch.manual_seed(0)
    lin = ANALinear(100, 50, quantizer=Quantizer.ternary(), eps=0.2, init="thresholds")
    u = lin.weight / 0.2
    near = torch.minimum((u - 0.5).abs(), (u + 0.5).abs())
    assert near.max() <= 1 / math.sqrt(100) + 1e-6
    with pytest.raises(ValueError, match="fixed"):
        ANALinear(4, 4, init="thresholds")  # dynamic eps


# --- convert ----------------------------------------------------------------------------------
def test_convert_replaces_and_keeps_weights():
    m = small_cnn()
    c = convert(m)
    kinds = [type(x).__name__ for x in c]
    assert kinds == ["ANAConv2d", "BatchNorm2d", "ANAActivation", "ANAConv2d", "BatchNorm2d", "ANAActivation",
                     "Flatten", "ANALinear", "ANAActivation", "ANALinear"]
    assert c[3].groups == 2 and c[3].bias is None
    for i in (0, 3, 7, 9):
        assert torch.equal(c[i].weight, m[i].weight)
    assert c[0].noise == "uniform" and c[0].strategy == "mode" and c[0].sigma.item() == 0.5
    assert c[0].quantizer == Quantizer.ternary() and c[2].quantizer == Quantizer.ternary()
    assert type(m[0]) is nn.Conv2d  # the original is untouched


def test_convert_skip_and_alpha_blend():
    m = small_cnn()
    c = convert(m, skip=["0", "9", nn.Hardtanh])
    assert type(c[0]) is nn.Conv2d and type(c[9]) is nn.Linear and type(c[8]) is nn.Hardtanh
    assert isinstance(c[3], ANAConv2d)
    b = convert(m, weights="alpha_blend", activations=None, weight_quantizer=Quantizer.uniform(4))
    assert isinstance(b[0], AlphaBlendConv2d) and type(b[2]) is nn.ReLU
    with pytest.raises(ValueError, match="not modules"):
        convert(m, skip=["nope"])
    with pytest.raises(ValueError, match="weights must be"):
        convert(m, weights="lsq")


def test_convert_train_step_on_small_cnn():
    c = convert(small_cnn())
    opt = torch.optim.SGD(c.parameters(), lr=0.1)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(10, (8,))
    loss = nn.functional.cross_entropy(c(x), y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in c.parameters() if p.requires_grad)
    before = c[0].weight.detach().clone()
    opt.step()
    assert not torch.equal(before, c[0].weight)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_convert_and_train(arch):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    m = getattr(tv.models, arch)(num_classes=10)
    first = "conv1" if arch == "resnet18" else "features.0.0"
    last = "fc" if arch == "resnet18" else "classifier.1"
    c = convert(m, skip=[first, last])
    n_ana = sum(isinstance(x, (ANAConv2d, ANALinear)) for x in c.modules())
    assert n_ana > 10
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])
    opt = torch.optim.SGD(c.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(c(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    c.eval()
    f = freeze(c)
    torch.testing.assert_close(f(x), c(x), rtol=0, atol=0)


# --- controllers ------------------------------------------------------------------------------
def test_decay_shapes():
    assert Decay("bws", 0, 10, 2)(5) == pytest.approx(0.25)
    assert Decay("bws", 0, 10, 2)(-1) == 1 and Decay("bws", 0, 10, 2)(10) == 0 and Decay("bws", 0, 10, 2)(11) == 0
    assert Decay("linear", 2, 4, 1)(3) == pytest.approx(0.5)
    assert Decay("cosine", 0, 10, 1)(5) == pytest.approx(0.5)
    assert Decay("uws", 0, 1, 1, 0.1)(3) == pytest.approx(0.25) and Decay("uws", 0, 1, 1, 0.1)(20) == 0
    assert Decay("constant")(7) == 1
    with pytest.raises(ValueError, match="tstart < tend"):
        Decay("bws", 3, 3)
    with pytest.raises(ValueError, match="unknown schedule"):
        Decay("exp", 0, 1)


def test_auto_groups_and_windows():
    c = convert(small_cnn())
    assert auto_groups(c) == [["0", "2"], ["3", "5"], ["7", "8"], ["9"]]
    T, L = 40, 4
    for window, expected in [("overlapped", [(0, 40)] * 4), ("partition", [(0, 10), (10, 20), (20, 30), (30, 40)]),
                             ("same_start", [(0, 10), (0, 20), (0, 30), (0, 40)]),
                             ("same_end", [(30, 40), (20, 40), (10, 40), (0, 40)])]:
        ctl = NoiseController(c, T, window=window, sigma0=0.5, mu0=-0.5)
        for l, (ts, te) in enumerate(expected):
            mid = (ts + te) / 2
            v = ctl.values(mid)[l]
            assert v["sigma"] == pytest.approx(0.5 * 0.25) and v["mu"] == pytest.approx(-0.25)  # homogeneous
            assert ctl.values(te)[l]["sigma"] == 0 and ctl.values(ts)[l]["sigma"] == pytest.approx(0.5)
    ctl = NoiseController(c, T, power="progressive", window="overlapped")
    v = ctl.values(20)
    assert [g["sigma"] for g in v] == pytest.approx([0.5 * 0.5 ** (2 * (L - l)) for l in range(L)])


def test_controller_writes_buffers_steps_and_state():
    c = convert(small_cnn())
    ctl = NoiseController(c, 10, window="partition")
    ctl.step(2.5)  # fractional epochs
    assert c[0].sigma.item() == 0.0  # group 0's window is [0, 2.5]
    assert c[3].sigma.item() == pytest.approx(0.5)
    ctl.step()
    assert ctl.t == 3.5 and c[3].sigma.item() == pytest.approx(0.5 * (1 - 1 / 2.5) ** 2)
    state = ctl.state_dict()
    c2 = convert(small_cnn())
    ctl2 = NoiseController(c2, 10, window="partition")
    ctl2.load_state_dict(state)
    assert c2[3].sigma.item() == c[3].sigma.item()
    with pytest.raises(ValueError, match="no ANA layers"):
        NoiseController(small_cnn())
    with pytest.raises(ValueError, match="partition the layers"):
        NoiseController(c, 10, groups=[["0"], ["0"]])


def test_ctrl_spec_from_quantlab():
    c = convert(small_cnn())
    spec = [{"modules": ["0", "2"], "mi": {"beta": -0.5, "fun": "bws", "kwargs": {"tstart": 0, "tend": 10, "alpha": 1}},
             "sigma": {"beta": 0.5, "fun": "bws", "kwargs": {"tstart": 0, "tend": 10, "alpha": 2}}},
            {"modules": ["3", "5", "7", "8", "9"], "mi": {"beta": 0.0},
             "sigma": {"beta": 0.5, "fun": "uws", "kwargs": {"tstart": 5, "eps": 0.1, "alpha": 1}}}]
    ctl = NoiseController(c, ctrl_spec=spec)
    ctl.step(5)
    assert c[0].mu.item() == pytest.approx(-0.25) and c[0].sigma.item() == pytest.approx(0.125)
    assert c[3].sigma.item() == pytest.approx(0.5)
    ctl.step(8)
    assert c[3].sigma.item() == pytest.approx(0.5 / 4)


def test_alpha_controller():
    b = convert(small_cnn(), weights="alpha_blend")
    ctl = AlphaController(b, 10)
    assert b[0].alpha.item() == 0
    ctl.step(5)
    assert b[0].alpha.item() == pytest.approx(1 - 0.5 ** 3)
    ctl.step(12)
    assert b[9].alpha.item() == 1
    lin = AlphaController(b, 10, shape="linear")
    lin.step(2)
    assert b[0].alpha.item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no alpha-blending"):
        AlphaController(small_cnn())


# --- compile ----------------------------------------------------------------------------------
def test_compiled_model_no_graph_break_no_recompile():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    c = convert(small_cnn(), noise="normal", strategy="expectation")
    ctl = NoiseController(c, 4)
    counter = CompileCounter()
    compiled = torch.compile(c, backend=counter, fullgraph=True)
    x = torch.randn(4, 1, 8, 8)
    for t in range(3):
        ctl.step(t)
        out = compiled(x)
        torch.testing.assert_close(out, c(x))
        out.sum().backward()
    assert counter.frame_count == 1


def test_aot_eager_gradients_equal_eager_bit_for_bit():
    """docs/guarantees.md (eager and compiled gradients): the captured graph itself changes nothing;
    Inductor's differences come from its own arithmetic (BatchNorm's statistics) near the box edge."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    c = convert(small_cnn())
    x, y = torch.randn(8, 1, 8, 8), torch.randint(10, (8,))
    grads = []
    for fn in (c, torch.compile(c, backend="aot_eager")):
        c.zero_grad()
        nn.functional.cross_entropy(fn(x), y).backward()
        grads.append([p.grad.clone() for p in c.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


# --- freeze -----------------------------------------------------------------------------------
def test_freeze_equals_eval_and_exports():
    torch.manual_seed(0)
    c = convert(small_cnn(), weight_quantizer=Quantizer.uniform(4), mu=-0.1)
    c(torch.randn(8, 1, 8, 8))  # update BN statistics
    c.eval()
    f = freeze(c)
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(f(x), c(x), rtol=0, atol=0)
    assert f[0].codes.dtype == torch.uint8 and f[0].codes.max() <= 15
    ep = torch.export.export(f, (x,))
    torch.testing.assert_close(ep.module()(x), c(x), rtol=0, atol=0)
    assert not any("anacuda" in str(n.target) for n in ep.graph.nodes)


# --- distributed ------------------------------------------------------------------------------
def _ddp_worker(rank, world, port, path):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = convert(small_cnn(), noise="normal", strategy="expectation")
    ctl = NoiseController(model, 3)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(3, 8, 1, 8, 8, generator=g), torch.randint(10, (3, 8), generator=g)
    for step in range(3):
        opt.zero_grad()
        xs, ys = X[step].chunk(world)[rank], Y[step].chunk(world)[rank]
        nn.functional.cross_entropy(ddp(xs), ys).backward()
        opt.step()
        ctl.step()
    if rank == 0:
        torch.save(model.state_dict(), path)
    dist.destroy_process_group()


def test_ddp_matches_single_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, port, path), nprocs=2, join=True)
    # One process, the same global batch, run as the two halves each rank sees (so BatchNorm
    # normalises the same samples) with the mean of their losses (DDP averages gradients).
    torch.manual_seed(0)
    model = convert(small_cnn(), noise="normal", strategy="expectation")
    ctl = NoiseController(model, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(3, 8, 1, 8, 8, generator=g), torch.randint(10, (3, 8), generator=g)
    for step in range(3):
        opt.zero_grad()
        halves = [nn.functional.cross_entropy(model(x), y) for x, y in zip(X[step].chunk(2), Y[step].chunk(2))]
        (sum(halves) / 2).backward()
        opt.step()
        ctl.step()
    ddp_state = torch.load(path)
    for k, v in model.state_dict().items():
        if "running" in k or "num_batches" in k:
            continue  # DDP keeps rank 0's BN statistics
        torch.testing.assert_close(ddp_state[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert ddp_state["0.sigma"].item() == 0.0 and ddp_state["0.sigma"].item() == model[0].sigma.item()


def _ddp_learned_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = convert(small_cnn(), weight_quantizer=Quantizer.uniform(4),
                    activation_quantizer=Quantizer.uniform(3, signed=False), weight_eps="learned",
                    activation_eps="learned")
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(3, 8, 1, 8, 8, generator=g), torch.randint(10, (3, 8), generator=g)
    X[:, 4:] *= 5  # the ranks' first batches differ in scale
    if rank == 0:  # an evaluation on one rank before training: an error, not a collective left waiting
        model.eval()
        try:
            with torch.no_grad():
                model(X[0, :2])
        except RuntimeError as err:
            torch.save(str(err), os.path.join(out_dir, "eval_error.pt"))
        model.train()
    for step in range(3):
        opt.zero_grad()
        xs, ys = X[step].chunk(world)[rank], Y[step].chunk(world)[rank]
        nn.functional.cross_entropy(ddp(xs), ys).backward()
        opt.step()
    torch.save(model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_learned_scales_stay_replicated(tmp_path):
    """Learned activation scales are initialised from each rank's first batch after DDP's start-up
    broadcast: the ranks' values are averaged then, so every replica trains the same scales."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_learned_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    eps = [k for k in a if k.endswith("eps")]
    assert len(eps) == 7  # 4 weight layers, 3 activations
    for k in a:
        if "running" in k or "num_batches" in k:
            continue  # DDP keeps each rank's BN statistics
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)
    assert all(a[k].ne(1).all() for k in eps)
    assert "before evaluating" in torch.load(tmp_path / "eval_error.pt")


def _fsdp_learned_worker(rank, world, port, out_dir):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(4, 16) * (1 + rank)  # the ranks' batches differ
    out = {}
    for prime in (False, True):
        model = convert(mlp, weight_quantizer=Quantizer.uniform(4),
                        activation_quantizer=Quantizer.uniform(3, signed=False), weight_eps="learned",
                        activation_eps="learned")
        if prime:
            model(x)  # the activation scales from a first batch, before fully_shard (averaged over the ranks)
        primed = model[1].eps.detach().clone()
        for layer in (model[0], model[2]):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        try:
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            for _ in range(2):
                opt.zero_grad()
                model(x).square().mean().backward()
                opt.step()
        except RuntimeError as err:
            out[prime] = str(err)
            continue
        out[prime] = dict(primed=primed, eps={n: p.full_tensor().detach() for n, p in model.named_parameters()
                                              if n.endswith("eps")})
    torch.save(out, os.path.join(out_dir, f"fsdp{rank}.pt"))
    dist.destroy_process_group()


def test_fsdp2_keeps_learned_scales(tmp_path):
    """FSDP2 gathers the parameters for a forward and drops what the forward writes to them:
    weight scales are initialised when the layer is built, activation scales from a batch run
    before fully_shard (else a clear error, never eps = 1 without a word); the ranks agree."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fsdp_learned_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"fsdp{r}.pt") for r in (0, 1))
    for r in (a, b):
        assert "before fully_shard" in r[False]
    assert torch.equal(a[True]["primed"], b[True]["primed"]) and a[True]["primed"].item() != 1.0
    assert set(a[True]["eps"]) == {"0.eps", "1.eps", "2.eps"}
    for k in a[True]["eps"]:
        assert torch.equal(a[True]["eps"][k], b[True]["eps"][k]), k
    # trained from the primed value (two SGD steps move it a little), not from 1
    assert abs(a[True]["eps"]["1.eps"].item() - a[True]["primed"].item()) < 0.1 * a[True]["primed"].item()


# --- a layer that passes no gradient says so (issue 12) ------------------------------------------
def _anacuda_warnings(fn):
    import warnings

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in rec if str(w.message).startswith("anacuda: layer")]


def test_warns_once_per_layer_when_training_at_sigma_zero():
    torch.manual_seed(0)
    c = convert(small_cnn())
    ctl = NoiseController(c, 4, window="partition")
    ctl.step(1.5)  # group 0 (conv "0" and activation "2") is annealed to 0, the others are not
    assert c[0].sigma.item() == 0 and c[2].sigma.item() == 0 and c[5].sigma.item() > 0
    x = torch.randn(4, 1, 8, 8)

    def step():
        c.zero_grad()
        c(x).sum().backward()

    msgs = _anacuda_warnings(step)
    assert len(msgs) == 2, msgs
    assert msgs[0].startswith("anacuda: layer '0' (ANAConv2d) trains with sigma = 0")
    assert "its weight gets a zero gradient" in msgs[0]
    assert msgs[1].startswith("anacuda: layer '2' (ANAActivation) trains with sigma = 0")
    assert "no parameter before it gets a gradient through it" in msgs[1]
    assert 'backward_noise=("uniform", 0, 0.5)' in msgs[1]
    # and it tells the truth: nothing before activation 2 learns
    assert c[0].weight.grad.abs().max() == 0 and c[1].weight.grad.abs().max() == 0
    assert c[3].weight.grad.abs().max() > 0
    assert _anacuda_warnings(step) == []  # once per layer
    c2 = convert(small_cnn())
    NoiseController(c2, 4, window="partition").step(1.5)
    c2.eval()
    assert _anacuda_warnings(lambda: c2(x)) == []  # not training
    c2.train()
    with torch.no_grad():
        assert _anacuda_warnings(lambda: c2(x)) == []  # no gradient wanted
    assert len(_anacuda_warnings(lambda: c2(x).sum().backward())) == 2


def test_no_warning_with_a_separate_backward_noise_or_nothing_upstream():
    torch.manual_seed(0)
    c = convert(small_cnn(), backward_noise=("uniform", 0.0, 0.5))
    NoiseController(c, 4, window="partition").step(1.5)
    assert c[2].sigma.item() == 0 and c[2].sigma_b.item() == 0.5
    x = torch.randn(4, 1, 8, 8)
    assert _anacuda_warnings(lambda: c(x).sum().backward()) == []
    assert c[0].weight.grad.abs().max() > 0  # the fix works: the float-side layers keep learning
    # a layer built with sigma = 0: known from the host number, named by its type
    act = ANAActivation(sigma=0.0)
    assert _anacuda_warnings(lambda: act(torch.randn(5))) == []  # nothing before it needs a gradient
    msgs = _anacuda_warnings(lambda: act(torch.randn(5, requires_grad=True)))
    assert len(msgs) == 1 and msgs[0].startswith("anacuda: layer ANAActivation trains with sigma = 0")
    # a state dict loaded from the host updates what the layer knows
    act2 = ANAActivation()
    act2.load_state_dict(act.state_dict())
    assert len(_anacuda_warnings(lambda: act2(torch.randn(5, requires_grad=True)))) == 1
    act.load_state_dict(ANAActivation().state_dict())
    act._warned_no_gradient = False
    assert _anacuda_warnings(lambda: act(torch.randn(5, requires_grad=True))) == []


def test_the_warning_costs_no_recompilation():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    c = convert(small_cnn())
    ctl = NoiseController(c, 2, window="partition")
    counter = CompileCounter()
    compiled = torch.compile(c, backend=counter, fullgraph=True)
    x = torch.randn(4, 1, 8, 8)
    for t in (0.0, 0.5, 1.5):  # group 0 reaches sigma = 0 at t = 0.5
        ctl.step(t)
        compiled(x).sum().backward()
    assert counter.frame_count == 1


# --- weight-scale rules (issue 12; docs/scales.md) ------------------------------------------------
def test_weight_scale_rules():
    from anacuda import scale

    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3)
    m_t, m_c = w.abs().mean(), w.abs().mean(dim=(1, 2, 3), keepdim=True)
    t = Quantizer.ternary()
    close = dict(rtol=2e-6, atol=0)  # the rules nudge eps up by 2^-20
    torch.testing.assert_close(scale.absmean(w, t), m_t, **close)
    torch.testing.assert_close(scale.absmean(w, t, dim=0), m_c, **close)
    torch.testing.assert_close(scale.twn(w, t), 1.4 * m_t, **close)  # threshold 0.5 eps = 0.7 mean|w|
    torch.testing.assert_close(scale.lsq(w, t), 2 * m_t, **close)  # 2 mean|w| / sqrt(1)
    torch.testing.assert_close(scale.lsq(w, Quantizer.uniform(4)), 2 * m_t / math.sqrt(7), **close)
    torch.testing.assert_close(scale.twn(w, Quantizer.uniform(4)), 1.4 * m_t, **close)  # smallest threshold 0.5
    assert scale.absmean(torch.zeros(3), t) > 0 and scale.absmean(w.half(), t).dtype == torch.float16
    # the layers take every rule by name, recomputed from the weight on every forward
    for rule, (fn, per_channel) in scale.WEIGHT_RULES.items():
        layer = ANAConv2d(3, 4, 3, eps=rule)
        assert torch.equal(layer.weight_eps(), fn(layer.weight, t, dim=0 if per_channel else None))
        assert f"eps={rule}" in repr(layer)
    # TWN's threshold: a ternary weight is 0 exactly where |w| < 0.7 mean|w|
    layer = ANALinear(200, 50, eps="twn").eval()
    zero = layer.quantized_weight() == 0
    edge = 0.7 * layer.weight.abs().mean()
    away = (layer.weight.abs() - edge).abs() > 1e-5 * edge
    assert torch.equal(zero[away], (layer.weight.abs() < edge)[away])


def test_mean_based_scales_do_not_depend_on_the_summation_order():
    """eps is summed in float64 and rounded once, so eager and torch.compile (which sums in its
    own order) give the same eps and the same quantised weights; float32 sums would not."""
    from anacuda import scale

    g = torch.Generator().manual_seed(0)
    w = torch.randn(1 << 20, generator=g) * 0.05
    eps = scale.absmean(w, Quantizer.ternary())
    float32_sums = set()
    for _ in range(4):
        p = w[torch.randperm(w.numel(), generator=g)]
        assert torch.equal(scale.absmean(p, Quantizer.ternary()), eps)
        assert torch.equal(scale.twn(p.reshape(1024, -1), Quantizer.ternary()), scale.twn(w, Quantizer.ternary()))
        float32_sums.add(p.abs().sum().item())
    assert len(float32_sums) > 1  # the orders differ enough to move a float32 sum


def test_the_default_weight_scale_keeps_most_weights():
    """Issue 12: convert's default scale zeroed 93 % of a ResNet-18's ternary weights
    (max_abs_per_channel); the default is now the rule docs/scales.md chose by measurement."""
    from anacuda import scale
    from anacuda.nn.layers import ANAWeight

    tv = pytest.importorskip("torchvision")
    assert scale.DEFAULT_WEIGHT_RULE == "absmean"
    torch.manual_seed(0)
    c = convert(tv.models.resnet18(num_classes=10), skip=["conv1", "fc"])
    layers = [m for m in c.modules() if isinstance(m, ANAWeight)]
    assert all(m.eps_mode == "absmean" for m in layers) and ANALinear(3, 2).eps_mode == "absmean"
    with torch.no_grad():
        zeros = sum(int((m.eval().quantized_weight() == 0).sum()) for m in layers)
    assert zeros / sum(m.weight.numel() for m in layers) < 0.35  # 31 % (Gaussian: P(|w| < mean|w| / 2))
    # every quantiser takes the default, binary included (absmean is XNOR-Net's scale there)
    b = convert(small_cnn(), weight_quantizer=Quantizer.binary())
    assert torch.isfinite(b(torch.randn(2, 1, 8, 8))).all()
