# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint bench

$(BIN)/soundry: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first: a plain `torch` requirement would pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,hf,eval]'
	touch $(BIN)/soundry

venv: $(BIN)/soundry

demo: venv
	$(BIN)/soundry demo

test: venv
	$(BIN)/python -m pytest -q --durations=30

lint: venv
	$(BIN)/ruff check src tests benchmarks

bench: venv
	$(BIN)/python benchmarks/data_throughput.py
