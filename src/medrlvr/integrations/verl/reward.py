"""The reward entry point verl loads: ``compute_score`` scores one verl sample with medrlvr's reward.

``medrlvr verl prepare`` writes a ``medrlvr_reward.py`` that calls :func:`compute_score` with the run's scheme and
pre-fill; ``medrlvr data export --format verl`` rows carry what it reads in ``extra_info``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medrlvr.prompts import THINK_PREFILL
from medrlvr.records import LETTERS
from medrlvr.reward import FLAGS, check_n_options, completion_text, join_prefill, normalize_options, score

DEFAULT_N_OPTIONS = 5
"""Number of options assumed when ``extra_info`` gives neither ``n_options`` nor ``options`` (widened to cover
the gold letter when that lies further)."""


def compute_score(data_source: Any, solution_str: Any, ground_truth: Any, extra_info: Mapping | None = None,
                  scheme: str | None = None, prefill: str | None = THINK_PREFILL, **_: Any) -> dict[str, Any]:
    """verl reward entry point: joins the pre-fill, scores with :func:`medrlvr.reward.score`.

    Args:
        data_source: dataset name (unused).
        solution_str: the decoded response (without the prompt); a chat message list is read as its text.
        ground_truth: the gold letter.
        extra_info: the row's ``extra_info``: ``n_options`` (int), ``options`` (``{letter: text}``, a list, or
            either as JSON text), ``scheme`` and ``prefill_think`` (default True: join ``prefill`` in front of a
            response of a pre-filled prompt).
        scheme: the reward scheme; else ``extra_info["scheme"]``, else ``"paper"``.
        prefill: the pre-fill of the prompt (``"<think>"``); None joins nothing.

    The number of options is ``extra_info["n_options"]`` (checked: a gold letter beyond it is a ``ValueError``),
    else the number of ``options``, else :data:`DEFAULT_N_OPTIONS` widened to cover the gold letter.

    Returns:
        ``{"score", "acc", "correct", "format_ok", "pred", <flag>: bool ...}`` with fixed keys and types:
        verl's ``naive`` reward manager uses ``score`` as the reward and keeps every other key as reward extra
        info (validation metrics ``val-aux/<data_source>/<key>/mean@N``; ``acc`` (a float) is verl's core
        validation metric, ``pred`` ("" when none) its majority vote).
    """
    info: Mapping[str, Any] = extra_info if isinstance(extra_info, Mapping) else {}
    gold = str(ground_truth).strip().upper()
    options = normalize_options(info.get("options")) or None
    n_raw = info.get("n_options")
    if n_raw is not None:
        n = check_n_options(n_raw)
    elif options:
        n = max(2, len(options))
    else:
        n = DEFAULT_N_OPTIONS
        if len(gold) == 1 and gold in LETTERS:
            n = max(n, LETTERS.index(gold) + 1)
    text = solution_str if isinstance(solution_str, str) else completion_text(solution_str)
    if info.get("prefill_think", True) and prefill:
        text = join_prefill(text, prefill)
    r = score(text, gold, n, scheme=scheme or info.get("scheme") or "paper", options=options, prefill=None)
    out: dict[str, Any] = {"score": r.reward, "acc": float(r.correct), "correct": r.correct,
                           "format_ok": r.format_ok, "pred": r.pred or ""}
    for f in FLAGS:
        out[f] = f in r.flags
    return out
