"""`make gpu-check` on a GPU machine: the whole test suite (CUDA tests included), then the
benchmarks, and a report naming the machine in benchmarks/results/gpu-check.md."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu-check: no GPU is visible")
    os.makedirs(args.out, exist_ok=True)
    gpu = torch.cuda.get_device_name()
    t0 = time.time()
    tests = subprocess.run([sys.executable, "-m", "pytest", "tests", "-q", "-rs", "-p", "no:cacheprovider"],
                           capture_output=True, text=True)
    t_tests = time.time() - t0
    bench = subprocess.run([sys.executable, "benchmarks/run.py", "--out", args.out], capture_output=True, text=True)
    tail = lambda s, n: "\n".join(s.strip().splitlines()[-n:])  # noqa: E731
    report = [
        f"# gpu-check on {gpu}",
        f"torch {torch.__version__}, CUDA {torch.version.cuda}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "", f"## Tests (exit {tests.returncode}, {t_tests:.0f} s)", "```", tail(tests.stdout + tests.stderr, 40), "```",
        "", f"## Benchmarks (exit {bench.returncode})", "", bench.stdout.strip(), "```", tail(bench.stderr, 20), "```",
    ]
    path = os.path.join(args.out, "gpu-check.md")
    with open(path, "w") as f:
        f.write("\n".join(report) + "\n")
    print("\n".join(report))
    print(f"\nreport: {path}")
    sys.exit(tests.returncode or bench.returncode)


if __name__ == "__main__":
    main()
