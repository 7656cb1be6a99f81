"""Annealing controllers: NoiseController anneals μ and σ of the ANA layers group by group (the
CVPR 2022 design space); AlphaController ramps α of the alpha-blending layers from 0 to 1.

Both are stepped per epoch or per iteration (``step()`` adds one unit of time, ``step(t)`` sets
a fractional time), write the current values into the layers' buffers in place (no
recompilation, no synchronisation beyond a tiny host-to-device copy), and have
``state_dict()`` / ``load_state_dict()``.

Resuming: a controller's state dict holds its whole configuration and the time (for a
NoiseController: the groups by module name, each group's μ0, σ0 and decay windows, powers and
schedule). Loading it restores μ0, σ0 and the time and rewrites the layers' values, so that the
model, the controller and the optimizer may be loaded in any order, and the controller may be
built before or after the model's state is loaded (σ0 read from an annealed layer is replaced by
the saved one). A state dict of another configuration (other groups, windows, powers or
schedule) or of another controller is rejected. The random strategy also draws from torch's
generator: save ``torch.get_rng_state()`` (and ``torch.cuda.get_rng_state_all()`` on GPUs) with
the checkpoint and restore it, or seed torch at the resume point, to continue bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .activation import NoiseHyperParams
from .convert import quantised_modules
from .layers import AlphaBlendWeight, ANAWeight
from .ternary import DynamicScaleANA

SCHEDULES = ("bws", "linear", "cosine", "uws", "constant")
WINDOWS = ("overlapped", "partition", "same_start", "same_end")
POWERS = ("homogeneous", "progressive")


@dataclass(frozen=True)
class Decay:
    """g(t) in [0, 1] over the window [tstart, tend]: 1 before it, 0 from tend on.

    bws / linear: ((tend − t̃) / (tend − tstart))^power, t̃ = clamp(t, tstart, tend)  (the paper's
    "bws"; linear is its name for power 1). cosine: ((1 + cos(π s)) / 2)^power with s the
    progress. uws: (1 / (max(t, tstart) − tstart + 1))^power, 0 once below `floor` (the paper's
    "uws", no tend). constant: 1.
    """

    schedule: str = "bws"
    tstart: float = 0.0
    tend: float = 1.0
    power: float = 1.0
    floor: float = 1e-3

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"anacuda: unknown schedule {self.schedule!r}; expected one of {SCHEDULES}")
        for name in ("tstart", "tend", "power", "floor"):
            object.__setattr__(self, name, _number(getattr(self, name), name, "Decay"))
        if not (math.isfinite(self.tstart) and math.isfinite(self.tend)) or (
                self.schedule not in ("uws", "constant") and self.tend <= self.tstart):
            raise ValueError(f"anacuda: a decay window needs tstart < tend, got [{self.tstart}, {self.tend}]")
        if not (self.power >= 0 and math.isfinite(self.power)):
            raise ValueError(f"anacuda: the decay power must be >= 0 and finite, got {self.power}")
        if not 0 <= self.floor <= 1:
            raise ValueError(f"anacuda: the decay floor must be in [0, 1], got {self.floor}")

    def __call__(self, t: float) -> float:
        if self.schedule == "constant" or self.power == 0:
            return 1.0
        if self.schedule == "uws":
            g = (1.0 / (max(t, self.tstart) - self.tstart + 1.0)) ** self.power
            return 0.0 if g < self.floor else g
        s = min(max((t - self.tstart) / (self.tend - self.tstart), 0.0), 1.0)
        base = 1.0 - s if self.schedule in ("bws", "linear") else 0.5 * (1.0 + math.cos(math.pi * s))
        return base ** self.power


def _window(kind: str, l: int, L: int, T: float):
    if kind == "overlapped":
        return 0.0, T
    if kind == "partition":
        return T * l / L, T * (l + 1) / L
    if kind == "same_start":
        return 0.0, T * (l + 1) / L
    if kind == "same_end":
        return T * (L - l - 1) / L, T
    raise ValueError(f"anacuda: unknown decay window {kind!r}; expected one of {WINDOWS}")


GROUPINGS = ("layers", "blocks")


def auto_groups(model: nn.Module, by: str = "layers") -> List[List[str]]:
    """Layer groups in module order.

    by="layers": each ANA weight layer opens a group that the ANA activations after it join
    (input side first); activations before any layer form a group.

    by="blocks" (transformers): one group per block. A block is an element of an
    ``nn.ModuleList`` or ``nn.Sequential`` whose elements are all of one class (the repeated
    blocks: ``layers.3``, ``h.3``, ``blocks.3``) that holds quantisers below it without being one
    itself; each quantiser joins the group of the outermost block it lies in (so a list of experts
    inside a block stays in the block's group, and a model wrapped in ``nn.Sequential(embed,
    body)`` still has its blocks). Quantisers outside every block (a quantised head, say) form a
    group per run of consecutive ones. Quantisers at σ = 0 and μ = 0 (nothing to anneal: BitNet's
    hard activations) are left out.
    """
    if by not in GROUPINGS:
        raise ValueError(f"anacuda.auto_groups: by must be one of {GROUPINGS}, got {by!r}")
    named = quantised_modules(model, (NoiseHyperParams,))
    groups: List[List[str]] = []
    if by == "layers":
        for name, m in named:
            if isinstance(m, ANAWeight) or not groups:
                groups.append([name])
            else:
                groups[-1].append(name)
        return groups
    containers = {n for n, m in model.named_modules() if isinstance(m, (nn.ModuleList, nn.Sequential))
                  and len({type(c) for c in m.children()}) == 1}
    last = object()
    for name, m in named:
        if float(m.sigma) == 0 and float(m.mu) == 0:
            continue
        parts = name.split(".")
        block = next((".".join(parts[:i + 1]) for i in range(len(parts) - 1)
                      if parts[i].isdigit() and ".".join(parts[:i]) in containers), None)
        if block != last:  # a new block, or the first quantiser after (or before) the blocks
            groups.append([name])
        else:
            groups[-1].append(name)
        last = block
    return groups


def _check_model(model, who: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"anacuda.{who}: model must be a torch.nn.Module, got {type(model).__name__}")


def _number(value, name: str, who: str) -> float:
    """A real number (a time, a start value) as a float, or a TypeError that names it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"anacuda.{who}: {name} must be a number, got {type(value).__name__}")
    return float(value)


def _time(value, who: str) -> float:
    t = _number(value, "t", who)
    if not (math.isfinite(t) and t >= 0):
        raise ValueError(f"anacuda.{who}: t must be a finite time >= 0, got {t}")
    return t


def _start(value, name: str, who: str, signed: bool = False) -> float:
    """A start value μ0 (signed) or σ0 (>= 0): a finite number."""
    v = _number(value, name, who)
    if not math.isfinite(v) or (not signed and v < 0):
        raise ValueError(f"anacuda.{who}: {name} must be {'finite' if signed else 'finite and >= 0'}, got {v}")
    return v


def _horizon(epochs, steps, who: str) -> float:
    """The annealing horizon T, given as `epochs` or as `steps` (not both; default 1)."""
    if epochs is not None and steps is not None:
        raise TypeError(f"anacuda.{who}: give the horizon as epochs or as steps, not both (got epochs={epochs}, "
                        f"steps={steps})")
    name, value = ("steps", steps) if steps is not None else ("epochs", 1.0 if epochs is None else epochs)
    T = _number(value, name, who)
    if not T > 0:
        raise ValueError(f"anacuda.{who}: {name} must be > 0, got {value}")
    return T


def _group_start(modules: dict, names: List[str], what: str) -> float:
    """The start value (μ or σ) the layers of a group share; a clear error if they differ."""
    values = {n: float(getattr(modules[n], what)) for n in names}
    if len(set(values.values())) > 1:
        raise ValueError(f"anacuda.NoiseController: the layers of a group start from different {what} "
                         f"({values}); a group has one start value: pass {what}0=..., or groups that keep them "
                         "apart (e.g. leave hard quantisers out)")
    return values[names[0]]


def _check_groups(groups, modules: dict, what: str) -> List[List[str]]:
    """Lists of ANA layer names, each non-empty, no layer in two of them."""
    who = "NoiseController"
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence) or any(
            isinstance(g, (str, bytes)) or not isinstance(g, Sequence) for g in groups):
        raise TypeError(f"anacuda.{who}: {what} must be a list of lists of module names, got {groups!r}")
    groups = [list(g) for g in groups]
    if not groups or any(not g for g in groups):
        raise ValueError(f"anacuda.{who}: every group needs at least one layer, got {groups}")
    seen = [n for g in groups for n in g]
    missing = [n for n in seen if n not in modules]
    if missing:
        raise ValueError(f"anacuda.{who}: {missing} are not ANA layers of the model")
    if len(set(seen)) != len(seen):
        raise ValueError(f"anacuda.{who}: a module appears in two groups; groups must partition the layers")
    return groups


class _Clock:
    """Time in the unit the user steps (epochs or iterations), writing the values it implies into
    the layers (`_apply`), and the state dict: the time plus the configuration (`_config`)."""

    t = 0.0

    def _apply(self):
        raise NotImplementedError

    def _config(self) -> dict:
        """The configuration as plain Python values (it goes into the state dict)."""
        raise NotImplementedError

    def _restore(self, config: dict, who: str) -> None:
        """Check a saved configuration against this one and take what it restores."""
        mine = self._config()
        if config != mine:
            raise ValueError(f"anacuda.{who}: the state dict is from another configuration (saved {config}, this "
                             f"controller {mine}); build the controller with the arguments of the saved run")

    def step(self, t: Optional[float] = None) -> None:
        """Advance one unit of time (an epoch, or an iteration if you count in those), or jump
        to time `t` >= 0 (fractional epochs allowed), and write the new values into the layers."""
        self.t = self.t + 1.0 if t is None else _time(t, f"{type(self).__name__}.step")
        self._apply()

    def state_dict(self) -> dict:
        """The controller's kind, configuration and time, as plain Python values (torch.save and
        ``torch.load(weights_only=True)`` take them)."""
        return {"controller": type(self).__name__, "config": self._config(), "t": self.t}

    def load_state_dict(self, state: dict) -> None:
        """Restores the time (and what the configuration restores) and rewrites the layers."""
        kind = type(self).__name__
        who = f"{kind}.load_state_dict"
        if not isinstance(state, dict):
            raise TypeError(f"anacuda.{who}: state must be a dict (from state_dict()), got {type(state).__name__}")
        expected = {"controller", "config", "t"}
        if set(state) != expected or state["controller"] != kind:
            hint = (" (a state dict that holds only 't' lost sigma0 and mu0 and cannot resume: build the controller on "
                    "a model with its initial sigma and mu, then call step(t))" if set(state) == {"t"} else "")
            raise ValueError(f"anacuda.{who}: not a {kind} state dict: expected the keys {sorted(expected)} with "
                             f"controller={kind!r}, got {state if len(repr(state)) < 200 else sorted(state)}{hint}")
        t = _time(state["t"], who)
        if not isinstance(state["config"], dict):
            raise ValueError(f"anacuda.{who}: the state dict's config must be a dict, got {state['config']!r}")
        self._restore(state["config"], who)
        self.t = t
        self._apply()


class NoiseController(_Clock):
    """Anneals μ and σ of a model's ANA layers, per layer group.

    `epochs`: the annealing horizon T (in the unit you step); or ``steps=T`` for a controller
    stepped once per optimiser step (the same clock, named for its unit: transformers are trained
    in steps). `window` places each group's decay in [0, T] (overlapped, partition, same_start,
    same_end); `power` sets the decay exponents (homogeneous: α_μ = 1, α_σ = 2; progressive:
    α_μ = L − l, α_σ = 2(L − l), the first group decaying with the highest power); `schedule` the
    shape (bws, linear, cosine, uws, constant). σ starts from the σ its group's layers have at
    construction (or `sigma0`) and μ from their μ (or `mu0`, e.g. −0.5 for the paper's dynamic
    μ); both reach 0 at the end of their window. A group whose layers start from different σ or
    μ is refused unless `sigma0` / `mu0` is given (one start per group).
    `groups`: lists of module names, or a rule of auto_groups: "layers" (the default) or "blocks"
    (one group per transformer block). `ctrl_spec`: the quantlab ANAController list,
    ``[{"modules": [...], "mi": {"beta", "fun", "kwargs"}, "sigma": {...}}]``, instead of the
    arguments above.
    """

    def __init__(self, model: nn.Module, epochs: Optional[float] = None, *, steps: Optional[float] = None,
                 groups=None, schedule: str = "bws", window: str = "overlapped", power: str = "homogeneous",
                 sigma0: Optional[float] = None, mu0: Optional[float] = None, anneal_mu: bool = True,
                 anneal_sigma: bool = True, ctrl_spec: Optional[list] = None):
        _check_model(model, "NoiseController")
        self.model = model
        modules: Dict[str, NoiseHyperParams] = dict(quantised_modules(model, (NoiseHyperParams,)))
        if not modules:
            raise ValueError("anacuda.NoiseController: the model has no ANA layers (convert it with anacuda.convert)")
        self.t = 0.0
        self._groups: List[dict] = []
        if ctrl_spec is not None:
            self._from_ctrl_spec(ctrl_spec, modules)
            return
        epochs = _horizon(epochs, steps, "NoiseController")
        sigma0 = None if sigma0 is None else _start(sigma0, "sigma0", "NoiseController")
        mu0 = None if mu0 is None else _start(mu0, "mu0", "NoiseController", signed=True)
        for name, v in (("anneal_mu", anneal_mu), ("anneal_sigma", anneal_sigma)):
            if not isinstance(v, bool):
                raise TypeError(f"anacuda.NoiseController: {name} must be a bool, got {type(v).__name__}")
        if window not in WINDOWS:
            raise ValueError(f"anacuda.NoiseController: unknown window {window!r}; expected one of {WINDOWS}")
        if power not in POWERS:
            raise ValueError(f"anacuda.NoiseController: unknown power {power!r}; expected one of {POWERS}")
        if isinstance(groups, str) and groups not in GROUPINGS:
            raise TypeError(f"anacuda.NoiseController: groups must be a list of lists of module names or a rule of "
                            f"auto_groups, one of {GROUPINGS}; got {groups!r}")
        if groups is None or isinstance(groups, str):
            groups = auto_groups(model, "layers" if groups is None else groups)
            if not groups:
                raise ValueError("anacuda.NoiseController: auto_groups found no quantiser to anneal (all at sigma = 0 "
                                 "and mu = 0)")
        groups = _check_groups(groups, modules, "groups")
        L = len(groups)
        for l, names in enumerate(groups):
            ts, te = _window(window, l, L, float(epochs))
            a_mu, a_sigma = (1.0, 2.0) if power == "homogeneous" else (float(L - l), 2.0 * (L - l))
            self._groups.append(dict(
                modules=names,
                mu=Decay(schedule, ts, te, a_mu) if anneal_mu else Decay("constant"),
                sigma=Decay(schedule, ts, te, a_sigma) if anneal_sigma else Decay("constant"),
                mu0=_group_start(modules, names, "mu") if mu0 is None else mu0,
                sigma0=_group_start(modules, names, "sigma") if sigma0 is None else sigma0))
        self._modules = modules
        self._apply()

    def _from_ctrl_spec(self, spec, modules):
        who = "NoiseController"

        def keys(d, allowed, what):
            if not isinstance(d, dict):
                raise TypeError(f"anacuda.{who}: ctrl_spec {what} must be a dict, got {d!r}")
            wrong = sorted(set(d) - set(allowed), key=str)
            if wrong:
                raise ValueError(f"anacuda.{who}: unknown ctrl_spec {what} keys {wrong}; allowed: {sorted(allowed)}")

        def decay(d, what):
            keys(d, ("beta", "fun", "kwargs"), what)
            fun = d.get("fun", "bws")
            if fun not in ("bws", "uws"):
                raise ValueError(f"anacuda.{who}: unknown ctrl_spec fun {fun!r} (bws or uws)")
            kw = d.get("kwargs", {})
            keys(kw, ("tstart", "tend", "alpha") if fun == "bws" else ("tstart", "alpha", "eps"), f"{what} kwargs")
            if fun == "bws":
                return Decay("bws", kw.get("tstart", 0.0), kw.get("tend", 1.0), kw.get("alpha", 1.0))
            tstart = _number(kw.get("tstart", 0.0), "tstart", who)
            return Decay("uws", tstart, tstart + 1.0, kw.get("alpha", 1.0), kw.get("eps", 1e-3))

        if not isinstance(spec, (list, tuple)):
            raise TypeError(f"anacuda.{who}: ctrl_spec must be a list of dicts, got {type(spec).__name__}")
        for g in spec:
            if not isinstance(g, dict) or not g.get("modules"):
                raise ValueError(f"anacuda.{who}: each ctrl_spec entry is a dict with a non-empty 'modules' "
                                 f"list (and 'mi' / 'sigma' decays), got {g!r}")
            keys(g, ("modules", "mi", "sigma"), "entry")
        names = _check_groups([g["modules"] for g in spec], modules, "ctrl_spec modules")
        for g, group in zip(spec, names):
            mi, sg = g.get("mi", {"beta": 0.0}), g.get("sigma", {"beta": 0.0})
            mu, sigma = decay(mi, "'mi'"), decay(sg, "'sigma'")
            self._groups.append(dict(modules=group, mu=mu, sigma=sigma,
                                     mu0=_start(mi.get("beta", 0.0), "'mi' beta", who, signed=True),
                                     sigma0=_start(sg.get("beta", 0.0), "'sigma' beta", who)))
        self._modules = modules
        self._apply()

    def _config(self) -> dict:
        return {"groups": [dict(modules=list(g["modules"]), mu0=g["mu0"], sigma0=g["sigma0"],
                                mu=dataclasses.asdict(g["mu"]), sigma=dataclasses.asdict(g["sigma"]))
                           for g in self._groups]}

    def _restore(self, config: dict, who: str) -> None:
        """The groups, windows, powers and schedules must be this controller's; μ0 and σ0 are
        restored from the state (a controller built on an annealed model read the annealed ones)."""
        def shape(cfg):
            groups = cfg.get("groups") if isinstance(cfg, dict) else None
            if set(cfg) != {"groups"} or not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
                return None
            return [{k: v for k, v in g.items() if k not in ("mu0", "sigma0")} for g in groups]

        saved, mine = shape(config), shape(self._config())
        if saved != mine:
            diff = ("a malformed config" if saved is None else f"saved {len(saved)} groups, this controller {len(mine)}"
                    if len(saved) != len(mine) else
                    next(f"group {i}: saved {a}, this controller {b}" for i, (a, b) in enumerate(zip(saved, mine))
                         if a != b))
            raise ValueError(f"anacuda.{who}: the state dict is from another configuration ({diff}); build the "
                             "controller with the groups, window, power and schedule of the saved run")
        starts = [(_start(g.get("mu0"), "mu0", who, signed=True), _start(g.get("sigma0"), "sigma0", who))
                  for g in config["groups"]]
        for g, (mu0, sigma0) in zip(self._groups, starts):
            g["mu0"], g["sigma0"] = mu0, sigma0

    @property
    def groups(self) -> List[List[str]]:
        return [list(g["modules"]) for g in self._groups]

    def values(self, t: Optional[float] = None) -> List[dict]:
        """[{modules, mu, sigma}] per group at time t (default: now)."""
        t = self.t if t is None else t
        return [dict(modules=g["modules"], mu=g["mu0"] * g["mu"](t), sigma=g["sigma0"] * g["sigma"](t))
                for g in self._groups]

    @torch.no_grad()
    def _apply(self):
        for v in self.values():
            for name in v["modules"]:
                m = self._modules[name]
                m.mu.fill_(v["mu"])
                m.sigma.fill_(v["sigma"])
                m._note_sigma(v["sigma"], name)  # the layer warns if it trains at sigma = backward sigma = 0

    def __repr__(self) -> str:
        rows = ", ".join(f"{v['modules']}: mu={v['mu']:.4g} sigma={v['sigma']:.4g}" for v in self.values())
        return f"NoiseController(t={self.t:g}; {rows})"


ALPHA_SHAPES = ("cubic", "linear", "power", "sigmoid")


class AlphaController(_Clock):
    """Ramps α of every alpha-blending layer (and of every ``blend=True`` quantiser of a
    TernaryLinear / BitLinear) from 0 to 1 over [start, end] (in the unit you step: per epoch,
    or per optimiser step with `end` in steps). With s the progress, clamped to [0, 1]:
    cubic, α = 1 − (1 − s)³ (Liu & Mattina); linear, α = s; power, α = 1 − (1 − s)^k and
    sigmoid, α = 1 / (1 + exp(−k (s − 1/2))) (the schedulers of Hugging Face's 1.58-bit
    fine-tuning, huggingface/blog#2339; the sigmoid reaches 1 only as k grows).

    The blog's λ warm-up ``λ = min(2 · step / total, 1)`` is ``AlphaController(model,
    end=total / 2, shape="linear")`` stepped once per step, with α = λ. On a ``blend=True``
    quantiser with the identity backward (BitLinear(blend=True)) it is the blog's
    ``x + λ (quant(x) − x).detach()`` exactly, gradient included. On an alpha-blending layer
    (``functional.alpha_blend``, Liu & Mattina) the forward is the same but the gradient is
    (1 − α) times the blog's: no gradient flows through the quantised term.
    """

    def __init__(self, model: nn.Module, end: float = 1.0, *, start: float = 0.0, shape: str = "cubic",
                 k: Optional[float] = None):
        _check_model(model, "AlphaController")
        for name, v in (("start", start), ("end", end)):
            if not math.isfinite(_number(v, name, "AlphaController")):
                raise ValueError(f"anacuda.AlphaController: {name} must be finite, got {v}")
        if shape not in ALPHA_SHAPES:
            raise ValueError(f"anacuda.AlphaController: shape must be 'cubic' or 'linear', or 'power' or 'sigmoid' "
                             f"with k; got {shape!r}")
        if shape in ("power", "sigmoid"):
            if k is None:
                raise ValueError(f"anacuda.AlphaController: shape {shape!r} needs k (e.g. k=4 for power, k=20 for "
                                 "sigmoid)")
            k = _number(k, "k", "AlphaController")
            if not (k > 0 and math.isfinite(k)):
                raise ValueError(f"anacuda.AlphaController: k must be > 0 and finite, got {k}")
        elif k is not None:
            raise ValueError(f"anacuda.AlphaController: k is for the power and sigmoid shapes, not {shape!r}")
        if not end > start:
            raise ValueError(f"anacuda.AlphaController: needs start < end, got [{start}, {end}]")
        named = [(n, m) for n, m in quantised_modules(model, (AlphaBlendWeight, DynamicScaleANA))
                 if not isinstance(m, DynamicScaleANA) or m.blend]
        self.modules = [m for _, m in named]
        self._names = [n for n, _ in named]
        if not self.modules:
            raise ValueError("anacuda.AlphaController: the model has no alpha-blending layers "
                             "(convert it with anacuda.convert(model, weights='alpha_blend'), or build "
                             "TernaryLinear / BitLinear with blend=True)")
        self.start, self.end, self.shape, self.k = float(start), float(end), shape, k
        self.t = 0.0
        self._apply()

    def alpha(self, t: Optional[float] = None) -> float:
        t = self.t if t is None else t
        s = min(max((t - self.start) / (self.end - self.start), 0.0), 1.0)
        if self.shape == "sigmoid":
            return 1.0 / (1.0 + math.exp(-self.k * (s - 0.5)))
        if self.shape == "linear":
            return s
        return 1.0 - (1.0 - s) ** (3.0 if self.shape == "cubic" else self.k)

    def _config(self) -> dict:
        config = {"modules": list(self._names), "start": self.start, "end": self.end, "shape": self.shape}
        return config if self.k is None else dict(config, k=self.k)

    @torch.no_grad()
    def _apply(self):
        a = self.alpha()
        for m in self.modules:
            m.alpha.fill_(a)
