# One virtualenv in .venv; every target creates it as needed.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-test run test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

# torch is test-only (the reference test). Pin it before anything can ask for it:
# unpinned, pip would take a multi-GB CUDA build.
install-test: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'

run: install
	$(BIN)/iraas classify ../shared/datasets/cse546-imagenet-100/images

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

bench: install
	$(BIN)/iraas bench model --procs 2
	$(BIN)/python benchmarks/decode.py
	$(BIN)/python benchmarks/queue_sqlite.py

clean:
	rm -rf $(VENV) build *.egg-info
