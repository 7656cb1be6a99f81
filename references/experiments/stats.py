"""Statistics of an experiment folder's rows (report.py writes them up, figures.py draws them).

Accuracies are the frozen (deployed) models' test accuracies, in percent. Confidence intervals
are 95 % Student-t intervals over seeds: for a mean, a paired difference, and the differences
of spreads, which are computed within each seed (a seed is a full replicate of the design) so
that the seeds are the independent units. (A bootstrap that resamples the 3 seeds of each cell
was tried and rejected: in simulations of this design its intervals for the spreads covered the
truth far less than 95 % of the time; the seed-level t intervals covered it 96-97 %.)
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from anacuda.nn.controller import POWERS, WINDOWS
from anacuda.quantizer import NOISES, STRATEGIES

POLICIES = [f"{w}/{p}" for w in WINDOWS for p in POWERS]
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with df degrees of freedom."""
    try:
        from scipy import stats

        return float(stats.t.ppf(0.975, df))
    except ImportError:  # pragma: no cover - scipy is in the project's dependencies
        keys = sorted(_T975)
        return _T975[min(keys, key=lambda k: (k < df, abs(k - df)))] if df < 120 else 1.96


def mean_ci(values: Sequence[float]) -> Tuple[float, float, int]:
    """(mean, half-width of the 95 % t interval, n); the half-width is nan for n < 2."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(v[0]), float("nan"), 1
    return float(v.mean()), float(t975(n - 1) * v.std(ddof=1) / math.sqrt(n)), n


def fmt(m: float, h: float, digits: int = 2) -> str:
    if math.isnan(m):
        return "–"
    return f"{m:.{digits}f}" if math.isnan(h) else f"{m:.{digits}f} ± {h:.{digits}f}"


def _acc(r) -> float:
    return 100.0 * r["quant_acc"]


def policy(r) -> str:
    return f"{r['window']}/{r['power']}"


def _design(r) -> bool:
    """A run of the CVPR 2022 design proper: fixed scales, the symmetric ternary grid (the lsq
    family's learned scales and 2-bit grid stay out of its analysis)."""
    return (r.get("weight_eps") != "learned" and (r.get("activation_scale") or "fixed") == "fixed"
            and (r.get("levels") or "symmetric") == "symmetric" and r["wbits"] == 2 and r["abits"] == 2)


# --- the synchronisation question ---------------------------------------------------------------
def ana_cells(rows: List[dict], mu: str = "static") -> Dict[tuple, List[float]]:
    """(noise, strategy, policy) → accuracies over seeds, for the annealed-σ ANA runs."""
    cells = defaultdict(list)
    for r in rows:
        if (r["method"] == "ana" and r["sigma"] == "annealed" and r["mu"] == mu and r["quant_acc"] is not None
                and _design(r)):
            cells[(r["noise"], r["strategy"], policy(r))].append(_acc(r))
    return cells


def _balanced(cells) -> Optional[np.ndarray]:
    """cells as an array [noise, strategy, policy, seed] if every cell is there with the same
    number of seeds (the smallest count is used), else None."""
    nn = [n for n in NOISES if any(k[0] == n for k in cells)]
    ss = [s for s in STRATEGIES if any(k[1] == s for k in cells)]
    pp = [p for p in POLICIES if any(k[2] == p for k in cells)]
    keys = list(itertools.product(nn, ss, pp))
    if not keys or any(k not in cells for k in keys):
        return None
    n = min(len(cells[k]) for k in keys)
    if n < 1:
        return None
    a = np.array([cells[k][:n] for k in keys], dtype=float).reshape(len(nn), len(ss), len(pp), n)
    return a, nn, ss, pp


def _mse(a: np.ndarray) -> float:
    """The within-cell (seed-to-seed) variance, pooled over the cells."""
    return float(a.var(axis=3, ddof=1).mean()) if a.shape[3] > 1 else 0.0


def spreads(a: np.ndarray) -> dict:
    """Spread of accuracy across each factor of a [noise, strategy, policy, seed] array.

    For each factor F (noise, strategy, policy):

    - ``main_sd_F``, ``main_range_F``: standard deviation and range of F's marginal means (each
      level's mean over every other cell and seed). Raw: a marginal mean over few runs carries
      seed noise, which inflates these, more so for a factor whose levels have fewer runs.
    - ``main_sd_bc_F``: the same SD with the seed noise taken out, √((MS_F − MS_E) / r) with r
      the runs per level (the ANOVA variance-component estimate of the SD of the true marginal
      means; 0 when negative).
    - ``within_F``: the spread across F with the other two factors held fixed: the SD of the
      cell means across F, averaged over the blocks of the others (interactions included);
      ``within_bc_F``: √(mean variance across F − MS_E / seeds), its seed-noise-corrected form;
      ``within_range_F``: max − min across F, averaged over the blocks.
    """
    n = a.shape[3]
    cell = a.mean(axis=3)  # [noise, strategy, policy]
    mse = _mse(a)
    out = {}
    for name, axis in (("noise", 0), ("strategy", 1), ("policy", 2)):
        other = tuple(i for i in range(3) if i != axis)
        marg = cell.mean(axis=other)
        levels = cell.shape[axis]
        runs_per_level = a.size // levels
        out[f"main_sd_{name}"] = float(marg.std(ddof=1)) if levels > 1 else 0.0
        out[f"main_range_{name}"] = float(marg.max() - marg.min())
        ms = runs_per_level * float(marg.var(ddof=1)) if levels > 1 else 0.0
        out[f"main_sd_bc_{name}"] = math.sqrt(max(0.0, (ms - mse) / runs_per_level))
        var_within = float(cell.var(axis=axis, ddof=1).mean()) if levels > 1 else 0.0
        out[f"within_{name}"] = float(cell.std(axis=axis, ddof=1).mean()) if levels > 1 else 0.0
        out[f"within_bc_{name}"] = math.sqrt(max(0.0, var_within - mse / n))
        out[f"within_range_{name}"] = float((cell.max(axis=axis) - cell.min(axis=axis)).mean())
    out["seed_sd"] = math.sqrt(mse)
    return out


def anova(a: np.ndarray) -> List[dict]:
    """A three-way ANOVA with replication (noise, strategy, policy; seeds as replicates) on a
    balanced array: sums of squares, η² = SS/SS_total, F and p for each term."""
    I, J, K, n = a.shape
    grand = a.mean()
    m_i, m_j, m_k = a.mean(axis=(1, 2, 3)), a.mean(axis=(0, 2, 3)), a.mean(axis=(0, 1, 3))
    m_ij, m_ik, m_jk = a.mean(axis=(2, 3)), a.mean(axis=(1, 3)), a.mean(axis=(0, 3))
    m_ijk = a.mean(axis=3)
    ss = {
        "noise": J * K * n * ((m_i - grand) ** 2).sum(),
        "strategy": I * K * n * ((m_j - grand) ** 2).sum(),
        "policy (window × power)": I * J * n * ((m_k - grand) ** 2).sum(),
        "noise × strategy": K * n * ((m_ij - m_i[:, None] - m_j[None, :] + grand) ** 2).sum(),
        "noise × policy": J * n * ((m_ik - m_i[:, None] - m_k[None, :] + grand) ** 2).sum(),
        "strategy × policy": I * n * ((m_jk - m_j[:, None] - m_k[None, :] + grand) ** 2).sum(),
    }
    ss["noise × strategy × policy"] = n * ((m_ijk - m_ij[:, :, None] - m_ik[:, None, :] - m_jk[None, :, :]
                                            + m_i[:, None, None] + m_j[None, :, None] + m_k[None, None, :]
                                            - grand) ** 2).sum()
    ss_err = ((a - m_ijk[..., None]) ** 2).sum()
    df = {"noise": I - 1, "strategy": J - 1, "policy (window × power)": K - 1, "noise × strategy": (I - 1) * (J - 1),
          "noise × policy": (I - 1) * (K - 1), "strategy × policy": (J - 1) * (K - 1),
          "noise × strategy × policy": (I - 1) * (J - 1) * (K - 1)}
    df_err = I * J * K * (n - 1)
    total = ((a - grand) ** 2).sum()
    rows = []
    for name in ss:
        f = p = float("nan")
        if df_err > 0 and ss_err > 0 and df[name] > 0:
            f = (ss[name] / df[name]) / (ss_err / df_err)
            try:
                from scipy import stats

                p = float(stats.f.sf(f, df[name], df_err))
            except ImportError:  # pragma: no cover
                pass
        mse = ss_err / df_err if df_err > 0 else 0.0
        omega2 = (ss[name] - df[name] * mse) / (total + mse) if total else 0.0
        rows.append(dict(term=name, df=df[name], ss=float(ss[name]), eta2=float(ss[name] / total) if total else 0.0,
                         omega2=float(max(0.0, omega2)), F=float(f), p=p))
    rows.append(dict(term="seeds (residual)", df=df_err, ss=float(ss_err), eta2=float(ss_err / total) if total else 0.0,
                     omega2=float("nan"), F=float("nan"), p=float("nan")))
    return rows


def seed_level_differences(a: np.ndarray) -> dict:
    """Policy spread minus noise spread, computed within each seed (every seed is a full
    replicate of the design: the same initial weights and batch order for every configuration)
    and summarised with a t interval over the seeds.

    ``within``: the variance across the 8 policies with noise and strategy fixed, averaged over
    those blocks, minus the variance across the 4 noises with strategy and policy fixed,
    averaged over theirs. On single runs both variances carry the same seed noise σ², which
    cancels in the difference: no correction needed.
    ``main``: the variance of the policy marginal means minus that of the noise marginal means,
    each less its share of seed noise (pooled MS_E / runs per level per seed).
    Units: accuracy points². Returns {name: (mean, half-width, n, per-seed values)}.
    """
    I, J, K, n = a.shape
    mse = _mse(a)
    within, main = [], []
    for s in range(n):
        x = a[..., s]
        within.append(float(x.var(axis=2, ddof=1).mean() - x.var(axis=0, ddof=1).mean()))
        main.append(float((x.mean(axis=(0, 1)).var(ddof=1) - mse / (I * J))
                          - (x.mean(axis=(1, 2)).var(ddof=1) - mse / (J * K))))
    return {"within": mean_ci(within) + (within,), "main": mean_ci(main) + (main,)}


def marginals(a: np.ndarray, axis: int) -> List[Tuple[float, float, int]]:
    """Marginal mean of each level of a factor with a 95 % t interval over the seed-level
    means (each seed's mean over the other factors' cells; n = seeds)."""
    other = tuple(i for i in range(3) if i != axis)
    per_seed = a.mean(axis=other)  # [level, seed]
    return [mean_ci(per_seed[i]) for i in range(per_seed.shape[0])]


def static_vs_annealed(rows: List[dict], mu: str = "static") -> List[dict]:
    """Per (noise, strategy): σ static (σ0 throughout) against σ annealed to 0 (pooled over
    the policies: each seed's mean over them, then a t interval over seeds) and the best
    annealed policy."""
    static, annealed = defaultdict(dict), defaultdict(lambda: defaultdict(list))
    for r in rows:
        if (r["method"] != "ana" or r["mu"] != mu or r["quant_acc"] is None or r.get("deploy_mismatch")
                or not _design(r)):
            continue
        if r["sigma"] == "static":
            static[(r["noise"], r["strategy"])][r["seed"]] = _acc(r)
        else:
            annealed[(r["noise"], r["strategy"])][r["seed"]].append((policy(r), _acc(r)))
    out = []
    for ns in itertools.product(NOISES, STRATEGIES):
        if ns not in static and ns not in annealed:
            continue
        per_seed = {s: float(np.mean([v for _, v in xs])) for s, xs in annealed.get(ns, {}).items()}
        by_pol = defaultdict(list)
        for xs in annealed.get(ns, {}).values():
            for p_, v in xs:
                by_pol[p_].append(v)
        best = max(by_pol.items(), key=lambda kv: np.mean(kv[1])) if by_pol else ("-", [float("nan")])
        seeds = sorted(set(static.get(ns, {})) & set(per_seed))
        out.append(dict(noise=ns[0], strategy=ns[1], static=mean_ci(list(static.get(ns, {}).values())),
                        annealed=mean_ci(list(per_seed.values())), best_policy=best[0], best=mean_ci(best[1]),
                        diff=mean_ci([per_seed[s] - static[ns][s] for s in seeds])))
    return out


# --- alpha-blending vs STE ------------------------------------------------------------------------
def alpha_table(rows: List[dict], init: str = "float") -> List[dict]:
    """Per bit width and α ramp: alpha-blending against the clipped STE (same seeds, same
    float start), with the paired difference."""
    ab, st = defaultdict(dict), defaultdict(dict)
    for r in rows:
        if r["init"] != init or r["quant_acc"] is None:
            continue
        if r["method"] == "alpha_blend":
            ab[(r["wbits"], float(r.get("alpha_end") or 0.8))][r["seed"]] = _acc(r)
        elif r["method"] == "ste":
            st[r["wbits"]][r["seed"]] = _acc(r)
    out = []
    for bits, end in sorted(ab):
        a, s_ = ab[(bits, end)], st.get(bits, {})
        seeds = sorted(set(a) & set(s_))
        diff = [a[s] - s_[s] for s in seeds]
        out.append(dict(bits=bits, alpha_end=end, ab=mean_ci(list(a.values())), ste=mean_ci(list(s_.values())),
                        diff=mean_ci(diff), wins=sum(d > 0 for d in diff), ties=sum(d == 0 for d in diff),
                        n=len(seeds), seeds=seeds))
    return out


# --- learned scales (the lsq family) --------------------------------------------------------------
#: The lsq family's estimators: (name with a fixed scale, name with a learned one, what it is).
LSQ_ESTIMATORS = {
    "ste": ("clipped STE", "LSQ", "uniform σ 0.5, mode, never annealed"),
    "ana2019": ("ANA 2019", "smoothed LSQ → LSQ",
                "forward σ 0.5 → 0 (uniform, expectation), backward fixed at the clipped STE's"),
    "ana": ("ANA (CVPR 2022)", "smoothed LSQ, backward = forward",
            "uniform, expectation, σ 0.5 → 0, overlapped / homogeneous, backward = forward noise"),
}


def _lsq_estimator(r) -> Optional[str]:
    """The lsq family's estimator a row is, or None."""
    from .grid import LSQ_ANA

    if r["init"] != "scratch" or r["wbits"] != r["abits"] or r["quant_acc"] is None:
        return None
    if r["method"] in ("ste", "ana2019"):
        return r["method"]
    if r["method"] == "ana" and all(r[k] == v for k, v in LSQ_ANA.items()):
        return "ana"
    return None


def lsq_cells(rows: List[dict]) -> Dict[tuple, Dict[int, float]]:
    """(levels, bits, estimator, scale) → {seed: accuracy}; scale is "fixed" or "learned" (weights
    and activations both learned); rows that learn only one of them are left out."""
    cells: Dict[tuple, Dict[int, float]] = defaultdict(dict)
    for r in rows:
        est = _lsq_estimator(r)
        if est is None:
            continue
        w, a = r.get("weight_eps") == "learned", (r.get("activation_scale") or "fixed") == "learned"
        if w != a:
            continue
        cells[(r.get("levels") or "symmetric", r["wbits"], est, "learned" if w else "fixed")][r["seed"]] = _acc(r)
    return cells


def _paired(a: Dict[int, float], b: Dict[int, float]) -> dict:
    seeds = sorted(set(a) & set(b))
    diff = [a[s] - b[s] for s in seeds]
    return dict(diff=mean_ci(diff), wins=sum(d > 0 for d in diff), n=len(seeds))


def lsq_table(rows: List[dict]) -> List[dict]:
    """Per grid and estimator: fixed against learned scales, paired by seed; and per grid, each
    smoothed LSQ against LSQ, paired by seed (``vs_lsq``)."""
    cells = lsq_cells(rows)
    out = []
    for levels, bits in sorted({k[:2] for k in cells}, key=lambda k: (k[0] != "symmetric", k[1])):
        lsq = cells.get((levels, bits, "ste", "learned"), {})
        for est in LSQ_ESTIMATORS:
            fixed, learned = cells.get((levels, bits, est, "fixed"), {}), cells.get((levels, bits, est, "learned"), {})
            if not fixed and not learned:
                continue
            out.append(dict(levels=levels, bits=bits, estimator=est, fixed=mean_ci(list(fixed.values())),
                            learned=mean_ci(list(learned.values())), learned_minus_fixed=_paired(learned, fixed),
                            vs_lsq=_paired(learned, lsq) if est != "ste" and learned and lsq else None))
    return out
