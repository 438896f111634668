import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = (ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ.get("MEDRLVR_DATA_ROOT", DATA_ROOT))
    if not (root / "medqa").is_dir():
        pytest.fail(f"benchmark data not found at {root}: tests read ../shared/data beside the repository")
    return root


@pytest.fixture(scope="session")
def tokenizer():
    from medrlvr.models import load_tokenizer

    return load_tokenizer("tiny")


@pytest.fixture
def one_thread():
    """One intra-op thread: on a small shared CPU, two OpenMP threads competing with other processes are
    many times slower than one (measured 3 s vs 0.06 s per tiny SFT step under load)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
