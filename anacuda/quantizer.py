"""The value objects of anacuda: Quantizer (SPEC §1) and Noise (SPEC §3).

Argument validation lives here, once; functional, the layers and the controllers call it.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import NamedTuple, Sequence, Union

import torch

NOISES = ("uniform", "triangular", "normal", "logistic")
#: A backward noise may also be "identity": the gradient passes unchanged (SPEC §5, the unclipped STE).
IDENTITY = "identity"
STRATEGIES = ("expectation", "mode", "random")

Param = Union[float, torch.Tensor]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half types and float32 compute in float32, float64 in float64 (SPEC §7)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _as_vector(values, name: str) -> torch.Tensor:
    if isinstance(values, (str, bytes)) or (isinstance(values, torch.Tensor) and values.is_complex()):
        raise TypeError(f"anacuda.Quantizer: {name} must be a sequence of numbers, got {values!r}")
    if isinstance(values, torch.Tensor):
        t = values.detach().to(device="cpu", dtype=torch.float64)
    else:
        try:
            items = list(values)
            if any(isinstance(v, complex) for v in items):  # float() would drop the imaginary part
                raise TypeError("complex")
            t = torch.tensor([float(v) for v in items], dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"anacuda.Quantizer: {name} must be a sequence of numbers, got {values!r}") from err
    if t.dim() != 1:
        raise ValueError(f"anacuda.Quantizer: {name} must be one-dimensional, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"anacuda.Quantizer: {name} must be finite, got {t.tolist()}")
    return t


class Quantizer:
    """A stair function with K + 1 levels and K strictly increasing thresholds (SPEC §1).

    Levels and thresholds are in units of the scale eps. An input exactly on a threshold goes to
    the upper level. ``Quantizer.binary()``, ``.ternary()`` and ``.uniform(nbits, signed,
    balanced)`` build the named quantisers.
    """

    def __init__(self, levels: Sequence[float], thresholds: Sequence[float]):
        lv = _as_vector(levels, "levels")
        th = _as_vector(thresholds, "thresholds")
        if th.numel() == 0:
            raise ValueError("anacuda.Quantizer: at least one threshold is needed (K >= 1)")
        if lv.numel() != th.numel() + 1:
            raise ValueError(
                f"anacuda.Quantizer: K thresholds need K + 1 levels; got {th.numel()} thresholds "
                f"and {lv.numel()} levels"
            )
        steps = th[1:] - th[:-1]
        if (steps <= 0).any():
            i = int(torch.nonzero(steps <= 0)[0])
            raise ValueError(
                "anacuda.Quantizer: thresholds must be strictly increasing; "
                f"threshold {i + 1} ({th[i + 1].item()}) does not exceed threshold {i} ({th[i].item()})"
            )
        self._levels = lv
        self._thresholds = th
        # Python numbers, so that code traced by torch.compile reads no tensor value.
        self.min_level, self.max_level = float(lv.min()), float(lv.max())
        self.first_level, self.last_level = float(lv[0]), float(lv[-1])  # q_0, q_K (grid_reach)
        # Equally spaced thresholds let the kernels find an element's bin by arithmetic; the
        # flag is only a hint (the kernels compare against the stored thresholds either way).
        k = th.numel()
        if k >= 2:
            h = (th[-1] - th[0]) / (k - 1)
            ideal = th[0] + h * torch.arange(k, dtype=torch.float64)
            self.uniform_grid = bool((th - ideal).abs().max() <= 1e-6 * h)
        else:
            self.uniform_grid = False
        self._tables: dict = {}

    # --- named quantisers -----------------------------------------------------------------
    @classmethod
    def binary(cls) -> "Quantizer":
        return cls([-1.0, 1.0], [0.0])

    @classmethod
    def ternary(cls) -> "Quantizer":
        return cls([-1.0, 0.0, 1.0], [-0.5, 0.5])

    @classmethod
    def uniform(cls, nbits: int, signed: bool = True, balanced: bool = False) -> "Quantizer":
        """Integer levels 0 … 2^nbits − 1, minus 2^(nbits−1) if signed, the lowest dropped if
        signed and balanced; thresholds halfway between neighbours."""
        if isinstance(nbits, bool) or not isinstance(nbits, numbers.Integral) or not 1 <= nbits <= 24:
            raise ValueError(f"anacuda.Quantizer.uniform: nbits must be an integer in [1, 24], got {nbits!r}")
        for name, flag in (("signed", signed), ("balanced", balanced)):
            if not isinstance(flag, bool):  # "False" from a config file would be truthy
                raise TypeError(f"anacuda.Quantizer.uniform: {name} must be a bool, got {type(flag).__name__}")
        levels = torch.arange(2**nbits, dtype=torch.float64)
        if signed:
            levels -= 2 ** (nbits - 1)
            if balanced:
                levels = levels[1:]
        if levels.numel() < 2:
            raise ValueError(
                "anacuda.Quantizer.uniform: a signed, balanced 1-bit grid has a single level; use "
                "Quantizer.binary() or nbits >= 2"
            )
        return cls(levels, levels[:-1] + 0.5)

    # --- views ----------------------------------------------------------------------------
    @property
    def levels(self) -> torch.Tensor:
        return self._levels.clone()

    @property
    def thresholds(self) -> torch.Tensor:
        return self._thresholds.clone()

    @property
    def num_levels(self) -> int:
        return self._levels.numel()

    def tables(self, device: torch.device, dtype: torch.dtype):
        """(levels, thresholds) in the compute dtype for an input of `dtype`, on `device`.

        Cached per (device, dtype): the copy to the device happens once, not per call. Under
        torch.compile the tables are constants of the graph instead (a cache mutated while
        tracing would make Dynamo recompile once it holds the entry).
        """
        key = (torch.device(device), compute_dtype(dtype))
        if torch.compiler.is_compiling():
            return (self._levels.to(device=key[0], dtype=key[1]), self._thresholds.to(device=key[0], dtype=key[1]))
        hit = self._tables.get(key)
        if hit is None:
            hit = (self._levels.to(device=key[0], dtype=key[1]), self._thresholds.to(device=key[0], dtype=key[1]))
            self._tables[key] = hit
        return hit

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """The hard stair Q(u), in plain PyTorch (a convenience; the kernels do not use it)."""
        th = self._thresholds.to(device=u.device, dtype=compute_dtype(u.dtype))
        lv = self._levels.to(device=u.device, dtype=compute_dtype(u.dtype))
        return lv[torch.searchsorted(th, u.to(th.dtype).contiguous(), right=True)].to(u.dtype)

    def __repr__(self) -> str:
        if self.num_levels <= 9:
            return f"Quantizer(levels={self._levels.tolist()}, thresholds={self._thresholds.tolist()})"
        return (
            f"Quantizer({self.num_levels} levels in [{self._levels.min().item():g}, "
            f"{self._levels.max().item():g}], {'uniform' if self.uniform_grid else 'arbitrary'} grid)"
        )

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, Quantizer)
            and torch.equal(self._levels, other._levels)
            and torch.equal(self._thresholds, other._thresholds)
        )

    def __hash__(self) -> int:
        return hash((tuple(self._levels.tolist()), tuple(self._thresholds.tolist())))


def check_noise_name(name, backward: bool = False) -> str:
    """A noise law's name; `backward`: a backward noise, which may also be "identity"."""
    if name == IDENTITY and not backward:
        raise ValueError("anacuda: 'identity' is a backward noise only (backward_noise='identity', the unclipped "
                         f"STE); the forward noise is one of {', '.join(NOISES)}")
    if name not in NOISES and name != IDENTITY:
        raise ValueError(f"anacuda: unknown noise {name!r}; expected one of {', '.join(NOISES)}"
                         + (" (or 'identity', for a backward noise)" if backward else ""))
    return name


def check_strategy(name) -> str:
    if name not in STRATEGIES:
        raise ValueError(f"anacuda: unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    return name


def _check_value(v: float, name: str, minimum: str) -> None:
    if not math.isfinite(v):
        raise ValueError(f"anacuda: {name} must be finite, got {v}")
    if minimum == "nonnegative" and v < 0:
        raise ValueError(f"anacuda: {name} must be >= 0, got {v}")
    if minimum == "positive" and v <= 0:
        raise ValueError(f"anacuda: {name} must be > 0, got {v}")
    if minimum == "unit" and not 0 <= v <= 1:
        raise ValueError(f"anacuda: {name} must be in [0, 1], got {v}")


def as_param(value: Param, name: str, minimum: str = "any", scalar: bool = True, stored: bool = False,
             learnable: bool = False) -> torch.Tensor:
    """A hyper-parameter as a tensor the op takes.

    Python numbers are checked here and become float64 host tensors (no device copy). Tensors
    pass as they are (on the host or the input's device; the op checks host values, and a
    device value is never read on the host, so it causes no synchronisation). `stored`: the
    value is kept for later calls (a layer's buffer), so a host tensor's values are checked
    now rather than at the first forward. `learnable`: the tensor may require a gradient (eps
    only, SPEC §8). The op checks a host tensor's values on every call, with a ValueError as
    for a number.
    minimum: "any", "nonnegative", "positive" or "unit" (in [0, 1]).
    """
    # A number checked before: its tensor (the checks cost microseconds). Not while compiling:
    # dynamo would guard on the cache.
    if (type(value) is float or type(value) is int) and not torch.compiler.is_compiling():
        known = _CHECKED.get((value, math.copysign(1.0, value), minimum))
        if known is not None:
            return known
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"anacuda: {name} must be a floating tensor, got {value.dtype}")
        if scalar and value.numel() != 1:
            raise ValueError(f"anacuda: {name} must be a number or a one-element tensor, got shape {tuple(value.shape)}")
        if value.requires_grad and not learnable:
            raise ValueError(f"anacuda: {name} takes no gradient in this op (only eps can be learned); "
                             f"pass {name}.detach()")
        if stored and value.device.type == "cpu":
            for v in value.detach().double().reshape(-1).unique().tolist():
                _check_value(v, name, minimum)
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"anacuda: {name} must be a number or a tensor, got {type(value).__name__}")
    v = float(value)
    _check_value(v, name, minimum)
    if torch.compiler.is_compiling():
        return torch.tensor(v, dtype=torch.float64)
    t = _host_scalar(v, math.copysign(1.0, v))
    if len(_CHECKED) < 4096:
        _CHECKED[(value, math.copysign(1.0, v), minimum)] = t
    return t


# (number, its sign, minimum) -> its host tensor, for numbers that passed that minimum's check.
_CHECKED: dict = {}


@functools.lru_cache(maxsize=1024)
def _host_scalar(v: float, sign: float) -> torch.Tensor:
    """A number as a float64 host tensor, made once per value (a new tensor per call costs
    microseconds, as much as a small layer's kernel). `sign` keeps -0.0 apart from 0.0. The ops
    only read it."""
    return torch.tensor(v, dtype=torch.float64)


class Noise(NamedTuple):
    """A noise law with location mu and scale sigma, in units of eps (SPEC §3)."""

    name: str = "uniform"
    mu: Param = 0.0
    sigma: Param = 0.5

    @classmethod
    def of(cls, spec) -> "Noise":
        """A backward noise from a Noise, a (name, mu, sigma) tuple, or a name (mu = 0, sigma =
        0.5). "identity" (SPEC §5) has no mu or sigma: give it by its name."""
        if isinstance(spec, Noise):
            noise = spec
        elif isinstance(spec, str):
            noise = cls(spec)
        elif isinstance(spec, (tuple, list)) and len(spec) == 3:
            noise = cls(*spec)
        else:
            raise TypeError(f"anacuda: a noise is a name or a (name, mu, sigma) tuple, got {spec!r}")
        check_noise_name(noise.name, backward=True)
        if noise.name == IDENTITY and not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and v == d
                                              for v, d in ((noise.mu, 0.0), (noise.sigma, 0.5))):
            raise ValueError(f"anacuda: the 'identity' backward has no mu or sigma; pass backward_noise='identity', "
                             f"got {spec!r}")
        return noise


# --- dynamic scales (SPEC §9) -----------------------------------------------------------------
#: The rules an `eps` may name: (reduction, group); channel = dim 0, token = the last dimension.
SCALE_RULES = {
    "absmax_per_token": ("max", "token"),
    "absmean": ("mean", "tensor"),
    "absmax": ("max", "tensor"),
    "absmean_per_channel": ("mean", "channel"),
    "absmax_per_channel": ("max", "channel"),
}
#: r_min of SPEC §9: the floor of r, so that an all-zero group quantises to 0.
SCALE_FLOOR = 1e-5


def grid_reach(quantizer: Quantizer) -> float:
    """c of SPEC §9: the largest magnitude the grid reaches on both sides of 0 (q_K if q_0 >= 0)."""
    q0, qk = quantizer.first_level, quantizer.last_level
    if q0 < 0 < qk:
        return min(-q0, qk)
    if q0 >= 0 and qk > 0:
        return qk
    raise ValueError(f"anacuda: a dynamic scale needs a grid that reaches above 0, got levels {q0:g} … {qk:g}")


def check_scale_rule(rule, shape) -> str:
    """A rule of SPEC §9 for an input of `shape` (a token needs 2 dimensions, a channel 1)."""
    if rule not in SCALE_RULES:
        raise ValueError(f"anacuda: eps: unknown scale rule {rule!r}; expected a number, a tensor or one of "
                         f"{', '.join(SCALE_RULES)}")
    need = {"token": 2, "channel": 1, "tensor": 0}[SCALE_RULES[rule][1]]
    if len(shape) < need:
        raise ValueError(f"anacuda: the scale rule {rule!r} needs an input of at least {need} dimensions, "
                         f"got shape {tuple(shape)}")
    return rule


def scale_shape(shape, rule: str) -> tuple:
    """The shape of a rule's eps for an input of `shape`: it broadcasts to the input."""
    group = SCALE_RULES[rule][1]
    if group == "token":
        return tuple(shape[:-1]) + (1,)
    if group == "channel":
        return (shape[0],) + (1,) * (len(shape) - 1)
    return ()
