# FuseBench: `make demo` (install, build the tiny zoo, fuse, evaluate, leaderboard) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BENCH := $(VENV)/bin/bench
# The CPU build of torch first (a bare `torch` requirement would pull a multi-GB CUDA build).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.fusebench-installed

.PHONY: install demo test lint bench-perf clean-results

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BENCH) zoo build
	$(BENCH) run --fuser merge --name demo-merge
	$(BENCH) run --fuser ensemble --name demo-ensemble
	$(BENCH) leaderboard

test: install
	$(PY) -m pytest -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check harness fusers evals tests benchmarks
