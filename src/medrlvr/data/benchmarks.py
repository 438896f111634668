"""Named benchmarks resolved under a data root.

The data root is, in order: the ``data_root`` argument (CLI ``--data-root``), the environment variable
``MEDRLVR_DATA_ROOT``, then ``../shared/data`` relative to the current directory when it exists (the same
lookup for the command line and the Python API). ``medrlvr data fetch NAME --out DIR`` downloads a benchmark
into a data root (:mod:`medrlvr.data.fetch`).
A name may carry a split after a colon: ``medqa-4opt:dev``. ``starter`` is the built-in set and
needs no data root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medrlvr.data.loaders import load_medmcqa, load_medqa, load_mmlu_csv, load_mmlu_pro, load_pubmedqa
from medrlvr.records import DataError, MCQSet

MMLU_MEDICAL_SUBJECTS = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                         "professional_medicine")


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    splits: tuple[str, ...]            # the first is the default
    loader: Callable[[Path, str, bool], MCQSet]
    distribution: str = "ood"          # "id" (in-distribution for MedQA training) or "ood"


def _medqa(prefix: str, name: str):
    return lambda root, split, skip: load_medqa(root / "medqa" / f"{prefix}_{split}.jsonl", split=split, name=name,
                                                skip_invalid=skip)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark("medqa", "MedQA-USMLE, original 5 options (A-E), as in Med-RLVR", ("test", "dev", "train"),
                  _medqa("us", "medqa"), "id"),
        Benchmark("medqa-4opt", "MedQA-USMLE, 4 options (A-D)", ("test", "dev", "train"),
                  _medqa("us_4_options", "medqa-4opt"), "id"),
        Benchmark("mmlu-pro-health", "MMLU-Pro, health category, 3-10 options", ("test",),
                  lambda root, split, skip: load_mmlu_pro(root / "mmlu_pro" / "health_test.jsonl", "health",
                                                          split=split, skip_invalid=skip)),
        Benchmark("medmcqa", "MedMCQA dev (cop 1-based in this file)", ("dev",),
                  lambda root, split, skip: load_medmcqa(root / "medmcqa" / "dev.jsonl", cop_base=1, split=split,
                                                         skip_invalid=skip)),
        Benchmark("pubmedqa", "PubMedQA PQA-L, yes/no/maybe with abstract; test = standard 500", ("test", "train"),
                  lambda root, split, skip: load_pubmedqa(root / "pubmedqa" / "ori_pqal.json",
                                                          root / "pubmedqa" / "test_ground_truth.json", split=split,
                                                          skip_invalid=skip)),
        Benchmark("mmlu-medical", "MMLU, six medical subjects", ("test",),
                  lambda root, split, skip: load_mmlu_csv([root / "mmlu" / f"{s}_{split}.csv"
                                                           for s in MMLU_MEDICAL_SUBJECTS], split=split,
                                                          skip_invalid=skip)),
        Benchmark("starter", "built-in original starter questions (ships with the package)", ("test", "train", "all"),
                  lambda root, split, skip: _load_starter(split)),
    ]
}


def _load_starter(split: str) -> MCQSet:
    from medrlvr.data.starter import load_starter

    return load_starter(split)


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path | None:
    if data_root is not None:
        return Path(data_root)
    env = os.environ.get("MEDRLVR_DATA_ROOT")
    if env:
        return Path(env)
    guess = Path("../shared/data")
    return guess if guess.is_dir() else None


def split_name(spec: str) -> tuple[str, str | None]:
    name, _, split = spec.partition(":")
    return name.strip(), (split.strip() or None)


def load_benchmark(spec: str, data_root: str | os.PathLike | None = None, split: str | None = None,
                   skip_invalid: bool = False) -> MCQSet:
    """Load a named benchmark (``NAME`` or ``NAME:SPLIT``)."""
    name, sp = split_name(spec)
    split = split or sp
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    b = BENCHMARKS[name]
    split = split or b.splits[0]
    if split not in b.splits:
        raise ValueError(f"benchmark {name!r} has splits {', '.join(b.splits)}, not {split!r}")
    root = resolve_data_root(data_root)
    get = f"download it with: medrlvr data fetch {name} --out DIR"
    if name != "starter":
        if root is None:
            raise FileNotFoundError(f"benchmark {name!r} needs a data root (the folder holding medqa/, mmlu_pro/, "
                                    f"...): {get}, then pass --data-root DIR (Python: data_root=DIR) or set "
                                    "MEDRLVR_DATA_ROOT=DIR")
        if not root.is_dir():
            raise FileNotFoundError(f"data root {root} is not a directory; {get}")
    try:
        return b.loader(root if root is not None else Path("."), split, skip_invalid)
    except DataError as e:
        if e.reason != "file not found":
            raise
        raise FileNotFoundError(f"benchmark {name!r} split {split!r}: {e.path} not found; "
                                f"{get.replace('DIR', str(root))}") from None


