"""Wall-clock timing that synchronises CUDA: the median of repeated calls."""

import statistics
import time

import torch


def median_seconds(fn, *args, repeat: int = 15, warmup: int = 1, budget: float = float("inf")) -> float:
    """Median over `repeat` calls (fewer once `budget` seconds are spent, at least 3)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn(*args)
    sync()
    samples, start = [], time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        sync()
        samples.append(time.perf_counter() - t0)
        if len(samples) >= 3 and time.perf_counter() - start > budget:
            break
    return statistics.median(samples)
