"""`make bench`: time every workload's implementations side by side in one run, print a
markdown table (median times, speed-up of anacuda, effective GB/s, fraction of the machine's
limit) and save JSON with the machine, torch version and thread count."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import anacuda  # noqa: E402
from timing import forward_backward, median_seconds  # noqa: E402
from workloads import workloads  # noqa: E402


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def bench_device(device: str, numel: int, repeat: int):
    rows = []
    for w in workloads(numel):
        x = w.make_input(device, 1.0 if w.quantizer.num_levels <= 3 else w.quantizer.num_levels / 4)
        nbytes = x.numel() * x.element_size()
        impls = {"anacuda": w.anacuda, "reference": w.reference, **w.extra}
        limit_f = median_seconds(torch.clone, x, repeat=repeat)
        g = torch.ones_like(x)
        limit_fb = limit_f + median_seconds(torch.mul, g, x, repeat=repeat)
        for name, fn in impls.items():
            xr = x.clone().requires_grad_()
            tf = median_seconds(fn, x, repeat=repeat)
            tfb = median_seconds(forward_backward(fn), xr, g, repeat=repeat)
            rows.append(dict(workload=w.name, title=w.title, device=device, impl=name, numel=x.numel(),
                             dtype=str(x.dtype).replace("torch.", ""), fwd_s=tf, fwdbwd_s=tfb,
                             fwd_gbps=2 * nbytes / tf / 1e9, fwdbwd_gbps=5 * nbytes / tfb / 1e9,
                             limit_fwd_s=limit_f, limit_fwdbwd_s=limit_fb))
    return rows


def table(rows) -> str:
    out = ["| workload | device | implementation | fwd ms | fwd+bwd ms | anacuda speed-up (fwd / fwd+bwd) "
           "| fwd GB/s | limit fraction (fwd / fwd+bwd) |", "|---|---|---|---:|---:|---:|---:|---:|"]
    best = {(r["workload"], r["device"]): r for r in rows if r["impl"] == "anacuda"}
    for r in rows:
        a = best[(r["workload"], r["device"])]
        out.append(
            f"| {r['workload']} {r['title']} | {r['device']} | {r['impl']} | {r['fwd_s'] * 1e3:.2f} | "
            f"{r['fwdbwd_s'] * 1e3:.2f} | {r['fwd_s'] / a['fwd_s']:.2f}x / {r['fwdbwd_s'] / a['fwdbwd_s']:.2f}x | "
            f"{r['fwd_gbps']:.1f} | {r['limit_fwd_s'] / r['fwd_s']:.2f} / {r['limit_fwdbwd_s'] / r['fwdbwd_s']:.2f} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--numel", type=int, default=1 << 22)
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--device", action="append", help="cpu and/or cuda (default: every one present)")
    args = p.parse_args(argv)
    devices = args.device or (["cpu"] + (["cuda"] if anacuda.cuda_available() else []))
    rows = []
    for d in devices:
        rows += bench_device(d, args.numel if d == "cpu" else max(args.numel, 1 << 26), args.repeat)
    text = table(rows)
    print(text)
    meta = dict(machine=machine(), torch=torch.__version__, threads=torch.get_num_threads(),
                anacuda=anacuda.build_info(), devices=devices)
    os.makedirs(args.out, exist_ok=True)
    tag = "cuda" if "cuda" in devices else "cpu"
    with open(os.path.join(args.out, f"bench-{tag}.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    with open(os.path.join(args.out, f"bench-{tag}.md"), "w") as f:
        f.write(f"Machine: {meta['machine']}; torch {meta['torch']}; {meta['threads']} threads.\n\n{text}\n")
    print(f"\nsaved {args.out}/bench-{tag}.json and .md ({meta['machine']})")


if __name__ == "__main__":
    main()
