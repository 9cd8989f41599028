# lpm — `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch first and pinned: an unpinned torch lets pip pick a multi-GB CUDA build on CPU machines.
TORCH ?= torch==2.13.0
SWEEP ?= model=small,base,large dims=2d,3d
export WANDB_MODE ?= offline

.DEFAULT_GOAL := help
.PHONY: help install install-dev run test test-full test-slurm lint format bench report clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	@command -v $(PY) >/dev/null || { echo "needs $(PY) (set PY=python3.x)"; exit 1; }
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	@touch $@

install: $(VENV)/.installed ## create .venv and install lpm (CPU torch unless TORCH= says otherwise)

install-dev: $(VENV)/.installed-dev ## install lpm with the dev extras (pytest, ruff)

run: install ## run the main sweep: model=small,base,large × dims=2d,3d (override with SWEEP=...)
	$(BIN)/python -m lpm.run -m $(SWEEP)

test: install-dev ## run the fast test suite (what CI runs)
	$(BIN)/python -m pytest -q

test-full: install-dev ## run every test, the slow ones too (not the Slurm ones: make test-slurm)
	$(BIN)/python -m pytest -q -m "not slurm"

# Root on Debian/Ubuntu: installs slurmctld, slurmd, slurm-client and munge if missing. A cluster
# that cannot start fails here (LPM_REQUIRE_SLURM=1); plain pytest skips these tests instead.
test-slurm: install-dev ## Slurm tests on a single-node cluster it starts and stops (root, Debian)
	bash tests/slurm/cluster.sh start
	LPM_REQUIRE_SLURM=1 $(BIN)/python -m pytest -q -m slurm --durations=0 tests/slurm; \
	  status=$$?; bash tests/slurm/cluster.sh stop; exit $$status

lint: install-dev ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev ## format and autofix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install-dev ## benchmarks (~10 min on 2 cores): bench/bench.json, bench/bench.md, table printed last
	$(BIN)/python -m lpm.bench --out bench

report: install ## report on the latest sweep under multirun/
	$(BIN)/python -m lpm.report $(or $(lastword $(sort $(wildcard multirun/*/))),$(error no sweep under multirun/: run one first, e.g. make run))

clean: ## remove sweep output and caches (keeps .venv)
	rm -rf multirun outputs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
