"""Any source of questions by one name: a built-in benchmark (``NAME[:SPLIT]``), a file (``.jsonl/.json/.csv/
.parquet``, a set inside a nested JSON file as ``FILE.json:KEY``) or ``hub:ORG/NAME[:SPLIT]``, each file read
through its column map (one for every file, or one per file: :func:`columns_for_sources`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from medrlvr.data.benchmarks import BENCHMARKS, load_benchmark, split_name
from medrlvr.data.loaders import COLUMN_KEYS, load_generic, parse_column_map
from medrlvr.records import DataError, MCQSet


def columns_for_sources(columns: str | Mapping[str, str] | None, sources: list[str],
                        strict: bool = True) -> dict[str, dict[str, str]]:
    """One column map per source from a ``--columns`` value.

    ``columns`` is one map (``question=q,gold=ans``: every file uses it) or ``;``-separated entries, each
    either a map (the default for all files) or ``FILE=map`` for one file: ``"a.csv=question=q,gold=k;
    b.jsonl=options=choices,gold=label,gold_type=index0"``. ``FILE`` is a source exactly as given or its
    file name (``a.csv`` for ``data/a.csv``; ``nested.json:setA`` for a selected JSON set). A file's own
    entry is merged over the default. An entry naming no source, or naming a built-in benchmark, is an
    error (``strict=False``: ignored, for a caller that loads one source of several). Returns ``{source: map}``
    for every source."""
    if columns is None or isinstance(columns, Mapping):
        base = parse_column_map(columns)
        return {s: dict(base) for s in sources}
    default: dict[str, str] = {}
    own: dict[str, dict[str, str]] = {}
    for entry in [e.strip() for e in str(columns).split(";") if e.strip()]:
        head, eq, rest = entry.partition("=")
        if not eq:
            raise ValueError(f"--columns entry {entry!r} is not key=value or FILE=key=value")
        if head.strip() in COLUMN_KEYS:
            default.update(parse_column_map(entry))
            continue
        sel = head.strip()
        hits = [s for s in sources if s == sel or Path(s).name == sel]
        if not hits and not strict:
            continue
        if not hits:
            raise ValueError(f"--columns names {sel!r}, which is not among the sources ({', '.join(sources)})")
        if len(hits) > 1:
            raise ValueError(f"--columns entry {sel!r} matches several sources ({', '.join(hits)}): give the path")
        if split_name(hits[0])[0] in BENCHMARKS:
            raise ValueError(f"--columns entry {sel!r}: {hits[0]} is a built-in benchmark, which needs no column map")
        if hits[0] in own:
            raise ValueError(f"--columns gives two maps for {hits[0]}")
        own[hits[0]] = parse_column_map(rest)
    return {s: {**default, **own.get(s, {})} for s in sources}


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


def load_any(spec: str, data_root=None, columns=None, skip_invalid: bool = False, split: str | None = None) -> MCQSet:
    """A benchmark name, a file path (generic loader with ``columns``; ``FILE.json:KEY/PATH`` selects a set
    inside a nested JSON file), or ``hub:ORG/NAME[:SPLIT]``."""
    if isinstance(columns, str) and ";" in columns:   # per-file maps: this source's entry over the default
        columns = columns_for_sources(columns, [spec], strict=False)[spec]
    if spec.startswith("hub:"):
        ds, _, sp = spec[4:].partition(":")
        return load_hub(ds, split=sp or split or "test", columns=columns, skip_invalid=skip_invalid)
    if split_name(spec)[0] in BENCHMARKS:
        return load_benchmark(spec, data_root, split=split, skip_invalid=skip_invalid)
    if Path(spec).exists():
        return load_generic(spec, columns, split=split or "test", skip_invalid=skip_invalid)
    base, _, select = spec.rpartition(":")
    if base and select and Path(base).is_file():   # FILE.json:KEY, a set inside a nested JSON file
        return load_generic(base, columns, split=split or "test", skip_invalid=skip_invalid, select=select)
    raise ValueError(f"{spec!r} is neither a benchmark ({', '.join(BENCHMARKS)}), an existing file, nor hub:ID")


MAX_REPORTED = 5
"""Per-record lines of each kind (invalid, warning) :func:`report` prints before its count; ``data validate``
lists them all."""


def report(s: MCQSet, stream: TextIO | None = None, warnings: bool = True, max_lines: int = MAX_REPORTED) -> None:
    """Print what loading skipped or warned about, when there is anything to say (default: stderr): the first
    ``max_lines`` ``invalid: FILE:LINE: ...`` lines and the first ``max_lines`` ``warning: ...`` lines (then how
    many more, which ``data validate`` lists), and one count line that says "skipped" only when records were."""
    stream = stream or sys.stderr
    if not s.skipped and not (warnings and s.warnings):
        return
    for kind, items in (("invalid", s.skipped), ("warning", s.warnings if warnings else [])):
        for x in items[:max_lines]:
            print(f"{kind}: {x}", file=stream)
        if len(items) > max_lines:
            print(f"... {len(items) - max_lines} more {kind} record lines (`medrlvr data validate` lists all)",
                  file=stream)
    parts = [f"{len(s)} valid"]
    if s.skipped:
        parts.append(f"{len(s.skipped)} invalid (skipped)")
    if s.warnings:
        parts.append(f"{len(s.warnings)} with warnings")
    print(f"{s.name}: {', '.join(parts)}", file=stream)


def load_sources(sources: list[str], data_root, columns, skip_invalid: bool = False, stream: TextIO | None = None,
                 warnings: bool = True) -> dict[str, MCQSet]:
    """Load each source with its own column map; report what ``skip_invalid`` skipped; refuse a source left
    with no valid record (an empty set is never what is meant)."""
    maps = columns_for_sources(columns, sources)
    out: dict[str, MCQSet] = {}
    for spec in sources:
        s = load_any(spec, data_root, maps[spec] or None, skip_invalid=skip_invalid)
        report(s, stream, warnings=warnings)
        if not s.records:
            first = f"; the first: {s.skipped[0]}" if s.skipped else ""
            raise DataError(f"no valid records: all {len(s.skipped)} were invalid{first}")
        out[spec] = s
    return out
