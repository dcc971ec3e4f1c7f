# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv if missing, installs, exports the bundled model to every target, verifies, benchmarks
#   make test   creates .venv if missing, installs, runs the test suite
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL_DIR := dist/all-MiniLM-L6-v2
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test install lint clean

install: $(STAMP)

# torch first, pinned: a looser requirement pulls several GB of CUDA wheels.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PYTHON) cli.py export --target all
	$(PYTHON) cli.py bench $(MODEL_DIR) --json $(MODEL_DIR)/bench.json
	$(PYTHON) cli.py report $(MODEL_DIR)

test: $(STAMP)
	$(PYTHON) -m pytest

lint: $(STAMP)
	$(PYTHON) -m ruff check .

clean:
	rm -rf dist
