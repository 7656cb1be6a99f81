"""Memory of a training step: a float ResNet-18 against the same network converted by
anacuda (ternary weights and activations, uniform noise, mode: the clipped STE) and against
the converted network with a normal backward noise (which must save the input). Reports the
bytes autograd saves for the backward and, on a GPU, the peak allocated memory of the step.

python benchmarks/memory.py [--device cuda] [--batch 64] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import anacuda  # noqa: E402
from timing import machine  # noqa: E402


def saved_bytes_and_peak(model, x, y):
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    if x.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    peak = (torch.cuda.max_memory_allocated() - base) if x.is_cuda else None
    model.zero_grad(set_to_none=True)
    return sum(saved), peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if anacuda.cuda_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    try:
        import torchvision
    except ImportError:
        sys.exit("memory.py needs torchvision")
    torch.manual_seed(0)
    float_model = torchvision.models.resnet18(num_classes=10).to(args.device)
    skip = ["conv1", "fc"]
    models = {
        "float": float_model,
        "anacuda, uniform backward (1-byte code)": anacuda.convert(float_model, skip=skip),
        "anacuda, normal backward (saves the input)": anacuda.convert(float_model, skip=skip, noise="normal",
                                                                      sigma=0.25),
    }
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    y = torch.randint(10, (args.batch,), device=args.device)
    rows = []
    for name, m in models.items():
        saved_bytes_and_peak(m, x, y)  # warm up
        saved, peak = saved_bytes_and_peak(m, x, y)
        rows.append(dict(model=name, saved_mib=saved / 2**20, peak_mib=None if peak is None else peak / 2**20))
    base = rows[0]
    lines = [f"ResNet-18 training step, batch {args.batch}, {args.size}x{args.size}, {args.device}; "
             f"machine: {machine(args.device)}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}",
             "", "| model | saved for backward (MiB) | vs float | peak step memory (MiB) | vs float |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        peak = "n/a (CPU)" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        ratio = "" if r["peak_mib"] is None else f"{r['peak_mib'] / base['peak_mib']:.2f}x"
        lines.append(f"| {r['model']} | {r['saved_mib']:.1f} | {r['saved_mib'] / base['saved_mib']:.2f}x | {peak} | {ratio} |")
    text = "\n".join(lines)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"memory-{args.device}.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, f"memory-{args.device}.json"), "w") as f:
        json.dump(dict(device=args.device, machine=machine(args.device), torch=torch.__version__,
                       date=time.strftime("%Y-%m-%d %H:%M"), batch=args.batch, size=args.size, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
