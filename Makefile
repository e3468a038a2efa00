# quota-engine: `make demo`, `make test`, `make bench`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-packaging demo bench chaos lint clean redis-server

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $@

# tests/test_shared.py starts its own throwaway redis-server (tests/conftest.py).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq redis-server) \
		|| echo "warning: redis-server is missing; tests/test_shared.py will be skipped"

test: venv redis-server
	$(BIN)/ruff check engine tests benchmarks
	$(BIN)/ruff format --check engine tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n auto

# The wheel installed without extras in a fresh venv: engine mock, a request, engine run
# (tests/test_packaging.py, also part of make test; its wheels are kept in
# .pytest_cache/d/wheelhouse, downloaded once).
test-packaging: venv
	$(BIN)/python -m pytest -q -m packaging tests/test_packaging.py

demo: venv
	$(BIN)/python -m engine.demo

bench: $(VENV)/.bench-installed
	$(BIN)/engine bench all

# Faults, crashes and limit changes against the served mock; figures in docs/reliability.md.
chaos: $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks.chaos --long 200000

lint: venv
	$(BIN)/ruff check engine tests benchmarks
	$(BIN)/ruff format --check engine tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache
