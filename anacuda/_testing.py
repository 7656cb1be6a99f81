"""Test hooks (private). The CPU kernels have two paths: "fast", their own loops where those
apply (the default), and "functors", the code the CUDA kernels run (csrc/common/functors.h in the
CUDA loop's index arithmetic, csrc/common/elementwise.h) for every call. The op tests run through
both, so a broken functor fails on any machine before a GPU sees it. ANACUDA_CPU_PATH sets the
path at load."""

from __future__ import annotations

import contextlib

from . import _C

CPU_PATHS = ("fast", "functors")


def cpu_path() -> str:
    """The CPU path in use."""
    return _C._cpu_path()


@contextlib.contextmanager
def use_cpu_path(path: str):
    """Run the CPU kernels through `path` ("fast" or "functors") inside the block."""
    if path not in CPU_PATHS:
        raise ValueError(f"anacuda: the CPU path is 'fast' or 'functors', got {path!r}")
    old = _C._cpu_path()
    _C._set_cpu_path(path)
    try:
        yield
    finally:
        _C._set_cpu_path(old)
