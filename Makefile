# Set-up and the two main commands. `make test` and `make demo` work on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build of PyTorch for this machine; a user with a GPU installs their own torch first.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test demo bench clean chromium

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium for the report's browser test (the test is skipped, with its reason, without it).
chromium:
	@command -v chromium >/dev/null 2>&1 || { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium; the browser test will be skipped"; }

test: install chromium
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: install
	$(BIN)/medrlvr demo --output runs/demo

bench: install
	$(BIN)/python bench/rollout_throughput.py
	$(BIN)/python bench/step_vs_trl.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
