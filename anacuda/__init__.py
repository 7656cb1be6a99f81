"""anacuda: fused CPU and CUDA kernels for Additive Noise Annealing (ANA), its straight-through
estimator variants and alpha-blending. Start with anacuda.functional.ana and anacuda.Quantizer;
the semantics are in docs/semantics.md, executable in anacuda.reference."""

import torch


def _load_extension():
    try:
        from . import _build_info
    except ImportError:
        raise ImportError(
            "anacuda: the compiled extension is missing; build it with "
            "`pip install --no-build-isolation .` (or `make build`) in the anacuda source folder"
        ) from None
    built, running = _build_info.TORCH_VERSION.split("+")[0], torch.__version__.split("+")[0]
    if built.split(".")[:2] != running.split(".")[:2]:
        raise ImportError(
            f"anacuda: the extension was built for torch {_build_info.TORCH_VERSION} but torch {torch.__version__} "
            "is installed; rebuild it against this torch with `pip install --no-build-isolation --force-reinstall .`"
        )
    try:
        from . import _C
    except ImportError as err:
        raise ImportError(
            f"anacuda: the extension failed to load ({err}); it was built for torch {_build_info.TORCH_VERSION}"
            f"{' with CUDA ' + _build_info.CUDA_VERSION if _build_info.CUDA_VERSION else ''} and torch "
            f"{torch.__version__} is running. Rebuild with `pip install --no-build-isolation --force-reinstall .`"
        ) from err
    return _C, _build_info


_C, _build_info = _load_extension()

from . import functional, ops, reference, scale, ste  # noqa: E402,F401
from .quantizer import NOISES, STRATEGIES, Noise, Quantizer  # noqa: E402,F401
from .config import ANAConfig  # noqa: E402,F401
from . import nn  # noqa: E402,F401
from .nn import AlphaController, NoiseController, convert, freeze  # noqa: E402,F401
from .export import export  # noqa: E402,F401


def _version() -> str:
    """pyproject.toml's version, as the build that made this extension recorded it (so an in-place
    build and an installed one both report the version of the code that runs); for an extension
    built before setup.py recorded it, the installed distribution's metadata."""
    version = getattr(_build_info, "VERSION", None)
    if version:
        return version
    from importlib import metadata

    try:
        return metadata.version("anacuda")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _version()


def build_info() -> dict:
    """How the extension was built: torch version, whether CUDA kernels are compiled in, the CUDA
    version and architectures; and which build of the CPU kernels runs here: ATen's own
    choice, AVX512, AVX2 or DEFAULT (``ATEN_CPU_CAPABILITY`` picks a lower one)."""
    return {
        "version": __version__,
        "torch": _build_info.TORCH_VERSION,
        "cuda_kernels": bool(_C.with_cuda()),
        "cuda": _build_info.CUDA_VERSION,
        "nvcc": getattr(_build_info, "NVCC_VERSION", None),
        "cuda_arch_list": _build_info.CUDA_ARCH_LIST,
        "cpu_kernels": _C.cpu_kernels(),
    }


def cuda_available() -> bool:
    """True when the CUDA kernels are compiled in and a GPU is visible."""
    return bool(_C.with_cuda()) and torch.cuda.is_available()


__all__ = ["Quantizer", "Noise", "NOISES", "STRATEGIES", "functional", "reference", "scale", "ste", "nn", "convert",
           "NoiseController", "AlphaController", "freeze", "export", "build_info", "cuda_available", "ANAConfig"]
