"""The builds of the CPU kernels (csrc/cpu/kernel_table.h): the AVX512 and AVX2 builds this
processor runs must compute what the baseline build computes, each in a subprocess under
ATEN_CPU_CAPABILITY (default, avx2). Bit for bit wherever both evaluate the same arithmetic; within a
few ulps where the smooth noises call SIMD exp/erfc (SLEEF) instead of libm."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import anacuda
from anacuda import Quantizer
from anacuda import functional as F

NOISES = ("uniform", "triangular", "normal", "logistic")
STRATEGIES = ("expectation", "mode", "random")
DTYPES = (torch.float32, torch.float64, torch.bfloat16)
QUANTIZERS = {"ternary": Quantizer.ternary(), "uniform4": Quantizer.uniform(4), "uniform8": Quantizer.uniform(8),
              "nonuniform": Quantizer([-1.0, -0.2, 0.5, 2.0], [-0.6, 0.1, 1.2])}


def battery() -> dict:
    """Forward and gradient of every path (small grid, windowed smooth noise, per-element
    functors) on inputs from numpy (torch's own randn differs between its builds)."""
    rng = np.random.default_rng(1)
    out = {}
    base = torch.from_numpy(rng.standard_normal((3, 5, 131))).float() * 3
    base[0, 0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5])
    chan = torch.from_numpy(rng.random((5, 1))).float() + 0.5
    for dt in DTYPES:
        x = base.to(dt)
        for (qn, q), noise, st, eps in itertools.product(QUANTIZERS.items(), NOISES, STRATEGIES, ("scalar", "channel")):
            e = 0.7 if eps == "scalar" else chan
            xr = x.clone().requires_grad_()
            torch.manual_seed(3)
            y = F.ana(xr, q, noise, 0.1, 0.4, st, eps=e)
            y.backward(torch.full_like(y, 0.75))
            out[(str(dt), qn, noise, st, eps)] = (y.detach(), xr.grad)
        for qn, q in QUANTIZERS.items():
            out[(str(dt), qn, "alpha_blend")] = (F.alpha_blend(x, q, 0.3, chan.reshape(1, 5, 1)),)
        q8 = QUANTIZERS["uniform8"]
        for rule in ("absmax_per_token", "absmean", "absmax_per_channel", "absmean_per_channel"):  # scale_rows.h
            out[(str(dt), "uniform8", "dynamic", rule)] = (
                torch.ops.anacuda._dynamic_eps(x, rule, 127.0, 1e-5), F.ana(x, q8, "uniform", 0.0, 0.0, "mode", eps=rule))
        for (qn, q), eps in itertools.product([("uniform4", QUANTIZERS["uniform4"]), ("uniform8", q8)],
                                              ("scalar", "channel")):  # LSQ: learned_fast.h
            e = (torch.tensor(0.05) if eps == "scalar" else chan.reshape(1, 5, 1) / 20).requires_grad_()
            xr = x.clone().requires_grad_()
            F.ana(xr, q, "uniform", 0.0, 0.5, "mode", eps=e).backward(torch.full_like(x, 0.75))
            out[(str(dt), qn, "learned", eps)] = (xr.grad, e.grad)
    return out


def _exact(key) -> tuple:
    """Which outputs (forward, gradient) both builds compute with the same operations."""
    if key[2] in ("alpha_blend", "dynamic", "learned"):
        return (True, True)
    _, _, noise, strategy, _ = key
    smooth = noise in ("normal", "logistic")
    # Forward: the smooth noises' expectation sums SIMD CDFs; logistic random samples with SIMD log.
    forward = not (smooth and strategy == "expectation") and not (noise == "logistic" and strategy == "random")
    return forward, not smooth


def _simd_builds() -> list:
    """The SIMD builds this processor runs: ATen's own capability and, from AVX512 down, AVX2."""
    if os.uname().machine != "x86_64":
        return []
    return {"AVX512": ["AVX512", "AVX2"], "AVX2": ["AVX2"]}.get(torch.backends.cpu.get_cpu_capability(), [])


def _battery_under(capability: str, path) -> dict:
    """battery() in a subprocess whose ATen (and so anacuda) runs `capability`."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability.lower())
    code = ("import sys, torch, anacuda; sys.path.insert(0, 'tests'); import test_cpu_kernels as t; "
            f"assert anacuda.build_info()['cpu_kernels'] == {capability!r}; torch.save(t.battery(), sys.argv[1])")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, env=env, cwd=root)
    return torch.load(path)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return _battery_under("DEFAULT", tmp_path_factory.mktemp("default") / "default.pt")


@pytest.mark.parametrize("build", ["AVX512", "AVX2"])
def test_simd_build_computes_what_the_baseline_build_computes(build, baseline, tmp_path):
    if build not in _simd_builds():
        pytest.skip(f"this processor does not run the {build} build")
    here = battery() if anacuda.build_info()["cpu_kernels"] == build else _battery_under(build, tmp_path / "simd.pt")
    assert baseline.keys() == here.keys()
    for key, outs in here.items():
        for exact, got, want in zip(_exact(key), outs, baseline[key]):
            if exact:
                assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num()), key
            elif key[2] == "logistic" and key[3] == "random" and got is outs[0]:
                # A sample moves to the next level only where the noise lands within an ulp of a threshold.
                assert (got != want).float().mean().item() < 0.01, key
            else:
                tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 2e-2}[got.dtype]
                torch.testing.assert_close(got, want, rtol=tol, atol=tol, equal_nan=True, msg=lambda m: f"{key}: {m}")


def test_the_simd_build_runs_where_torch_runs_it():
    builds = _simd_builds()
    assert anacuda.build_info()["cpu_kernels"] == (builds[0] if builds else "DEFAULT")
