# One entry point for people and CI. `make test` is exactly what .ci/run runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint typecheck pytest audit setup setup-dev evaluate container-test browser-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# Runtime dependencies only (what the service needs), then serve the bundled model. Each install runs
# once, and again when pyproject.toml changes (the stamp files record it).
setup: $(VENV)/.installed-runtime

serve: setup
	$(BIN)/python -m app.serve --host $(HOST) --port $(PORT)

setup-dev: $(VENV)/.installed-dev

$(VENV)/.installed-runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[dev]'
	touch $@

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck:
	$(BIN)/mypy

pytest:
	$(BIN)/pytest

# Known vulnerabilities in the installed packages (scripts/audit.py): exit 1 on a finding, 2 when a
# package could not be audited (offline, or older than its latest release while only PyPI's project
# JSON answers); every package not audited is listed by name.
audit:
	$(BIN)/python scripts/audit.py

# Lint, type-check, the whole default test suite (the container test has its own target), then the
# audit: a known vulnerability fails the run; being offline only prints what went unaudited.
test: setup-dev lint typecheck pytest
	$(BIN)/python scripts/audit.py --allow-incomplete

evaluate:
	$(BIN)/python -m models.evaluate models/default

# Needs root (it may start dockerd); installs the Debian packages it uses when they are missing.
container-test: setup-dev
	@command -v dockerd >/dev/null && command -v debootstrap >/dev/null || \
		(apt-get update && apt-get install -y docker.io docker-compose debootstrap)
	$(BIN)/pytest -m container

# Drives Debian's Chromium through /docs ("Try it out" for both image endpoints); installs it when missing.
browser-test: setup-dev
	@test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)
	$(BIN)/pytest -m browser

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
