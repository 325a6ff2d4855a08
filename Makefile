# gmem-broker developer loop. `make run` serves on 127.0.0.1:8000; `make test` sets up and runs everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv run test lint pytest openapi bench clean

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

run: venv
	$(BIN)/gmem-broker db upgrade
	$(BIN)/gmem-broker serve

lint: venv
	$(BIN)/ruff check service tests migrations
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest

test: lint pytest

openapi: venv
	$(BIN)/gmem-broker openapi -o openapi/openapi.json

bench: venv
	$(BIN)/gmem-broker bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
