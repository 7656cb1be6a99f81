"""Statistics, the markdown report and the figures of an experiment folder.

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
import os
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..nn.controller import POWERS, WINDOWS
from ..quantizer import NOISES, STRATEGIES

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


# --- the synchronisation question ---------------------------------------------------------------
def ana_cells(rows: List[dict], mu: str = "static") -> Dict[tuple, List[float]]:
    """(noise, strategy, policy) → accuracies over seeds, for the annealed-σ ANA runs."""
    cells = defaultdict(list)
    for r in rows:
        if r["method"] == "ana" and r["sigma"] == "annealed" and r["mu"] == mu and r["quant_acc"] is not None:
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
        if r["method"] != "ana" or r["mu"] != mu or r["quant_acc"] is None or r.get("deploy_mismatch"):
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


# --- the report -----------------------------------------------------------------------------------
def config_table(rows: List[dict]) -> List[dict]:
    """One entry per configuration (seeds pooled), in the order of first appearance."""
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        k = (r["label"], r["init"], r["wbits"], r["abits"], r["epochs"], r["width"])
        groups.setdefault(k, []).append(r)
    out = []
    for k, rs in groups.items():
        out.append(dict(label=k[0], init=k[1], wbits=k[2], abits=k[3], family=rs[0].get("family"),
                        method=rs[0]["method"], rows=rs, acc=mean_ci([_acc(r) for r in rs]),
                        float_acc=mean_ci([100 * r["float_acc"] for r in rs if r["float_acc"] is not None]),
                        seconds=float(np.mean([r["seconds"] for r in rs])), seeds=sorted(r["seed"] for r in rs),
                        mismatch=bool(rs[0].get("deploy_mismatch"))))
    return out


def preset_of(r: dict) -> str:
    """The anacuda.ste preset a grid configuration coincides with, if any."""
    if r["method"] == "ste":
        return "ste_sign" if r["wbits"] == 1 else "clipped_ste (convert defaults)"
    if r["method"] == "ana2019":
        return "ana2019"
    if r["method"] == "ana" and r["sigma"] == "static" and r["mu"] == "static" and r["noise"] == "uniform":
        return {"mode": "clipped_ste", "random": "stochastic_rounding", "expectation": "hardtanh_ste"}[r["strategy"]]
    return ""


def write_report(out: str, rows: Optional[List[dict]] = None, figures: bool = True, title: str = "") -> str:
    """Writes ``<out>/report.md`` (and the PNG figures) from ``<out>/results.csv``; returns the
    markdown."""
    from .runner import read_rows

    if rows is None:
        rows = read_rows(os.path.join(out, "results.csv"))
    md: List[str] = [f"# {title or 'anacuda experiments'}", ""]
    if not rows:
        md.append("No runs yet.")
        text = "\n".join(md) + "\n"
        with open(os.path.join(out, "report.md"), "w") as f:
            f.write(text)
        return text
    seeds = sorted({r["seed"] for r in rows})
    floats = {}
    for r in rows:
        if r["float_acc"] is not None:
            floats[r["seed"]] = 100 * r["float_acc"]
    fm = mean_ci(list(floats.values()))
    total_s = sum(r["seconds"] for r in rows)
    cpu = [r.get("cpu_seconds") for r in rows]
    cpu_note = (f", {sum(cpu) / 60:.1f} min of CPU time" if cpu and all(c is not None for c in cpu) else "")
    md += [f"{len(rows)} runs; seeds {seeds}; devices {sorted({r.get('device') or '?' for r in rows})}; "
           f"{total_s / 60:.1f} min of wall time summed over runs{cpu_note}.", "",
           f"Float baseline (per seed: {', '.join(f'{s}: {v:.2f}' for s, v in sorted(floats.items()))}): "
           f"**{fmt(*fm[:2])} %** test accuracy.", "",
           "All accuracies: test accuracy (%) of the frozen, deployed model; ± is the 95 % t interval over seeds.", ""]

    # Q1
    figs = []
    for mu in ("static", "dynamic"):
        cells = ana_cells(rows, mu)
        bal = _balanced(cells) if cells else None
        if bal is None:
            if cells:
                md += [f"(μ {mu}: the annealed-σ ANA grid is incomplete; spread analysis skipped)", ""]
            continue
        a, nn_, ss_, pp_ = bal
        if min(a.shape[:3]) < 2 or a.shape[3] < 2:
            md += [f"(μ {mu}: fewer than 2 levels of a factor or fewer than 2 seeds; spread analysis skipped)", ""]
            continue
        sp = spreads(a)
        dif = seed_level_differences(a)
        md += [f"## Synchronisation policy vs noise shape (σ annealed, μ {mu})", "",
               f"{a.shape[0]} noises × {a.shape[1]} strategies × {a.shape[2]} policies × {a.shape[3]} seeds = "
               f"{a.size} runs. Seed-to-seed SD within a cell: {sp['seed_sd']:.2f} points.", "",
               "| spread (accuracy points) | across policies (window × power) | across noise shapes | "
               "across strategies |", "|---|---|---|---|"]
        for what, key in (("SD of the marginal means, seed noise removed", "main_sd_bc"),
                          ("SD across the factor within blocks of the others, seed noise removed", "within_bc"),
                          ("SD of the marginal means (raw)", "main_sd"),
                          ("range of the marginal means (raw)", "main_range"),
                          ("SD across the factor within blocks (raw)", "within"),
                          ("range across the factor within blocks (raw)", "within_range")):
            md.append(f"| {what} | " + " | ".join(f"{sp[f'{key}_{k}']:.2f}" for k in ("policy", "noise", "strategy"))
                      + " |")
        md += ["", "Policies − noises, computed within each seed (noise-free in expectation, see "
               "`analysis.seed_level_differences`), mean ± 95 % t interval over the seeds, in points²:", "",
               "| difference of variances | mean ± 95 % CI | per seed |", "|---|---|---|"]
        for what, key in (("within blocks: var across policies − var across noises", "within"),
                          ("marginal means: var across policies − var across noises", "main")):
            m, h, _, vals = dif[key]
            md.append(f"| {what} | {fmt(m, h, 3)} | {', '.join(f'{v:+.3f}' for v in vals)} |")
        md.append("")
        md += ["ANOVA (seeds as replicates; η² = SS/SS_total, ω² its less biased form):", "",
               "| term | df | η² | ω² | F | p |", "|---|---|---|---|---|---|"]
        for t in anova(a):
            f_ = "" if math.isnan(t["F"]) else f"{t['F']:.2f}"
            p_ = "" if math.isnan(t["p"]) else f"{t['p']:.2g}"
            w_ = "" if math.isnan(t["omega2"]) else f"{t['omega2']:.3f}"
            md.append(f"| {t['term']} | {t['df']} | {t['eta2']:.3f} | {w_} | {f_} | {p_} |")
        md += ["", "Marginal means (each over the other factors' cells; ± over seeds):", "",
               "| policy | accuracy |", "|---|---|"]
        for p, m in zip(pp_, marginals(a, 2)):
            md.append(f"| {p} | {fmt(*m[:2])} |")
        md += ["", "| noise | accuracy |", "|---|---|"]
        for n_, m in zip(nn_, marginals(a, 0)):
            md.append(f"| {n_} | {fmt(*m[:2])} |")
        md += ["", "| strategy | accuracy |", "|---|---|"]
        for s_, m in zip(ss_, marginals(a, 1)):
            md.append(f"| {s_} | {fmt(*m[:2])} |")
        md.append("")
        if figures:
            figs += _plot_spread(out, a, nn_, ss_, pp_, mu)

    sva = static_vs_annealed(rows)
    if sva:
        md += ["## σ static vs σ annealed (μ static)", "",
               "Static σ: σ0 throughout (with uniform noise and mode this is the clipped STE; uniform and random is "
               "stochastic rounding). Expectation with a static σ is not run (it trains the smoothed network, not "
               "the deployed one). Annealed: mean over the 8 policies.", "",
               "| noise | strategy | σ static | σ annealed (all policies) | annealed − static | best annealed policy |",
               "|---|---|---|---|---|---|"]
        for t in sva:
            md.append(f"| {t['noise']} | {t['strategy']} | {fmt(*t['static'][:2])} | {fmt(*t['annealed'][:2])} | "
                      f"{fmt(*t['diff'][:2])} | {t['best_policy']}: {fmt(*t['best'][:2])} |")
        md.append("")

    # Q2
    for init in ("float", "scratch"):
        at = [t for t in alpha_table(rows, init) if t["ab"][2] and t["ste"][2]]
        if not at:
            continue
        md += [f"## Alpha-blending vs the clipped STE (weights; init {init})", "",
               "| bits | α = 1 at | alpha-blending | clipped STE | AB − STE (paired by seed) | AB better in |",
               "|---|---|---|---|---|---|"]
        for t in at:
            md.append(f"| {t['bits']} | {100 * t['alpha_end']:.0f} % of training | {fmt(*t['ab'][:2])} | "
                      f"{fmt(*t['ste'][:2])} | {fmt(*t['diff'][:2])} | {t['wins']}/{t['n']} seeds |")
        md.append("")
        if figures:
            figs += _plot_alpha(out, at, init)

    # every configuration
    table = config_table(rows)
    md += ["## Every configuration", "",
           "| family | configuration | W/A bits | init | preset | accuracy | float | seeds | s/run |",
           "|---|---|---|---|---|---|---|---|---|"]
    order = {"baseline": 0, "ana": 1, "alpha": 2}
    for t in sorted(table, key=lambda t: (order.get(t["family"], 3), -t["acc"][0])):
        label = t["label"] + (" **(train ≠ deploy)**" if t["mismatch"] else "")
        md.append(f"| {t['family']} | {label} | {t['wbits']}/{t['abits']} | {t['init']} | {preset_of(t['rows'][0])} | "
                  f"{fmt(*t['acc'][:2])} | {fmt(*t['float_acc'][:2])} | {len(t['seeds'])} | {t['seconds']:.1f} |")
    md.append("")
    if figs:
        md += ["## Figures", ""] + [f"![{os.path.splitext(f)[0]}]({f})" for f in figs] + [""]
    text = "\n".join(md) + "\n"
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    return text


# --- figures --------------------------------------------------------------------------------------
def _figure(*args, **kw):
    from matplotlib.figure import Figure

    return Figure(*args, **kw)


def _plot_spread(out, a, nn_, ss_, pp_, mu) -> List[str]:
    names = []
    fig = _figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True, width_ratios=[len(pp_), len(nn_), len(ss_)])
    for ax, axis, labels, title in ((axes[0], 2, pp_, "synchronisation policy (window/power)"),
                                    (axes[1], 0, nn_, "noise shape"), (axes[2], 1, ss_, "strategy")):
        m = marginals(a, axis)
        x = np.arange(len(labels))
        ax.errorbar(x, [v[0] for v in m], yerr=[0 if math.isnan(v[1]) else v[1] for v in m], fmt="o", capsize=4)
        # the spread of the cell means behind each marginal
        cell = np.moveaxis(a.mean(axis=3), axis, 0).reshape(len(labels), -1)
        for i in range(len(labels)):
            ax.scatter(np.full(cell.shape[1], x[i] + 0.25), cell[i], s=6, alpha=0.35, color="gray")
        short = [lab.replace("homogeneous", "homog.").replace("progressive", "progr.").replace("/", "\n")
                 for lab in labels]
        ax.set_xticks(x, short, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("frozen test accuracy (%)")
    fig.suptitle(f"Marginal means ± 95% CI over seeds (gray: cell means); σ annealed, μ {mu}", fontsize=10)
    name = f"experiments_spread_mu_{mu}.png"
    fig.savefig(os.path.join(out, name), dpi=110)
    names.append(name)

    fig = _figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.subplots()
    cell = a.mean(axis=3)  # noise, strategy, policy
    cols = [f"{n}\n{s}" for n in nn_ for s in ss_]
    img = cell.reshape(len(nn_) * len(ss_), len(pp_)).T
    im = ax.imshow(img, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(cols)), cols, fontsize=7)
    ax.set_yticks(range(len(pp_)), pp_, fontsize=8)
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            ax.text(j, i, f"{img[i, j]:.1f}", ha="center", va="center", fontsize=6,
                    color="white" if img[i, j] < img.mean() else "black")
    fig.colorbar(im, ax=ax, label="mean frozen test accuracy (%)")
    ax.set_title(f"ANA, σ annealed, μ {mu}: policy (rows) × noise/strategy (columns), mean over seeds", fontsize=10)
    name = f"experiments_heatmap_mu_{mu}.png"
    fig.savefig(os.path.join(out, name), dpi=110)
    names.append(name)
    return names


def _plot_alpha(out, at, init) -> List[str]:
    fig = _figure(figsize=(6, 3.8), layout="constrained")
    ax = fig.subplots()
    bits = sorted({t["bits"] for t in at})
    ends = sorted({t["alpha_end"] for t in at})
    x = {b: i for i, b in enumerate(bits)}
    width = 0.5 / (len(ends) + 1)
    ste = {t["bits"]: t["ste"] for t in at}
    ax.errorbar([x[b] - 0.25 for b in bits], [ste[b][0] for b in bits],
                yerr=[0 if math.isnan(ste[b][1]) else ste[b][1] for b in bits], fmt="s", capsize=4, color="black",
                label="clipped STE")
    for k, e in enumerate(ends):
        ts = [t for t in at if t["alpha_end"] == e]
        ax.errorbar([x[t["bits"]] - 0.25 + (k + 1) * width for t in ts], [t["ab"][0] for t in ts],
                    yerr=[0 if math.isnan(t["ab"][1]) else t["ab"][1] for t in ts], fmt="o", capsize=4,
                    label=f"alpha-blending (α = 1 at {100 * e:.0f} %)")
    ax.set_xticks(range(len(bits)), [f"{b} bit{'s' if b > 1 else ''}" for b in bits])
    ax.set_ylabel("frozen test accuracy (%)")
    ax.set_title(f"Weights: alpha-blending vs clipped STE (start: {init}); ± 95% CI over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    name = f"experiments_alpha_{init}.png"
    fig.savefig(os.path.join(out, name), dpi=110)
    return [name]


def plot_schedules(path: str, epochs: float = 10.0) -> str:
    """σ(t)/σ0 of each layer group of the experiments' CNN for every window × power, as the
    NoiseController computes them."""
    from ..nn import NoiseController, convert
    from .core import FLOAT_LAYERS, make_cnn

    model = convert(make_cnn(4), skip=FLOAT_LAYERS)
    fig = _figure(figsize=(10, 4.6), layout="constrained")
    axes = fig.subplots(len(POWERS), len(WINDOWS), sharex=True, sharey=True)
    t = np.linspace(0, epochs, 201)
    for i, pw in enumerate(POWERS):
        for j, w in enumerate(WINDOWS):
            ax = axes[i][j]
            ctrl = NoiseController(model, epochs, window=w, power=pw)
            curves = np.array([[v["sigma"] for v in ctrl.values(x)] for x in t]) / 0.5
            for k, g in enumerate(ctrl.groups):
                ax.plot(t, curves[:, k], label=f"group {k + 1}: {', '.join(g)}")
            ax.set_title(f"{w} / {pw}", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.supxlabel("epoch")
    fig.supylabel("σ / σ0")
    fig.savefig(path, dpi=110)
    return path
