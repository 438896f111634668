# Set-up and the two main commands. `make test` and `make demo` work on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build of PyTorch for this machine; a user with a GPU installs their own torch first.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-verl test-lmeval demo bench clean chromium docs

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test,bench,docs]"
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium for the report's browser test (the test is skipped, with its reason, without it).
chromium:
	@command -v chromium >/dev/null 2>&1 || { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium; the browser test will be skipped"; }

test: install chromium
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# verl integration tests (tests_verl/) in a second venv: verl 0.9.1 pins transformers<5.11, the main venv has 5.x.
# CPU torch is pinned explicitly (verl's base requirements leave torch open; an unpinned one pulls a CUDA build);
# none of verl's GPU extras (vllm, flash-attn, megatron) are installed or needed; VERL_CORE is the pure-Python
# part of verl's `verl-core` extra that its trainer modules import.
VERL_VENV := .venv-verl
VERL_SPEC ?= verl==0.9.1
VERL_CORE := "TransferQueue==0.1.11" "cachetools>=5" "msgspec>=0.18" "pyzmq>=25" "fastapi>=0.110" "uvicorn>=0.29"
VERL_STAMP := $(VERL_VENV)/.installed

$(VERL_VENV)/bin/python:
	$(PY) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/python -m pip install -q --upgrade pip

$(VERL_STAMP): pyproject.toml Makefile | $(VERL_VENV)/bin/python
	$(VERL_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)" "$(VERL_SPEC)" $(VERL_CORE) "pytest>=8" "pytest-timeout>=2.2"
	$(VERL_VENV)/bin/python -m pip install -q -e . "$(TORCH_SPEC)" "$(VERL_SPEC)"
	touch $(VERL_STAMP)

test-verl: $(VERL_STAMP)
	$(VERL_VENV)/bin/python -m pytest -q -p no:cacheprovider tests_verl $(PYTEST_ARGS)

# lm-evaluation-harness agreement tests (tests_lmeval/) in a third venv: lm-eval pulls evaluation libraries
# (sacrebleu, nltk, rouge, ...) that medrlvr does not need; CPU torch pinned as for verl; the version pinned
# because its task-YAML keys and simple_evaluate's result layout are what the tests read.
LMEVAL_VENV := .venv-lmeval
LMEVAL_SPEC ?= lm_eval==0.4.13
LMEVAL_STAMP := $(LMEVAL_VENV)/.installed

$(LMEVAL_VENV)/bin/python:
	$(PY) -m venv $(LMEVAL_VENV)
	$(LMEVAL_VENV)/bin/python -m pip install -q --upgrade pip

$(LMEVAL_STAMP): pyproject.toml Makefile | $(LMEVAL_VENV)/bin/python
	$(LMEVAL_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)" "$(LMEVAL_SPEC)" "pytest>=8" "pytest-timeout>=2.2"
	$(LMEVAL_VENV)/bin/python -m pip install -q -e . "$(TORCH_SPEC)" "$(LMEVAL_SPEC)"
	touch $(LMEVAL_STAMP)

test-lmeval: $(LMEVAL_STAMP)
	$(LMEVAL_VENV)/bin/python -m pytest -q -p no:cacheprovider tests_lmeval $(PYTEST_ARGS)

demo: install
	$(BIN)/medrlvr demo --output runs/demo

# The documentation site (mkdocs.yml; docs/hooks.py generates the reference pages) into site/, which git ignores.
# --strict: a broken link, a missing page or a failed generator fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

bench: install
	$(BIN)/python bench/rollout.py throughput
	$(BIN)/python bench/step.py vs-trl

clean:
	rm -rf $(VENV) $(VERL_VENV) $(LMEVAL_VENV) build site *.egg-info src/*.egg-info .pytest_cache
