"""Stopping and resuming a run: a checkpoint of the model, the optimizer, the controller (and
torch's random state, for the random strategy) continues bit for bit as if the run had not
stopped, whatever the order in which they are loaded and whether the controller is built before
or after the model's state is loaded. Bad controller state dicts are clear errors."""

import io
import itertools
import math

import pytest
import torch
from torch import nn

from anacuda.nn import AlphaController, NoiseController, convert

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # tiny tensors: one thread


T = 6  # the annealing horizon; training stops at t = 2 and resumes to t = 5 (sigma > 0 throughout)


def net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def fresh(strategy, seed=0):
    model = convert(net(seed), strategy=strategy)
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def data():
    g = torch.Generator().manual_seed(123)
    return torch.randn(5, 2, 16, 6, generator=g), torch.randint(3, (5, 2, 16), generator=g)


def epochs(model, opt, ctl, first, last):
    """Epochs first .. last - 1, two batches each, the controller stepped after each epoch."""
    X, Y = data()
    losses = []
    for e in range(first, last):
        for x, y in zip(X[e], Y[e]):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        ctl.step()
    return losses


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf)  # weights_only: a controller's state is plain Python values


def assert_same_run(a_losses, a_model, b_losses, b_model):
    assert len(a_losses) == len(b_losses)
    for i, (a, b) in enumerate(zip(a_losses, b_losses)):
        assert torch.equal(a, b), f"loss {i}: {a.item()} != {b.item()}"
    sa, sb = a_model.state_dict(), b_model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


ORDERS = list(itertools.permutations(["model", "controller", "optimizer"]))


@pytest.mark.parametrize("strategy", ["mode", "random"])
@pytest.mark.parametrize("build", ["controller_first", "controller_at_its_load"])
@pytest.mark.parametrize("order", ORDERS, ids=["-".join(o) for o in ORDERS])
def test_resume_in_any_order_is_bit_for_bit(strategy, build, order):
    torch.manual_seed(7)
    model_a, opt_a = fresh(strategy)
    straight = epochs(model_a, opt_a, NoiseController(model_a, T), 0, 5)

    torch.manual_seed(7)
    model, opt = fresh(strategy)
    ctl = NoiseController(model, T)
    before = epochs(model, opt, ctl, 0, 2)
    ckpt = roundtrip({"model": model.state_dict(), "opt": opt.state_dict(), "ctl": ctl.state_dict(),
                      "rng": torch.get_rng_state()})

    model2, opt2 = fresh(strategy, seed=1)  # other initial weights: only the checkpoint may matter
    ctl2 = NoiseController(model2, T) if build == "controller_first" else None
    for what in order:
        if what == "model":
            model2.load_state_dict(ckpt["model"])
        elif what == "optimizer":
            opt2.load_state_dict(ckpt["opt"])
        else:
            ctl2 = ctl2 or NoiseController(model2, T)  # built on an annealed model if the model came first
            ctl2.load_state_dict(ckpt["ctl"])
    torch.set_rng_state(ckpt["rng"])  # the random strategy draws its noise from torch's generator
    after = epochs(model2, opt2, ctl2, 2, 5)
    assert ctl2.t == 5
    assert_same_run(straight, model_a, before + after, model2)


def test_the_issue_numbers():
    """Issue 12: saved sigma 0.125 at t = 2 (T = 4) resumed as 0.03125, and 0.0078 at t = 3."""
    model, _ = fresh("mode")
    ctl = NoiseController(model, 4)
    ctl.step()
    ctl.step()
    assert model[0].sigma.item() == 0.125
    model2, _ = fresh("mode", seed=1)
    model2.load_state_dict(model.state_dict())
    ctl2 = NoiseController(model2, 4)  # reads sigma0 = 0.125 from the annealed layers
    ctl2.load_state_dict(ctl.state_dict())
    assert model2[0].sigma.item() == 0.125 and ctl2.values()[0]["sigma"] == 0.125
    ctl2.step()
    assert model2[0].sigma.item() == 0.5 * (1 - 3 / 4) ** 2 == 0.03125


def test_state_dict_holds_the_configuration():
    model, _ = fresh("mode")
    ctl = NoiseController(model, 10, window="partition", power="progressive", schedule="cosine", mu0=-0.5)
    ctl.step(3.5)
    state = ctl.state_dict()
    assert state["controller"] == "NoiseController" and state["t"] == 3.5
    groups = state["config"]["groups"]
    assert [g["modules"] for g in groups] == ctl.groups
    assert groups[0]["sigma0"] == 0.5 and groups[0]["mu0"] == -0.5
    assert groups[1]["sigma"] == {"schedule": "cosine", "tstart": 10 / 3, "tend": 20 / 3, "power": 4.0, "floor": 1e-3}
    alpha = AlphaController(convert(net(0), weights="alpha_blend"), 8, start=2, shape="linear")
    assert alpha.state_dict()["config"] == {"modules": ["0", "3", "5"], "start": 2.0, "end": 8.0, "shape": "linear"}


def test_alpha_controller_resumes():
    model = convert(net(0), weights="alpha_blend")
    ctl = AlphaController(model, 8)
    ctl.step(3)
    model2 = convert(net(1), weights="alpha_blend")
    ctl2 = AlphaController(model2, 8)
    ctl2.load_state_dict(roundtrip(ctl.state_dict()))
    assert ctl2.t == 3 and model2[0].alpha.item() == model[0].alpha.item() == pytest.approx(1 - (5 / 8) ** 3)
    with pytest.raises(ValueError, match="another configuration"):
        AlphaController(model2, 9).load_state_dict(ctl.state_dict())


@pytest.mark.parametrize("state, match", [
    ({}, r"not a NoiseController state dict: expected the keys \['config', 'controller', 't'\]"),
    ({"t": 2.0}, "holds only 't' lost sigma0 and mu0"),
    ({"controller": "AlphaController", "config": {}, "t": 1.0}, "not a NoiseController state dict"),
    ({"controller": "NoiseController", "config": {"groups": []}, "t": 1.0}, "another configuration"),
    ({"controller": "NoiseController", "config": [], "t": 1.0}, "config must be a dict"),
])
def test_bad_state_dicts_are_clear_errors(state, match):
    ctl = NoiseController(fresh("mode")[0], T)
    with pytest.raises(ValueError, match=match):
        ctl.load_state_dict(state)
    assert ctl.t == 0  # nothing changed


def test_state_from_another_configuration():
    model = fresh("mode")[0]
    saved = NoiseController(model, T, window="partition").state_dict()
    for other in (dict(window="overlapped"), dict(power="progressive"), dict(schedule="cosine"), dict(epochs=7),
                  dict(groups=[["0", "2", "3"], ["4", "5"]]), dict(anneal_mu=False)):
        kw = {"epochs": T, "window": "partition", **other}
        ctl = NoiseController(model, kw.pop("epochs"), **kw)
        with pytest.raises(ValueError, match="another configuration"):
            ctl.load_state_dict(saved)
    bad = NoiseController(model, T, window="partition").state_dict()
    bad["config"]["groups"][0]["sigma0"] = -1.0
    with pytest.raises(ValueError, match="sigma0 must be finite and >= 0, got -1.0"):
        NoiseController(model, T, window="partition").load_state_dict(bad)
    bad["config"]["groups"][0]["sigma0"] = 0.5
    bad["t"] = math.nan
    with pytest.raises(ValueError, match="t must be a finite time >= 0, got nan"):
        NoiseController(model, T, window="partition").load_state_dict(bad)
