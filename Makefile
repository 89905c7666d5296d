# Two entry points: `make run` (the app on the embedded local stack) and `make test` (what CI runs).
# Both create the virtualenv on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint unit venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[serve,dev,plots]'
	touch $@

run: venv
	$(BIN)/flowerdemo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

unit: venv
	$(BIN)/python -m pytest -m "not stack and not gui"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
