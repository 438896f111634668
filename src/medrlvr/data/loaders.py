"""Loaders: one per benchmark file format in ``../shared/data``, plus a generic column-mapped loader.

All loaders return an :class:`~medrlvr.data.records.MCQSet`. Malformed lines and invalid records
raise :class:`~medrlvr.data.records.DataError` naming file, line (or key) and field, unless
``skip_invalid=True``, in which case they are counted in ``MCQSet.skipped``.

Column map (generic loader, CLI ``--columns``): a comma-separated list of ``key=value``:

``question=COL``
    the question text column (required; default ``question``).
``options=COL`` or ``options=COL1|COL2|...``
    one column holding a list or a letter->text dict, or several columns, one option each
    (default: ``options``; if absent, columns ``A``, ``B``, ... are tried).
``gold=COL``
    the answer column (default: ``answer_idx`` if present, else ``answer``).
``gold_type=letter|index0|index1|text|auto``
    how to read the answer: a letter, a 0-based or 1-based index, or the option text itself.
    ``auto`` (default) accepts a letter or an exact option text, and refuses bare integers (say
    ``index0`` or ``index1``: a ``1`` is ambiguous).
``id=COL``, ``context=COL``, ``meta=COL1|COL2``
    optional id (default: ``<name>-<line>``), context text, and columns copied to ``meta``.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

from .records import LETTERS, DataError, MCQ, MCQSet, collect, make_mcq


# ----------------------------------------------------------------------------------------- readers
def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", path=str(p))
    if p.is_dir():
        raise DataError("is a directory, expected a file", path=str(p))
    return p


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)``; a malformed line yields a :class:`DataError` in place of the object
    (so that ``skip_invalid`` can count it). Blank lines are ignored."""
    p = _check_file(path)
    with open(p, encoding="utf-8") as f:
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                yield i, DataError(f"malformed JSON: {e.msg} (column {e.colno})", path=str(p), line=i, field="<line>")
                continue
            if not isinstance(obj, dict):
                yield i, DataError(f"expected a JSON object, got {type(obj).__name__}", path=str(p), line=i,
                                   field="<line>")
                continue
            yield i, obj


def read_json(path: str | os.PathLike) -> Iterator[tuple[int | str, Any]]:
    """A JSON file holding a list of objects (line = 1-based index) or a dict keyed by id (line = key)."""
    p = _check_file(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON: {e.msg}", path=str(p), line=e.lineno) from None
    if isinstance(data, list):
        yield from enumerate(data, 1)
    elif isinstance(data, dict):
        for k, v in data.items():
            if isinstance(v, dict):
                v = {"__key__": k, **v}
            yield k, v
    else:
        raise DataError("expected a JSON list or object at top level", path=str(p))


def read_csv(path: str | os.PathLike, header: bool = True) -> Iterator[tuple[int, Any]]:
    """CSV rows as dicts (``header=True``) or lists; line numbers are the file's physical rows."""
    p = _check_file(path)
    with open(p, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        cols = None
        for row in reader:
            line = reader.line_num
            if header and cols is None:
                cols = [c.strip() for c in row]
                continue
            if not any(c.strip() for c in row):
                continue
            if cols is not None:
                if len(row) != len(cols):
                    yield line, DataError(f"expected {len(cols)} columns, got {len(row)}", path=str(p), line=line,
                                          field="<row>")
                    continue
                yield line, dict(zip(cols, row))
            else:
                yield line, row


def read_parquet(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Parquet rows as dicts; line = 1-based row number."""
    p = _check_file(path)
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for bad files
        raise DataError(f"cannot read parquet: {e}", path=str(p)) from None
    yield from enumerate(table.to_pylist(), 1)


def read_any(path: str | os.PathLike) -> Iterator[tuple[int | str, Any]]:
    """Dispatch on the file extension: .jsonl/.ndjson, .json, .csv/.tsv, .parquet."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return read_jsonl(path)
    if suffix == ".json":
        p = _check_file(path)
        with open(p, encoding="utf-8") as f:
            head = f.read(4096).lstrip()
        # A ".json" that is really JSON Lines (MedMCQA's upstream file is one).
        if head.startswith("{") and "\n{" in head and not head.startswith("{\n"):
            return read_jsonl(path)
        return read_json(path)
    if suffix == ".csv":
        return read_csv(path)
    if suffix == ".parquet":
        return read_parquet(path)
    raise DataError(f"unsupported file type {suffix!r} (use .jsonl, .json, .csv or .parquet)", path=str(path))


def _req(row: Mapping[str, Any], key: str, path: str, line) -> Any:
    if key not in row or row[key] is None:
        raise DataError("missing field", path=path, line=line, field=key)
    return row[key]


# --------------------------------------------------------------------------- benchmark-specific loaders
def load_medqa(path, split: str = "test", name: str = "medqa", skip_invalid: bool = False) -> MCQSet:
    """MedQA-USMLE JSONL: ``{question, options: {A: ..}, answer_idx, answer, meta_info}``.

    Checks that ``options[answer_idx] == answer`` when both are present."""
    path = str(path)

    def build(row, line):
        opts = _req(row, "options", path, line)
        gold = _req(row, "answer_idx", path, line)
        if not isinstance(opts, Mapping):
            raise DataError("expected a letter->text object", path=path, line=line, field="options")
        if "answer" in row and str(gold).strip() in opts and str(opts[str(gold).strip()]).strip() != str(row["answer"]).strip():
            raise DataError(f"answer text {row['answer']!r} differs from options[{gold}]", path=path, line=line,
                            field="answer")
        meta = {"meta_info": row["meta_info"]} if "meta_info" in row else {}
        return make_mcq(id=row.get("id", f"{name}-{split}-{line}"), question=_req(row, "question", path, line),
                        options=opts, gold=gold, source=name, split=split, meta=meta, path=path, line=line,
                        duplicate_options="warn")

    return collect(f"{name}:{split}", read_jsonl(path), build, path=path, skip_invalid=skip_invalid)


def load_mmlu_pro(path, category: str | None = "health", split: str = "test", name: str = "mmlu-pro-health",
                  skip_invalid: bool = False) -> MCQSet:
    """MMLU-Pro JSONL (3..10 options as a list, gold ``answer`` letter and 0-based ``answer_index``),
    filtered by ``category`` (``None`` keeps all)."""
    path = str(path)

    def rows():
        for line, row in read_jsonl(path):
            if category is None or isinstance(row, DataError) or row.get("category") == category:
                yield line, row

    def build(row, line):
        opts = _req(row, "options", path, line)
        gold = _req(row, "answer", path, line)
        if "answer_index" in row and isinstance(opts, list):
            idx = row["answer_index"]
            if not isinstance(idx, int) or not 0 <= idx < len(opts) or LETTERS[idx] != str(gold).strip().upper():
                raise DataError(f"answer_index {idx!r} does not match answer {gold!r}", path=path, line=line,
                                field="answer_index")
        meta = {k: row[k] for k in ("category", "src") if k in row}
        return make_mcq(id=f"mmlu-pro-{row.get('question_id', line)}", question=_req(row, "question", path, line),
                        options=opts, gold=gold, source=name, split=split, meta=meta, path=path, line=line,
                        duplicate_options="warn")

    return collect(f"{name}:{split}", rows(), build, path=path, skip_invalid=skip_invalid)


def load_medmcqa(path, cop_base: int = 1, split: str = "dev", name: str = "medmcqa",
                 skip_invalid: bool = False) -> MCQSet:
    """MedMCQA JSONL: options ``opa..opd``, gold ``cop``.

    ``cop_base`` says how ``cop`` counts: 1 in the file of ``../shared/data`` (1..4 = A..D), 0 in the
    Hugging Face Hub copy (0..3 = A..D). It must be given explicitly when the source is not that file.
    """
    path = str(path)
    if cop_base not in (0, 1):
        raise ValueError(f"cop_base must be 0 or 1, got {cop_base!r}")

    def build(row, line):
        cop = _req(row, "cop", path, line)
        try:
            idx = int(cop) - cop_base
        except (TypeError, ValueError):
            raise DataError(f"cop {cop!r} is not an integer", path=path, line=line, field="cop") from None
        if not 0 <= idx < 4:
            raise DataError(f"cop {cop!r} out of range for {cop_base}-based counting of 4 options", path=path,
                            line=line, field="cop")
        opts = [_req(row, k, path, line) for k in ("opa", "opb", "opc", "opd")]
        meta = {k: row[k] for k in ("subject_name", "topic_name", "choice_type") if row.get(k) is not None}
        return make_mcq(id=row.get("id", f"{name}-{line}"), question=_req(row, "question", path, line), options=opts,
                        gold=LETTERS[idx], source=name, split=split, meta=meta, path=path, line=line,
                        duplicate_options="warn")

    return collect(f"{name}:{split}", read_any(path), build, path=path, skip_invalid=skip_invalid)


PUBMEDQA_OPTIONS = ["yes", "no", "maybe"]


def load_pubmedqa(path, test_ids_path=None, split: str = "test", name: str = "pubmedqa",
                  skip_invalid: bool = False) -> MCQSet:
    """PubMedQA PQA-L (``ori_pqal.json``, a dict keyed by PMID): yes/no/maybe as options A/B/C with the
    abstract's ``CONTEXTS`` joined as context. ``split="test"`` keeps the PMIDs of ``test_ids_path``
    (the standard 500-question split), ``split="train"`` the others, ``split="all"`` every record."""
    path = str(path)
    test_ids: set[str] | None = None
    if split in ("test", "train"):
        if test_ids_path is None:
            raise ValueError("pubmedqa split 'test'/'train' needs test_ids_path (test_ground_truth.json)")
        tp = _check_file(test_ids_path)
        try:
            test_ids = set(json.loads(tp.read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON: {e.msg}", path=str(tp), line=e.lineno) from None
    elif split != "all":
        raise ValueError(f"pubmedqa split must be test, train or all, got {split!r}")

    def rows():
        for key, row in read_json(path):
            if test_ids is None or (str(key) in test_ids) == (split == "test"):
                yield key, row

    def build(row, key):
        if not isinstance(row, Mapping):
            raise DataError("expected an object", path=path, line=key, field="<record>")
        dec = str(_req(row, "final_decision", path, key)).strip().lower()
        if dec not in PUBMEDQA_OPTIONS:
            raise DataError(f"final_decision {dec!r} is not yes/no/maybe", path=path, line=key, field="final_decision")
        ctx = _req(row, "CONTEXTS", path, key)
        ctx = "\n".join(ctx) if isinstance(ctx, list) else str(ctx)
        meta = {"year": row.get("YEAR")} if row.get("YEAR") else {}
        return make_mcq(id=f"pubmedqa-{key}", question=_req(row, "QUESTION", path, key), options=PUBMEDQA_OPTIONS,
                        gold=LETTERS[PUBMEDQA_OPTIONS.index(dec)], source=name, split=split, context=ctx, meta=meta,
                        path=path, line=key)

    out = collect(f"{name}:{split}", rows(), build, path=path, skip_invalid=skip_invalid)
    if test_ids is not None and split == "test":
        missing = test_ids - {r.id.removeprefix("pubmedqa-") for r in out.records} - {
            str(s.line) for s in out.skipped}
        if missing:
            raise DataError(f"{len(missing)} test PMIDs are not in {path}, e.g. {sorted(missing)[:3]}",
                            path=str(test_ids_path))
    return out


def load_mmlu_csv(paths, split: str = "test", name: str = "mmlu-medical", skip_invalid: bool = False) -> MCQSet:
    """MMLU headerless CSVs (question, A, B, C, D, answer letter); the subject comes from the file name
    (``anatomy_test.csv`` -> ``anatomy``)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    sets = []
    for p in paths:
        p = str(p)
        subject = Path(p).stem.removesuffix(f"_{split}")

        def build(row, line, p=p, subject=subject):
            if len(row) != 6:
                raise DataError(f"expected 6 columns (question, A, B, C, D, answer), got {len(row)}", path=p,
                                line=line, field="<row>")
            return make_mcq(id=f"mmlu-{subject}-{line}", question=row[0], options=row[1:5], gold=row[5],
                            source=name, split=split, meta={"subject": subject}, path=p, line=line,
                            duplicate_options="warn")

        sets.append(collect(name, read_csv(p, header=False), build, path=p, skip_invalid=skip_invalid))
    return merge_sets(f"{name}:{split}", sets)


def merge_sets(name: str, sets: list[MCQSet]) -> MCQSet:
    """Concatenate sets, checking ids stay unique across them."""
    seen: set[str] = set()
    records, skipped, warnings = [], [], []
    for s in sets:
        for r in s.records:
            if r.id in seen:
                raise DataError(f"duplicate id {r.id!r} across merged sets ({s.name})", field="id")
            seen.add(r.id)
            records.append(r)
        skipped.extend(s.skipped)
        warnings.extend(s.warnings)
    return MCQSet(name=name, records=records, skipped=skipped, warnings=warnings)


# ------------------------------------------------------------------------------------ generic loader
GOLD_TYPES = ("auto", "letter", "index0", "index1", "text")
_COLUMN_KEYS = ("question", "options", "gold", "gold_type", "id", "context", "meta")


def parse_column_map(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """Parse ``"question=Q,options=A|B|C|D,gold=ans,gold_type=letter"`` into a dict (see module doc)."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping):
        items = dict(spec)
    else:
        items = {}
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise ValueError(f"column map entry {part!r} is not key=value (keys: {', '.join(_COLUMN_KEYS)})")
            k, v = part.split("=", 1)
            items[k.strip()] = v.strip()
    bad = set(items) - set(_COLUMN_KEYS)
    if bad:
        raise ValueError(f"unknown column map key(s) {sorted(bad)}; known: {', '.join(_COLUMN_KEYS)}")
    if items.get("gold_type", "auto") not in GOLD_TYPES:
        raise ValueError(f"gold_type must be one of {GOLD_TYPES}, got {items['gold_type']!r}")
    return items


def _resolve_gold(gold: Any, options: list[str], gold_type: str, path, line) -> str:
    n = len(options)

    def bad(msg):
        return DataError(msg, path=path, line=line, field="gold")

    if gold is None or (isinstance(gold, str) and not gold.strip()):
        raise bad("missing gold answer")
    if gold_type in ("index0", "index1"):
        try:
            idx = int(gold) - (1 if gold_type == "index1" else 0)
        except (TypeError, ValueError):
            raise bad(f"gold {gold!r} is not an integer index ({gold_type})") from None
        if not 0 <= idx < n:
            raise bad(f"gold index {gold!r} ({gold_type}) out of range for {n} options")
        return LETTERS[idx]
    g = str(gold).strip()
    if gold_type in ("letter", "auto") and len(g) == 1 and g.upper() in LETTERS:
        if LETTERS.index(g.upper()) >= n:
            raise bad(f"gold letter {g!r} is not among the option letters {LETTERS[:n]}")
        return g.upper()
    if gold_type in ("text", "auto"):
        norm = " ".join(g.lower().split())
        hits = [i for i, o in enumerate(options) if " ".join(str(o).lower().split()) == norm]
        if len(hits) == 1:
            return LETTERS[hits[0]]
        if gold_type == "auto" and g.isdigit():
            raise bad(f"gold {gold!r} is a number: say gold_type=index0 or gold_type=index1")
        raise bad(f"gold {gold!r} is not among the options")
    raise bad(f"gold {gold!r} is not a single letter")


def load_generic(path, columns: str | Mapping[str, str] | None = None, name: str | None = None,
                 split: str = "test", skip_invalid: bool = False) -> MCQSet:
    """Load any JSONL / JSON / CSV / parquet file of multiple-choice questions through a column map."""
    path = str(path)
    cmap = parse_column_map(columns)
    name = name or Path(path).stem
    gold_type = cmap.get("gold_type", "auto")
    opt_cols = cmap["options"].split("|") if "options" in cmap else None
    meta_cols = cmap["meta"].split("|") if "meta" in cmap else []

    def build(row, line):
        if isinstance(row, list):
            raise DataError("row has no column names (headerless CSV needs a header row)", path=path, line=line)
        if not isinstance(row, Mapping):
            raise DataError(f"expected a record, got {type(row).__name__}", path=path, line=line, field="<row>")
        qcol = cmap.get("question", "question")
        question = _req(row, qcol, path, line)
        if opt_cols is not None and len(opt_cols) > 1:
            options = [_req(row, c, path, line) for c in opt_cols]
        else:
            ocol = opt_cols[0] if opt_cols else ("options" if "options" in row else None)
            if ocol is None:
                letters = [c for c in LETTERS if c in row]
                if len(letters) < 2:
                    raise DataError("no options column (say options=COL or options=COL1|COL2|...)", path=path,
                                    line=line, field="options")
                options = [row[c] for c in letters]
            else:
                options = _req(row, ocol, path, line)
                if isinstance(options, str):
                    try:
                        options = json.loads(options)
                    except json.JSONDecodeError:
                        raise DataError("options column holds a string that is not a JSON list or object",
                                        path=path, line=line, field=ocol) from None
                if hasattr(options, "tolist"):
                    options = options.tolist()
        if isinstance(options, Mapping):
            keys = sorted(str(k).strip().upper() for k in options)
            if keys != list(LETTERS[: len(keys)]):
                raise DataError(f"option keys must be consecutive letters from A, got {list(options)}", path=path,
                                line=line, field="options")
            options = [options[k] for k in sorted(options, key=lambda k: str(k).strip().upper())]
        if not isinstance(options, (list, tuple)):
            raise DataError(f"options must be a list or a dict, got {type(options).__name__}", path=path, line=line,
                            field="options")
        if len(options) < 2:
            raise DataError(f"needs at least 2 options, got {len(options)}", path=path, line=line, field="options")
        gcol = cmap.get("gold") or ("answer_idx" if "answer_idx" in row else "answer")
        gold = _resolve_gold(_req(row, gcol, path, line), [str(o) for o in options], gold_type, path, line)
        rid = row.get(cmap["id"]) if "id" in cmap else row.get("id", row.get("__key__"))
        if rid is None:
            rid = f"{name}-{line}"
        ctx = row.get(cmap["context"]) if "context" in cmap else row.get("context")
        meta = {c: row.get(c) for c in meta_cols}
        return make_mcq(id=rid, question=question, options=options, gold=gold, source=name, split=split,
                        context=ctx, meta=meta, path=path, line=line)

    return collect(f"{name}:{split}", read_any(path), build, path=path, skip_invalid=skip_invalid)


def load_hub(dataset_id: str, split: str = "test", columns: str | Mapping[str, str] | None = None,
             config: str | None = None, skip_invalid: bool = False) -> MCQSet:
    """Load a Hugging Face Hub dataset through the column map (needs ``pip install medrlvr[hub]`` and
    network access; never used by tests)."""
    try:
        import datasets  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the user's install
        raise ImportError("loading from the Hub needs the 'datasets' package: pip install 'medrlvr[hub]'") from e
    import tempfile

    ds = datasets.load_dataset(dataset_id, config, split=split)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "data.parquet")
        ds.to_parquet(out)
        s = load_generic(out, columns, name=dataset_id.replace("/", "__"), split=split, skip_invalid=skip_invalid)
    for sk in s.skipped:  # point errors at the Hub id rather than the temporary file
        object.__setattr__(sk, "path", f"hub:{dataset_id}")
    return s
