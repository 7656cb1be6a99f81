"""The experiment grids: the CVPR 2022 design of experiments in miniature, the classic STE
baselines and alpha-blending against the clipped STE.

Families (the ``family`` of a run, derived from its configuration):

- ``ana``: the CVPR 2022 design. noise (uniform, triangular, normal, logistic) × strategy
  (expectation, mode, random) × σ (static σ0 or annealed to 0) × decay window (overlapped,
  partition, same_start, same_end) × decay power (homogeneous, progressive); μ static (0) in
  the reduced grid, static or dynamic (−0.5 → 0) in the full one. A static σ with a static μ
  anneals nothing, so window and power are void there (one configuration, ``-``).
  Expectation with a static σ is excluded (the paper excluded it: the network it trains is the
  smoothed one, never the deployed stair); ``include_mismatched`` runs it anyway, marked
  ``deploy_mismatch``.
- ``baseline``: the clipped STE as ``anacuda.convert``'s defaults (uniform σ = 0.5, mode,
  never annealed; ``method=ste``) and the 2019 ANA recipe (``method=ana2019``). The grid's own
  uniform / mode / static cell is the same estimator as the clipped STE and its uniform /
  random / static cell is stochastic rounding (``anacuda.ste`` presets); the report tags them.
- ``alpha``: alpha-blended weights (AlphaController, α 0 → 1 over the first 80 % of training;
  the full grid also 50 % and 100 %)
  against clipped-STE weights at 1, 2 and 4 bits (1 bit: binary, Larq's ste_sign), both
  fine-tuned from the float baseline of the same seed (as 1903.01061 converts a float model
  progressively), activations quantised at the same width with the clipped STE in both arms.
- ``lsq``: does a learned scale help, and does smoothing it help? Three estimators × fixed or
  learned scales (weights per output channel and activations per tensor, LSQ's initialisation
  and gradient scale), from scratch, on the ternary grid and on the 2-bit grid −2 … 1: the
  clipped STE (learned: LSQ), the 2019 ANA recipe (forward σ annealed 0.5 → 0, backward fixed at
  the clipped STE's: learned, a smoothed LSQ that anneals into LSQ exactly) and ANA as in the CVPR
  2022 design (uniform, expectation, σ annealed, overlapped / homogeneous, backward = forward
  noise: learned, a smoothed LSQ that tends to LSQ only on average, scripts/lsq_smoothed.py).
  The fixed-scale ternary runs are the baseline and ana runs of the same seeds.
"""

from __future__ import annotations

import itertools
from typing import Dict, List

from anacuda.nn.controller import POWERS, WINDOWS
from anacuda.quantizer import NOISES, STRATEGIES
from .core import RunConfig

#: Per grid: seeds, epochs, width, and which factors it crosses.
GRIDS: Dict[str, dict] = {
    "reduced": dict(seeds=(0, 1, 2), epochs=10, width=16, mu=("static",), schedules=("bws",), alpha_bits=(1, 2, 4),
                    alpha_inits=("float",), alpha_ends=(0.8,), lsq_levels=("symmetric", "full")),
    "full": dict(seeds=(0, 1, 2, 3, 4), epochs=20, width=16, mu=("static", "dynamic"), schedules=("bws",),
                 alpha_bits=(1, 2, 4, 8), alpha_inits=("float", "scratch"), alpha_ends=(0.5, 0.8, 1.0),
                 lsq_levels=("symmetric", "full")),
    # A few seconds: for tests and smoke runs.
    "tiny": dict(seeds=(0,), epochs=1, width=4, mu=("static",), schedules=("bws",), alpha_bits=(2,),
                 alpha_inits=("float",), alpha_ends=(0.8,), lsq_levels=("symmetric", "full")),
}

FAMILIES = ("ana", "baseline", "alpha", "lsq")

#: The CVPR 2022 ANA configuration of the lsq family (the RunConfig defaults' policy).
LSQ_ANA = dict(noise="uniform", strategy="expectation", sigma="annealed", mu="static", window="overlapped",
               power="homogeneous", schedule="bws")


def family(cfg: RunConfig) -> str:
    if cfg.learned or cfg.levels != "symmetric":
        return "lsq"
    if cfg.method == "ana":
        return "ana"
    if cfg.method == "alpha_blend" or (cfg.method == "ste" and cfg.init == "float"):
        return "alpha"
    return "baseline"


def ana_configs(base: RunConfig, mu_modes=("static",), schedules=("bws",), include_mismatched=False) -> List[RunConfig]:
    out = []
    for noise, strategy, mu, sigma in itertools.product(NOISES, STRATEGIES, mu_modes, ("static", "annealed")):
        cfg = RunConfig(**{**base.__dict__, "method": "ana", "noise": noise, "strategy": strategy, "mu": mu,
                           "sigma": sigma})
        if cfg.deploy_mismatch and not include_mismatched:
            continue
        if sigma == "static" and mu == "static":
            out.append(RunConfig(**{**cfg.__dict__, "window": "-", "power": "-", "schedule": "-"}))
            continue
        for window, power, schedule in itertools.product(WINDOWS, POWERS, schedules):
            out.append(RunConfig(**{**cfg.__dict__, "window": window, "power": power, "schedule": schedule}))
    return out


def _void(base: RunConfig, **kw) -> RunConfig:
    """A non-ANA run: the noise fields are void."""
    return RunConfig(**{**base.__dict__, "noise": "-", "strategy": "-", "sigma": "-", "mu": "-", "window": "-",
                        "power": "-", "schedule": "-", **kw})


def baseline_configs(base: RunConfig) -> List[RunConfig]:
    ana2019 = RunConfig(**{**base.__dict__, "method": "ana2019", "noise": "uniform", "strategy": "expectation",
                           "sigma": "annealed", "mu": "static", "window": "partition", "power": "linear",
                           "schedule": "linear"})
    return [_void(base, method="ste"), ana2019]


def alpha_configs(base: RunConfig, bits=(1, 2, 4), inits=("float",), ends=(0.8,)) -> List[RunConfig]:
    out = []
    for init, b in itertools.product(inits, bits):
        out += [_void(base, method="alpha_blend", wbits=b, abits=b, init=init, alpha_end=e) for e in ends]
        out.append(_void(base, method="ste", wbits=b, abits=b, init=init))
    return out


def lsq_configs(base: RunConfig, levels=("symmetric", "full"), bits: int = 2) -> List[RunConfig]:
    """The lsq family: (clipped STE, ANA 2019, ANA CVPR 2022) × (fixed, learned scales) per grid."""
    ste_, ana2019 = baseline_configs(base)
    ana = RunConfig(**{**base.__dict__, "method": "ana", **LSQ_ANA})
    out = []
    for lv, est in itertools.product(levels, (ste_, ana2019, ana)):
        fixed = RunConfig(**{**est.__dict__, "wbits": bits, "abits": bits, "levels": lv})
        out += [fixed, RunConfig(**{**fixed.__dict__, "weight_eps": "learned", "activation_scale": "learned"})]
    return out


def float_config(base: RunConfig) -> RunConfig:
    """The float baseline of a seed (one per seed and width/epochs/lr/batch)."""
    return _void(base, method="float", wbits=32, abits=32, weight_eps="-", init="scratch", alpha_end=0.8,
                 activation_scale="fixed", levels="symmetric")


def make_grid(name: str = "reduced", *, families=FAMILIES, seeds=None, epochs=None, include_mismatched=False,
              alpha_bits=None, alpha_ends=None) -> List[RunConfig]:
    """All runs of a grid, seed by seed (a partial run covers every configuration with the
    first seeds first). seeds, epochs, alpha_bits and alpha_ends override the grid's."""
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; expected one of {sorted(GRIDS)}")
    g = GRIDS[name]
    seeds = tuple(g["seeds"] if seeds is None else seeds)
    base = RunConfig(epochs=int(g["epochs"] if epochs is None else epochs), width=g["width"])
    configs: List[RunConfig] = []
    if "ana" in families:
        configs += ana_configs(base, g["mu"], g["schedules"], include_mismatched)
    if "baseline" in families:
        configs += baseline_configs(base)
    if "alpha" in families:
        configs += alpha_configs(base, g["alpha_bits"] if alpha_bits is None else alpha_bits, g["alpha_inits"],
                                 g["alpha_ends"] if alpha_ends is None else alpha_ends)
    if "lsq" in families:
        configs += lsq_configs(base, g["lsq_levels"])
    if name == "tiny":  # two ANA configurations, one alpha pair and two learned scales are enough for a smoke run
        keep = [c for c in configs if c.method == "ana" and c.noise == "uniform" and c.strategy == "mode"]
        learned = [c for c in configs if family(c) == "lsq" and c.learned]
        configs = keep[:1] + [c for c in configs if c.method == "ana" and c.noise == "normal"
                              and c.strategy == "expectation"][:1] + [c for c in configs if family(c) == "alpha"]
        configs += [c for c in learned if c.method == "ste" and c.levels == "full"][:1]
        configs += [c for c in learned if c.method == "ana" and c.levels == "symmetric"][:1]
        configs = [c for c in configs if family(c) in families]
    out, seen = [], set()
    for s in seeds:
        for c in configs:
            c = RunConfig(**{**c.__dict__, "seed": s})
            if c.key() not in seen:  # the same run reached from two families is run once
                seen.add(c.key())
                out.append(c)
    return out
