# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv lab lab-down lint lint-workflows unit integration e2e test demo lock clean

$(BIN)/.installed: requirements.txt requirements-dev.txt scripts/uv-requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r scripts/uv-requirements.txt
	$(BIN)/uv pip install --quiet --python $(BIN)/python --require-hashes -r requirements.txt -r requirements-dev.txt
	touch $@

venv: $(BIN)/.installed

lab:
	bash tests/lab/up.sh

lab-down:
	bash tests/lab/down.sh

lint: venv lint-workflows
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# actionlint (runs shellcheck on run: scripts when it is installed) and zizmor
# without network. zizmor's self-repository audit is off: act, which runs the
# e2e workflows, resolves a local action only as `uses: ./`, never `$/`.
lint-workflows: venv
	$(BIN)/actionlint .github/workflows/*.yml
	$(BIN)/zizmor --offline --no-progress --config <(printf 'rules:\n  self-repository:\n    disable: true\n') \
		.github/workflows action.yml

unit: venv
	$(BIN)/python -m pytest tests/unit

integration: venv lab
	$(BIN)/python -m pytest tests/integration

e2e: venv lab
	$(BIN)/python -m pytest tests/e2e

test: venv lint lab
	$(BIN)/python -m pytest

demo: venv lab
	$(BIN)/python scripts/demo.py

# requirements-lightweight.txt (lightweight mode's set) is held to requirements.txt's pins with -c:
# a subset of it, same versions and hashes.
lock: venv
	$(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 requirements.in -o requirements.txt
	$(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 requirements-lightweight.in -c requirements.txt \
		-o requirements-lightweight.txt
	$(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 requirements-dev.in -o requirements-dev.txt
	$(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 scripts/uv-requirements.in -o scripts/uv-requirements.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
