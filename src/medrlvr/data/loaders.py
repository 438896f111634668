"""Loaders: one per benchmark file format in ``../shared/data``, plus a generic column-mapped loader.

All loaders return an :class:`~medrlvr.records.MCQSet`. Malformed lines and invalid records
raise :class:`~medrlvr.records.DataError` naming file, line (or key) and field, unless
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
``choices=TEXT1|TEXT2|...``
    the same options for every record, for a file with no options column (PubMedQA-style yes/no/maybe:
    ``choices=yes|no|maybe,gold=final_decision``); the gold is then a text or a letter.
``filler=keep|drop``
    filler options (``n/a``, ``none``, ``-``, empty after stripping: :data:`FILLER_TEXTS`): ``keep`` (default)
    keeps a non-empty one as a real option, with a warning counted per record (an empty one is an error);
    ``drop`` removes those that are not the gold (``--drop-filler-options`` of the ``data`` commands).
``records=KEY[/KEY...]``
    in a nested JSON file, the set of records to load (the same as ``FILE.json:KEY``); ``*`` takes every
    key at its level.

An options column may hold a list of texts, a letter -> text object, or a list of option objects
``{"letter"|"key"|"label": "A", "content"|"value"|"text": "..."}`` (or a text key alone); other object
shapes are refused; an options cell holding a Python literal (``{'A': 'x'}``, single quotes, as ``str(dict)``
writes it) is read with :func:`ast.literal_eval` (never ``eval``). A gold given as a one-element list (``["J"]``)
stands for its element. A gold option whose text another option repeats is an error (a model that picks the twin
would be scored wrong). Errors in a JSON array file name the file line where the record starts and its record
number (``FILE:14 (record 3)``).
Several files, several maps: see :func:`columns_for_sources` (``"a.csv=question=q;b.jsonl=gold=label"``).
The file as a whole is checked before any record: an empty or header-only file, or a column the map
needs that no record has, is one error (listing the file's columns) rather than one per record.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

from medrlvr.records import LETTERS, DataError, MCQSet, collect, make_mcq


# ----------------------------------------------------------------------------------------- readers
def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", path=str(p))
    if p.is_dir():
        raise DataError("is a directory, expected a file", path=str(p))
    return p


def _decode(raw: bytes, p: Path, line: int | None = None) -> str:
    try:
        return raw.decode("utf-8-sig" if line in (None, 1) else "utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); re-save the file as UTF-8",
                        path=str(p), line=line) from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)``; a malformed line yields a :class:`DataError` in place of the object
    (so that ``skip_invalid`` can count it). Blank lines are ignored, a UTF-8 BOM is stripped, and a file
    without a single non-blank line raises :class:`DataError`."""
    p = _check_file(path)
    n = 0
    with open(p, "rb") as f:
        for i, raw_b in enumerate(f, 1):
            raw = _decode(raw_b, p, i)
            if not raw.strip():
                continue
            n += 1
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
    if n == 0:
        raise DataError("empty file: no JSON lines", path=str(p))


def _looks_like_record(v: Any) -> bool:
    """A record has at least one scalar (text or number) value; a set of records has none."""
    return isinstance(v, Mapping) and any(isinstance(x, (str, int, float)) and not isinstance(x, bool)
                                          for x in v.values())


def _n_records(v: Any) -> int | None:
    """How many records ``v`` holds when it is a set of them (a list of, or an id -> record mapping of,
    records), else ``None``."""
    if isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v) and _looks_like_record(v[0]):
        return len(v)
    if isinstance(v, Mapping) and v and all(isinstance(x, Mapping) for x in v.values()) and \
            _looks_like_record(next(iter(v.values()))):
        return len(v)
    return None


def _container_hint(data: Any, p: Path) -> DataError | None:
    """When the top level of a JSON file holds sets of records rather than records, say what to write."""
    if not isinstance(data, Mapping) or not data:
        return None
    if isinstance(data, Mapping) and all(_looks_like_record(v) for v in data.values()):
        return None                                   # records keyed by id
    sets = {k: n for k, v in data.items() if (n := _n_records(v)) is not None}
    if not sets:
        return None
    first = next(iter(sets))
    listed = ", ".join(f"{k!r} ({n} record{'s' if n != 1 else ''})" for k, n in list(sets.items())[:5]) + (", ..." if len(sets) > 5 else "")
    return DataError(f"the top level is an object holding sets of records, not records: {listed}; select one with "
                     f"{p}:{first} or --columns records={first} (records=* takes all {len(sets)} sets)"
                     if len(sets) > 1 else
                     f"the top level is an object holding sets of records, not records: {listed}; select it with "
                     f"{p}:{first} or --columns records={first}", path=str(p))


def _select(data: Any, select: str, p: Path) -> Iterator[tuple[str, list[str], Any]]:
    """Walk ``select`` (``setA``, ``setA/sub``, ``*``, ``*/train``) down ``data``; yield (label, wildcard parts,
    value) per reached node."""
    nodes: list[tuple[list[str], list[str], Any]] = [([], [], data)]
    for part in [x for x in select.split("/") if x != ""]:
        nxt = []
        for where, wild, node in nodes:
            if isinstance(node, list) and part != "*":
                try:
                    node_d = {part: node[int(part) - 1]} if 1 <= int(part) <= len(node) else {}
                except ValueError:
                    node_d = {}
            elif isinstance(node, list):
                node_d = {str(i): x for i, x in enumerate(node, 1)}
            elif isinstance(node, Mapping):
                node_d = node
            else:
                raise DataError(f"cannot select {part!r} inside {'/'.join(where) or 'the top level'}: it is a "
                                f"{type(node).__name__}", path=str(p), field="records")
            if part == "*":
                nxt.extend((where + [str(k)], wild + [str(k)], v) for k, v in node_d.items())
            elif part in node_d:
                nxt.append((where + [part], wild, node_d[part]))
            else:
                keys = list(node_d)[:10] if isinstance(node_d, Mapping) else []
                raise DataError(f"no key {part!r} in {'/'.join(where) or 'the top level'}; keys there: "
                                f"{', '.join(map(str, keys))}{', ...' if len(node_d) > 10 else ''}", path=str(p),
                                field="records")
        nodes = nxt
    for where, wild, node in nodes:
        yield "/".join(where), wild, node


def read_json(path: str | os.PathLike, select: str | None = None) -> Iterator[tuple[int | str, Any]]:
    """A JSON file holding a list of objects (line = 1-based index) or a dict keyed by id (line = key).

    ``select`` (``FILE.json:setA``, column map ``records=setA``) picks the list or id -> record mapping at
    a ``/``-separated key path first; ``*`` stands for every key at its level (``*`` or ``*/test``). The
    records are then labelled ``setA/KEY`` (``setA/N`` for the N-th list item). Without ``select``, a top
    level that holds sets rather than records is refused with the selector to write."""
    p = _check_file(path)
    text = _decode(p.read_bytes(), p)
    if not text.strip():
        raise DataError("empty file", path=str(p))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON: {e.msg} (column {e.colno})", path=str(p), line=e.lineno) from None
    if select:
        nodes = list(_select(data, select, p))
    else:
        hint = _container_hint(data, p)
        if hint is not None:
            raise hint
        nodes = [("", [], data)]
    starts = _array_item_lines(text) if not select and isinstance(data, list) else None
    n = 0
    for where, wild, node in nodes:
        pre = f"{where}/" if where else ""
        if isinstance(node, list):
            for i, v in enumerate(node, 1):
                n += 1
                if isinstance(v, dict) and wild:
                    v = {"__key__": "/".join(wild + [str(i)]), **v}
                if isinstance(v, dict) and starts is not None and i <= len(starts):
                    v = {"__line__": starts[i - 1], **v}
                yield (f"{pre}{i}" if pre else i), v
        elif isinstance(node, Mapping):
            for k, v in node.items():
                n += 1
                if isinstance(v, dict):
                    v = {"__key__": "/".join(wild + [str(k)]), **v}
                yield f"{pre}{k}", v
        else:
            raise DataError(f"expected a JSON list or object {'at ' + where if where else 'at top level'}, got "
                            f"{type(node).__name__}", path=str(p), field="records" if select else None)
    if n == 0:
        raise DataError(f"no records: {'the selection ' + repr(select) + ' is' if select else 'the file is'} an "
                        "empty list or object", path=str(p))


def _array_item_lines(text: str) -> list[int]:
    """1-based file line where each item of a top-level JSON array starts (``[]`` when ``text`` is not one)."""
    dec = json.JSONDecoder()
    i = len(text) - len(text.lstrip())
    if not text.startswith("[", i):
        return []
    i += 1
    out: list[int] = []
    line, seen = 1, 0
    ws = " \t\r\n,"
    while i < len(text):
        while i < len(text) and text[i] in ws:
            i += 1
        if i >= len(text) or text[i] == "]":
            break
        line += text.count("\n", seen, i)
        seen = i
        out.append(line)
        try:
            _, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            break
    return out


def read_csv(path: str | os.PathLike, header: bool = True) -> Iterator[tuple[int, Any]]:
    """CSV rows as dicts (``header=True``) or lists.

    The line of a record is the physical line where it *starts* (a quoted field may span lines). A UTF-8
    BOM is stripped; a quoted field left open at the end of the file (a cut-off file) or text after a
    closing quote is a malformed record at its starting line; an empty or header-only file raises."""
    p = _check_file(path)
    text = _decode(p.read_bytes(), p)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    cols = None
    n = 0
    end = 0                                   # physical line where the previous record ended
    while True:
        start = end + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            end = reader.line_num
            msg = ("unterminated quoted field: the file ends inside a quote opened in the record starting here"
                   if "unexpected end of data" in str(e) else f"malformed CSV: {e}")
            if header and cols is None:
                raise DataError(msg, path=str(p), line=start, field="<header>") from None
            n += 1
            yield start, DataError(msg, path=str(p), line=start, field="<row>")
            continue
        end = reader.line_num
        if header and cols is None:
            if not any(c.strip() for c in row):
                continue
            cols = [c.strip() for c in row]
            continue
        if not any(c.strip() for c in row):
            continue
        n += 1
        if cols is not None:
            if len(row) != len(cols):
                yield start, DataError(f"expected {len(cols)} columns, got {len(row)}", path=str(p), line=start,
                                       field="<row>")
                continue
            yield start, dict(zip(cols, row))
        else:
            yield start, row
    if n == 0:
        raise DataError(f"no records: only a header row ({', '.join(cols)})" if cols else "empty file", path=str(p))


def read_parquet(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Parquet rows as dicts; line = 1-based row number."""
    p = _check_file(path)
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for bad files
        raise DataError(f"cannot read parquet: {e}", path=str(p)) from None
    if table.num_rows == 0:
        raise DataError(f"no records: the table has columns ({', '.join(table.column_names)}) but no rows",
                        path=str(p))
    yield from enumerate(table.to_pylist(), 1)


def read_any(path: str | os.PathLike, select: str | None = None) -> Iterator[tuple[int | str, Any]]:
    """Dispatch on the file extension: .jsonl/.ndjson, .json, .csv, .parquet. ``select`` (a key path inside
    a JSON file, see :func:`read_json`) is refused for the other types."""
    suffix = Path(path).suffix.lower()
    if select and suffix != ".json":
        raise DataError(f"a record selector ({select!r}) only applies to .json files", path=str(path),
                        field="records")
    if suffix in (".jsonl", ".ndjson"):
        return iter_jsonl(path)
    if suffix == ".json":
        p = _check_file(path)
        with open(p, "rb") as f:
            head = f.read(4096).decode("utf-8-sig", errors="replace").lstrip()
        # A ".json" that is really JSON Lines (MedMCQA's upstream file is one).
        if head.startswith("{") and "\n{" in head and not head.startswith("{\n") and not select:
            return iter_jsonl(path)
        return read_json(path, select)
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
                        duplicate_options="warn", duplicate_gold="warn")

    return collect(f"{name}:{split}", iter_jsonl(path), build, path=path, skip_invalid=skip_invalid)


def load_mmlu_pro(path, category: str | None = "health", split: str = "test", name: str = "mmlu-pro-health",
                  skip_invalid: bool = False) -> MCQSet:
    """MMLU-Pro JSONL (3..10 options as a list, gold ``answer`` letter and 0-based ``answer_index``),
    filtered by ``category`` (``None`` keeps all)."""
    path = str(path)

    def rows():
        for line, row in iter_jsonl(path):
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
                        duplicate_options="warn", duplicate_gold="warn")

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
                        duplicate_options="warn", duplicate_gold="warn")

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
                            duplicate_options="warn", duplicate_gold="warn")

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
COLUMN_KEYS = ("question", "options", "gold", "gold_type", "id", "context", "meta", "records", "choices", "filler")
FILLER_TEXTS = frozenset({"", "n/a", "na", "n.a.", "none", "null", "nan", "-", "--", "—", "?", "blank"})
"""Option texts (lower-cased, stripped) that hold no answer: placeholders a file uses to pad its option columns."""


def parse_column_map(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """Parse ``"question=Q,options=A|B|C|D,gold=ans,gold_type=letter"`` into a dict (see module doc)."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping):
        items = dict(spec)
    else:
        if ";" in spec:
            raise ValueError(f"column map {spec!r} holds ';': per-file maps (FILE=key=value,...;FILE2=...) are "
                             "resolved with columns_for_sources() first")
        items = {}
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise ValueError(f"column map entry {part!r} is not key=value (keys: {', '.join(COLUMN_KEYS)})")
            k, v = part.split("=", 1)
            items[k.strip()] = v.strip()
    bad = set(items) - set(COLUMN_KEYS)
    if bad:
        raise ValueError(f"unknown column map key(s) {sorted(bad)}; known: {', '.join(COLUMN_KEYS)}")
    if items.get("gold_type", "auto") not in GOLD_TYPES:
        raise ValueError(f"gold_type must be one of {GOLD_TYPES}, got {items['gold_type']!r}")
    if items.get("filler", "keep") not in ("keep", "drop"):
        raise ValueError(f"filler must be keep or drop, got {items['filler']!r}")
    if "choices" in items:
        if "options" in items:
            raise ValueError("column map gives both options= (columns) and choices= (fixed texts): give one")
        texts = [t.strip() for t in items["choices"].split("|")]
        if len(texts) < 2 or not all(texts):
            raise ValueError(f"choices={items['choices']!r}: give at least two non-empty texts separated by |")
    return items


def _unwrap_gold(gold: Any, path, line, field: str) -> Any:
    """A one-element list (``["J"]``, also as JSON text in a CSV cell) stands for its element."""
    if hasattr(gold, "tolist"):
        gold = gold.tolist()
    if isinstance(gold, str) and gold.strip().startswith("["):
        try:
            parsed = json.loads(gold)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            gold = parsed
    if isinstance(gold, (list, tuple)):
        if len(gold) == 1:
            return gold[0]
        raise DataError(f"gold is a list of {len(gold)} answers {list(gold)!r}: one correct answer per question is "
                        "supported", path=path, line=line, field=field)
    return gold


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
        if len(hits) > 1:
            raise bad(f"gold text {g!r} matches several options ({', '.join(LETTERS[i] for i in hits)}: duplicate "
                      "texts); give the gold as a letter or an index")
        if gold_type == "auto" and g.isdigit():
            raise bad(f"gold {gold!r} is a number: say gold_type=index0 or gold_type=index1")
        raise bad(f"gold {gold!r} is not among the options")
    raise bad(f"gold {gold!r} is not a single letter")


# Option objects: ``{"letter": "A", "content": ...}``, ``{"key": "A", "value": ...}``, ``{"label": "A", "text": ...}``
# (any letter key with any text key), or a text key alone (lettered by position).
OPTION_LETTER_KEYS = ("letter", "key", "label")
OPTION_TEXT_KEYS = ("content", "value", "text")
_LETTER_RE = re.compile(r"\(?\s*([A-Za-z])\s*[.):]?\s*")


def _option_objects(options: list, path, line, field: str) -> list | dict:
    """Turn a list of option objects into a letter -> text dict (or a list, when they carry no letter);
    refuse any other object shape, naming its keys."""
    if not any(isinstance(o, Mapping) for o in options):
        return options
    known = ", ".join(f"{a}/{b}" for a, b in zip(OPTION_LETTER_KEYS, OPTION_TEXT_KEYS))
    letters, texts = [], []
    for i, o in enumerate(options, 1):
        if not isinstance(o, Mapping):
            raise DataError(f"option {i} is a {type(o).__name__} among option objects", path=path, line=line,
                            field=field)
        lk = [k for k in o if k in OPTION_LETTER_KEYS]
        tk = [k for k in o if k in OPTION_TEXT_KEYS]
        other = [k for k in o if k not in OPTION_LETTER_KEYS + OPTION_TEXT_KEYS]
        if len(tk) != 1 or len(lk) > 1 or other:
            raise DataError(f"option {i} is an object with keys {list(o)}; expected one of {known} (or a text key "
                            "alone)", path=path, line=line, field=field)
        texts.append(o[tk[0]])
        if lk:
            m = _LETTER_RE.fullmatch(str(o[lk[0]]))
            if not m:
                raise DataError(f"option {i}: {lk[0]} {o[lk[0]]!r} is not a letter", path=path, line=line, field=field)
            letters.append(m.group(1).upper())
    if not letters:
        return texts
    if len(letters) != len(texts):
        raise DataError("some option objects carry a letter and some do not", path=path, line=line, field=field)
    return dict(zip(letters, texts))


def _options_text(text: str, path, line, field: str) -> Any:
    """An options cell given as text: JSON (a list or an object), else a Python literal such as ``str(dict)``
    writes (single quotes), read with :func:`ast.literal_eval`, never ``eval``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    t = text.strip()
    if t[:1] in "{[(":
        try:
            v = ast.literal_eval(t)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            kind = "a Python dict" if t.startswith("{") else "a Python list"
            raise DataError(f"options column holds a string that looks like {kind} but cannot be read as a literal "
                            f"({t[:60]!r}); write it as JSON", path=path, line=line, field=field) from None
        if isinstance(v, (dict, list, tuple)):
            return list(v) if isinstance(v, tuple) else v
    raise DataError("options column holds a string that is not a JSON list or object (nor a Python literal of one)",
                    path=path, line=line, field=field)


def _check_columns(rows: list, cmap: Mapping[str, str], opt_cols, meta_cols, path: str) -> None:
    """One header-level error when a column the map needs (or the default it falls back to) is in no record;
    it lists the columns the file has."""
    seen: dict[str, None] = {}
    for _, r in rows:
        if isinstance(r, Mapping):
            for k in r:
                if k not in ("__key__", "__line__"):
                    seen.setdefault(str(k), None)
    if not seen:
        return
    missing: list[str] = []

    def need(col: str, key: str, default: bool = False):
        if col not in seen:
            missing.append(f"column {col!r} ({key}={col}{', the default' if default else ''})")

    need(cmap.get("question", "question"), "question", "question" not in cmap)
    if "choices" in cmap:
        pass
    elif opt_cols:
        for c in opt_cols:
            need(c, "options")
    elif "options" not in seen and sum(c in seen for c in LETTERS) < 2:
        missing.append("an options column ('options', or columns A, B, ...; say options=COL or options=C1|C2|...)")
    if "gold" in cmap:
        need(cmap["gold"], "gold")
    elif "answer_idx" not in seen and "answer" not in seen:
        missing.append("a gold column ('answer_idx' or 'answer'; say gold=COL)")
    for key in ("id", "context"):
        if key in cmap:
            need(cmap[key], key)
    for c in meta_cols:
        need(c, "meta")
    if missing:
        csv_like = Path(path).suffix.lower() == ".csv"
        raise DataError(f"not found: {'; '.join(missing)}. The file has columns: {', '.join(seen)}", path=path,
                        line=1 if csv_like else None, field="<columns>")


def load_generic(path, columns: str | Mapping[str, str] | None = None, name: str | None = None,
                 split: str = "test", skip_invalid: bool = False, select: str | None = None) -> MCQSet:
    """Load any JSONL / JSON / CSV / parquet file of multiple-choice questions through a column map.

    ``select`` (or the map's ``records=``) picks a set inside a nested JSON file (see :func:`read_json`).
    Duplicate option texts are kept with a warning, as for the built-in benchmarks (``MCQSet.warnings``);
    a gold given as text that matches two options is an error (it would be ambiguous)."""
    path = str(path)
    cmap = parse_column_map(columns)
    if select and cmap.get("records") and cmap["records"] != select:
        raise DataError(f"two record selectors: {select!r} (after the file name) and records={cmap['records']}",
                        path=path, field="records")
    select = select or cmap.get("records")
    name = name or Path(path).stem + (f"-{select.replace('/', '-').replace('*', 'all')}" if select else "")
    gold_type = cmap.get("gold_type", "auto")
    opt_cols = cmap["options"].split("|") if "options" in cmap else None
    meta_cols = cmap["meta"].split("|") if "meta" in cmap else []
    rows = list(read_any(path, select))
    _check_columns(rows, cmap, opt_cols, meta_cols, path)
    choices = [t.strip() for t in cmap["choices"].split("|")] if "choices" in cmap else None
    drop_filler = cmap.get("filler") == "drop"

    def build(row, line):
        if isinstance(row, Mapping) and "__line__" in row:   # a JSON array item: name its file line too
            try:
                return build_one(row, line)
            except DataError as e:
                if e.line != line:
                    raise
                raise DataError(e.reason, path=e.path, line=f"{row['__line__']} (record {line})",
                                field=e.field) from None
        return build_one(row, line)

    def build_one(row, line):
        if isinstance(row, list):
            raise DataError("row has no column names (headerless CSV needs a header row)", path=path, line=line)
        if not isinstance(row, Mapping):
            raise DataError(f"expected a record, got {type(row).__name__}", path=path, line=line, field="<row>")
        qcol = cmap.get("question", "question")
        question = _req(row, qcol, path, line)
        ocol = "options"
        if choices is not None:
            options = list(choices)
        elif opt_cols is not None and len(opt_cols) > 1:
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
                    options = _options_text(options, path, line, ocol)
                if hasattr(options, "tolist"):
                    options = options.tolist()
                if isinstance(options, (list, tuple)):
                    options = _option_objects(list(options), path, line, ocol)
        if isinstance(options, Mapping):
            keys = sorted(str(k).strip().upper() for k in options)
            if keys != list(LETTERS[: len(keys)]):
                raise DataError(f"option keys must be consecutive letters from A, got {list(options)}", path=path,
                                line=line, field=ocol)
            options = [options[k] for k in sorted(options, key=lambda k: str(k).strip().upper())]
        if not isinstance(options, (list, tuple)):
            raise DataError(f"options must be a list or a dict, got {type(options).__name__}", path=path, line=line,
                            field=ocol)
        if len(options) < 2:
            raise DataError(f"needs at least 2 options, got {len(options)}", path=path, line=line, field="options")
        for i, o in enumerate(options):
            if isinstance(o, (Mapping, list, tuple)):
                raise DataError(f"option {LETTERS[i]} is a {type(o).__name__} ({str(o)[:60]}), not text", path=path,
                                line=line, field=ocol)
        gcol = cmap.get("gold") or ("answer_idx" if "answer_idx" in row else "answer")
        gold = _unwrap_gold(_req(row, gcol, path, line), path, line, gcol)
        options = ["" if o is None or (isinstance(o, float) and o != o) else o for o in options]
        gold = _resolve_gold(gold, [str(o) for o in options], gold_type, path, line)
        filler = [i for i, o in enumerate(options) if str(o).strip().lower() in FILLER_TEXTS]
        extra_meta: dict[str, Any] = {}
        if filler and drop_filler:
            gi = LETTERS.index(gold)
            drop = [i for i in filler if i != gi]
            options = [o for i, o in enumerate(options) if i not in drop]
            gold = LETTERS[gi - sum(i < gi for i in drop)]
            if len(options) < 2:
                raise DataError(f"{len(options)} option(s) left after dropping {len(drop)} filler option(s)",
                                path=path, line=line, field="options")
            extra_meta["dropped_filler"] = len(drop)
            filler = [i - sum(j < i for j in drop) for i in filler if i not in drop]
        empty = [LETTERS[i] for i in filler if not str(options[i]).strip()]
        if empty:
            raise DataError(f"option {', '.join(empty)} is empty (say --drop-filler-options, or filler=drop in the "
                            "column map, to drop empty options that are not the gold)", path=path, line=line,
                            field=ocol)
        if filler:
            extra_meta["filler_options"] = "".join(LETTERS[i] for i in filler)
        rid = row.get(cmap["id"]) if "id" in cmap else row.get("id", row.get("__key__"))
        if rid is None:
            rid = f"{name}-{line}"
        ctx = row.get(cmap["context"]) if "context" in cmap else row.get("context")
        if isinstance(ctx, (list, tuple)):          # PubMedQA's CONTEXTS: a list of paragraphs
            ctx = "\n".join(str(x) for x in ctx)
        meta = {c: row.get(c) for c in meta_cols} | extra_meta
        return make_mcq(id=rid, question=question, options=options, gold=gold, source=name, split=split,
                        context=ctx, meta=meta, path=path, line=line, duplicate_options="warn")

    return collect(f"{name}:{split}", rows, build, path=path, skip_invalid=skip_invalid)


