"""`make bench`: every workload's implementations side by side in one run, forward and
forward+backward, against the machine's limit measured in the same run. Prints a markdown
table (median times over interleaved rounds, anacuda's speed-up as the median of each round's
ratio, effective GB/s, fraction of the limit) and the
targets of the benchmark issue with their ratios; saves JSON (machine, torch, threads) and a
PNG plot."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # the workloads beside, anacuda in the repo root

import anacuda  # noqa: E402
from timing import calls_per_sample, interleaved, machine, paired_ratio  # noqa: E402
from workloads import limits, timed_calls, workloads  # noqa: E402


def check_same_forward(w, x, impls):
    ref = impls["anacuda"](x).float()
    for name, fn in impls.items():
        y = fn(x).float()
        if w.random:
            ok = abs(y.mean().item() - ref.mean().item()) < 0.05 * max(1.0, ref.abs().mean().item())
        else:
            bad = (y - ref).abs() > w.atol + 1e-6 * ref.abs()
            if "fake_quantize" in name:  # it rounds ties (x = k + 0.5 in units of eps) to even
                bad &= (x.float() - x.float().floor() != 0.5) if x.dim() == 1 else torch.ones_like(bad)
            ok = bad.float().mean().item() < 1e-3
        if not ok:
            raise AssertionError(f"{w.name}: {name} does not compute the same forward as anacuda")


def bench_workload(w, device, repeat, sample_s=5e-3, budget=60.0, warm_s=1.0):
    """The limits and every implementation, forward and forward+backward, timed in `repeat`
    interleaved rounds (timing.interleaved: each round times every one of them moments apart, so
    a shared machine's changing load, page faults above all, hits all alike). Medians per call,
    and anacuda's speed-ups as paired ratios (the median over rounds of a round's ratio). A sample
    runs a short call several times back to back (about `sample_s` seconds), after `warm_s`
    seconds of calls of each; the rounds stop after `budget` seconds (at least 3: the slow
    references)."""
    x = w.make_input(device)
    g = torch.ones_like(x)
    nbytes = x.numel() * x.element_size()
    check_same_forward(w, x, w.impls)
    lim = limits(x, g)
    fns = {("limit", "fwd"): lim["fwd"], ("limit", "bwd"): lim["bwd"]}
    for name, fn in w.impls.items():
        fns[(name, "fwd")], fns[(name, "fwdbwd")] = timed_calls(fn, x, g)
    for f in fns.values():  # warm: a compiled function runs slowly for about its first second
        t0 = time.perf_counter()
        while True:
            f()
            if time.perf_counter() - t0 > warm_s:
                break
    inner = {k: calls_per_sample(f, sample_s) for k, f in fns.items()}
    samples, errors = interleaved(fns, rounds=repeat, inner=inner, budget=budget)
    if errors:
        raise RuntimeError(f"{w.name}: {errors}")
    med = {k: statistics.median(v) for k, v in samples.items()}
    t_clone, t_mul = med[("limit", "fwd")], med[("limit", "bwd")]
    rows = []
    for name in w.impls:
        row = dict(workload=w.name, title=w.title, device=device, impl=name, numel=x.numel(),
                   dtype=str(x.dtype).replace("torch.", ""), note=w.notes.get(name, ""))
        for key in ("fwd", "fwdbwd"):
            row[f"{key}_s"] = med[(name, key)]
            row[f"{key}_speedup"] = paired_ratio(samples[(name, key)], samples[("anacuda", key)])
        row["fwd_gbps"] = 2 * nbytes / row["fwd_s"] / 1e9
        row["fwdbwd_gbps"] = 5 * nbytes / row["fwdbwd_s"] / 1e9
        row["limit_fwd_s"], row["limit_fwdbwd_s"] = t_clone, t_clone + t_mul
        rows.append(row)
        print(f"  {w.name} {name:<20} fwd {row['fwd_s'] * 1e3:9.3f} ms   fwd+bwd {row['fwdbwd_s'] * 1e3:9.3f} ms",
              flush=True)
    return rows


def table(rows) -> str:
    out = ["| workload | implementation | fwd ms | fwd+bwd ms | anacuda speed-up fwd | fwd+bwd | fwd GB/s "
           "| limit/time fwd | fwd+bwd |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r['workload']} {r['title']} ({r['dtype']}, {r['device']}) | {r['impl']} | {r['fwd_s'] * 1e3:.3f} | "
            f"{r['fwdbwd_s'] * 1e3:.3f} | {r['fwd_speedup']:.2f}x | {r['fwdbwd_speedup']:.2f}x | "
            f"{r['fwd_gbps']:.1f} | {r['limit_fwd_s'] / r['fwd_s']:.2f} | {r['limit_fwdbwd_s'] / r['fwdbwd_s']:.2f} |")
    return "\n".join(out)


# (workload, implementation, direction, required anacuda speed-up) on a CPU; on a GPU the
# fraction of the copy bandwidth. From the benchmark issue.
CPU_TARGETS = [("W1", "fake_quantize", "fwd", 1.0), ("W1", "eager_ste", "fwd", 2.0),
               ("W1", "limit", "fwdbwd", 0.75),
               ("W2", "reference", "fwd", 50.0), ("W2", "compiled_reference", "fwd", 5.0),
               ("W3", "reference", "fwd", 10.0), ("W3", "eager_floor_noise", "fwd", 2.0),
               ("W4", "composite", "fwd", 2.0), ("W4", "compiled_composite", "fwd", 1.0),
               ("W6a", "pytorch_learnable", "fwdbwd", 2.0), ("W6a", "compiled_composite", "fwdbwd", 1.5),
               ("W6b", "pytorch_learnable", "fwdbwd", 2.0), ("W6b", "compiled_composite", "fwdbwd", 1.5),
               ("W7", "compiled_bitnet", "fwdbwd", 2.0)]
# W6b's bandwidth at the run's size (2^24 in make gpu-check); W6a is a fixed weight, too small for it.
GPU_TARGETS = {"W1": 0.85, "W3": 0.85, "W4": 0.85, "W2": 0.70, "W6b": 0.80, "W7": 0.80}
# (workload, implementation, direction, required anacuda speed-up) on a GPU.
GPU_SPEEDUPS = [("W6a", "pytorch_learnable", "fwdbwd", 2.0), ("W6b", "pytorch_learnable", "fwdbwd", 2.0)]


def _speedups(by, wanted):
    lines = []
    for w, impl, d, need in wanted:
        a = by.get((w, "anacuda"))
        if a is None:
            continue
        if impl == "limit":
            got = a[f"limit_{d}_s"] / a[f"{d}_s"]
            what = f"{w} {d}: limit (clone + multiply) / anacuda"
        elif (w, impl) in by:
            got = by[(w, impl)][f"{d}_speedup"]
            what = f"{w} {d}: anacuda vs {impl}"
        else:
            continue
        lines.append(f"- {what}: {got:.2f}x (target >= {need}) {'met' if got >= need else 'NOT met'}")
    return lines


def targets(rows, device) -> str:
    by = {(r["workload"], r["impl"]): r for r in rows if r["device"] == device}
    lines = []
    if device == "cpu":
        lines += _speedups(by, CPU_TARGETS)
    else:
        lines += _speedups(by, GPU_SPEEDUPS)
        for w, need in GPU_TARGETS.items():
            a = by.get((w, "anacuda"))
            if a is None:
                continue
            for d in ("fwd", "fwdbwd"):
                got = a[f"limit_{d}_s"] / a[f"{d}_s"]
                lines.append(f"- {w} {d}: {got:.0%} of the copy bandwidth (target >= {need:.0%}) "
                             f"{'met' if got >= need else 'NOT met'}")
    return "\n".join(lines)


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = sorted({r["workload"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key in zip(axes, ("fwd_s", "fwdbwd_s")):
        impls = sorted({r["impl"] for r in rows}, key=lambda s: (s != "anacuda", s))
        width = 0.8 / len(impls)
        for k, impl in enumerate(impls):
            xs, ys = [], []
            for i, w in enumerate(names):
                r = next((r for r in rows if r["workload"] == w and r["impl"] == impl), None)
                if r:
                    xs.append(i + k * width)
                    ys.append(r[key] * 1e3)
            ax.bar(xs, ys, width, label=impl)
        ax.set_yscale("log")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
        ax.set_ylabel("median ms (log)")
        ax.set_title("forward" if key == "fwd_s" else "forward + backward")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--numel", type=int, default=None, help="elements of W1-W3 (default 2^22 CPU, 2^26 GPU)")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--sample-ms", type=float, default=5.0, help="back-to-back calls per sample, in ms at most")
    p.add_argument("--budget", type=float, default=60.0, help="seconds of rounds per workload (at least 3 rounds)")
    p.add_argument("--device", action="append", help="cpu and/or cuda (default: every one present)")
    p.add_argument("--only", action="append", help="workload names to run (default: all)")
    args = p.parse_args(argv)
    devices = args.device or (["cpu"] + (["cuda"] if anacuda.cuda_available() else []))
    os.makedirs(args.out, exist_ok=True)
    for device in devices:
        numel = args.numel or (1 << 22 if device == "cpu" else 1 << 26)
        rows = []
        t0 = time.time()
        for w in workloads(numel):
            if args.only and w.name not in args.only:
                continue
            rows += bench_workload(w, device, args.repeat, args.sample_ms * 1e-3, args.budget)
        meta = dict(machine=machine(device), device=device, torch=torch.__version__, threads=torch.get_num_threads(),
                    anacuda=anacuda.build_info(), date=time.strftime("%Y-%m-%d %H:%M"), seconds=round(time.time() - t0))
        text = table(rows)
        goals = targets(rows, device)
        print(f"\nMachine: {meta['machine']}; torch {meta['torch']}\n\n{text}\n\nTargets:\n{goals}")
        stem = os.path.join(args.out, f"bench-{device}")
        with open(stem + ".json", "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
        with open(stem + ".md", "w") as f:
            f.write(f"Machine: {meta['machine']}; torch {meta['torch']}; {meta['date']}.\n\n{text}\n\nTargets:\n{goals}\n")
        plot(rows, stem + ".png")
        print(f"\nsaved {stem}.json, .md and .png")


if __name__ == "__main__":
    main()
