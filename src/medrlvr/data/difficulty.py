"""Question difficulty as a model's pass rate: the file, its check against a source, bands and curricula.

A difficulty file (``medrlvr data difficulty``) is JSON Lines: a header line, then one line per question::

    {"format": "medrlvr-difficulty", "version": 1, "source": "medqa:dev", "model": "smollm2-135m", "mode": "cot",
     "k": 8, "temperature": 1.0, "seed": 0, "template": "r1-zero", "max_new_tokens": 512, "scheme": "paper",
     "n_questions": 256, "set_hash": "..."}
    {"id": "medqa-dev-1", "hash": "3f2a...", "k": 8, "correct": 3, "format_ok": 7, "pass_rate": 0.375,
     "fingerprint": "9c1e..."}

``cot``: ``correct`` of ``k`` samples (well formed with the gold letter, as ``medrlvr eval`` scores them),
``pass_rate = correct / k``. ``loglik``: ``pass_rate`` is the probability of the gold letter after the direct
prompt, renormalised over the option letters (``p_gold``), and ``correct`` says whether it is the argmax.
``fingerprint`` (``cot``) is a digest of the K sampled texts: the same settings and seed give the same one.
Difficulty is measured on correctness, never on a reward with format terms: a question the model always gets
wrong in varied formats is hard, not informative. ``hash`` is a content hash of the question (question,
context, options, gold), so a file made for another source, or for an edited copy, is refused by name
(:func:`check_source`) rather than silently mismatched.

Bands are ``LOW:HIGH`` pass rates, both ends included (``0.1:0.9``, or ``1/8:7/8`` as fractions). The curricula
(:class:`Curriculum`, ``curriculum:`` in :class:`~medrlvr.train.config.TrainConfig`):

``filter``
    train only on the questions whose pass rate is in the band (ReMEDY drops the always- and never-solved);
``easy_to_hard``
    the questions in the band, each epoch from the highest pass rate to the lowest (ties in the epoch's
    seeded order), as MedVLThinker orders its data;
``pools``
    several bands with weights (``0:0.25=1,0.25:0.75=2,0.75:1=1``): each drawn question comes from a pool picked
    with probability proportional to its weight (seeded), each pool an endless seeded stream of its own
    (prime-rl's difficulty pools).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from medrlvr.records import MCQ, DataError

FORMAT = "medrlvr-difficulty"
VERSION = 1
CURRICULA = ("none", "filter", "easy_to_hard", "pools")
HEADER_KEYS = ("source", "model", "mode", "k", "temperature", "seed", "template", "max_new_tokens", "scheme")
"""Header fields that change the numbers: a resumed measurement must have the same."""


# ------------------------------------------------------------------------------------------ hashing
def question_hash(rec: MCQ) -> str:
    """16 hex digits of SHA-256 over the question's content (question, context, options, gold): equal for the
    same question whatever file it was read from, different as soon as a word of it changes."""
    blob = json.dumps([rec.question, rec.context, sorted(rec.options.items()), rec.gold], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def set_hash(records: Sequence[MCQ]) -> str:
    """16 hex digits of SHA-256 over the sorted (id, question hash) pairs of a set."""
    pairs = sorted((r.id, question_hash(r)) for r in records)
    return hashlib.sha256(json.dumps(pairs).encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ the file
@dataclass
class DifficultyFile:
    """A read difficulty file: its header and ``{id: line}`` in file order."""

    path: str
    header: dict[str, Any]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def rates(self) -> dict[str, float]:
        return {i: float(e["pass_rate"]) for i, e in self.entries.items()}


def read_difficulty(path: str | Path, torn_ok: bool = False) -> DifficultyFile:
    """Read and check a difficulty file. A bad header or line raises :class:`DataError` naming the file, line and
    field. ``torn_ok``: a last line without its newline (an interrupted write) is dropped instead (resume)."""
    p = Path(path)
    if not p.is_file():
        raise DataError("difficulty file not found", path=str(p))
    raw = p.read_bytes()
    lines = raw.split(b"\n")
    torn = lines.pop()
    if torn.strip() and not torn_ok:
        lines.append(torn)
    if not any(b.strip() for b in lines):
        raise DataError("empty difficulty file", path=str(p))
    header: dict[str, Any] | None = None
    entries: dict[str, dict[str, Any]] = {}
    for i, b in enumerate(lines, 1):
        if not b.strip():
            continue
        try:
            obj = json.loads(b.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"not a JSON line ({e})", path=str(p), line=i, field="<line>") from None
        if not isinstance(obj, dict):
            raise DataError("not a JSON object", path=str(p), line=i, field="<line>")
        if header is None:
            if obj.get("format") != FORMAT:
                raise DataError(f"no {FORMAT} header: not a file of `medrlvr data difficulty`", path=str(p), line=i,
                                field="format")
            header = obj
            continue
        for key in ("id", "hash", "pass_rate"):
            if key not in obj:
                raise DataError("missing field", path=str(p), line=i, field=key)
        pr = obj["pass_rate"]
        if isinstance(pr, bool) or not isinstance(pr, (int, float)) or not 0 <= pr <= 1:
            raise DataError(f"pass_rate {pr!r} is not a number in [0, 1]", path=str(p), line=i, field="pass_rate")
        if str(obj["id"]) in entries:
            raise DataError(f"question {obj['id']!r} listed twice", path=str(p), line=i, field="id")
        entries[str(obj["id"])] = obj
    assert header is not None
    return DifficultyFile(str(p), header, entries)


def check_source(df: DifficultyFile, records: Sequence[MCQ], source: str) -> list[str]:
    """Refuse (one :class:`DataError` line) a difficulty file made for another source: an id of the file that
    the source does not hold, or a question whose content hash differs from the one measured. Returns the ids
    of the source's questions that the file does not cover (an interrupted or ``--limit`` measurement)."""
    by_id = {r.id: r for r in records}
    for i, e in df.entries.items():
        r = by_id.get(i)
        if r is None:
            raise DataError(f"made for another source ({df.header.get('source')}): question {i!r} is not in {source}",
                            path=df.path, field="id")
        if question_hash(r) != e["hash"]:
            raise DataError(f"made for another source ({df.header.get('source')}): question {i!r} of {source} "
                            "differs from the one measured (content hash)", path=df.path, field="hash")
    return [r.id for r in records if r.id not in df.entries]


# ------------------------------------------------------------------------------------------ bands
def _rate(text: str, what: str) -> float:
    try:
        v = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{what}: {text.strip()!r} is not a number or a fraction") from None
    if not 0 <= v <= 1:
        raise ValueError(f"{what}: {text.strip()!r} is not a pass rate in [0, 1]")
    return v


def parse_band(text: str) -> tuple[float, float]:
    """``"LOW:HIGH"`` (numbers or fractions in [0, 1], LOW <= HIGH) -> ``(low, high)``, both included."""
    lo, sep, hi = str(text).partition(":")
    if not sep:
        raise ValueError(f"band {text!r} is not LOW:HIGH (e.g. 0.1:0.9 or 1/8:7/8)")
    a, b = _rate(lo, f"band {text!r}"), _rate(hi, f"band {text!r}")
    if a > b:
        raise ValueError(f"band {text!r}: LOW is above HIGH")
    return a, b


def parse_pools(text: str) -> list[tuple[float, float, float]]:
    """``"0:0.25=1,0.25:0.75=2"`` -> ``[(low, high, weight), ...]``; a pool without ``=W`` weighs 1; weights
    must be > 0."""
    out = []
    for part in [x.strip() for x in str(text).split(",") if x.strip()]:
        band, eq, w = part.partition("=")
        lo, hi = parse_band(band)
        try:
            weight = float(w) if eq else 1.0
        except ValueError:
            raise ValueError(f"pool {part!r}: weight {w!r} is not a number") from None
        if not weight > 0:
            raise ValueError(f"pool {part!r}: weight must be > 0")
        out.append((lo, hi, weight))
    if not out:
        raise ValueError(f"pools {text!r}: give at least one LOW:HIGH=WEIGHT")
    return out


def in_band(rate: float, band: tuple[float, float], eps: float = 1e-9) -> bool:
    return band[0] - eps <= rate <= band[1] + eps


def decile_counts(rates: Sequence[float]) -> list[int]:
    """Counts of pass rates in [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0] (1.0 in the last)."""
    out = [0] * 10
    for r in rates:
        out[min(9, int(r * 10 + 1e-9))] += 1
    return out


@dataclass
class FilterResult:
    """What a band kept: the kept records (source order) and the counts dropped below and above it, and not
    measured."""

    kept: list[MCQ]
    below: int
    above: int
    unmeasured: int


def filter_records(records: Sequence[MCQ], rates: Mapping[str, float], band: tuple[float, float]) -> FilterResult:
    """Keep the records whose pass rate is in ``band`` (both ends included); count the others by side and
    those without a rate."""
    kept, below, above, unmeasured = [], 0, 0, 0
    for r in records:
        v = rates.get(r.id)
        if v is None:
            unmeasured += 1
        elif in_band(v, band):
            kept.append(r)
        elif v < band[0]:
            below += 1
        else:
            above += 1
    return FilterResult(kept, below, above, unmeasured)


# ------------------------------------------------------------------------------------------ curricula
@dataclass
class Curriculum:
    """What :class:`medrlvr.train.stream.PromptStream` draws from: ``kind`` (``filter``, ``easy_to_hard``,
    ``pools``), each question's pass rate, the band of ``filter`` / ``easy_to_hard`` and the pools of ``pools``;
    ``summary`` says what was kept and dropped, for the run's log."""

    kind: str
    rates: dict[str, float]
    band: tuple[float, float] = (0.0, 1.0)
    pools: list[tuple[float, float, float]] = field(default_factory=list)
    summary: str = ""

    def pool_of(self, rec_id: str) -> int | None:
        v = self.rates.get(rec_id)
        if v is None:
            return None
        return next((i for i, (lo, hi, _) in enumerate(self.pools) if in_band(v, (lo, hi))), None)


def load_curriculum(kind: str, path: str | None, bands: str, records: Sequence[MCQ], source: str) -> Curriculum | None:
    """The :class:`Curriculum` of a training config (``None`` for ``none``): reads and checks the difficulty file
    against the training questions (:func:`check_source`) and refuses a band or pool that keeps no question.
    Questions the file does not cover are left out and counted in ``summary``."""
    if kind == "none":
        return None
    if kind not in CURRICULA:
        raise ValueError(f"config 'curriculum': {kind!r} is not one of {CURRICULA}")
    if not path:
        raise ValueError(f"config 'difficulty_file': curriculum {kind!r} needs a difficulty file "
                         "(medrlvr data difficulty)")
    df = read_difficulty(path)
    missing = check_source(df, records, source)
    rates = df.rates()
    extra = f", {len(missing)} not measured (left out)" if missing else ""
    if kind == "pools":
        pools = parse_pools(bands)
        cur = Curriculum(kind, rates, pools=pools)
        counts = [0] * len(pools)
        outside = 0
        for r in records:
            i = cur.pool_of(r.id)
            if i is None:
                outside += r.id in rates
            else:
                counts[i] += 1
        if not any(counts):
            raise ValueError(f"config 'curriculum_bands': no training question falls in any pool of {bands!r}")
        cur.summary = (f"curriculum pools over {len(records)} questions: " +
                       ", ".join(f"{lo:g}:{hi:g} (weight {w:g}) {n}" for (lo, hi, w), n in zip(pools, counts)) +
                       f"; {outside} in no pool (left out){extra}")
        return cur
    band = parse_band(bands)
    res = filter_records(records, rates, band)
    if not res.kept:
        raise ValueError(f"config 'curriculum_bands': no training question has a pass rate in {bands!r} "
                         f"({res.below} below, {res.above} above)")
    return Curriculum(kind, rates, band=band, summary=(
        f"curriculum {kind} {band[0]:g}:{band[1]:g}: {len(res.kept)} of {len(records)} questions kept, "
        f"{res.below} below and {res.above} above the band dropped{extra}"))


# ------------------------------------------------------------------------------------------ measuring
def difficulty_line(row: Mapping[str, Any], rec: MCQ, mode: str) -> dict[str, Any]:
    """One question's line from its evaluation row (:func:`medrlvr.eval.benchmark.score_records`)."""
    samples = row["samples"]
    if mode == "loglik":
        import math

        lps = samples[0]["logprobs"]
        z = sum(math.exp(v) for v in lps.values())
        p = math.exp(lps[rec.gold]) / z if z > 0 else 0.0
        return {"id": rec.id, "hash": question_hash(rec), "k": 1, "correct": int(bool(samples[0]["correct"])),
                "p_gold": round(p, 6), "pass_rate": round(p, 6)}
    k = len(samples)
    c = sum(bool(s["correct"]) for s in samples)
    out = {"id": rec.id, "hash": question_hash(rec), "k": k, "correct": c, "pass_rate": round(c / k, 6)}
    if mode == "cot":
        out["format_ok"] = sum(bool(s.get("format_ok")) for s in samples)
    texts = json.dumps([s.get("text", "") for s in samples], ensure_ascii=False)
    out["fingerprint"] = hashlib.sha256(texts.encode("utf-8")).hexdigest()[:12]
    return out


def measure(model, tokenizer, records: Sequence[MCQ], output: str | Path, header: dict[str, Any], *,
            engine: Any = "fast", batch_size: int | None = None, max_batch_tokens: int | None = None,
            scoring_dtype: str = "auto", prefill_think: bool = True, progress: bool = True,
            overwrite: bool = False) -> DifficultyFile:
    """Measure each question's pass rate and write the difficulty file ``output``.

    ``header`` holds the settings (:data:`HEADER_KEYS`). Lines are appended as batches finish (rank 0 writes,
    under torchrun each rank answers its share of the batches, :func:`medrlvr.eval.benchmark.score_records`);
    a rerun resumes from the lines saved (a torn last line is dropped) and refuses a file made with other
    settings or for other questions unless ``overwrite``. At the end the file is rewritten in the source's
    question order, so a resumed or sharded run gives the same file as one uninterrupted process."""
    from medrlvr.eval.benchmark import DEFAULT_BATCH_SIZE, score_records
    from medrlvr.fileio import atomic_write_text
    from medrlvr.train.distributed import barrier, rank_world

    rank, _ = rank_world()
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    mode = header["mode"]
    header = {"format": FORMAT, "version": VERSION, **header, "n_questions": len(records),
              "set_hash": set_hash(records)}
    by_id = {r.id: r for r in records}
    saved: dict[str, dict] = {}
    if out.exists() and not overwrite:
        old = read_difficulty(out, torn_ok=True)
        diff = {k: (old.header.get(k), header[k]) for k in (*HEADER_KEYS, "set_hash") if old.header.get(k) != header[k]}
        if diff:
            raise DataError(f"holds a measurement with other settings or questions {diff} (saved, now): use "
                            "another --output or --overwrite", path=str(out), line=1)
        check_source(old, records, header["source"])
        saved = dict(old.entries)
    barrier()
    if rank == 0:
        lines = [json.dumps(header)] + [json.dumps(e) for e in saved.values()]
        atomic_write_text(out, "\n".join(lines) + "\n", label="difficulty")   # drops a torn last line
    barrier()
    rows: dict[tuple[str, int], Any] = {(i, 0): e for i, e in saved.items()}
    fh = open(out, "a", encoding="utf-8") if rank == 0 else None

    def write(new):
        for (rid, _), row in new:
            line = difficulty_line(row, by_id[rid], mode)
            saved[rid] = line
            fh.write(json.dumps(line) + "\n")
        fh.flush()

    t0 = time.perf_counter()
    try:
        n_todo, _ = score_records(
            model, tokenizer, header["source"], records, rows, {"engine": engine, "eng": None, "name": None},
            mode=mode, template=header["template"], prefill_think=prefill_think, n_samples=header["k"],
            temperature=header["temperature"], max_new_tokens=header["max_new_tokens"] or 1, seed=header["seed"],
            scheme=header["scheme"] or "paper", batch_size=batch_size or DEFAULT_BATCH_SIZE[mode],
            max_batch_tokens=max_batch_tokens, scoring_dtype=scoring_dtype, progress=progress,
            write=write if fh is not None else None, desc=f"difficulty {header['source']} ({mode}, k={header['k']})")
    finally:
        if fh is not None:
            fh.close()
    if rank == 0:
        ordered = [saved[r.id] for r in records if r.id in saved]
        atomic_write_text(out, "\n".join([json.dumps(header)] + [json.dumps(e) for e in ordered]) + "\n",
                          label="difficulty")
        if progress:
            print(f"[medrlvr] {out}: {n_todo} questions measured in {time.perf_counter() - t0:.1f} s, "
                  f"{len(records) - n_todo} resumed", file=sys.stderr)
    barrier()
    return read_difficulty(out)
