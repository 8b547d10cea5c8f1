# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv (Python 3.11+) and installs openbell with its dev tools first.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The demo keeps its state (lab, Prefect database, reports) inside the checkout.
DEMO_HOME ?= $(CURDIR)/.openbell

.PHONY: demo test lint typecheck bench clean stop venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "openbell needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

demo: venv
	OPENBELL_HOME=$(DEMO_HOME) $(BIN)/python -m openbell.deployments.demo

test: venv
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

bench: venv
	$(BIN)/python benchmarks/sod_scale.py

# Stop the demo's lab and Prefect server.
stop: venv
	OPENBELL_HOME=$(DEMO_HOME) $(BIN)/openbell lab down
	OPENBELL_HOME=$(DEMO_HOME) $(BIN)/python -c 'from openbell.deployments.prefect_server import stop_server; stop_server()'

clean: stop
	rm -rf $(DEMO_HOME)
