# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
# `make demo` installs the core package only (what `masklab segment` and the demo use); `make test`
# installs the [dev] extra (every optional dependency the tests exercise). For a small CPU-only install:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTHON      ?= python3
TORCH_INDEX ?=
VENV        := .venv
BIN         := $(VENV)/bin
PIP         := $(BIN)/python -m pip install -q --disable-pip-version-check
CORE        := $(VENV)/.stamp-core
DEV         := $(VENV)/.stamp-dev

.PHONY: demo test lint unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(CORE): pyproject.toml | $(BIN)/python
	$(if $(TORCH_INDEX),$(PIP) torch torchvision --index-url $(TORCH_INDEX))
	$(PIP) -e .
	@touch $(CORE)

$(DEV): pyproject.toml | $(BIN)/python
	$(if $(TORCH_INDEX),$(PIP) torch torchvision --index-url $(TORCH_INDEX))
	$(PIP) -e ".[dev]"
	@touch $(DEV) $(CORE)

demo: $(CORE)
	$(BIN)/python -m masklab.demo --out outputs/demo

lint: $(DEV)
	$(BIN)/ruff check masklab tests benchmarks

unit: $(DEV)
	$(BIN)/python -m pytest -q

test: lint unit

bench: $(DEV)
	$(BIN)/masklab bench

clean:
	rm -rf outputs .pytest_cache .ruff_cache
