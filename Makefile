# quota-engine: `make demo`, `make test`, `make bench`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $@

test: venv
	$(BIN)/ruff check engine tests benchmarks
	$(BIN)/python -m pytest -q

demo: venv
	$(BIN)/python -m engine.demo

bench: $(VENV)/.bench-installed
	$(BIN)/engine bench all

lint: venv
	$(BIN)/ruff check engine tests benchmarks
	$(BIN)/ruff format --check engine tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
