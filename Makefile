# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch to install; skipped when the environment already has a torch (keep your CUDA build).
# From PyPI, Linux gets its CUDA build of this version (macOS and Windows a CPU one); for the smaller
# CPU-only build on Linux, name PyTorch's CPU wheel index: make TORCH_INDEX=URL
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: install install-dev demo test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	$(PY) -m pip install --quiet -e .
	touch $@

# Tests and benchmarks also need the optional extras (ONNX, TensorBoard, Triton); the demo does not.
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/alexnet demo

test: install-dev
	$(PY) -m pytest -q

# For everyday work: the tests not marked slow (pyproject.toml says which are); `make test` runs them all.
test-fast: install-dev
	$(PY) -m pytest -q -m "not slow"

# The CPU benchmarks; benchmarks/gpu_checks.sh runs every GPU check and benchmark on a CUDA machine.
CPU_BENCHMARKS := bench_lrn bench_step bench_loader bench_store

bench: install-dev
	for b in $(CPU_BENCHMARKS); do $(PY) benchmarks/$$b.py || exit 1; done

# build/ too: setuptools leaves a copy of the package there, and a later wheel built beside it would
# still carry modules since deleted from the source.
clean:
	rm -rf $(VENV) runs .pytest_cache build dist *.egg-info
