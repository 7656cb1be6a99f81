"""Wall-clock timing that synchronises CUDA: the median of repeated calls."""

import statistics
import time

import torch


def median_seconds(fn, *args, repeat: int = 15, warmup: int = 3) -> float:
    dev_sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn(*args)
    dev_sync()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        dev_sync()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def forward_backward(fn):
    """fn(x) -> the time of forward and backward with an all-ones upstream gradient."""
    def run(x, g):
        x.grad = None
        fn(x).backward(g)
    return run
