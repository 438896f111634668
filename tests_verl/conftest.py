"""Tests against verl's own code; run in .venv-verl by `make test-verl` (CI: .ci/run).

They are never skipped: without verl==0.9.1 importable, collection fails.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import verl  # noqa: E402  (ImportError here fails the run: these tests must not be skipped)
import pytest  # noqa: E402

from medrlvr.integrations.verl import VERL_VERSION  # noqa: E402

assert verl.__version__ == VERL_VERSION, f"tests_verl pin verl {VERL_VERSION}, found {verl.__version__}"


def prepare_dir(tmp, **over):
    from medrlvr.train.config import build_config
    from medrlvr.integrations.verl import prepare

    base = {"model": "smollm2-135m", "train_data": "starter:train", "eval_data": "starter:test", "max_steps": 2,
            "prompts_per_step": 4, "samples_per_prompt": 2, "mini_batch_size": 8, "micro_batch_size": 2,
            "max_new_tokens": 64, "eval_limit": 8}
    base.update(over)
    cfg = build_config("paper-3b", {k: str(v) for k, v in base.items()})
    return cfg, prepare(cfg, tmp, gpus_per_node=8)


@pytest.fixture(scope="session")
def ppo_run(tmp_path_factory):
    return prepare_dir(tmp_path_factory.mktemp("ppo"))


@pytest.fixture(scope="session")
def tokenizer():
    from medrlvr.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def compose():
    """verl's trainer config composed by Hydra from verl's own YAML (struct mode), as main_ppo does."""
    from hydra import compose as hcompose
    from hydra import initialize_config_module

    ctx = initialize_config_module(config_module="verl.trainer.config", version_base=None)
    ctx.__enter__()
    yield lambda overrides: hcompose(config_name="ppo_trainer", overrides=list(overrides))
    ctx.__exit__(None, None, None)
