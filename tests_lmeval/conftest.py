"""Tests against EleutherAI's lm-evaluation-harness; run in .venv-lmeval by `make test-lmeval` (CI: .ci/run).

They are never skipped: without lm_eval==0.4.13 importable, collection fails. The Hub is never contacted: the
models are local directories and the tasks read local JSONL (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import lm_eval  # noqa: E402  (ImportError here fails the run: these tests must not be skipped)

LM_EVAL_VERSION = "0.4.13"
assert lm_eval.__version__ == LM_EVAL_VERSION, f"tests_lmeval pin lm_eval {LM_EVAL_VERSION}, found {lm_eval.__version__}"
