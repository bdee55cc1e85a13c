# Two commands on a fresh machine:  make demo  (set up + run the demo)   make test  (set up + run the tests)
# Torch is installed first and pinned, so pip never swaps in a multi-GB CUDA build on a CPU-only machine.
# Elsewhere, pick your build: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu  (or .../whl/cu128)
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
TORCH_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: setup demo mini test test-fast lint format clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" $(TORCH_ARGS)
	$(BIN)/python -m pip install --quiet -e ".[dev,serving]"
	touch $@

demo: setup
	$(BIN)/python train.py

mini: setup
	$(BIN)/python -m huatuo.mini

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf outputs multirun .cache lightning_logs wandb
