"""Pieces the rollout benchmarks share (``rollout_throughput.py``, ``scaling_curves.py``): the MedQA prompts
they time, fixed-length sampling, one timed ``generate`` call, the peak RSS, and the roofline limit of a
rollout (:mod:`medrlvr.roofline`). Not a benchmark itself; the scripts in ``bench/`` import it."""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


def default_data_root() -> str:
    """``$MEDRLVR_DATA_ROOT``, else ``../shared/data`` beside the repository."""
    return os.environ.get("MEDRLVR_DATA_ROOT") or str(ROOT / ".." / "shared" / "data")


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def medqa_prompts(tok, count: int, data_root: str | None = None) -> tuple[list[str], list[int]]:
    """The first ``count`` MedQA (4-option, test) questions rendered with the R1-Zero template, and their
    token counts under ``tok``."""
    from medrlvr.data import load_benchmark
    from medrlvr.prompts import render

    recs = load_benchmark("medqa-4opt:test", data_root=data_root or default_data_root()).records[:count]
    prompts = [render(r, "r1-zero") for r in recs]
    return prompts, [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]


def fixed_params(new_tokens: int, seed: int = 0):
    """Sampling at temperature 1 with ``ignore_eos`` and no stop string: every completion has exactly
    ``new_tokens`` tokens, so the work does not depend on what is sampled."""
    from medrlvr.rollout import SamplingParams

    return SamplingParams(max_new_tokens=new_tokens, temperature=1.0, stop=(), ignore_eos=True, seed=seed)


def run(engine, prompts, n, params) -> tuple[float, int]:
    """One ``engine.generate`` call: (seconds, completion tokens returned)."""
    t0 = time.perf_counter()
    groups = engine.generate(prompts, n, params)
    dt = time.perf_counter() - t0
    return dt, sum(len(c.token_ids) for g in groups for c in g)


def engine_dtype(engine) -> str:
    """``"bf16"`` or ``"fp32"``: what the engine computes in (the ``hf`` engine: the policy's own dtype)."""
    import torch

    dt = getattr(engine, "dtype", None)
    if dt is None:
        dt = next(engine.model.parameters()).dtype
    return "bf16" if dt == torch.bfloat16 else "fp32"
