# The two commands of the README's Quick start, and what they need.
#   make demo   set up .venv, bring the local stack up, run the demo
#   make test   set up .venv, run the whole test suite (it starts the stack if needed)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install only when the dependencies or the C part of the codec change.
STAMP  := $(VENV)/.apex-installed

.PHONY: demo test install up down lint

demo: install
	$(BIN)/apex dev up
	$(BIN)/apex demo

test: install
	$(BIN)/python -m pytest -q

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml setup.py constraints.txt apex/_avro.c
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

up: install
	$(BIN)/apex dev up

down:
	$(BIN)/apex dev down

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
