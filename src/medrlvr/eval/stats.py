"""Statistics of evaluations: the one bootstrap interval, chance level, pass@k and maj@k, and the pass@k and
maj@k a uniform random guesser reaches (the baseline a multiple-choice pass@k curve is read against).

Pure functions of numbers (no model, no files), used by the benchmark evaluation, the demo's summary
and the verl read-back alike, so that every interval in a report is computed the same way.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from math import comb
from typing import Any, Sequence

import numpy as np


def bootstrap_ci(values: Sequence[float], n_resamples: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> list[float | None]:
    """Percentile bootstrap CI of the mean of ``values``: ``n_resamples`` resamples of the same size
    drawn with replacement by ``numpy.random.default_rng(seed).integers(0, n, (n_resamples, n))``;
    returns ``[q(alpha/2), q(1-alpha/2)]`` of the resampled means (``[None, None]`` when empty or
    ``n_resamples == 0``)."""
    x = np.asarray(values, dtype=np.float64)
    n = x.shape[0]
    if n == 0 or not n_resamples:
        return [None, None]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    means = x[idx].mean(axis=1)
    lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return [float(lo), float(hi)]


def random_baseline(n_options: Sequence[int], n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Uniform random guessing: expected accuracy ``mean(1/n_options)``; ``ci95`` is the percentile
    interval of the accuracy a random guesser obtains on a bootstrap resample of the questions (each
    resample also redraws the guesses), i.e. the range a chance-level model's score falls in."""
    p = 1.0 / np.asarray(n_options, dtype=np.float64)
    n = p.shape[0]
    if n == 0:
        return {"accuracy": None, "ci95": [None, None]}
    out: dict[str, Any] = {"accuracy": float(p.mean()), "ci95": [None, None]}
    if n_resamples:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_resamples, n))
        hits = rng.random((n_resamples, n)) < p[idx]
        lo, hi = np.percentile(hits.mean(axis=1), [2.5, 97.5])
        out["ci95"] = [float(lo), float(hi)]
    return out


def pass_at_k(n_correct: Sequence[int], n: int, k: int) -> float:
    """Mean over questions of the unbiased pass@k (:func:`medrlvr.algos.unbiased_pass_at_k`)."""
    from medrlvr.algos import unbiased_pass_at_k   # here, not at the top: medrlvr.algos imports torch

    return float(np.mean([unbiased_pass_at_k(n, c, k) for c in n_correct])) if len(n_correct) else float("nan")


def guessing_pass_at_k(n_options: Sequence[int], k: int) -> float:
    """pass@k of a uniform random guesser, averaged over questions: ``mean(1 - (1 - 1/n)^k)`` over the
    questions' option counts ``n``. With 4 options it is 0.25 at k=1 and 0.68 at k=4: a multiple-choice pass@k
    at large k is read against this curve, not against 0."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = np.asarray(n_options, dtype=np.float64)
    return float(np.mean(1.0 - (1.0 - 1.0 / n) ** k)) if n.size else float("nan")


def guessing_majority_at_k(n_options: Sequence[int], k: int) -> float:
    """maj@k of a uniform random guesser (ties broken uniformly, as :func:`majority_at_k`): ``mean(1/n)`` for
    every k, since by symmetry each letter is equally likely to win the vote."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = np.asarray(n_options, dtype=np.float64)
    return float(np.mean(1.0 / n)) if n.size else float("nan")


def majority_at_k(answers: Sequence[str | None], gold: str, k: int) -> float:
    """Expected accuracy of a majority vote over ``k`` of the ``n = len(answers)`` samples, averaged
    exactly over all ``C(n, k)`` subsets (the unbiased maj@k estimate). ``None`` answers (no letter,
    or bad format) do not vote; a tie among the most voted letters is broken uniformly at random
    (the gold then counts ``1/ties``); a subset without any vote is wrong."""
    n = len(answers)
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    counts = Counter(a for a in answers if a is not None)
    c_gold = counts.pop(gold, 0)
    c_none = sum(1 for a in answers if a is None)
    others = list(counts.values())
    total = Fraction(0)
    for g in range(1, min(k, c_gold) + 1):
        # dp[(s, t)]: ways to take s samples from the other letters, none more than g, t of them at g
        dp: dict[tuple[int, int], int] = {(0, 0): 1}
        for c in others:
            nxt: dict[tuple[int, int], int] = {}
            for (s, t), w in dp.items():
                for j in range(min(c, g, k - g - s) + 1):
                    key = (s + j, t + (j == g))
                    nxt[key] = nxt.get(key, 0) + w * comb(c, j)
            dp = nxt
        for (s, t), w in dp.items():
            r = k - g - s
            if 0 <= r <= c_none:
                total += Fraction(comb(c_gold, g) * w * comb(c_none, r), 1 + t)
    return float(total / comb(n, k))


def doubling_ks(n: int) -> list[int]:
    """The k of pass@k / maj@k reported for ``n`` samples: 1, 2, 4, ... below ``n``, then ``n``."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]
