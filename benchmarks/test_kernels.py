"""pytest-benchmark suite: `pytest benchmarks --benchmark-only` (one row per workload ×
implementation × direction; `make bench` prints the side-by-side table with ratios)."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import anacuda  # noqa: E402
from workloads import workloads  # noqa: E402

NUMEL = int(os.environ.get("ANACUDA_BENCH_NUMEL", 1 << 20))
DEVICES = ["cpu"] + (["cuda"] if anacuda.cuda_available() else [])
CASES = [(w, name) for w in workloads(NUMEL) for name in w.impls]


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("direction", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=[f"{w.name}-{n}" for w, n in CASES])
def test_kernel(benchmark, case, device, direction):
    w, name = case
    fn = w.impls[name]
    x = w.make_input(device)
    benchmark.group = f"{w.name} {direction} {device}"
    if direction == "fwd":
        def run():
            with torch.no_grad():
                fn(x)
            _sync(device)
    else:
        xr, g = x.clone().requires_grad_(), torch.ones_like(x)

        def run():
            xr.grad = None
            fn(xr).backward(g)
            _sync(device)
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
