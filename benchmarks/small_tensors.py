"""Small tensors, where a network's anacuda calls mostly are: the latency of the ternary clipped
STE (anacuda.ste.clipped_ste) against torch.fake_quantize_per_tensor_affine, relu and hardtanh
at 4,096 and 131,072 elements (fwd+bwd and no-grad forward), and the time per element of the
ternary expectation fwd+bwd for each noise from 2^10 to 2^24 elements, with the sizes where it
jumps marked. Variants are timed interleaved (each round times every variant; small calls in
batches), medians over the rounds; ratios are the median of the per-round ratios. Prints the
tables with the targets of the step-cost issue met or not; saves .md, .json and a .png plot.

    python benchmarks/small_tensors.py [--rounds 21] [--sizes 4096 131072] [--sweep 10 24] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import anacuda  # noqa: E402
from anacuda import Quantizer, ste  # noqa: E402
from anacuda import functional as F  # noqa: E402
from timing import (calls_per_sample, describe, interleaved, load_average, machine_facts,  # noqa: E402
                    paired_ratio, quartiles)

Q3 = Quantizer.ternary()
CLIPPED = ste.clipped_ste(Q3)
NOISES = ("uniform", "triangular", "normal", "logistic")
SWEEP_SIGMA = 0.25
# The sweep's reference at each size: x.clone() plus g * x, the machine's limit for producing two
# fresh tensors (run.py's limit), so that a jump of the machine's own shows beside anacuda's.
LIMIT = "clone + g*x"
JUMP = 1.3       # a size's time per element over the next smaller size's: above this, a jump
SAMPLE_S = 2e-3  # seconds of back-to-back calls per timed sample


def _prepared_ana():
    """torch.ops.anacuda.ana with every argument but x made once (the same op as the preset's no-grad
    call): what calling the op through torch.ops costs, without F.ana's checks."""
    made = {}

    def call(x):
        if (x.device, x.dtype) not in made:
            lv, th = Q3.tables(x.device, x.dtype)
            f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
            made[(x.device, x.dtype)] = (lv, th, Q3.uniform_grid, f64(1.0), "uniform", f64(0.0), f64(0.5), "mode",
                                         True, None, "uniform", f64(0.0), f64(0.5))
        return torch.ops.anacuda.ana.default(x, *made[(x.device, x.dtype)])

    return call


# The latency table's implementations (name -> fn(x)); anacuda's first. The two "through
# torch.ops" rows measure the way into a custom op: aten's own relu called the way a custom op is
# called, and anacuda's op with its arguments prepared.
LATENCY = {
    "anacuda ste.clipped_ste": CLIPPED,
    "anacuda F.ana (the same op)": lambda x: F.ana(x, Q3, noise="uniform", sigma=0.5, strategy="mode"),
    "fake_quantize_per_tensor_affine": lambda x: torch.fake_quantize_per_tensor_affine(x, 1.0, 0, -1, 1),
    "relu": torch.relu,
    "hardtanh": torch.nn.functional.hardtanh,
    "relu through torch.ops (torch.ops.aten.relu)": torch.ops.aten.relu.default,
    "anacuda through torch.ops, arguments prepared": _prepared_ana(),
}
ANACUDA = "anacuda ste.clipped_ste"


def fwdbwd(fn, xr, g):
    """fn's forward and backward on xr (requiring grad), a fresh gradient each call."""
    def call():
        xr.grad = None
        fn(xr).backward(g)
    return call


def nograd(fn, x):
    def call():
        with torch.no_grad():
            fn(x)
    return call


def make_input(n, device):
    return torch.randn(n, generator=torch.Generator().manual_seed(n)).to(device)


def run_group(fns, rounds):
    inner = {k: calls_per_sample(f, SAMPLE_S) for k, f in fns.items()}
    samples, errors = interleaved(fns, rounds=rounds, inner=inner)
    if errors:
        raise RuntimeError(f"small_tensors: {errors}")
    return samples


def latencies(sizes, rounds, device):
    rows = []
    for n in sizes:
        x = make_input(n, device)
        xr, g = x.clone().requires_grad_(), torch.ones_like(x)
        fns = {}
        for impl, fn in LATENCY.items():
            fns[(impl, "fwd+bwd")], fns[(impl, "no-grad fwd")] = fwdbwd(fn, xr, g), nograd(fn, x)
        samples = run_group(fns, rounds)
        for (impl, d), s in samples.items():
            q1, med, q3 = quartiles(s)
            rows.append(dict(numel=n, impl=impl, direction=d, median_s=med, q1_s=q1, q3_s=q3, samples_s=s,
                             x_anacuda=paired_ratio(s, samples[(ANACUDA, d)])))
        print(f"  {n} elements: done", flush=True)
    return rows


def sweep(lo, hi, rounds, device):
    """Every (size, noise) in one interleaved group, so that the ratios between noises at a size
    and between neighbouring sizes (the jumps) are per-round ratios too."""
    fns = {}
    for k in range(lo, hi + 1):
        xr = make_input(1 << k, device).requires_grad_()
        g = torch.ones_like(xr)
        for noise in NOISES:
            fns[(k, noise)] = fwdbwd(lambda t, noise=noise: F.ana(t, Q3, noise=noise, sigma=SWEEP_SIGMA, strategy="expectation"), xr, g)
        x = xr.detach()
        fns[(k, LIMIT)] = lambda x=x, g=g: (x.clone(), g * x)  # two fresh tensors, as a fwd+bwd makes
    samples = run_group(fns, rounds)
    rows = []
    for (k, noise), s in samples.items():
        q1, med, q3 = quartiles(s)
        row = dict(numel=1 << k, noise=noise, median_s=med, q1_s=q1, q3_s=q3, samples_s=s,
                   ns_per_element=med / (1 << k) * 1e9, x_uniform=paired_ratio(s, samples[(k, "uniform")]))
        if (k - 1, noise) in samples:  # time per element over the size below's: twice the elements
            row["jump"] = paired_ratio(s, samples[(k - 1, noise)]) / 2
        rows.append(row)
    return rows


def latency_table(rows) -> str:
    out = ["| elements | implementation | fwd+bwd us | quartiles | x anacuda | no-grad fwd us | quartiles | x anacuda |",
           "|---:|---|---:|---:|---:|---:|---:|---:|"]
    by = {(r["numel"], r["impl"], r["direction"]): r for r in rows}
    for n in sorted({r["numel"] for r in rows}):
        for impl in LATENCY:
            cells = []
            for d in ("fwd+bwd", "no-grad fwd"):
                r = by[(n, impl, d)]
                cells += [f"{r['median_s'] * 1e6:.1f}", f"{r['q1_s'] * 1e6:.1f}-{r['q3_s'] * 1e6:.1f}",
                          f"{r['x_anacuda']:.2f}x"]
            out.append(f"| {n:,} | {impl} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def sweep_table(rows) -> str:
    out = ["| elements | " + " | ".join(f"{n} ns/element" for n in NOISES + (LIMIT,))
           + " | normal / uniform | logistic / uniform |", "|---:|" + "---:|" * (len(NOISES) + 3)]
    by = {(r["numel"], r["noise"]): r for r in rows}
    for n in sorted({r["numel"] for r in rows}):
        cells = []
        for noise in NOISES + (LIMIT,):
            r = by[(n, noise)]
            mark = f" (jump {r['jump']:.2f}x)" if r.get("jump", 0) > JUMP else ""
            cells.append(f"{r['ns_per_element']:.2f}{mark}")
        cells += [f"{by[(n, 'normal')]['x_uniform']:.2f}x", f"{by[(n, 'logistic')]['x_uniform']:.2f}x"]
        out.append(f"| 2^{n.bit_length() - 1} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def verdict(got, need) -> str:
    return f"{got:.2f}x (target <= {need}) {'met' if got <= need else 'NOT met'}"


def targets(lat, swp) -> str:
    lines = []
    by = {(r["numel"], r["impl"], r["direction"]): r for r in lat}
    if (4096, ANACUDA, "fwd+bwd") in by:
        # x_anacuda of a peer is peer / anacuda: its inverse is anacuda's multiple of the peer.
        for peer, d, need in (("fake_quantize_per_tensor_affine", "fwd+bwd", 1.0), ("relu", "fwd+bwd", 2.0),
                              ("relu", "no-grad fwd", 1.5)):
            lines.append(f"- 4,096 elements {d}: anacuda / {peer} = {verdict(1 / by[(4096, peer, d)]['x_anacuda'], need)}")
    sw = {(r["numel"], r["noise"]): r for r in swp}
    for noise in ("normal", "logistic"):
        if (131072, noise) in sw:
            lines.append(f"- 131,072 elements expectation fwd+bwd: {noise} / uniform = "
                         f"{verdict(sw[(131072, noise)]['x_uniform'], 3.0)}")
    if swp:
        jumps = [f"{r['noise']} at 2^{r['numel'].bit_length() - 1} ({r['jump']:.2f}x)" for r in swp
                 if r.get("jump", 0) > JUMP and r["noise"] != LIMIT]
        own = [f"2^{r['numel'].bit_length() - 1} ({r['jump']:.2f}x)" for r in swp
               if r.get("jump", 0) > JUMP and r["noise"] == LIMIT]
        lines.append(f"- no size where the time per element jumps (> {JUMP}x the size below): "
                     + ("met" if not jumps else "NOT met: " + ", ".join(jumps))
                     + (f"; the machine's own {LIMIT} jumps at " + ", ".join(own) if own else ""))
    return "\n".join(lines)


def plot(swp, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for noise in NOISES + (LIMIT,):
        mine = [r for r in swp if r["noise"] == noise]
        xs, ys = [r["numel"] for r in mine], [r["ns_per_element"] for r in mine]
        line, = ax.plot(xs, ys, marker="o", ms=3, label=noise, **({"ls": "--", "color": "k"} if noise == LIMIT else {}))
        jumps = [(r["numel"], r["ns_per_element"]) for r in mine if r.get("jump", 0) > JUMP]
        if jumps:
            ax.plot(*zip(*jumps), "x", ms=10, mew=2, color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("elements")
    ax.set_ylabel("median ns per element (log)")
    ax.set_title(f"ternary expectation fwd+bwd, sigma {SWEEP_SIGMA}; x: time per element jumps > {JUMP}x", fontsize=9)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, textwrap.fill(title, 150), fontsize=6)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--sizes", type=int, nargs="*", default=[4096, 131072], help="the latency table's sizes")
    p.add_argument("--sweep", type=int, nargs=2, default=[10, 24], metavar=("LO", "HI"),
                   help="the noise sweep's sizes: 2^LO ... 2^HI (LO > HI: no sweep)")
    p.add_argument("--device", default="cuda" if anacuda.cuda_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--name", default="small_tensors", help="the results files' stem (before -DEVICE)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.rounds < 1 or any(n < 1 for n in args.sizes):
        p.error(f"--rounds and --sizes must be at least 1, got {args.rounds} and {args.sizes}")
    meta = machine_facts(args.device)
    meta.update(anacuda=anacuda.build_info(), rounds=args.rounds, sample_s=SAMPLE_S, sweep_sigma=SWEEP_SIGMA, jump=JUMP)
    t0 = time.time()
    print("latencies:", flush=True)
    lat = latencies(args.sizes, args.rounds, args.device)
    print("time per element:", flush=True)
    swp = sweep(args.sweep[0], args.sweep[1], args.rounds, args.device)
    meta["seconds"], meta["load_end"] = round(time.time() - t0), load_average()
    head = (f"{describe(meta)} {args.rounds} interleaved rounds of ~{SAMPLE_S * 1e3:g} ms samples; ratios: the "
            "median over rounds of the per-round ratio.")
    parts = [head]
    if lat:
        parts.append("Ternary clipped STE (anacuda.ste.clipped_ste: uniform 0.5, mode) against torch's ops, "
                     "median microseconds per call; x anacuda: the implementation's time over anacuda's.\n\n"
                     + latency_table(lat))
    if swp:
        parts.append(f"Ternary expectation fwd+bwd (F.ana, sigma {SWEEP_SIGMA}), median ns per element; "
                     f"(jump): more than {JUMP}x the size below.\n\n" + sweep_table(swp))
    parts.append("Targets:\n" + targets(lat, swp))
    report = "\n\n".join(parts) + "\n"
    print("\n" + report)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{args.name}-{args.device}")
    with open(stem + ".json", "w") as f:
        json.dump(dict(meta=meta, latency=lat, sweep=swp), f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(report)
    saved = ".json, .md"
    if swp and plot(swp, stem + ".png", describe(meta)):
        saved += " and .png"
    print(f"saved {stem}{saved}")


if __name__ == "__main__":
    main()
