# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv, installs torch first (a bare torch requirement would pull a CUDA build),
# then the package with what that target needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"

venv: $(BIN)/python

demo: venv
	$(BIN)/pip install -q -e ".[server]"
	BIN=$(BIN) bash scripts/serve_demo.sh

test: venv
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/python -m pytest -q
