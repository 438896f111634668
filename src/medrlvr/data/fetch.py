"""``medrlvr data fetch``: download the benchmarks from their public homes into a data root.

Each benchmark name maps to the files its loader reads (:mod:`medrlvr.data.benchmarks`) and, per file, the
public source it is built from: a Hugging Face Hub dataset (id, config, revision, split, read with
``datasets.load_dataset``) or a file in a public GitHub repository. :func:`fetch` converts each source to the
loader's layout, checks the record count against the published one, loads the result back with the project's own
loader, and writes ``SOURCES.md`` (where each file came from, its count and license).

Sources (exact Hub ids; the counts are the published split sizes):

========================  ==================================================================  ===========
benchmark (files)         source                                                              records
========================  ==================================================================  ===========
``medqa`` (5 options)     ``bigbio/med_qa``, config ``med_qa_en_source``, Parquet branch      10,178 train
                          ``refs/convert/parquet``: splits train / validation / test          1,272 dev
                                                                                              1,273 test
``medqa-4opt``            ``GBaker/MedQA-USMLE-4-options`` (train, test);                     10,178 / 1,273
                          dev: ``bigbio/med_qa`` ``med_qa_en_4options_source`` validation     1,272
``mmlu-pro-health``       ``TIGER-Lab/MMLU-Pro``, split test, ``category == "health"``         818
``medmcqa``               ``openlifescienceai/medmcqa``, split validation (``cop`` 0-based,   4,183
                          written 1-based as the loader reads it)
``pubmedqa``              github.com/pubmedqa/pubmedqa ``data/ori_pqal.json`` and             1,000 / 500
                          ``data/test_ground_truth.json`` (the standard 500-question test)
``mmlu-medical``          ``cais/mmlu``, one config per subject, split test                   1,089
========================  ==================================================================  ===========

``mirror``: a local folder standing in for the network (a copy of the sources, or a test): a Hub id ``ORG/NAME``
is read from ``MIRROR/ORG/NAME`` (a folder laid out as the Hub repository, loaded by ``datasets.load_dataset``
as a local dataset) and a GitHub file from ``MIRROR/github/OWNER/REPO/PATH``. Without a mirror, one quick
reachability check of the Hub (:mod:`medrlvr.hub`) comes first, so no network fails in seconds.
"""

from __future__ import annotations

import csv
import io
import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import quote

from medrlvr.records import LETTERS


@dataclass(frozen=True)
class HubSource:
    """A split of a Hub dataset: ``load_dataset(repo, config, split=split, revision=revision)``, or, with
    ``data_files`` (a glob inside the repository), the Parquet/JSON files at that path read directly."""

    repo: str
    split: str
    config: str | None = None
    revision: str | None = None
    data_files: str | None = None
    license: str = ""

    def where(self) -> str:
        parts = [f"Hugging Face Hub `{self.repo}`"]
        if self.config:
            parts.append(f"config `{self.config}`")
        if self.revision:
            parts.append(f"revision `{self.revision}`")
        parts.append(f"split `{self.split}`" if not self.data_files else f"files `{self.data_files}`")
        return ", ".join(parts)


@dataclass(frozen=True)
class GitHubSource:
    """A file in a public GitHub repository (``owner/repo``, branch, path)."""

    repo: str
    path: str
    branch: str = "master"
    license: str = ""

    def url(self) -> str:
        return f"https://raw.githubusercontent.com/{self.repo}/{self.branch}/{self.path}"

    def where(self) -> str:
        return f"GitHub `{self.repo}` `{self.path}` ({self.branch})"


@dataclass(frozen=True)
class FetchFile:
    """One file of the data root: its path, the source, how rows become the loader's records, and the count."""

    path: str
    source: HubSource | GitHubSource
    count: int
    convert: Callable[[list[dict]], Any] | None = None     # rows -> what write() takes
    write: str = "jsonl"                                    # jsonl | json | csv | raw
    keep: Callable[[dict], bool] | None = None


# ------------------------------------------------------------------------------------------ converters
def _medqa_row(r: dict) -> dict:
    """A MedQA row with ``options`` as a letter -> text object (bigbio's list of ``{key, value}`` converted)."""
    opts = r.get("options")
    if isinstance(opts, list):
        opts = {str(o["key"]): o["value"] for o in opts}
    out = {"question": r["question"], "answer": r.get("answer"), "options": opts, "meta_info": r.get("meta_info"),
           "answer_idx": r["answer_idx"]}
    if r.get("metamap_phrases") is not None:
        out["metamap_phrases"] = list(r["metamap_phrases"])
    return out


def _medmcqa_row(r: dict) -> dict:
    """The Hub's 0-based ``cop`` written 1-based (1..4 = A..D), as the ``medmcqa`` loader reads it."""
    return {**{k: r.get(k) for k in ("id", "question", "opa", "opb", "opc", "opd", "choice_type", "exp",
                                     "subject_name", "topic_name")}, "cop": int(r["cop"]) + 1}


def _mmlu_pro_row(r: dict) -> dict:
    return {k: r.get(k) for k in ("question_id", "question", "options", "answer", "answer_index", "cot_content",
                                  "category", "src")}


def _mmlu_csv_row(r: dict) -> list[str]:
    """cais/mmlu (``question``, ``choices``, 0-based ``answer``) as a headerless CSV row: question, A-D, letter."""
    return [r["question"], *r["choices"], LETTERS[int(r["answer"])]]


_BIGBIO = "bigbio/med_qa"
_PARQUET = "refs/convert/parquet"
_MEDQA_LIC = "MIT (MedQA, Jin et al. 2020: github.com/jind11/MedQA)"


def _medqa_5(split_dir: str) -> HubSource:
    return HubSource(_BIGBIO, "train", revision=_PARQUET, data_files=f"med_qa_en_source/{split_dir}/*.parquet",
                     license=_MEDQA_LIC)


MMLU_SUBJECT_COUNTS = {"anatomy": 135, "clinical_knowledge": 265, "college_biology": 144, "college_medicine": 173,
                       "medical_genetics": 100, "professional_medicine": 272}

SOURCES: dict[str, list[FetchFile]] = {
    "medqa": [FetchFile(f"medqa/us_{s}.jsonl", _medqa_5(d), n, _medqa_row)
              for s, d, n in (("train", "train", 10178), ("dev", "validation", 1272), ("test", "test", 1273))],
    "medqa-4opt": [
        FetchFile("medqa/us_4_options_train.jsonl",
                  HubSource("GBaker/MedQA-USMLE-4-options", "train", license=_MEDQA_LIC), 10178, _medqa_row),
        FetchFile("medqa/us_4_options_dev.jsonl",
                  HubSource(_BIGBIO, "train", revision=_PARQUET,
                            data_files="med_qa_en_4options_source/validation/*.parquet", license=_MEDQA_LIC),
                  1272, _medqa_row),
        FetchFile("medqa/us_4_options_test.jsonl",
                  HubSource("GBaker/MedQA-USMLE-4-options", "test", license=_MEDQA_LIC), 1273, _medqa_row),
    ],
    "mmlu-pro-health": [FetchFile("mmlu_pro/health_test.jsonl",
                                  HubSource("TIGER-Lab/MMLU-Pro", "test", license="MIT (dataset card)"), 818,
                                  _mmlu_pro_row, keep=lambda r: r.get("category") == "health")],
    "medmcqa": [FetchFile("medmcqa/dev.jsonl",
                          HubSource("openlifescienceai/medmcqa", "validation", license="Apache-2.0 (dataset card)"),
                          4183, _medmcqa_row)],
    "pubmedqa": [FetchFile("pubmedqa/ori_pqal.json", GitHubSource("pubmedqa/pubmedqa", "data/ori_pqal.json",
                                                                  license="MIT"), 1000, write="raw"),
                 FetchFile("pubmedqa/test_ground_truth.json",
                           GitHubSource("pubmedqa/pubmedqa", "data/test_ground_truth.json", license="MIT"), 500,
                           write="raw")],
    "mmlu-medical": [FetchFile(f"mmlu/{s}_test.csv", HubSource("cais/mmlu", "test", config=s, license="MIT"), n,
                               _mmlu_csv_row, write="csv") for s, n in MMLU_SUBJECT_COUNTS.items()],
}
"""The files each benchmark name fetches (see the module doc for the table)."""


class FetchError(ValueError):
    """A source could not be read or does not hold the published number of records; the message names it."""


# ------------------------------------------------------------------------------------------ reading
def _hub_rows(src: HubSource, mirror: Path | None) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise FetchError("medrlvr data fetch reads the Hugging Face Hub with the `datasets` library: "
                         "pip install 'medrlvr[hub]'") from None
    datasets.disable_progress_bars()              # one line per file is printed instead
    datasets.logging.set_verbosity_error()
    local = mirror / src.repo if mirror is not None else None
    if local is not None and not local.is_dir():
        raise FetchError(f"{src.repo}: not in the mirror ({local} does not exist)")
    try:
        if src.data_files:
            base = str(local) if local is not None else f"hf://datasets/{src.repo}@{quote(src.revision or 'main', safe='')}"
            kind = "parquet" if src.data_files.endswith(".parquet") else "json"
            ds = datasets.load_dataset(kind, data_files={"train": f"{base}/{src.data_files}"}, split="train")
        elif local is not None:
            ds = datasets.load_dataset(str(local), src.config, split=src.split)
        else:
            ds = datasets.load_dataset(src.repo, src.config, split=src.split, revision=src.revision)
    except Exception as e:  # noqa: BLE001 - the datasets library raises many kinds: one line naming the source
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise FetchError(f"{src.where()}: cannot load ({type(e).__name__}: {first})") from None
    return [dict(r) for r in ds]


def _github_bytes(src: GitHubSource, mirror: Path | None) -> bytes:
    if mirror is not None:
        p = mirror / "github" / src.repo / src.path
        if not p.is_file():
            raise FetchError(f"{src.where()}: not in the mirror ({p} does not exist)")
        return p.read_bytes()
    try:
        with urllib.request.urlopen(src.url(), timeout=30) as r:
            return r.read()
    except OSError as e:
        raise FetchError(f"{src.url()}: cannot download ({e})") from None


def _count_raw(path: str, data: bytes) -> int:
    obj = json.loads(data.decode("utf-8"))
    return len(obj)


# ------------------------------------------------------------------------------------------ writing
def _write(f: FetchFile, out: Path, rows: Iterable[Any]) -> int:
    target = out / f.path
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    n = 0
    if f.write == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for row in rows:
            w.writerow(row)
            n += 1
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    else:
        lines = [json.dumps(r, ensure_ascii=False) for r in rows]
        n = len(lines)
        tmp.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    tmp.replace(target)
    return n


def fetch_file(f: FetchFile, out: Path, mirror: Path | None = None) -> int:
    """Write one file of the data root from its source; returns its record count (checked against ``f.count``)."""
    if isinstance(f.source, GitHubSource):
        data = _github_bytes(f.source, mirror)
        try:
            n = _count_raw(f.path, data)
        except (ValueError, UnicodeDecodeError) as e:
            raise FetchError(f"{f.source.where()}: not JSON ({e})") from None
        if n == f.count:
            target = out / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
    else:
        rows = _hub_rows(f.source, mirror)
        if f.keep is not None:
            rows = [r for r in rows if f.keep(r)]
        n = len(rows)
        if n == f.count:
            _write(f, out, (f.convert(r) if f.convert else r for r in rows))
    if n != f.count:
        raise FetchError(f"{f.source.where()}: {n:,} records, expected {f.count:,} (the published size); "
                         f"{f.path} not written")
    return n


@dataclass
class FetchReport:
    """What :func:`fetch` wrote: ``(benchmark, file, records, source, license)`` rows and the data root."""

    out: Path
    rows: list[tuple[str, str, int, str, str]] = field(default_factory=list)


def fetch(names: Iterable[str], out: str | Path, mirror: str | Path | None = None, log=print) -> FetchReport:
    """Fetch the benchmarks ``names`` (keys of :data:`SOURCES`, or ``all``) into the data root ``out``, check
    each file's count and that the project's loader reads it, and (re)write ``out/SOURCES.md``."""
    from medrlvr.data.benchmarks import BENCHMARKS, load_benchmark
    from medrlvr.argtypes import did_you_mean

    names = list(dict.fromkeys(n for x in names for n in (SOURCES if x == "all" else [x])))
    for n in names:
        if n not in SOURCES:
            raise ValueError(f"unknown benchmark {n!r} to fetch; known: {', '.join(SOURCES)}, all"
                             + did_you_mean(n, SOURCES))
    out = Path(out)
    mir = Path(mirror) if mirror is not None else None
    if mir is None:
        from medrlvr.hub import endpoint_host, ensure_reachable

        if not ensure_reachable():
            raise FetchError(f"the Hugging Face Hub ({endpoint_host()[0]}) is unreachable: medrlvr data fetch needs "
                             "network (or --mirror DIR, a local copy of the sources)")
    rep = FetchReport(out)
    for name in names:
        for f in SOURCES[name]:
            n = fetch_file(f, out, mir)
            log(f"{name}: {f.path}: {n:,} records from {f.source.where()}")
            rep.rows.append((name, f.path, n, f.source.where(), f.source.license))
        b = BENCHMARKS[name]
        for split in b.splits:   # the loader reads what was written (counts and fields), as a run will
            s = load_benchmark(name, data_root=out, split=split)
            if s.skipped:
                raise FetchError(f"{name}:{split}: {len(s.skipped)} records the loader refuses "
                                 f"(medrlvr data validate {name}:{split} --data-root {out})")
    _write_sources(out, rep.rows)
    return rep


def _write_sources(out: Path, rows: list[tuple[str, str, int, str, str]]) -> None:
    """Merge ``rows`` into ``out/SOURCES.md`` (one table row per file; files fetched earlier are kept)."""
    p = out / "SOURCES.md"
    old: dict[str, str] = {}
    if p.is_file():
        for line in p.read_text(encoding="utf-8").splitlines():
            if line.startswith("| `"):
                old[line.split("`")[1]] = line
    for name, path, n, where, lic in rows:
        old[path] = f"| `{path}` | {name} | {n:,} | {where} | {lic} |"
    text = ["# Sources of this data root", "",
            "Written by `medrlvr data fetch`: where each file came from, its record count (checked against the",
            "published size) and its license. Cite the original authors when you use a benchmark.", "",
            "| file | benchmark | records | source | license |", "|---|---|---|---|---|",
            *[old[k] for k in sorted(old)], ""]
    p.write_text("\n".join(text), encoding="utf-8")


def cmd_data_fetch(a) -> int:
    fetch(a.names, a.out, a.mirror)
    print(f"data root: {a.out} (SOURCES.md lists every file); use it with --data-root {a.out} "
          f"or MEDRLVR_DATA_ROOT={a.out}")
    return 0


def add_cli(dsub) -> None:
    """Register ``data fetch`` on the ``data`` sub-command's subparsers."""
    f = dsub.add_parser("fetch", help="download benchmarks from their public homes into a data root")
    f.add_argument("names", nargs="+", metavar="NAME", help=f"benchmarks to fetch: {', '.join(SOURCES)}, or all")
    f.add_argument("--out", default="data", help="the data root to write (folders medqa/, mmlu_pro/, ...)")
    f.add_argument("--mirror", default=None,
                   help="a local folder standing in for the network: ORG/NAME Hub repositories, github/OWNER/REPO/PATH")
    f.set_defaults(func=cmd_data_fetch)
