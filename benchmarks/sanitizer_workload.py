"""The small, targeted set of calls that `make gpu-check` runs under compute-sanitizer (memcheck,
racecheck, initcheck): every CUDA kernel a few times, in every dtype. Forward of every noise and
strategy, both backwards (the 1-byte code and the plain one), alpha-blending; vector body and
scalar tail, a tail-only and a one-element input, misaligned and non-contiguous inputs, an empty
one; a uniform grid, a long grid (the window) and an arbitrary grid (the binary search);
per-channel eps, hyper-parameters on the device, a backward noise of its own, a generator;
learned scales (the eps gradient's block partials); dynamic scales (every rule, a block per row
and the two-kernel path, the identity backward).

It checks no values (the op tests do, against the reference); the sanitizer checks every memory
access. Each group ends with a synchronisation, so a report names the group it came from. Runs
on the CPU too (the dry run: `--device cpu`).

    compute-sanitizer --tool memcheck python3 benchmarks/sanitizer_workload.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # anacuda from the repo root

import anacuda  # noqa: E402
from anacuda import Quantizer  # noqa: E402
from anacuda import functional as F  # noqa: E402

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
NOISES = list(anacuda.NOISES)
STRATEGIES = list(anacuda.STRATEGIES)
# Every noise and every strategy once, for the dtypes other than float32 (which gets all pairs):
# each noise's backward kernel runs in every dtype (uniform: the coded one).
PAIRS = [("uniform", "mode"), ("triangular", "random"), ("normal", "expectation"), ("logistic", "mode")]
N = 4099  # not a multiple of any vector width: vector body and scalar tail


def inputs(n: int, dtype, device, spread: float = 3.0) -> torch.Tensor:
    return (torch.linspace(-spread, spread, n, dtype=torch.float64) + 0.013).to(device=device, dtype=dtype)


def fwd_bwd(x: torch.Tensor, q: Quantizer, **kw) -> None:
    xr = x.detach().requires_grad_(True)
    y = F.ana(xr, q, **kw)
    y.backward(torch.ones_like(y))


def blend_fwd_bwd(w: torch.Tensor, q: Quantizer, alpha, eps) -> None:
    wr = w.detach().requires_grad_(True)
    y = F.alpha_blend(wr, q, alpha, eps)
    y.backward(torch.ones_like(y))


def groups(device):
    """(name, function) pairs; each function makes a handful of calls."""
    dev = torch.device(device)
    t = lambda v: torch.tensor(v, device=dev)  # noqa: E731
    q3, q4, q8 = Quantizer.ternary(), Quantizer.uniform(4), Quantizer.uniform(8)
    g = torch.Generator(device=dev).manual_seed(3)
    lv = sorted(float(v) for v in torch.linspace(-5, 5, 41) ** 3 / 25)
    q_arbitrary = Quantizer(lv, [(a + b) / 2 for a, b in zip(lv, lv[1:])])

    def every_pair_float32():
        x = inputs(N, torch.float32, dev, 9.0)
        for noise in NOISES:
            for strategy in STRATEGIES:
                fwd_bwd(x, q4, noise=noise, strategy=strategy, mu=0.1, sigma=0.6)

    def every_dtype():
        for dtype in DTYPES:
            x = inputs(N, dtype, dev, 9.0)
            for noise, strategy in PAIRS:
                fwd_bwd(x, q4, noise=noise, strategy=strategy, sigma=0.5)
            with torch.no_grad():  # forward only: the output kernels without the code
                F.ana(x, q4, "normal", 0.0, 0.5, "random")
                F.ana(x, q4, "uniform", 0.0, 0.5, "mode", training=False)

    def layouts():
        for dtype in DTYPES:
            big = inputs(N + 1, dtype, dev)
            for x in [big[1:], big[: 7 * 64].reshape(64, 7).t(), big[:3], big[:1], big[:0]]:
                fwd_bwd(x, q3, noise="uniform", strategy="mode")  # coded backward
                fwd_bwd(x, q3, noise="normal", strategy="random")  # plain backward

    def grids():
        for dtype in (torch.float32, torch.bfloat16):
            x = inputs(N, dtype, dev, 140.0)
            for noise, strategy in PAIRS:
                fwd_bwd(x, q8, noise=noise, strategy=strategy, sigma=0.7)  # 255 thresholds: the window
                fwd_bwd(x * 0.05, q_arbitrary, noise=noise, strategy=strategy, sigma=0.3)  # binary search

    def hyper_parameters():
        for dtype in (torch.float32, torch.float16):
            w = inputs(64 * 75, dtype, dev).reshape(64, 3, 5, 5)
            eps = w.detach().abs().amax(dim=(1, 2, 3), keepdim=True).float() / 7 + 1e-3  # per channel
            fwd_bwd(w, q4, noise="uniform", strategy="mode", eps=eps)
            fwd_bwd(w, q4, noise="logistic", mu=t(0.1), sigma=t(0.4), strategy="expectation", eps=t(0.2))
            fwd_bwd(w, q4, noise="triangular", strategy="random", eps=eps,
                    backward_noise=("normal", t(0.0), t(0.3)))
            fwd_bwd(w, q4, noise="uniform", strategy="expectation", backward_noise=("uniform", 0.1, 0.25))
            fwd_bwd(w, q4, noise="normal", sigma=0.0, strategy="expectation")  # the hard stair
            with torch.no_grad():
                F.ana(w, q4, "uniform", 0.0, 0.5, "random", generator=g)

    def alpha_blending():
        for dtype in DTYPES:
            w = inputs(32 * 9 * 17, dtype, dev).reshape(32, 9, 17)
            eps = w.detach().abs().amax(dim=(1, 2), keepdim=True).float() / 7 + 1e-3
            blend_fwd_bwd(w, q4, 0.3, eps)
            blend_fwd_bwd(w[:, :, 1:], q3, t(0.7), 0.05)  # non-contiguous
            blend_fwd_bwd(w.reshape(-1)[1:N + 1], q8, 1.0, t(0.01))  # misaligned

    def learned_scales():
        for dtype in DTYPES:
            w = inputs(64 * 75, dtype, dev).reshape(64, 3, 5, 5)
            per_channel = (w.detach().abs().amax(dim=(1, 2, 3), keepdim=True).float() / 7 + 1e-3).requires_grad_(True)
            for noise, strategy in PAIRS:
                fwd_bwd(w, q4, noise=noise, strategy=strategy, sigma=0.5, eps=per_channel)
                fwd_bwd(w, q4, noise=noise, strategy=strategy, sigma=0.5, eps=t(0.3).requires_grad_(True))
            fwd_bwd(w[:, 1:], q3, noise="uniform", strategy="mode", eps=per_channel)  # non-contiguous

    def dynamic_scales():
        # a max rule per token and per channel (a block per row), a mean (the reduction's double sums)
        rules = ["absmax_per_token", "absmax_per_channel", "absmean"]
        for dtype in DTYPES:
            for x in [inputs(64 * 1024, dtype, dev).reshape(64, 1024),  # a block per row (max rules)
                      inputs(3 * 4097, dtype, dev).reshape(3, 4097), inputs(N, dtype, dev).reshape(1, N)]:
                for rule in rules:
                    fwd_bwd(x, q8, noise="uniform", sigma=0.0, strategy="mode", eps=rule, backward_noise="identity")
                    fwd_bwd(x, q3, noise="normal", sigma=0.5, strategy="expectation", eps=rule)
                    fwd_bwd(x, q4, noise="logistic", sigma=0.5, strategy="random", eps=rule)
                    blend_fwd_bwd(x, q3, 0.4, rule)

    # Most telling first (every kernel in every dtype, then the edges of the index arithmetic): a
    # sanitizer run cut short by its time budget still covers them.
    return [("ana, every dtype", every_dtype), ("ana, layouts", layouts), ("alpha_blend, every dtype", alpha_blending),
            ("ana, per-channel eps and device hyper-parameters", hyper_parameters),
            ("ana, learned scales", learned_scales), ("ana and alpha_blend, dynamic scales", dynamic_scales),
            ("ana, long and arbitrary grids", grids), ("ana, float32, every noise x strategy", every_pair_float32)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not anacuda.cuda_available():
        sys.exit("sanitizer_workload: no GPU with the CUDA kernels; use --device cpu")
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    start = time.perf_counter()
    for name, run in groups(args.device):
        t0 = time.perf_counter()
        run()
        sync()
        print(f"sanitizer_workload: {name}: done in {time.perf_counter() - t0:.2f} s", flush=True)
    print(f"sanitizer_workload: all groups done in {time.perf_counter() - start:.2f} s", flush=True)


if __name__ == "__main__":
    main()
