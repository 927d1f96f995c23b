# sfd: `make run` sets up and starts the daemon; `make test` sets up and runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint types pytest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/sfd init-config var/sfd.toml
	$(BIN)/sfd --config var/sfd.toml run

lint: $(STAMP)
	$(BIN)/ruff check sfd tests bench
	$(BIN)/ruff format --check sfd tests bench

types: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint types pytest

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
