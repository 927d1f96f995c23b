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

# The demo: sfd on var/sfd.db with a sandbox marketplace and a simulated shop, all on
# 127.0.0.1. Ctrl-C stops it. For a real set-up, edit var/sfd.toml and use `sfd run`.
run: $(STAMP)
	$(BIN)/sfd init-config var/sfd.toml
	$(BIN)/sfd --config var/sfd.toml demo

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
