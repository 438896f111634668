"""Paired statistics of two arms that answered the same questions.

:func:`paired_test` takes two per-question correctness vectors (the share of a question's answers that were
right, 0/1 for one answer) in the same question order and returns the accuracy difference ``A - B``, its
paired bootstrap 95% interval (:func:`medrlvr.eval.stats.bootstrap_ci` over the per-question differences: the
questions are resampled, each keeping both arms' answers) and McNemar's exact test (SciPy's
:func:`scipy.stats.binomtest`, two-sided, on the discordant questions: right for one arm only; a question
counts as right when more than half its answers are). Pairing removes the questions' own difficulty from the
comparison, which is why a paired test finds smaller differences than two separate intervals would.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from medrlvr.eval.stats import bootstrap_ci

ALPHA = 0.05


def _binary(v: Sequence[float]) -> np.ndarray:
    return np.asarray(v, dtype=np.float64) > 0.5


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """McNemar's exact test: ``n10`` questions right for A only, ``n01`` for B only; ``p`` is the two-sided
    binomial p-value of ``n10`` in ``n10 + n01`` draws at 1/2 (1.0 without discordant questions)."""
    from scipy.stats import binomtest

    x, y = _binary(a), _binary(b)
    n10, n01 = int(np.sum(x & ~y)), int(np.sum(~x & y))
    p = float(binomtest(n10, n10 + n01, 0.5).pvalue) if n10 + n01 else 1.0
    return {"n10": n10, "n01": n01, "p": p}


def min_significant_discordance(n_discordant: int, alpha: float = ALPHA) -> int | None:
    """The smallest ``|n10 - n01|`` among ``n_discordant`` discordant questions that McNemar's exact test calls
    significant at ``alpha`` (None when even ``n_discordant`` to 0 is not: fewer than 6 discordant questions)."""
    from scipy.stats import binomtest

    m = int(n_discordant)
    if m < 1:
        return None
    for k in range((m + 1) // 2, m + 1):   # k: the larger of n10 / n01
        if binomtest(k, m, 0.5).pvalue < alpha:
            return 2 * k - m
    return None


def paired_test(a: Sequence[float], b: Sequence[float], n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Difference ``mean(a) - mean(b)`` of two per-question correctness vectors (same questions, same order),
    its paired bootstrap 95% CI, McNemar's exact p-value, and ``needed``: the smallest absolute difference
    that would be significant at this ``n`` with this many discordant questions (None: no difference could be)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired test: the vectors differ in length ({x.shape[0]} and {y.shape[0]} questions)")
    n = int(x.shape[0])
    d = x - y
    mc = mcnemar_exact(x, y) if n else {"n10": 0, "n01": 0, "p": 1.0}
    need = min_significant_discordance(mc["n10"] + mc["n01"]) if n else None
    return {"n": n, "diff": float(d.mean()) if n else None, "ci95": bootstrap_ci(d, n_resamples, seed),
            "p_mcnemar": mc["p"], "n10": mc["n10"], "n01": mc["n01"],
            "needed": (need / n) if (need is not None and n) else None, "significant": mc["p"] < ALPHA}
