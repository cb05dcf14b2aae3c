# mm — set up, test, lint, benchmark, demo, nightly. See README.md.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install test test-fast lint format bench demo nightly clean

install: $(BIN)/mm

$(BIN)/mm: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# llama-cpp-python compiles llama.cpp from source here (~6 min on 2 cores); pip caches the wheel.
	$(BIN)/pip install -e '.[dev,server]'
	touch $@

test: install
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow"

lint: install
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/ruff format --check pipeline tests bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff format pipeline tests bench
	$(BIN)/ruff check --fix pipeline tests bench

bench: install
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/header.py
	$(BIN)/python bench/quantize.py
	$(BIN)/python bench/registry.py
	$(BIN)/python bench/build.py
	$(BIN)/python bench/moe.py
	$(BIN)/python bench/measure.py

demo: install
	MM_HOME=./cache $(BIN)/mm demo

nightly: install
	MM_HOME=./cache $(BIN)/mm build --all --keep-going --report cache/nightly-report.json

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
