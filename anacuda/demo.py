"""`make demo`: a short tour of the ANA op (python -m anacuda.demo [--device cuda]).

Shows the smoothed stair and its gradient for each noise, the strategies, annealing sigma to
zero (the smoothed stair becomes the deployed quantiser), and the fused kernel against the
plain-PyTorch reference.
"""

from __future__ import annotations

import argparse
import time

import torch

import anacuda
from anacuda import Quantizer
from anacuda import functional as F
from anacuda import reference as R


def _row(label: str, t: torch.Tensor) -> str:
    return f"  {label:<22}" + " ".join(f"{v:+.3f}" for v in t.tolist())


def _time(fn, x, repeat: int = 5) -> float:
    fn(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if anacuda.cuda_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    info = anacuda.build_info()
    print(f"anacuda {info['version']} | torch {torch.__version__} | CUDA kernels: {info['cuda_kernels']} | device: {dev}")

    q = Quantizer.ternary()
    u = torch.linspace(-1.5, 1.5, 7, device=dev)
    print(f"\nTernary quantiser {q}; inputs u:")
    print(_row("u", u))
    print(_row("hard stair Q(u)", F.ana(u, q, training=False)))

    print("\nExpectation forward and its gradient, sigma = 0.5, for each noise:")
    for noise in anacuda.NOISES:
        x = u.clone().requires_grad_()
        y = F.ana(x, q, noise=noise, sigma=0.5)
        y.sum().backward()
        print(_row(f"{noise} y", y.detach()))
        print(_row(f"{noise} dy/du", x.grad))

    print("\nStrategies with uniform noise sigma = 0.5 (mode is the clipped STE's forward):")
    for strategy in anacuda.STRATEGIES:
        print(_row(strategy, F.ana(u, q, strategy=strategy)))

    print("\nAnnealing: the smoothed stair (normal noise) tends to the hard stair as sigma -> 0")
    x = torch.linspace(-2, 2, 100001, device=dev)
    hard = F.ana(x, q, training=False)
    for sigma in (0.5, 0.25, 0.1, 0.03, 0.01, 0.0):
        gap = (F.ana(x, q, noise="normal", sigma=sigma) - hard).abs().mean().item()
        print(f"  sigma = {sigma:<5}  mean |y - Q(u)| = {gap:.5f}")

    print("\nFused kernel against the O(K) reference, 2^18 elements, 8-bit grid, normal noise:")
    q8 = Quantizer.uniform(8)
    x = torch.randn(1 << 18, device=dev) * 40
    fused = lambda t: F.ana(t, q8, noise="normal", sigma=0.25)  # noqa: E731
    ref = lambda t: R.ana(t, q8, noise="normal", sigma=0.25)  # noqa: E731
    err = (fused(x) - ref(x)).abs().max().item()
    tf, tr = _time(fused, x), _time(ref, x)
    print(f"  max |fused - reference| = {err:.2e};  fused {tf * 1e3:.2f} ms, reference {tr * 1e3:.1f} ms "
          f"({tr / tf:.0f}x faster)")


if __name__ == "__main__":
    main()
