"""`make gpu-check` on a GPU machine: the whole test suite (CUDA tests included), the CUDA
tests again under compute-sanitizer (memcheck and racecheck), then the benchmarks and the
memory measurement, and a report naming the machine in benchmarks/results/gpu-check.md."""

from __future__ import annotations

import argparse
import os
import shutil
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
    sanitizer = []
    tool = shutil.which("compute-sanitizer")
    for check in ("memcheck", "racecheck"):
        if tool is None:
            sanitizer.append(f"{check}: compute-sanitizer not found")
            continue
        r = subprocess.run([tool, "--tool", check, "--error-exitcode", "3", sys.executable, "-m", "pytest",
                            "tests/test_ana.py", "tests/test_memory.py", "tests/test_alpha_blend.py", "-q", "-x",
                            "-m", "cuda", "-p", "no:cacheprovider"], capture_output=True, text=True)
        sanitizer.append(f"{check} (exit {r.returncode}):\n" + "\n".join((r.stdout + r.stderr).strip().splitlines()[-6:]))
    bench = subprocess.run([sys.executable, "benchmarks/run.py", "--out", args.out], capture_output=True, text=True)
    memory = subprocess.run([sys.executable, "benchmarks/memory.py", "--out", args.out], capture_output=True, text=True)
    tail = lambda s, n: "\n".join(s.strip().splitlines()[-n:])  # noqa: E731
    report = [
        f"# gpu-check on {gpu}",
        f"torch {torch.__version__}, CUDA {torch.version.cuda}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "", f"## Tests (exit {tests.returncode}, {t_tests:.0f} s)", "```", tail(tests.stdout + tests.stderr, 40), "```",
        "", "## compute-sanitizer", "```", "\n\n".join(sanitizer), "```",
        "", f"## Benchmarks (exit {bench.returncode})", "", bench.stdout.strip(), "```", tail(bench.stderr, 20), "```",
        "", f"## Memory (exit {memory.returncode})", "", memory.stdout.strip(),
    ]
    path = os.path.join(args.out, "gpu-check.md")
    with open(path, "w") as f:
        f.write("\n".join(report) + "\n")
    print("\n".join(report))
    print(f"\nreport: {path}")
    sys.exit(tests.returncode or bench.returncode)


if __name__ == "__main__":
    main()
