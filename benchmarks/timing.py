"""Wall-clock timing that synchronises CUDA, and the machine it ran on: variants interleaved
round by round (each round times every variant, so a load change on a shared machine hits all
of them alike)."""

import math
import os
import platform
import statistics
import time

import torch


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def calls_per_sample(fn, target: float) -> int:
    """How many back-to-back calls of `fn` take about `target` seconds (at least 1): small-tensor
    calls are timed in batches, so the clock's resolution and a stray context switch weigh less."""
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    if time.perf_counter() - t0 >= target:  # a slow call: one per sample, without nine more to learn it
        return 1
    times = []
    for i in range(10):  # the median of 7 calls after 3 warm-up calls: one slow call (a cold cache,
        _sync()          # a context switch) would otherwise set every sample of the run too short
        t0 = time.perf_counter()
        fn()
        _sync()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    one = max(sorted(times)[len(times) // 2], 1e-7)
    return max(1, min(100_000, math.ceil(target / one)))


def interleaved(fns: dict, rounds: int, inner=1, warmup: int = 1, budget: float = float("inf")):
    """Times the variants `fns` (name -> fn()) in `rounds` rounds (fewer once `budget` seconds
    are spent, at least 3); each round runs every variant
    `inner` times back to back (an int, or name -> int), in an order rotated round by round so
    no variant always follows the same one. Returns (samples, errors): samples[name] is the list
    of per-call seconds, one per round; errors[name] is the message of a variant whose warm-up
    raised (it is left out of the rounds rather than ending the run)."""
    errors, live = {}, []
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
            _sync()
            live.append(name)
        except Exception as err:  # a failing variant is a result (a row with its reason), not a crash
            errors[name] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    n = {name: inner[name] if isinstance(inner, dict) else inner for name in live}
    samples = {name: [] for name in live}
    start = time.perf_counter()
    for r in range(rounds):
        if r >= 3 and time.perf_counter() - start > budget:
            break
        k = r % len(live) if live else 0
        for name in live[k:] + live[:k]:
            fn = fns[name]
            _sync()
            t0 = time.perf_counter()
            for _ in range(n[name]):
                fn()
            _sync()
            samples[name].append((time.perf_counter() - t0) / n[name])
    return samples, errors


def quartiles(xs):
    """(first quartile, median, third quartile) of the samples; for one sample all three are it."""
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def paired_ratio(xs, base):
    """The median over rounds of xs[r] / base[r]: each round's ratio compares two variants timed
    moments apart, which a shared machine's changing load spoils less than a ratio of medians."""
    return statistics.median(a / b for a, b in zip(xs, base))


def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def load_average() -> list:
    """The 1, 5 and 15 minute load averages (None where the platform has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_facts(device: str) -> dict:
    """What a results file names: the machine (CPU model or GPU), its cores, torch's threads and
    version, and the load average at the start (the caller adds the end's)."""
    return dict(machine=machine(device), device=device, cores=os.cpu_count(), threads=torch.get_num_threads(),
                torch=torch.__version__, date=time.strftime("%Y-%m-%d %H:%M"), load_start=load_average())


def describe(meta: dict) -> str:
    """One line for a results file's head, from machine_facts() plus load_end."""
    return (f"Machine: {meta['machine']}, {meta['cores']} cores; torch {meta['torch']}; {meta['date']}; "
            f"load average (1/5/15 min) {meta['load_start']} at the start, {meta.get('load_end')} at the end.")
