"""`make bench`, the CPU's instruction sets: anacuda's side of every workload under each SIMD
build of the CPU kernels this processor runs (AVX512 where ATen runs its own AVX512 kernels,
and AVX2), in alternating subprocesses (ATEN_CPU_CAPABILITY picks the build), each timing the
fastest of its calls, with the speed-up of each build over AVX2: the median over rounds of the
per-round ratio. W1 also in cache (2^19 elements). Prints a markdown table; saves JSON and
markdown."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

from timing import load_average, machine, paired_ratio  # noqa: E402

SMALL = 1 << 19  # W1 in cache too


def _cases(numel: int, only: list):
    """(name, workload): W1 at 2^19 elements, then every workload at the kernel benchmark's size."""
    from workloads import workloads

    if not only or "W1" in only:
        yield f"W1 2^{SMALL.bit_length() - 1}", next(w for w in workloads(SMALL) if w.name == "W1")
    for w in workloads(numel):
        if not only or w.name in only:
            yield w.name, w


def _fastest(fn, repeat: int) -> float:
    """The fastest of `repeat` calls after three warm-up calls: two builds run in different
    processes, and on a shared machine the least disturbed call compares them best."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def worker(repeat: int, numel: int, only: list) -> dict:
    """{case: [fwd s, fwd+bwd s]} of anacuda under the build this process runs."""
    out = {}
    from workloads import timed_calls

    for key, w in _cases(numel, only):
        x = w.make_input("cpu")
        fwd, fwdbwd = timed_calls(w.impls["anacuda"], x, torch.ones_like(x))
        out[key] = [_fastest(fwd, repeat), _fastest(fwdbwd, repeat)]
    return out


def builds() -> list:
    if os.uname().machine != "x86_64":
        return []
    return {"AVX512": ["AVX512", "AVX2"], "AVX2": ["AVX2"]}.get(torch.backends.cpu.get_cpu_capability(), [])


def run_build(build: str, repeat: int, numel: int, only: list) -> dict:
    env = dict(os.environ, ATEN_CPU_CAPABILITY=build.lower())
    code = ("import sys, json, anacuda; sys.path.insert(0, sys.argv[1]); import isa; "
            f"assert anacuda.build_info()['cpu_kernels'] == {build!r}; "
            f"print(json.dumps(isa.worker({repeat}, {numel}, {only!r})))")
    out = subprocess.run([sys.executable, "-c", code, HERE], check=True, env=env, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--numel", type=int, default=1 << 22, help="elements of W1-W3 (beside W1 at 2^19)")
    p.add_argument("--only", action="append", help="workload names to run (default: all)")
    args = p.parse_args(argv)
    have = builds()
    if len(have) < 2:
        print(f"one SIMD build runs here ({have or 'none'}): nothing to compare")
        return
    start = dict(time=time.strftime("%Y-%m-%d %H:%M"), load=load_average())
    samples = {b: [] for b in have}
    for r in range(args.rounds):  # alternating, the first build of the round rotating
        for b in have[r % 2:] + have[:r % 2]:
            samples[b].append(run_build(b, args.repeat, args.numel, args.only or []))
            print(f"  round {r + 1}/{args.rounds} {b} done", flush=True)
    cases = list(samples[have[0]][0])
    lines = ["| workload | build | fwd ms | fwd+bwd ms | fwd speed-up over AVX2 | fwd+bwd |",
             "|---|---|---:|---:|---:|---:|"]
    rows = []
    for c in cases:
        for b in have:
            per = [[s[c][k] for s in samples[b]] for k in (0, 1)]
            base = [[s[c][k] for s in samples["AVX2"]] for k in (0, 1)]
            ratio = [paired_ratio(base[k], per[k]) for k in (0, 1)]
            row = dict(case=c, build=b, fwd_s=statistics.median(per[0]), fwdbwd_s=statistics.median(per[1]),
                       speedup_fwd=ratio[0], speedup_fwdbwd=ratio[1])
            rows.append(row)
            lines.append(f"| {c} | {b} | {row['fwd_s'] * 1e3:.3f} | {row['fwdbwd_s'] * 1e3:.3f} | "
                         f"{ratio[0]:.2f}x | {ratio[1]:.2f}x |")
    table = "\n".join(lines)
    meta = dict(machine=machine("cpu"), torch=torch.__version__, threads=torch.get_num_threads(), rounds=args.rounds,
                start=start, end=dict(time=time.strftime("%Y-%m-%d %H:%M"), load=load_average()))
    head = (f"Machine: {meta['machine']}; torch {meta['torch']}; {start['time']}; load "
            f"average (1/5/15 min) {start['load']} at the start, {meta['end']['load']} at the end. anacuda's "
            f"implementation of each workload under each build of the CPU kernels, {args.rounds} alternating rounds "
            f"of subprocesses, each timing the fastest of {args.repeat} calls; times: medians over rounds; speed-up: "
            f"the median over rounds of AVX2's time over the build's.")
    print(f"\n{head}\n\n{table}")
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "isa-cpu")
    with open(stem + ".json", "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(f"{head}\n\n{table}\n")
    print(f"\nsaved {stem}.json and .md")


if __name__ == "__main__":
    main()
