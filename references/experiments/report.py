"""The markdown report of an experiment folder: ``<out>/report.md`` from ``<out>/results.csv``,
with the statistics of stats.py and the figures of figures.py."""

from __future__ import annotations

import math
import os
from typing import Dict, List, Optional

import numpy as np

from .figures import plot_alpha, plot_spread
from .runner import read_rows
from .stats import (LSQ_ESTIMATORS, _acc, _balanced, alpha_table, ana_cells, anova, fmt, lsq_table, marginals, mean_ci,
                    seed_level_differences, spreads, static_vs_annealed)


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
    if r.get("weight_eps") == "learned" or (r.get("activation_scale") or "fixed") == "learned":
        return "lsq" if r["method"] == "ste" else ""
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
               "`stats.seed_level_differences`), mean ± 95 % t interval over the seeds, in points²:", "",
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
            figs += plot_spread(out, a, nn_, ss_, pp_, mu)

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
            figs += plot_alpha(out, at, init)

    # Q3
    lt = lsq_table(rows)
    if lt:
        md += ["## Learned scales: LSQ and a smoothed LSQ", "",
               "Fixed scales: weights max|w| per output channel, activations the grid's fixed quantum. Learned: one "
               "eps per output channel of the weights and one per activation, LSQ's initialisation and gradient "
               "scale. Estimators: " + "; ".join(f"{f} / {l_}: {what}" for f, l_, what in LSQ_ESTIMATORS.values())
               + ". Differences paired by seed.", "",
               "| levels | estimator (fixed / learned) | fixed scale | learned scale | learned − fixed | "
               "learned better in | learned − LSQ | better than LSQ in |", "|---|---|---|---|---|---|---|---|"]
        for t in lt:
            lv = "−1, 0, 1" if t["levels"] == "symmetric" and t["bits"] == 2 else (
                f"−{2 ** (t['bits'] - 1)} … {2 ** (t['bits'] - 1) - 1}" if t["levels"] == "full" else
                f"{t['levels']}, {t['bits']} bits")
            f_, l_, _ = LSQ_ESTIMATORS[t["estimator"]]
            d, v = t["learned_minus_fixed"], t["vs_lsq"]
            md.append(f"| {lv} | {f_} / {l_} | {fmt(*t['fixed'][:2])} | {fmt(*t['learned'][:2])} | "
                      f"{fmt(*d['diff'][:2])} | {d['wins']}/{d['n']} seeds | "
                      + (f"{fmt(*v['diff'][:2])} | {v['wins']}/{v['n']} seeds |" if v else "| |"))
        md.append("")

    # every configuration
    table = config_table(rows)
    md += ["## Every configuration", "",
           "| family | configuration | W/A bits | init | preset | accuracy | float | seeds | s/run |",
           "|---|---|---|---|---|---|---|---|---|"]
    order = {"baseline": 0, "ana": 1, "alpha": 2, "lsq": 3}
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
