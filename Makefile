# TentMan billing jobs. Quickstart: `make demo`, then `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit test-fast lint format reliability-report tools bench bench-ui bench-scale lock dist db-stop env clean up down

# The development venv: the run-time lock and the development lock (the tools only, so the two
# together are the whole set), then tentman-billing and the developer tooling (dev/, tentman_dev)
# editable, without resolving anything again. The locks are installed by uv (pinned in the
# development lock, installed first by pip): the same pins in seconds, where pip takes one to two
# minutes of every clean clone's CI.
UV_PIN = $(shell grep '^uv==' requirements-dev.lock)
$(STAMP): requirements.lock requirements-dev.lock pyproject.toml dev/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24" "$(UV_PIN)"
	$(BIN)/python -m uv pip install -q --python $(BIN)/python -r requirements.lock -r requirements-dev.lock
	$(BIN)/python -m pip install -q --no-deps -e . -e ./dev
	@# setuptools leaves the editable install's metadata in include/, which the install puts on
	@# sys.path: Airflow would see the plugin's entry point twice and report one as an import error.
	rm -rf include/*.egg-info
	@touch $@

venv: $(STAMP)

## Run the monthly rent DAG (and the utility DAG) once on demo data, on an embedded PostgreSQL.
demo: $(STAMP)
	$(BIN)/tentman-dev demo

## A live Airflow (api-server, scheduler, dag-processor, triggerer) on demo data: UI on :8080.
## EXECUTOR=celery WORKERS=2: CeleryExecutor with that many workers; the broker is TENTMAN_REDIS_URL,
## else an embedded Valkey server.
up: $(STAMP)
	$(BIN)/tentman-dev up --port $(or $(PORT),8080) --executor $(or $(EXECUTOR),local) --workers $(or $(WORKERS),2)

down: $(STAMP)
	$(BIN)/tentman-dev down

## Debian packages the tests use: docker-compose validates docker-compose.yaml offline (no Docker
## engine needed); Chromium is the browser of the UI test (driven by Playwright); prometheus brings
## promtool, which checks the monitoring profile's config, alert rules and dashboard queries.
DEBIAN_TOOLS := docker-compose chromium prometheus
tools:
	@missing=""; for tool in $(DEBIAN_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null; } || \
	  { echo "make test needs:$$missing (apt-get install --no-install-recommends$$missing)"; exit 1; }; \
	fi

## The whole test suite (embedded PostgreSQL, or TENTMAN_TEST_DATABASE_URL when set), in
## TEST_PROCESSES processes (pytest-xdist; 0: in this one). The tests that start Airflow processes
## (tests/live, tests/ui) all run in one of them, one after the other (tests/conftest.py says why).
## It ends with its total time and its ten slowest tests (docs/testing.md, "Suite time"): a test
## grown slow shows in every run.
TEST_PROCESSES ?= 2
test: $(STAMP) tools
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --durations=10 $(PYTEST_ARGS)

## The tests that need no database and no Airflow metadata (proration, periods, settings, params): seconds.
test-unit: $(STAMP)
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

## Lint and format check (ruff, configured in pyproject.toml); CI runs it before the tests.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## Fix what ruff can fix, and format.
format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## The fast subset: no live Airflow processes, no slow fault runs.
test-fast: $(STAMP) tools
	$(BIN)/python -m pytest -m "not live and not slow" $(PYTEST_ARGS)

## Reliability scenarios (faults, concurrency, bad input, isolation, properties) and their audit table.
reliability-report: $(STAMP) tools
	$(BIN)/python -m pytest -m reliability --reliability-report -q $(PYTEST_ARGS)

## Benchmark of the billing engine (not a test).
bench: $(STAMP)
	$(BIN)/python -m tentman_dev.bench.engines $(BENCH_ARGS)

## The "Billing runs" page's queries on a million invoices (not a test).
bench-ui: $(STAMP)
	$(BIN)/python -m tentman_dev.bench.ui $(BENCH_ARGS)

## The whole pipeline at scale on live Airflow: 2,000 organizations, 1,000,000 leases (not a test).
bench-scale: $(STAMP)
	$(BIN)/python -m tentman_dev.bench.scale $(BENCH_ARGS)

## Re-pin both locks from a fresh resolve. requirements.lock: a venv built from requirements.txt
## alone, frozen (what a deployment installs). requirements-dev.lock: requirements-dev.txt installed
## on top, constrained by requirements.lock so no run-time pin moves, frozen, minus every line
## already in requirements.lock: the development tools only, installed together with the run-time lock.
lock:
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/pip install -q -r requirements.txt
	{ echo '# Generated by `make lock` (pip freeze of a venv built from requirements.txt, Python 3.11). Do not edit by hand.'; \
	  build/lock-venv/bin/pip freeze --exclude-editable; } > requirements.lock
	build/lock-venv/bin/pip install -q -r requirements-dev.txt -c requirements.lock
	{ echo '# Generated by `make lock`: what requirements-dev.txt adds to requirements.lock (Python 3.11). Do not edit by hand.'; \
	  build/lock-venv/bin/pip freeze --exclude-editable | grep -vxFf requirements.lock; } > requirements-dev.lock
	rm -rf build/lock-venv

## The tentman-billing wheel and sdist in dist/ (the package under include/ only: no DAGs, no
## tests, no developer tooling). The Dockerfile builds the same wheel in its first stage.
# Built from a copy of the files the build reads: setuptools writes the sdist's metadata (egg-info)
# beside the package, and while it was in include/ the development venv (which has include/ on its
# path) saw a second tentman-billing, whose plugin entry point Airflow reported as a duplicate in
# any Airflow process started meanwhile (a test of the plugin, under `make test`, failed that way).
DIST_SOURCES = pyproject.toml MANIFEST.in README.md LICENSE include
dist: $(STAMP)
	rm -rf dist
	@src=$$(mktemp -d) && trap 'rm -rf "$$src"' EXIT && \
	  tar -cf - --exclude=__pycache__ --exclude='*.egg-info' $(DIST_SOURCES) | tar -xf - -C "$$src" && \
	  $(BIN)/python -m build --outdir "$(CURDIR)/dist" "$$src"

## Print the local environment (embedded PostgreSQL, Airflow home) as shell exports.
env: $(STAMP)
	@$(BIN)/tentman-dev env

db-stop: $(STAMP)
	$(BIN)/tentman-dev stop-db

clean: down db-stop
	rm -rf .local
