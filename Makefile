# One entry point for people and CI. `make test` is exactly what .ci/run runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint typecheck pytest setup setup-dev evaluate container-test browser-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# Runtime dependencies only (what the service needs), then serve the bundled model.
setup: $(BIN)/python
	$(BIN)/pip install -e .

serve: setup
	$(BIN)/uvicorn app.main:app --host $(HOST) --port $(PORT)

setup-dev: $(BIN)/python
	$(BIN)/pip install -e '.[dev]'

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy

pytest:
	$(BIN)/pytest

# Lint, type-check and the whole default test suite (the container test has its own target).
test: setup-dev lint typecheck pytest

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
