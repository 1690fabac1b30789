# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; skipped when the environment already has a torch (keep your CUDA build).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install install-dev demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
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

# The CPU benchmarks; benchmarks/gpu_checks.sh runs every GPU check and benchmark on a CUDA machine.
CPU_BENCHMARKS := bench_lrn bench_step bench_loader bench_store

bench: install-dev
	for b in $(CPU_BENCHMARKS); do $(PY) benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
