"""Option shuffling (against position-bias hacking) and train/test contamination checks."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from medrlvr.records import LETTERS, MCQ


def shuffle_options(rec: MCQ, seed: int) -> MCQ:
    """Return ``rec`` with its options permuted by ``random.Random(seed)`` and the gold letter remapped.

    The permutation depends only on ``seed`` and the record id, so a given (record, seed) always gives
    the same order. Options that must stay last (e.g. "All of the above") are not special-cased.
    """
    rng = random.Random(f"{seed}:{rec.id}")
    order = list(rec.options)
    rng.shuffle(order)
    new_opts = {LETTERS[i]: rec.options[old] for i, old in enumerate(order)}
    new_gold = LETTERS[order.index(rec.gold)]
    return replace(rec, options=new_opts, gold=new_gold, meta={**rec.meta, "option_order": "".join(order)})


def shuffle_all(records: Iterable[MCQ], seed: int) -> list[MCQ]:
    return [shuffle_options(r, seed) for r in records]


_WORD = re.compile(r"[a-z0-9]+")


def normalize(text: str) -> str:
    """Lowercase, keep only letters and digits, collapse whitespace."""
    return " ".join(_WORD.findall(text.lower()))


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    toks = normalize(text).split()
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


@dataclass(frozen=True)
class Overlap:
    a_id: str
    b_id: str
    kind: str          # "exact" (normalized question text equal) or "ngram"
    score: float       # fraction of a's n-grams found in b (1.0 for exact)


def contamination(a: Sequence[MCQ], b: Sequence[MCQ], n: int = 8, threshold: float = 0.5) -> list[Overlap]:
    """Questions of ``a`` that also appear in ``b``.

    ``exact``: the normalized question texts are equal. ``ngram``: at least ``threshold`` of the
    question's word ``n``-grams (default 8, as in GPT-3's contamination study) occur in one question of
    ``b``. Returns one :class:`Overlap` per flagged (a, b) pair, the best-matching b per a.
    """
    exact = {}
    index: dict[tuple[str, ...], list[int]] = {}
    for j, rb in enumerate(b):
        exact.setdefault(normalize(rb.question), rb.id)
        for g in ngrams(rb.question, n):
            index.setdefault(g, []).append(j)
    out: list[Overlap] = []
    for ra in a:
        na = normalize(ra.question)
        if na in exact:
            out.append(Overlap(ra.id, exact[na], "exact", 1.0))
            continue
        grams = ngrams(ra.question, n)
        if not grams:
            continue
        counts: dict[int, int] = {}
        for g in grams:
            for j in set(index.get(g, ())):
                counts[j] = counts.get(j, 0) + 1
        if counts:
            j, c = max(counts.items(), key=lambda kv: kv[1])
            frac = c / len(grams)
            if frac >= threshold:
                out.append(Overlap(ra.id, b[j].id, "ngram", round(frac, 4)))
    return out
