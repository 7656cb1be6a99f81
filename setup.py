"""Builds the one compiled extension, anacuda._C, from csrc/.

CPU kernels are always built. CUDA kernels are built when ANACUDA_WITH_CUDA=1, or (when the
variable is unset) when torch is a CUDA build, nvcc is found, and a GPU is visible or
TORCH_CUDA_ARCH_LIST is set. ANACUDA_WITH_CUDA=0 forces a CPU-only build.

Install with `pip install --no-build-isolation .` so the extension is built against the torch
that is installed (the wheel pins that torch's minor version).
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _version():
    """pyproject.toml's [project] version: the one place the version is written (setuptools reads it
    from there too; this copy goes into _build_info.py for anacuda.__version__)."""
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        m = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.MULTILINE)
    if m is None:
        sys.exit("anacuda: no version = \"...\" line in pyproject.toml")
    return m.group(1)


VERSION = _version()


def _toolkit_from_nvcc():
    """The real CUDA toolkit folder behind the first nvcc on PATH (which may be a wrapper)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    real = os.path.realpath(nvcc)
    candidate = os.path.dirname(os.path.dirname(real))
    if os.path.isfile(os.path.join(candidate, "include", "cuda_runtime.h")):
        return candidate
    # A wrapper script: ask nvcc itself where it lives.
    try:
        out = subprocess.run([nvcc, "--dryrun", "--version"], capture_output=True, text=True, timeout=60)
        text = out.stdout + out.stderr
    except (OSError, subprocess.SubprocessError):
        return None
    for key in ("TOP", "_HERE_"):
        m = re.search(rf"^#\$ {key}=(.+)$", text, re.MULTILINE)
        if m:
            path = os.path.realpath(m.group(1).strip())
            if key == "_HERE_":
                path = os.path.dirname(path)
            if os.path.isfile(os.path.join(path, "include", "cuda_runtime.h")):
                return path
    return None


def _find_cuda_home():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        path = os.environ.get(var)
        if path and os.path.isfile(os.path.join(path, "bin", "nvcc")):
            return path
    path = _toolkit_from_nvcc()
    if path:
        return path
    for path in ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True):
        if os.path.isfile(os.path.join(path, "bin", "nvcc")):
            return os.path.realpath(path)
    return None


CUDA_HOME = _find_cuda_home()
if CUDA_HOME:
    # torch.utils.cpp_extension reads it at import time.
    os.environ["CUDA_HOME"] = CUDA_HOME

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda():
    flag = os.environ.get("ANACUDA_WITH_CUDA")
    if flag is not None and flag.strip() != "":
        want = flag.strip() not in ("0", "false", "False", "no")
        if want and (torch.version.cuda is None or CUDA_HOME is None):
            sys.exit(
                "anacuda: ANACUDA_WITH_CUDA=1 but "
                + ("torch is a CPU-only build" if torch.version.cuda is None else "no CUDA toolkit (nvcc) was found")
                + "; install a CUDA build of torch and the CUDA toolkit, or set ANACUDA_WITH_CUDA=0"
            )
        return want
    return (
        torch.version.cuda is not None
        and CUDA_HOME is not None
        and (torch.cuda.is_available() or bool(os.environ.get("TORCH_CUDA_ARCH_LIST")))
    )


def _wheel_cuda_includes():
    """Include folders of torch's CUDA wheels (site-packages/nvidia/*/include) that hold headers
    the toolkit lacks (e.g. cusparse.h). They are searched after the toolkit's own."""
    toolkit = os.path.join(CUDA_HOME, "include")
    have = set(os.listdir(toolkit)) if os.path.isdir(toolkit) else set()
    dirs = []
    for site in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for inc in sorted(glob.glob(os.path.join(site, "nvidia", "*", "include"))):
            if set(os.listdir(inc)) - have:
                dirs.append(inc)
    return dirs


WITH_CUDA = _want_cuda()
if WITH_CUDA and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"  # no GPU to ask: Ampere and Hopper

torch_minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
sources = ["csrc/anacuda.cpp"] + sorted(glob.glob("csrc/ops/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
# No contraction of a * b + c into FMA: the AVX2 build of the CPU kernels (csrc/cpu/isa_avx2.cpp)
# rounds as the baseline build and the CUDA kernels do. No trapping maths (nothing unmasks the
# floating-point exceptions): lets the compiler vectorise `isnan(a) ? a : e * v` as a select.
cxx_flags = ["-O3", "-Wall", "-Wno-unknown-pragmas", "-ffp-contract=off", "-fno-trapping-math"]
# at::parallel_for runs its chunks on torch's OpenMP threads only in code compiled with OpenMP
# (without it every CPU kernel runs on one thread). The libgomp torch loads is the one used.
TORCH_OPENMP = "parallel backend: OpenMP" in torch.__config__.parallel_info()
cxx_flags += ["-fopenmp"] if TORCH_OPENMP else []
link_flags = ["-fopenmp"] if TORCH_OPENMP else []
define_macros = [("ANACUDA_WITH_CUDA", "1" if WITH_CUDA else "0")]
if WITH_CUDA:
    # No fast math: CPU and CUDA must agree with the reference; no FMA contraction either,
    # so the two compute the same roundings.
    nvcc_flags = ["-O3", "--fmad=false", "--expt-relaxed-constexpr", "-lineinfo"]
    wheel_includes = _wheel_cuda_includes()
    for inc in wheel_includes:
        nvcc_flags += ["-isystem", inc]
    ext = CUDAExtension(
        "anacuda._C",
        sources + sorted(glob.glob("csrc/cuda/*.cu")),
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=link_flags,
    )
else:
    wheel_includes = []
    ext = CppExtension("anacuda._C", sources, define_macros=define_macros, extra_compile_args={"cxx": cxx_flags},
                       extra_link_args=link_flags)

def _nvcc_version():
    try:
        out = subprocess.run([os.path.join(CUDA_HOME, "bin", "nvcc"), "--version"], capture_output=True, text=True)
        m = re.search(r"release (\d+\.\d+)", out.stdout)
        return m.group(1) if m else None
    except OSError:
        return None


class Build(BuildExtension):
    """build_ext that also records, for the run-time check in anacuda/__init__.py, what it built."""

    def run(self):
        info = "".join([
            "# Written by setup.py at build time.\n",
            f"VERSION = {VERSION!r}\n",
            f"TORCH_VERSION = {torch.__version__!r}\n",
            f"WITH_CUDA = {WITH_CUDA!r}\n",
            f"CUDA_VERSION = {(torch.version.cuda if WITH_CUDA else None)!r}\n",
            f"NVCC_VERSION = {(_nvcc_version() if WITH_CUDA else None)!r}\n",
            f"CUDA_ARCH_LIST = {(os.environ.get('TORCH_CUDA_ARCH_LIST', 'visible GPU') if WITH_CUDA else None)!r}\n",
        ])
        folder = os.path.join(ROOT if self.inplace else self.build_lib, "anacuda")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "_build_info.py"), "w") as f:
            f.write(info)
        super().run()


print(
    "anacuda build: torch {} | CUDA kernels: {} | CUDA_HOME: {} | arch: {} | extra CUDA includes: {}".format(
        torch.__version__,
        "yes" if WITH_CUDA else "no",
        CUDA_HOME,
        os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPU") if WITH_CUDA else "-",
        len(wheel_includes),
    ),
    file=sys.stderr,
)

setup(
    name="anacuda",
    packages=find_packages(include=["anacuda", "anacuda.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": Build},
    install_requires=[f"torch=={torch_minor}.*", "numpy"],
    zip_safe=False,
)
