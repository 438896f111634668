"""The one record type for a multiple-choice question, and its validation.

Every loader in :mod:`medrlvr.data` turns its source into :class:`MCQ` objects through
:func:`make_mcq`, which validates each field and raises :class:`DataError` naming the file, the line
(or key) and the field at fault. Loaders either stop at the first error (the default) or, with
``skip_invalid=True``, collect every rejected record as a :class:`Skipped` entry in the returned
:class:`MCQSet`, so nothing is ever dropped without being counted.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MIN_OPTIONS, MAX_OPTIONS = 2, 26


class DataError(ValueError):
    """A record that cannot be loaded. ``str(err)`` reads ``FILE:LINE: field 'F': what is wrong``."""

    def __init__(self, message: str, *, path: str | None = None, line: int | str | None = None,
                 field: str | None = None):
        self.path, self.line, self.field, self.reason = path, line, field, message
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f":{line}"
            where += ": "
        elif line is not None:
            where = f"record {line}: "
        fld = f"field '{field}': " if field else ""
        super().__init__(f"{where}{fld}{message}")


@dataclass(frozen=True)
class MCQ:
    """One multiple-choice question.

    ``options`` maps consecutive letters from ``A`` to their text, in display order. ``gold`` is the
    letter of the correct option. ``context`` holds supporting text shown before the question
    (PubMedQA's abstract). ``meta`` is free metadata (MedQA ``meta_info``, MedMCQA subject, ...).
    """

    id: str
    question: str
    options: dict[str, str]
    gold: str
    source: str = "custom"
    split: str = "test"
    context: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_options(self) -> int:
        return len(self.options)

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.options)]

    @property
    def gold_text(self) -> str:
        return self.options[self.gold]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MCQ":
        return make_mcq(**{k: d.get(k) for k in ("id", "question", "options", "gold", "source", "split",
                                                    "context", "meta") if k in d})


@dataclass(frozen=True)
class Skipped:
    """A record rejected under ``skip_invalid=True``: where it was and why."""

    path: str | None
    line: int | str | None
    field: str | None
    reason: str

    def __str__(self) -> str:
        return str(DataError(self.reason, path=self.path, line=self.line, field=self.field))


@dataclass
class MCQSet:
    """Records loaded from one source, plus every record that was skipped and why."""

    name: str
    records: list[MCQ]
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[Skipped] = field(default_factory=list)   # kept, but worth knowing (duplicate option texts)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[MCQ]:
        return iter(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def report_lines(self) -> list[str]:
        """One ``invalid: FILE:LINE: field 'F': reason`` line per skipped record and one ``warning: ...`` line
        per warning: what ``data validate`` prints, and ``eval`` / ``data show`` with ``--skip-invalid``."""
        return [f"invalid: {sk}" for sk in self.skipped] + [f"warning: {w}" for w in self.warnings]

    def summary(self) -> str:
        s = f"{self.name}: {len(self.records)} records"
        if self.skipped:
            s += f", {len(self.skipped)} skipped"
        if self.warnings:
            s += f", {len(self.warnings)} with warnings"
        return s


def make_mcq(id: Any, question: Any, options: Any, gold: Any, source: str = "custom", split: str = "test",
             context: Any = None, meta: Mapping[str, Any] | None = None, *, path: str | None = None,
             line: int | str | None = None, duplicate_options: str = "error", duplicate_gold: str = "error") -> MCQ:
    """Build a validated :class:`MCQ`.

    ``options`` may be a list of texts (lettered A, B, ...) or a mapping letter -> text whose keys
    must be consecutive letters from A. ``gold`` must be one of the option letters.
    Raises :class:`DataError` with ``path``/``line`` and the offending field.

    ``duplicate_options``: ``"error"`` (default) rejects two options with the same text (case and
    spacing ignored); ``"warn"`` keeps the record and lists the clashing letters in
    ``meta["duplicate_options"]``, which :func:`collect` reports in ``MCQSet.warnings``. Named
    benchmarks use ``"warn"`` so that their published counts are kept (MedMCQA dev has 21 such records).

    ``duplicate_gold``: with ``duplicate_options="warn"``, a gold option whose text another option repeats is
    ``"error"`` (default: a model that picks the twin would be scored wrong) or ``"warn"`` (kept, listed in
    ``meta["duplicate_gold"]``; the named benchmarks, for their published counts: 4 MedMCQA dev records).
    """

    def err(fld: str, msg: str) -> DataError:
        return DataError(msg, path=path, line=line, field=fld)

    if id is None or str(id).strip() == "":
        raise err("id", "missing or empty id")
    if not isinstance(question, str) or not question.strip():
        raise err("question", "missing or empty question")
    if isinstance(options, Mapping):
        keys = [str(k).strip().upper() for k in options.keys()]
        texts = list(options.values())
        if sorted(keys) != list(LETTERS[: len(keys)]):
            raise err("options", f"option keys must be consecutive letters from A, got {list(options.keys())}")
        pairs = sorted(zip(keys, texts))
        texts = [t for _, t in pairs]
    elif isinstance(options, (list, tuple)):
        texts = list(options)
    else:
        raise err("options", f"options must be a list or a letter->text mapping, got {type(options).__name__}")
    if len(texts) < MIN_OPTIONS:
        raise err("options", f"needs at least {MIN_OPTIONS} options, got {len(texts)}")
    if len(texts) > MAX_OPTIONS:
        raise err("options", f"at most {MAX_OPTIONS} options are supported, got {len(texts)}")
    clean: list[str] = []
    for i, t in enumerate(texts):
        if t is None or (isinstance(t, float) and t != t):
            raise err("options", f"option {LETTERS[i]} is missing")
        if isinstance(t, (Mapping, list, tuple)):
            raise err("options", f"option {LETTERS[i]} is a {type(t).__name__} ({str(t)[:60]}), not text")
        t = str(t).strip()
        if not t:
            raise err("options", f"option {LETTERS[i]} is empty")
        clean.append(t)
    norm = [" ".join(t.lower().split()) for t in clean]
    dup_letters = [LETTERS[i] for i, t in enumerate(norm) if norm.count(t) > 1]
    if dup_letters and duplicate_options != "warn":
        raise err("options", f"duplicate option text {clean[LETTERS.index(dup_letters[0])]!r} "
                             f"(options {', '.join(dup_letters)})")
    opts = {LETTERS[i]: t for i, t in enumerate(clean)}
    g = str(gold).strip().upper() if gold is not None else ""
    if g not in opts:
        raise err("gold", f"gold answer {gold!r} is not among the option letters {''.join(opts)}")
    ctx = None
    if context is not None and not (isinstance(context, float) and context != context):
        ctx = str(context).strip() or None
    meta = dict(meta or {})
    if dup_letters:
        meta["duplicate_options"] = "".join(dup_letters)
        twins = [L for L in dup_letters if L != g and norm[LETTERS.index(L)] == norm[LETTERS.index(g)]] \
            if g in dup_letters else []
        if twins and duplicate_gold != "warn":
            raise err("gold", f"the gold option {g} ({opts[g]!r}) has the same text as option {', '.join(twins)}: a "
                              "model that picks the twin would be scored wrong; fix the options or drop the record")
        if twins:
            meta["duplicate_gold"] = "".join(twins)
    return MCQ(id=str(id), question=question.strip(), options=opts, gold=g, source=source, split=split,
               context=ctx, meta=meta)


def collect(name: str, rows: Iterable[tuple[int | str, Any]], build, *, path: str | None,
            skip_invalid: bool = False) -> MCQSet:
    """Run ``build(row, line)`` over ``(line, row)`` pairs, check ids are unique, honour ``skip_invalid``."""
    records: list[MCQ] = []
    skipped: list[Skipped] = []
    warnings: list[Skipped] = []
    seen: dict[str, int | str] = {}
    for line, row in rows:
        try:
            if isinstance(row, DataError):
                raise row
            rec = build(row, line)
            if rec.id in seen:
                raise DataError(f"duplicate id {rec.id!r} (first seen at {seen[rec.id]})", path=path, line=line,
                                field="id")
            seen[rec.id] = line
            records.append(rec)
            if "duplicate_options" in rec.meta:
                twin = (f"; the gold {rec.gold} is one of them: a model that picks {rec.meta['duplicate_gold']} is "
                        "scored wrong" if rec.meta.get("duplicate_gold") else "")
                warnings.append(Skipped(path, line, "options", "duplicate option texts in options "
                                        f"{', '.join(rec.meta['duplicate_options'])} (kept){twin}"))
            if rec.meta.get("filler_options"):
                warnings.append(Skipped(path, line, "options", "filler option(s) "
                                        f"{', '.join(rec.meta['filler_options'])} (n/a, none, ...) kept as real "
                                        "options (--drop-filler-options drops those that are not the gold)"))
            if rec.meta.get("dropped_filler"):
                warnings.append(Skipped(path, line, "options", f"dropped {rec.meta['dropped_filler']} filler "
                                        "option(s) (--drop-filler-options)"))
            if options_in_question(rec.question, rec.options):
                warnings.append(Skipped(path, line, "question", "the question text already lists the options "
                                        f"(A) ... ({rec.letters[-1]}); the prompt will show them twice"))
        except DataError as e:
            if not skip_invalid:
                raise
            skipped.append(Skipped(e.path if e.path is not None else path, e.line if e.line is not None else line,
                                   e.field, e.reason))
    if not records and not skipped:
        raise DataError("no records: an empty set is never what is meant", path=path)
    return MCQSet(name=name, records=records, skipped=skipped, warnings=warnings)


def _marker(letter: str) -> str:
    """``(A)``, ``A.``, ``A)``, ``A:`` as a standalone option marker (case-sensitive)."""
    return rf"(?:\(\s*{letter}\s*\)|(?<![A-Za-z0-9]){letter}\s*[.):])"


def options_in_question(question: str, options: Mapping[str, str]) -> bool:
    """True when ``question`` already lists the options: at least half of them (and at least 2) appear
    after their letter marker (``(A) text``, ``A. text``, ``A) text``, ``A: text``; text compared
    case-insensitively), or it has an ``Answer Choices:`` line with ``(A)`` and ``(B)`` markers.
    A heuristic: it only feeds a warning."""
    q = " ".join(question.split())
    if re.search(r"(?i:answer choices|choices|options)\s*:", q) and "(A)" in q and "(B)" in q:
        return True
    hits = 0
    ql = q.lower()
    for letter, text in options.items():
        t = " ".join(str(text).split())
        # the substring test first: compiling a pattern per option text is what costs (ms per record)
        if t and t.lower() in ql and re.search(_marker(letter) + r"\s*(?i:" + re.escape(t) + ")", q):
            hits += 1
    return hits >= max(2, (len(options) + 1) // 2)
