# pisces — two commands do all set-up:  `make demo`  (runs the offline demo)  and  `make test`.
# Both create ./.venv (or use VENV=...) and install what is missing. torch is installed FIRST and only
# if the environment has none: on a CPU machine `torch==2.13.0`; on a GPU machine install your CUDA
# build into the venv first (see README) or pass TORCH_SPEC, e.g.
#   make setup TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"

VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pisces-installed

.PHONY: setup demo test test-all lint bench gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/pisces demo

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow"

lint: setup
	$(VENV)/bin/ruff check pisces_cli tests benchmarks
	$(VENV)/bin/ruff format --check pisces_cli tests benchmarks

bench: setup
	$(PY) benchmarks/bench_cli_startup.py

# GPU acceptance on one CUDA GPU, under 8 minutes: writes benchmarks/gpu-results.json and gpu-results.md
# (put a CUDA torch into the venv first, see the README; GPU_CHECK_ARGS="--parts iv2_reward" runs a subset)
GPU_CHECK_ARGS ?=
gpu-check: setup
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf pisces-demo .pytest_cache
