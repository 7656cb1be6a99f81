"""anacuda under torch.distributed (issue 16), each against one process: the ops on sharded
DTensors (anacuda.distributed's sharding rules; scales reduced across the shards), a converted
and a ternary transformer block under tensor parallelism, FSDP2 training of a converted CNN and
of a ternary language model, their checkpoints (saved on 2 ranks and loaded on 1, saved on 1
and loaded on 2) and freeze; and the README's torchrun example.

Two processes, spawned once per backend for all the scenarios (gloo on the CPU; NCCL when two
GPUs are visible), each scenario run on both ranks, rank 0's results compared here with one
process's. Bounded in time: a hung collective fails the test instead of blocking the suite.
"""

import functools
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback

import pytest
import torch
from torch import nn

import anacuda
from anacuda import Quantizer
from anacuda import functional as F
from anacuda.nn.activation import NoiseHyperParams
from anacuda.nn.convert import quantised_modules
from anacuda.nn.layers import AlphaBlendWeight
from anacuda.quantizer import SCALE_RULES

if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available in this build of torch", allow_module_level=True)

from examples.distributed import TinyLM, int8_head, ternary, tp_plan  # noqa: E402

# One process loading or saving a checkpoint of torch.distributed.checkpoint says it is one.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled, unavailable or uninitialized")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300  # seconds for all the scenarios on one backend (about 20 s on 2 idle cores)
BACKENDS = ["gloo", pytest.param("nccl", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not (anacuda.cuda_available() and torch.cuda.device_count() >= 2), reason="NCCL needs two visible GPUs")])]


def _device(backend):
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


# --- the models, built the same way in each rank and here ------------------------------------------
def small_cnn():
    """Converted: ANA convolutions, activations and output layer, the hidden Linear alpha-blended."""
    torch.manual_seed(0)
    model = anacuda.convert(nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 16), nn.Hardtanh(), nn.Linear(16, 10)), noise="normal",
        strategy="expectation", skip=["7"])
    return anacuda.convert(model, weights="alpha_blend", activations=None, inplace=True)


class Controllers:
    """A model's NoiseController and, with alpha-blending layers, its AlphaController: stepped,
    saved and loaded together."""

    def __init__(self, model, steps):
        self.all = {"noise": anacuda.NoiseController(model, steps)}
        if quantised_modules(model, (AlphaBlendWeight,)):
            self.all["alpha"] = anacuda.AlphaController(model, steps)

    def step(self, t=None):
        for c in self.all.values():
            c.step() if t is None else c.step(t)

    def state_dict(self):
        return {k: c.state_dict() for k, c in self.all.items()}

    def load_state_dict(self, state):
        for k, c in self.all.items():
            c.load_state_dict(state[k])


def ternary_lm():
    torch.manual_seed(0)
    return TinyLM(ternary, int8_head)


def tp_models():
    """name -> (model, plan): converted (torch's own styles), ternary and BitLinear with its
    SubLN (anacuda.distributed's styles)."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    from anacuda.nn import BitLinear, DynamicScaleANA

    torch.manual_seed(0)
    converted = anacuda.convert(TinyLM(nn.Linear, layers=2), noise="normal", strategy="expectation")
    torch_plan = {k: (ColwiseParallel() if type(v).__name__ == "ColwiseParallel" else RowwiseParallel())
                  for k, v in tp_plan().items()}
    torch.manual_seed(0)
    # GELU, not ReLU: BitLinear's hard quantised products are often exactly 0, and the other
    # order of the sharded sums puts them a hair to either side of ReLU's kink.
    bitlinear = TinyLM(BitLinear, act=nn.GELU)
    # A scale over the whole hidden layer between the column- and the row-wise layer: it needs
    # the DTensor (use_local_output=False), not the rank's shard.
    torch.manual_seed(0)
    between = TinyLM(ternary, act=lambda: DynamicScaleANA("absmax", noise="normal", strategy="expectation", sigma=0.3))
    between_plan = tp_plan()
    for k in between_plan:
        if k.endswith(".up"):
            between_plan[k] = type(between_plan[k])(use_local_output=False)
    return {"converted": (converted, torch_plan), "ternary": (ternary_lm(), tp_plan()),
            "bitlinear": (bitlinear, tp_plan()), "between": (between, between_plan)}


def _batches(steps, world, shape_x, classes):
    g = torch.Generator().manual_seed(1)
    return torch.randn(steps, 4 * world, *shape_x, generator=g), torch.randint(classes, (steps, 4 * world), generator=g)


def _tokens(steps, world):
    g = torch.Generator().manual_seed(2)
    return torch.randint(16, (steps, 2 * world, 9), generator=g)


def _lm_loss(model, tokens):
    logits = model(tokens[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, 16), tokens[:, 1:].reshape(-1))


# --- the scenarios, on every rank ---------------------------------------------------------------
OP_CASES = ["0.05", "channel", "last", "learned", "learned_channel", *SCALE_RULES, "random",
            "blend_absmean_per_channel", "blend_learned", "blend_0.1"]


def _op_case(case, x):
    """(y, [tensors whose gradients to compare]) of one case on x (a DTensor or not)."""
    q8 = Quantizer.uniform(8)
    eps_values = {"channel": torch.linspace(0.01, 0.05, 4).reshape(4, 1, 1), "last": torch.linspace(0.01, 0.05, 8)}
    grads = [x]
    if case in eps_values or case == "0.05":
        y = F.ana(x, q8, eps=eps_values.get(case, 0.05), strategy="mode")
    elif case.startswith("learned"):
        eps = (torch.full((4, 1, 1), 0.03) if case == "learned_channel" else torch.tensor(0.03)).to(x.device)
        eps.requires_grad_()
        grads.append(eps)
        y = F.ana(x, q8, eps=eps, noise="normal", strategy="expectation", sigma=0.4)
    elif case in SCALE_RULES:
        y = F.ana(x, q8 if "max" in case else Quantizer.ternary(), eps=case, strategy="mode")
    elif case == "random":
        torch.manual_seed(7)
        y = F.ana(x, q8, eps=0.05, strategy="random", noise="logistic", sigma=0.3)
    elif case == "blend_learned":
        eps = torch.tensor(0.4, device=x.device, requires_grad=True)
        grads.append(eps)
        y = F.alpha_blend(x, Quantizer.ternary(), 0.7, eps)
    else:
        rule = case[len("blend_"):]
        y = F.alpha_blend(x, Quantizer.ternary(), 0.7, rule if rule in SCALE_RULES else float(rule))
    return y, grads


def _whole(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _scenario_ops(mesh, rank, world, device):
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    x = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(3)).to(device)
    weight = distribute_tensor(torch.linspace(-1, 1, 8, device=device), mesh, [Replicate()])
    out = {}
    for placement in (Shard(0), Shard(1), Shard(2), Replicate()):
        for case in OP_CASES:
            xd = distribute_tensor(x, mesh, [placement]).requires_grad_()
            y, grads = _op_case(case, xd)
            (y * weight).sum().backward()
            out[f"{placement} {case}"] = dict(y=y.full_tensor(), placements=str(y.placements),
                                              grads=[_whole(g.grad) for g in grads])
    try:  # an op that computes a rule's scale itself, called directly
        torch.ops.anacuda._dynamic_eps(distribute_tensor(x, mesh, [Shard(0)]), "absmean", 1.0, 1e-5)
    except NotImplementedError as err:
        out["refused"] = str(err)
    return out


def _full_state(model):
    """The whole state dict, copied (cpu_offload returns the module's own buffers on the CPU)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.clone() for k, v in full.items()}


# σ annealed slowly: at a small σ the smoothed stair's slope magnifies the float reassociation of
# the sharded sums (a gradient's relative change grows as 1/σ²).
TP_ANNEAL = 20


def _scenario_tp(mesh, rank, world, device):
    from torch.distributed.tensor.parallel import parallelize_module

    out = {}
    tokens = _tokens(2, 1).to(device)
    for name, (model, plan) in tp_models().items():
        model = model.to(device)
        parallelize_module(model, mesh, plan)
        ctl = anacuda.NoiseController(model, TP_ANNEAL)
        res = {"sharded": str(model.blocks[0].q.weight.placements)}
        for step in range(2):
            model.zero_grad()
            loss = _lm_loss(model, tokens[step])
            loss.backward()
            res[f"loss {step}"] = loss.detach()
            res[f"grads {step}"] = {n: _whole(p.grad) for n, p in model.named_parameters()}
            ctl.step()
        model.eval()
        res["eval"] = model(tokens[0]).detach()
        if name == "converted":  # freeze gathers the model
            frozen = anacuda.freeze(model)
            res["frozen"] = {k: v.cpu() for k, v in frozen.state_dict().items()}
            res["frozen y"] = frozen(tokens[0])
        out[name] = res
    return out


def _train_fsdp(model, groups, mesh, rank, world, step_fn, steps):
    from torch.distributed.fsdp import fully_shard

    ctl = Controllers(model, steps)
    for m in groups:  # each its own FSDP2 group, then the root
        fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for step in range(steps):
        opt.zero_grad()
        loss = step_fn(model, step, rank)
        loss.backward()
        opt.step()
        ctl.step()
        mean = loss.detach().clone()
        torch.distributed.all_reduce(mean)
        losses.append(mean / world)
    return ctl, torch.stack(losses)


def _fsdp_case(name, model, ctl, losses, out_dir, mesh, device, probe):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    res = {"losses": losses, "sharded": str(next(model.parameters()).placements)}
    dcp.save({"model": get_model_state_dict(model), "controller": ctl.state_dict()},
             checkpoint_id=os.path.join(out_dir, f"{name}-2ranks"))
    res["full"] = _full_state(model)
    frozen = anacuda.freeze(model)
    res["frozen"] = {k: v.cpu() for k, v in frozen.state_dict().items()}
    res["frozen y"] = frozen(probe.to(device)).cpu()
    res["frozen plain"] = all(type(t) is torch.Tensor or type(t) is nn.Parameter
                              for t in (*frozen.parameters(), *frozen.buffers()))
    # A checkpoint saved by one process (here, before the spawn), loaded on two ranks.
    state = {"model": get_model_state_dict(model), "controller": ctl.state_dict()}
    dcp.load(state, checkpoint_id=os.path.join(out_dir, f"{name}-1rank"))
    set_model_state_dict(model, state["model"])
    ctl.load_state_dict(state["controller"])
    res["loaded"] = _full_state(model)
    res["loaded controller"] = ctl.state_dict()
    return res


def _scenario_fsdp(mesh, rank, world, device, out_dir):
    out = {}
    X, Y = _batches(3, world, (1, 8, 8), 10)

    def cnn_step(model, step, rank):
        return nn.functional.cross_entropy(model(X[step].chunk(world)[rank].to(device)),
                                           Y[step].chunk(world)[rank].to(device))

    model = small_cnn().to(device)
    ctl, losses = _train_fsdp(model, [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))], mesh, rank,
                              world, cnn_step, 3)
    out["cnn"] = _fsdp_case("cnn", model, ctl, losses, out_dir, mesh, device, X[0, :4])

    T = _tokens(3, world)

    def lm_step(model, step, rank):
        return _lm_loss(model, T[step].chunk(world)[rank].to(device))

    model = ternary_lm().to(device)
    ctl, losses = _train_fsdp(model, list(model.blocks), mesh, rank, world, lm_step, 3)
    out["lm"] = _fsdp_case("lm", model, ctl, losses, out_dir, mesh, device, T[0, :2, :-1])
    return out


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _worker(rank, world, port, backend, out_dir):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
        torch.backends.cudnn.allow_tf32 = False  # float32 convolutions, as the reference's
    dist.init_process_group(backend, rank=rank, world_size=world)
    device = _device(backend)
    mesh = init_device_mesh(device.type, (world,))
    results = {}
    for name, fn in (("ops", _scenario_ops), ("tp", _scenario_tp), ("fsdp", _scenario_fsdp)):
        try:
            args = (out_dir,) if name == "fsdp" else ()
            results[name] = _to_cpu(fn(mesh, rank, world, device, *args))
        except Exception:  # the test of this scenario fails with it; the others still run
            results[name] = traceback.format_exc()
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "results.pt"))
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()
    # Leave without the interpreter's teardown: once in a full CI run a rank aborted with "terminate
    # called without an active exception" (a C++ thread still joinable, where teardown destroys
    # them), never reproduced alone. What the ranks computed is checked from results.pt either way.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_one_process_checkpoints(out_dir, device):
    """The checkpoints of one process that the ranks load: other weights and controller times."""
    import torch.distributed.checkpoint as dcp

    states = {}
    for name, build in (("cnn", small_cnn), ("lm", ternary_lm)):
        torch.manual_seed(11)
        model = build().to(device)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        ctl = Controllers(model, 3)
        ctl.step(2)
        state = {"model": model.state_dict(), "controller": ctl.state_dict()}
        dcp.save(state, checkpoint_id=os.path.join(out_dir, f"{name}-1rank"), no_dist=True)
        states[name] = _to_cpu(state)
    return states


@pytest.fixture(scope="module", params=BACKENDS)
def runs(request, tmp_path_factory):
    """Rank 0's results of every scenario on 2 ranks, and the one-process checkpoints they loaded."""
    import torch.multiprocessing as mp

    backend = request.param
    out_dir = str(tmp_path_factory.mktemp(f"dist-{backend}"))
    saved = _save_one_process_checkpoints(out_dir, torch.device(_reference_device((backend,))))
    ctx = mp.start_processes(_worker, args=(2, _free_port(), backend, out_dir), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + TIMEOUT
    while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the 2-rank {backend} run did not finish in {TIMEOUT} s (a hung collective?)")
    results = torch.load(os.path.join(out_dir, "results.pt"), weights_only=False)
    return backend, results, saved, out_dir


def _reference_device(runs):
    return "cpu" if runs[0] == "gloo" else "cuda"


def _result(runs, name):
    backend, results, saved, out_dir = runs
    res = results[name]
    if isinstance(res, str):
        pytest.fail(f"the {name} scenario failed on the ranks:\n{res}")
    return res


# --- the tests ------------------------------------------------------------------------------------
def test_ops_on_shards_equal_one_process(runs):
    res = _result(runs, "ops")
    device = torch.device(_reference_device(runs))
    x = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(3)).to(device)
    for key, got in res.items():
        if key == "refused":
            continue
        placement, case = key.split(" ")
        xr = x.clone().requires_grad_()
        y, grads = _op_case(case, xr)
        (y * torch.linspace(-1, 1, 8, device=device)).sum().backward()
        # Every value, and every gradient of x, bit for bit; a learned eps's gradient is a sum
        # over the shards (another order of the same sum).
        torch.testing.assert_close(got["y"], y.detach().cpu(), rtol=0, atol=0, msg=key)
        torch.testing.assert_close(got["grads"][0], grads[0].grad.cpu(), rtol=0, atol=0, msg=key)
        for g, ref in zip(got["grads"][1:], grads[1:]):
            torch.testing.assert_close(g, ref.grad.cpu(), rtol=1e-5, atol=1e-6, msg=key)
        # Computed on the shards, not gathered: the output keeps the input's placement (the
        # random strategy draws its noise over the whole tensor, as one process does).
        shard = placement.replace("S(", "Shard(dim=").replace("R", "Replicate()")
        expected = "(Replicate(),)" if case == "random" else f"({shard},)"
        assert got["placements"] == expected, key
    assert "refused" in res and "does not take a DTensor" in res["refused"]


def test_op_sharding_rules():
    """The strategies register_sharding gets: with a seed (the random strategy, training) x is
    taken whole; an op that computes a rule's scale refuses a DTensor (DTensor caches its
    decisions by tensors, not by the rule's name); a learned eps shared by the shards gets a
    partial gradient."""
    from anacuda.distributed import _rules

    class Spec:  # what register_sharding passes for a tensor argument
        def __init__(self, shape):
            self.ndim, self.shape, self.placements = len(shape), shape, ()

    rules = _rules()
    x = Spec((4, 6, 8))
    inputs = lambda strategies: sorted(repr(s[1][0]) for s in strategies)  # noqa: E731
    with pytest.raises(NotImplementedError, match="anacuda.functional.ana or alpha_blend"):
        rules["_dynamic_eps"](x, "absmean", 1.0, 1e-5)
    args = [x, Spec((3,)), Spec((2,)), True, Spec(()), "uniform", Spec(()), Spec(()), "random", True, Spec((2,)),
            "uniform", Spec(()), Spec(())]
    assert inputs(rules["ana"](*args)) == ["Replicate()"]
    args[10] = None  # no seed: no noise drawn, any sharding
    assert inputs(rules["ana"](*args)) == ["Replicate()", "Shard(dim=0)", "Shard(dim=1)", "Shard(dim=2)"]
    eps = Spec((4, 1, 1))
    args = [x, x, Spec((3,)), Spec((2,)), True, eps, "normal", Spec(()), Spec(()), "mode", True, None, "normal",
            Spec(()), Spec(())]
    got = {repr(s[1][1]): [repr(p) for p in s[0]] for s in rules["_ana_backward_eps"](*args)}
    assert got["Shard(dim=0)"] == ["Shard(dim=0)", "Shard(dim=0)"]  # eps sharded with x
    assert got["Shard(dim=2)"] == ["Shard(dim=2)", "Partial(sum)"]  # eps shared by the shards


@pytest.mark.parametrize("name", ["converted", "ternary", "bitlinear", "between"])
def test_tensor_parallel_equals_one_process(runs, name):
    res = _result(runs, "tp")[name]
    assert res["sharded"] == "(Shard(dim=0),)"  # the column-wise weight is split
    device = torch.device(_reference_device(runs))
    model, _ = tp_models()[name]
    model = model.to(device)
    ctl = anacuda.NoiseController(model, TP_ANNEAL)
    tokens = _tokens(2, 1).to(device)
    for step in range(2):
        model.zero_grad()
        loss = _lm_loss(model, tokens[step])
        loss.backward()
        torch.testing.assert_close(res[f"loss {step}"], loss.detach().cpu(), rtol=1e-5, atol=1e-6)
        for n, p in model.named_parameters():
            torch.testing.assert_close(res[f"grads {step}"][n], p.grad.cpu(), rtol=1e-4, atol=1e-5, msg=n)
        ctl.step()
    model.eval()
    torch.testing.assert_close(res["eval"], model(tokens[0]).detach().cpu(), rtol=1e-5, atol=1e-5)
    if name == "converted":  # no step taken: the frozen model is one process's, bit for bit
        frozen = anacuda.freeze(model)
        ref = frozen.state_dict()
        assert res["frozen"].keys() == ref.keys()
        for k, v in ref.items():
            torch.testing.assert_close(res["frozen"][k], v.cpu(), rtol=0, atol=0, msg=k)
        torch.testing.assert_close(res["frozen y"], frozen(tokens[0]).cpu(), rtol=1e-5, atol=1e-5)


@functools.lru_cache(maxsize=None)
def _train_one_process(name, device="cpu", steps=3, world=2):
    """The FSDP2 scenario in one process, on the ranks' device type: the global batch as the
    halves each rank sees (so BatchNorm normalises the same samples), the mean of their losses
    (FSDP2 averages gradients). Returns the model on the CPU."""
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # as the ranks
        return _train(name, torch.device(device), steps, world)


def _train(name, device, steps, world):
    model = (small_cnn() if name == "cnn" else ternary_lm()).to(device)
    ctl = Controllers(model, steps)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    X, Y = _batches(steps, world, (1, 8, 8), 10)
    T = _tokens(steps, world)
    losses = []
    for step in range(steps):
        opt.zero_grad()
        if name == "cnn":
            halves = [nn.functional.cross_entropy(model(x.to(device)), y.to(device))
                      for x, y in zip(X[step].chunk(world), Y[step].chunk(world))]
        else:
            halves = [_lm_loss(model, t.to(device)) for t in T[step].chunk(world)]
        loss = sum(halves) / world
        loss.backward()
        opt.step()
        ctl.step()
        losses.append(loss.detach().cpu())
    return model.cpu(), ctl, torch.stack(losses)


def _skip_bn_stats(key):
    return "running" in key or "num_batches" in key  # each rank's BatchNorm sees its half only


@pytest.mark.parametrize("name", ["cnn", "lm"])
def test_fsdp2_trains_as_one_process(runs, name):
    res = _result(runs, "fsdp")[name]
    assert res["sharded"] == "(Shard(dim=0),)"
    model, ctl, losses = _train_one_process(name, _reference_device(runs))
    torch.testing.assert_close(res["losses"], losses, rtol=1e-5, atol=1e-6)
    state = model.state_dict()
    assert res["full"].keys() == state.keys()
    for k, v in state.items():
        if not _skip_bn_stats(k):
            torch.testing.assert_close(res["full"][k], v, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("name", ["cnn", "lm"])
def test_fsdp2_checkpoint_saved_on_2_ranks_loads_on_1(runs, name):
    import torch.distributed.checkpoint as dcp

    res = _result(runs, "fsdp")[name]
    out_dir = runs[3]
    model = small_cnn() if name == "cnn" else ternary_lm()
    ctl = Controllers(model, 3)
    state = {"model": model.state_dict(), "controller": ctl.state_dict()}
    dcp.load(state, checkpoint_id=os.path.join(out_dir, f"{name}-2ranks"), no_dist=True)
    model.load_state_dict(state["model"])
    ctl.load_state_dict(state["controller"])
    for k, v in model.state_dict().items():  # μ, σ, α, weights, BN
        if not _skip_bn_stats(k):  # DCP saves one rank's copy of a buffer that is not a DTensor
            torch.testing.assert_close(v, res["full"][k], rtol=0, atol=0, msg=k)
    _, ref_ctl, _ = _train_one_process(name, _reference_device(runs))
    assert ctl.state_dict() == ref_ctl.state_dict()
    sigmas = [m.sigma for _, m in quantised_modules(model, (NoiseHyperParams,))]
    assert sigmas and all(float(s) == 0.0 for s in sigmas)  # annealed: 3 steps of 3
    alphas = [m.alpha for _, m in quantised_modules(model, (AlphaBlendWeight,))]
    assert len(alphas) == (name == "cnn") and all(float(a) == 1.0 for a in alphas)  # ramped: 3 steps of 3


@pytest.mark.parametrize("name", ["cnn", "lm"])
def test_fsdp2_loads_a_one_process_checkpoint(runs, name):
    res = _result(runs, "fsdp")[name]
    saved = runs[2][name]
    for k, v in saved["model"].items():
        torch.testing.assert_close(res["loaded"][k], v, rtol=0, atol=0, msg=k)
    assert res["loaded controller"] == saved["controller"]


@pytest.mark.parametrize("name", ["cnn", "lm"])
def test_freeze_of_fsdp2_model(runs, name):
    """freeze on every rank gathers the sharded model: plain tensors, and exactly the frozen
    model of one process that holds the same weights."""
    res = _result(runs, "fsdp")[name]
    assert res["frozen plain"]
    model = small_cnn() if name == "cnn" else ternary_lm()
    model.load_state_dict(res["full"])
    frozen = anacuda.freeze(model)
    ref = frozen.state_dict()
    assert res["frozen"].keys() == ref.keys()
    for k, v in ref.items():
        torch.testing.assert_close(res["frozen"][k], v, rtol=0, atol=0, msg=k)
    if name == "cnn":
        probe = _batches(3, 2, (1, 8, 8), 10)[0][0, :4]
        assert any("Frozen" in type(m).__name__ for m in frozen.modules())
    else:
        probe = _tokens(3, 2)[0, :2, :-1]
        assert type(frozen.head).__name__ == "FrozenLinear"
    torch.testing.assert_close(res["frozen y"], frozen(probe), rtol=0, atol=0)


# --- the README's example -------------------------------------------------------------------------
def test_readme_torchrun_example(tmp_path):
    """The README's command (FSDP2, then tensor parallelism), on the CPU with gloo: both train to
    the same losses, save their checkpoints and freeze."""
    torchrun = shutil.which("torchrun")
    cmd = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    cmd += ["--standalone", "--nproc-per-node", "2", os.path.join(ROOT, "examples", "distributed.py"), "--steps", "2",
            "--checkpoint", str(tmp_path / "ckpt")]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    losses = {}
    for line in done.stdout.splitlines():
        if " step " in line:
            run, _, step, _, loss = line.replace(":", "").split()
            losses.setdefault(run, []).append(float(loss))
    assert set(losses) == {"fsdp", "tp"} and len(losses["fsdp"]) == 2, done.stdout
    assert losses["fsdp"] == pytest.approx(losses["tp"], rel=1e-4), done.stdout
    for run in ("fsdp", "tp"):
        assert f"{run} frozen head: FrozenLinear, logits (2, 8, 16)" in done.stdout
        assert (tmp_path / "ckpt" / run / ".metadata").exists()
