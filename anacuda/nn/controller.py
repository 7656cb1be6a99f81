"""Annealing controllers: NoiseController anneals μ and σ of the ANA layers group by group (the
CVPR 2022 design space); AlphaController ramps α of the alpha-blending layers from 0 to 1.

Both are stepped per epoch or per iteration (``step()`` adds one unit of time, ``step(t)`` sets
a fractional time), write the current values into the layers' buffers in place (no
recompilation, no synchronisation beyond a tiny host-to-device copy), and have
``state_dict()`` / ``load_state_dict()``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .activation import NoiseHyperParams
from .convert import quantised_modules
from .layers import AlphaBlendWeight, ANAWeight

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
        if not (math.isfinite(self.tstart) and math.isfinite(self.tend)) or (
                self.schedule not in ("uws", "constant") and self.tend <= self.tstart):
            raise ValueError(f"anacuda: a decay window needs tstart < tend, got [{self.tstart}, {self.tend}]")
        if not self.power >= 0:
            raise ValueError(f"anacuda: the decay power must be >= 0, got {self.power}")

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


def auto_groups(model: nn.Module) -> List[List[str]]:
    """Layer groups in module order: each ANA weight layer opens a group that the ANA
    activations after it join (input side first); activations before any layer form a group."""
    groups: List[List[str]] = []
    for name, m in quantised_modules(model, (NoiseHyperParams,)):
        if isinstance(m, ANAWeight) or not groups:
            groups.append([name])
        else:
            groups[-1].append(name)
    return groups


def _check_model(model, who: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"anacuda.{who}: model must be a torch.nn.Module, got {type(model).__name__}")


def _number(value, name: str, who: str) -> float:
    """A real number (a time, a start value) as a float, or a TypeError that names it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"anacuda.{who}: {name} must be a number, got {type(value).__name__}")
    return float(value)


class _Clock:
    """Time in the unit the user steps (epochs or iterations) and writing the values it implies
    into the layers (`_apply`)."""

    t = 0.0

    def _apply(self):
        raise NotImplementedError

    def step(self, t: Optional[float] = None) -> None:
        """Advance one unit of time (an epoch, or an iteration if you count in those), or jump
        to time `t` (fractional epochs allowed), and write the new values into the layers."""
        self.t = self.t + 1.0 if t is None else float(t)
        self._apply()

    def state_dict(self) -> dict:
        return {"t": self.t}

    def load_state_dict(self, state: dict) -> None:
        self.t = float(state["t"])
        self._apply()


class NoiseController(_Clock):
    """Anneals μ and σ of a model's ANA layers, per layer group.

    `epochs`: the annealing horizon T (in the unit you step). `window` places each group's decay
    in [0, T] (overlapped, partition, same_start, same_end); `power` sets the decay exponents
    (homogeneous: α_μ = 1, α_σ = 2; progressive: α_μ = L − l, α_σ = 2(L − l), the first group
    decaying with the highest power); `schedule` the shape (bws, linear, cosine, uws, constant).
    σ starts from each layer's σ at construction (or `sigma0`) and μ from its μ (or `mu0`, e.g.
    −0.5 for the paper's dynamic μ); both reach 0 at the end of their window.
    `groups`: lists of module names (default: auto_groups). `ctrl_spec`: the quantlab
    ANAController list, ``[{"modules": [...], "mi": {"beta", "fun", "kwargs"}, "sigma": {...}}]``,
    instead of the arguments above.
    """

    def __init__(self, model: nn.Module, epochs: float = 1.0, *, groups: Optional[Sequence[Sequence[str]]] = None,
                 schedule: str = "bws", window: str = "overlapped", power: str = "homogeneous",
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
        if not _number(epochs, "epochs", "NoiseController") > 0:
            raise ValueError(f"anacuda.NoiseController: epochs must be > 0, got {epochs}")
        for name, v in (("sigma0", sigma0), ("mu0", mu0)):
            if v is not None and not math.isfinite(_number(v, name, "NoiseController")):
                raise ValueError(f"anacuda.NoiseController: {name} must be finite, got {v}")
        if sigma0 is not None and sigma0 < 0:
            raise ValueError(f"anacuda.NoiseController: sigma0 must be >= 0, got {sigma0}")
        if window not in WINDOWS:
            raise ValueError(f"anacuda.NoiseController: unknown window {window!r}; expected one of {WINDOWS}")
        if power not in POWERS:
            raise ValueError(f"anacuda.NoiseController: unknown power {power!r}; expected one of {POWERS}")
        groups = [list(g) for g in (groups if groups is not None else auto_groups(model))]
        if not groups or any(not g for g in groups):
            raise ValueError(f"anacuda.NoiseController: every group needs at least one layer, got {groups}")
        seen = [n for g in groups for n in g]
        missing = [n for n in seen if n not in modules]
        if missing:
            raise ValueError(f"anacuda.NoiseController: {missing} are not ANA layers of the model")
        if len(set(seen)) != len(seen):
            raise ValueError("anacuda.NoiseController: a module appears in two groups; groups must partition the layers")
        L = len(groups)
        for l, names in enumerate(groups):
            ts, te = _window(window, l, L, float(epochs))
            a_mu, a_sigma = (1.0, 2.0) if power == "homogeneous" else (float(L - l), 2.0 * (L - l))
            first = modules[names[0]]
            self._groups.append(dict(
                modules=names,
                mu=Decay(schedule, ts, te, a_mu) if anneal_mu else Decay("constant"),
                sigma=Decay(schedule, ts, te, a_sigma) if anneal_sigma else Decay("constant"),
                mu0=float(first.mu) if mu0 is None else float(mu0),
                sigma0=float(first.sigma) if sigma0 is None else float(sigma0)))
        self._modules = modules
        self._apply()

    def _from_ctrl_spec(self, spec, modules):
        def decay(d):
            fun, kw = d.get("fun", "bws"), dict(d.get("kwargs", {}))
            if fun == "bws":
                return Decay("bws", kw.get("tstart", 0.0), kw.get("tend", 1.0), kw.get("alpha", 1.0))
            if fun == "uws":
                return Decay("uws", kw.get("tstart", 0.0), kw.get("tstart", 0.0) + 1.0, kw.get("alpha", 1.0),
                             kw.get("eps", 1e-3))
            raise ValueError(f"anacuda.NoiseController: unknown ctrl_spec fun {fun!r} (bws or uws)")

        for g in spec:
            if not isinstance(g, dict) or not g.get("modules"):
                raise ValueError("anacuda.NoiseController: each ctrl_spec entry is a dict with a non-empty 'modules' "
                                 f"list (and 'mi' / 'sigma' decays), got {g!r}")
            names = list(g["modules"])
            missing = [n for n in names if n not in modules]
            if missing:
                raise ValueError(f"anacuda.NoiseController: ctrl_spec modules {missing} are not ANA layers")
            mi, sg = g.get("mi", {"beta": 0.0}), g.get("sigma", {"beta": 0.0})
            self._groups.append(dict(modules=names, mu=decay(mi), sigma=decay(sg),
                                     mu0=float(mi.get("beta", 0.0)), sigma0=float(sg.get("beta", 0.0))))
        self._modules = modules
        self._apply()

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

    def __repr__(self) -> str:
        rows = ", ".join(f"{v['modules']}: mu={v['mu']:.4g} sigma={v['sigma']:.4g}" for v in self.values())
        return f"NoiseController(t={self.t:g}; {rows})"


class AlphaController(_Clock):
    """Ramps α of every alpha-blending layer from 0 to 1 over [start, end] (in the unit you
    step): cubic, α = 1 − (1 − s)³ (Liu & Mattina), or linear, α = s, with s the progress."""

    def __init__(self, model: nn.Module, end: float = 1.0, *, start: float = 0.0, shape: str = "cubic"):
        _check_model(model, "AlphaController")
        for name, v in (("start", start), ("end", end)):
            if not math.isfinite(_number(v, name, "AlphaController")):
                raise ValueError(f"anacuda.AlphaController: {name} must be finite, got {v}")
        if shape not in ("cubic", "linear"):
            raise ValueError(f"anacuda.AlphaController: shape must be 'cubic' or 'linear', got {shape!r}")
        if not end > start:
            raise ValueError(f"anacuda.AlphaController: needs start < end, got [{start}, {end}]")
        self.modules = [m for _, m in quantised_modules(model, (AlphaBlendWeight,))]
        if not self.modules:
            raise ValueError("anacuda.AlphaController: the model has no alpha-blending layers "
                             "(convert it with anacuda.convert(model, weights='alpha_blend'))")
        self.start, self.end, self.shape = float(start), float(end), shape
        self.t = 0.0
        self._apply()

    def alpha(self, t: Optional[float] = None) -> float:
        t = self.t if t is None else t
        s = min(max((t - self.start) / (self.end - self.start), 0.0), 1.0)
        return 1.0 - (1.0 - s) ** 3 if self.shape == "cubic" else s

    @torch.no_grad()
    def _apply(self):
        a = self.alpha()
        for m in self.modules:
            m.alpha.fill_(a)

