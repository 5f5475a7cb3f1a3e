# dask-deploy: every target has a `## description`; `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

BACKEND ?= marathon
VALUES ?=
SET ?=
OUT ?= rendered/$(BACKEND)
PYTEST_ARGS ?=
BENCH_ARGS ?=
REGISTRY ?=
TAG ?=
REGISTRY_PORT ?= 5000
# The whole suite mostly waits (for SLURM, Docker, schedulers, workers), so more workers than
# cores pay; the unit, render and fuzz tiers compute, so one worker per core. Tests that share
# the project's images, the HTCondor pool, the sshd servers or Grid Engine keep to one worker per
# group (xdist groups by marker, tests/conftest.py), each worker starts a SLURM of its own for
# the SLURM and PBS tests (tests/slurm_support.py), and the services a run started are
# stopped once the whole run ended (tests/service_support.py). TEST_WORKERS=0 runs the suite in
# one process, one test after another.
TEST_WORKERS ?= 6
# Python writes each module's bytecode once and every later process reads it (pip installs
# without compiling what nobody imports). Some environments switch that off; the suite starts
# more than a thousand Python processes, each compiling dask_deploy and the test helpers again.
unexport PYTHONDONTWRITEBYTECODE
FAST_WORKERS ?= auto
XDIST := --dist loadgroup

.PHONY: help venv render golden lint test test-fast fuzz demo clean docker-up docker-down base-images images publish registry-up registry-down bench-images bench bench-boot30 bench-all bench-quick

help: ## List the targets and what they do
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP) ## Create .venv with the package and the pinned tools

render: $(STAMP) ## Render BACKEND [VALUES=file] [SET="k=v ..."] [OUT=dir] into plain manifests
	$(BIN)/dask-deploy render --backend $(BACKEND) $(if $(VALUES),--values $(VALUES)) $(foreach s,$(SET),--set '$(s)') --out $(OUT)

golden: $(STAMP) ## Re-render every test scenario into tests/golden/
	$(BIN)/python -m dask_deploy.golden tests/scenarios tests/golden

lint: $(STAMP) ## ruff and mypy (strict on runtime/)
	$(BIN)/ruff check runtime tests bench
	$(BIN)/ruff format --check runtime tests bench
	$(BIN)/mypy

test: $(STAMP) ## Every test tier, lint included (tests/lint), on TEST_WORKERS workers (installs what it needs); ends with the 15 slowest
	$(BIN)/pytest -n $(TEST_WORKERS) $(XDIST) --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP) ## Unit, render and fuzz tiers only: no SLURM, Docker or live cluster (< 2 min)
	$(BIN)/pytest -n $(FAST_WORKERS) $(XDIST) --durations=15 tests/unit tests/render tests/fuzz $(PYTEST_ARGS)

fuzz: $(STAMP) ## The fuzz tier with the "fuzz" Hypothesis profile: five times the cases, new random ones each run
	$(BIN)/pytest -n $(FAST_WORKERS) $(XDIST) --durations=15 --hypothesis-profile=fuzz tests/fuzz $(PYTEST_ARGS)

docker-up: ## Install docker.io when missing and start dockerd --bridge=none when no engine answers
	scripts/docker-up.sh

docker-down: ## Stop the Docker engine docker-up started (and only that one)
	scripts/docker-down.sh

base-images: docker-up ## Build a local stand-in for debian:bookworm-slim when that tag is absent (no pulls)
	scripts/base-images.sh

images: $(STAMP) base-images ## Build the scheduler, worker and scaler images offline, tagged with the package version
	PYTHON=$(BIN)/python scripts/build-images.sh

publish: $(STAMP) ## Build the images and push them to REGISTRY (host[:port][/path]) as TAG (default: the version) and its minor; print digests
	@[ -n "$(REGISTRY)" ] || { echo "publish: REGISTRY: got '', expected host[:port][/path], e.g. make publish REGISTRY=127.0.0.1:5000/dask-deploy" >&2; exit 2; }
	PYTHON=$(BIN)/python scripts/publish-images.sh '$(REGISTRY)' $(if $(TAG),'$(TAG)')

registry-up: ## Start a Distribution registry (Debian docker-registry) on 127.0.0.1:REGISTRY_PORT (default 5000)
	scripts/registry-up.sh $(REGISTRY_PORT)

registry-down: ## Stop the registry registry-up started on REGISTRY_PORT
	scripts/registry-down.sh $(REGISTRY_PORT)

bench-images: images ## Print each image's size against its target, each layer with the instruction that made it and which images share it, and the median cold start of a worker container
	$(BIN)/python bench/images.py

demo: $(STAMP) ## Start a scheduler and the scaler, run a bursty workload, plot workers over time
	$(BIN)/python -m dask_deploy.demo

bench: $(STAMP) ## Real workers on the short traces (ours, Adaptive, static max/min; clairvoyant simulated), 3 interleaved reps; then the simulated suite at boot 5/30/90 s and the 1000-worker scheduler cost (< 22 min)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-boot30: $(STAMP) ## One real run of `bursty` per policy at a 30 s boot delay, to check the simulator there (about 4 min)
	$(BIN)/python bench/run.py --boot-delay 30 --traces bursty --reps 1 --no-suite --out bench/results/boot30 $(BENCH_ARGS)

bench-all: bench-images bench bench-boot30 ## Every benchmark: the images (size, cold start), the scaler comparison, the 30 s boot check

bench-quick: $(STAMP) ## One repetition of two short traces (development check of the bench harness)
	$(BIN)/python bench/run.py --quick $(BENCH_ARGS)

clean: ## Remove the venv, rendered output and caches
	rm -rf $(VENV) rendered .mypy_cache .ruff_cache .pytest_cache
