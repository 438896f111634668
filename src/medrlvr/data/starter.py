"""The built-in starter set: original medical multiple-choice questions written for this project.

They are not copied or paraphrased from any benchmark (a test checks them against every question in
``../shared/data``). The train/test split is fixed: every fifth question of each part is ``test``.
"""

from __future__ import annotations

from importlib import resources

from medrlvr.data.loaders import iter_jsonl
from medrlvr.records import MCQSet, collect, make_mcq

STARTER_FILES = ("starter_a.jsonl", "starter_b.jsonl")


def starter_split(index: int) -> str:
    """Fixed split: the 5th, 10th, ... question of each file (1-based) is test, the rest train."""
    return "test" if index % 5 == 0 else "train"


def load_starter(split: str = "all") -> MCQSet:
    if split not in ("train", "test", "all"):
        raise ValueError(f"starter split must be train, test or all, got {split!r}")
    sets = []
    for fname in STARTER_FILES:
        res = resources.files("medrlvr.data").joinpath(fname)
        with resources.as_file(res) as path:
            def build(row, line, path=path):
                sp = starter_split(line)
                return make_mcq(id=row["id"], question=row["question"], options=row["options"], gold=row["answer"],
                                source="starter", split=sp, meta={"topic": row.get("topic")}, path=str(path),
                                line=line)

            s = collect("starter", iter_jsonl(path), build, path=str(path))
            sets.append(s)
    records = [r for s in sets for r in s.records if split == "all" or r.split == split]
    return MCQSet(name=f"starter:{split}", records=records)
