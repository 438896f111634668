"""``medrlvr data fetch`` against a local mirror laid out as the Hub repositories (loaded by the real
``datasets.load_dataset`` code) and the GitHub files, built from the real benchmark files of ``../shared/data``
(the MedQA train splits, absent there, from repeated dev records): every source kind, the counts checked, the
files read back by the project's loaders, ``SOURCES.md``, and no network touched."""

from __future__ import annotations

import csv
import json
import shutil
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medrlvr import cli
from medrlvr.data import load_benchmark
from medrlvr.data.fetch import MMLU_SUBJECT_COUNTS, SOURCES


def _jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]


def _parquet(rows: list[dict], p: Path) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), p)


def _readme(repo: Path, configs: dict[str, dict[str, str]]) -> None:
    """A Hub dataset card whose YAML header maps each config's splits to data files."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {s}\n    path: {path}" for s, path in splits.items()]
    (repo / "README.md").write_text("\n".join(lines + ["---", "", "# test mirror"]) + "\n", encoding="utf-8")


def _train_from(dev: list[dict], n: int) -> list[dict]:
    return [{**dev[i % len(dev)], "question": f"{dev[i % len(dev)]['question']} [{i}]"} for i in range(n)]


def _bigbio(rows: list[dict]) -> list[dict]:
    """bigbio/med_qa's source schema: options as a list of {key, value}."""
    return [{"meta_info": r["meta_info"], "question": r["question"], "answer_idx": r["answer_idx"], "answer": r["answer"],
             "options": [{"key": k, "value": v} for k, v in r["options"].items()]} for r in rows]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, data_root):
    m = tmp_path_factory.mktemp("mirror")
    medqa = data_root / "medqa"
    dev5, test5 = _jsonl(medqa / "us_dev.jsonl"), _jsonl(medqa / "us_test.jsonl")
    dev4, test4 = _jsonl(medqa / "us_4_options_dev.jsonl"), _jsonl(medqa / "us_4_options_test.jsonl")
    bb = m / "bigbio" / "med_qa"
    for split, rows in (("train", _train_from(dev5, 10178)), ("validation", dev5), ("test", test5)):
        _parquet(_bigbio(rows), bb / "med_qa_en_source" / split / "0000.parquet")
    _parquet(_bigbio(dev4), bb / "med_qa_en_4options_source" / "validation" / "0000.parquet")
    gb = m / "GBaker" / "MedQA-USMLE-4-options"
    (gb / "data").mkdir(parents=True)
    for split, rows in (("train", _train_from(dev4, 10178)), ("test", test4)):
        (gb / "data" / f"{split}-00000-of-00001.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _readme(gb, {"default": {"train": "data/train-*.jsonl", "test": "data/test-*.jsonl"}})
    mc = m / "openlifescienceai" / "medmcqa"
    _parquet([{**r, "cop": r["cop"] - 1} for r in _jsonl(data_root / "medmcqa" / "dev.jsonl")],   # Hub: 0-based
             mc / "data" / "validation-00000-of-00001.parquet")
    _readme(mc, {"default": {"validation": "data/validation-*.parquet"}})
    mp = m / "TIGER-Lab" / "MMLU-Pro"
    health = _jsonl(data_root / "mmlu_pro" / "health_test.jsonl")
    other = [{**health[0], "question_id": 10 ** 6 + i, "category": "law"} for i in range(5)]
    _parquet(other[:2] + health + other[2:], mp / "data" / "test-00000-of-00001.parquet")
    _readme(mp, {"default": {"test": "data/test-*.parquet"}})
    mm = m / "cais" / "mmlu"
    for s in MMLU_SUBJECT_COUNTS:
        with open(data_root / "mmlu" / f"{s}_test.csv", encoding="utf-8", newline="") as f:
            rows = [{"question": r[0], "subject": s, "choices": r[1:5], "answer": "ABCD".index(r[5])}
                    for r in csv.reader(f)]
        _parquet(rows, mm / s / "test-00000-of-00001.parquet")
    _readme(mm, {s: {"test": f"{s}/test-*.parquet"} for s in MMLU_SUBJECT_COUNTS})
    gh = m / "github" / "pubmedqa" / "pubmedqa" / "data"
    gh.mkdir(parents=True)
    for name in ("ori_pqal.json", "test_ground_truth.json"):
        shutil.copy(data_root / "pubmedqa" / name, gh / name)
    return m


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    def refuse(*a, **k):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse())
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


def test_fetch_every_benchmark_from_a_hub_layout_mirror(mirror, data_root, tmp_path, no_network, capsys):
    out = tmp_path / "root"
    rc = cli.main(["data", "fetch", "all", "--out", str(out), "--mirror", str(mirror)])
    text = capsys.readouterr().out
    assert rc == 0, text
    for name, files in SOURCES.items():
        for f in files:
            assert (out / f.path).is_file(), f.path
            assert f"{f.path}: {f.count:,} records" in text
    # what the loaders read from the fetched root equals the reference files (test/dev splits)
    for spec in ("medqa:test", "medqa:dev", "medqa-4opt:test", "medqa-4opt:dev", "medmcqa", "mmlu-pro-health",
                 "mmlu-medical", "pubmedqa:test", "pubmedqa:train"):
        got, ref = load_benchmark(spec, data_root=out), load_benchmark(spec, data_root=data_root)
        assert [(r.question, r.options, r.gold) for r in got] == [(r.question, r.options, r.gold) for r in ref], spec
    assert len(load_benchmark("medqa:train", data_root=out)) == 10178
    assert len(load_benchmark("medqa-4opt:train", data_root=out)) == 10178
    src = (out / "SOURCES.md").read_text()
    assert src.count("\n| `") == sum(len(v) for v in SOURCES.values())
    assert "`bigbio/med_qa`" in src and "`GBaker/MedQA-USMLE-4-options`" in src and "MIT" in src


def test_a_count_that_differs_from_the_published_one_is_refused(mirror, tmp_path, no_network, capsys):
    bad = tmp_path / "mirror"
    shutil.copytree(mirror / "openlifescienceai", bad / "openlifescienceai")
    p = bad / "openlifescienceai" / "medmcqa" / "data" / "validation-00000-of-00001.parquet"
    t = pq.read_table(p)
    pq.write_table(t.slice(0, t.num_rows - 3), p)
    rc = cli.main(["data", "fetch", "medmcqa", "--out", str(tmp_path / "root"), "--mirror", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "4,180 records, expected 4,183" in err[0]
    assert not (tmp_path / "root" / "medmcqa" / "dev.jsonl").exists()


def test_without_network_fetch_fails_fast_in_one_line(tmp_path, monkeypatch, capsys):
    from medrlvr import hub

    def refuse(*a, **k):
        raise OSError("unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(hub, "_STATE", {})
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", c.HF_HUB_OFFLINE)
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    assert cli.main(["data", "fetch", "medqa", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unreachable" in err and "--mirror" in err and len(err.strip().splitlines()) == 1


def test_unknown_name_and_the_data_root_error_name_fetch(tmp_path, capsys, monkeypatch):
    assert cli.main(["data", "fetch", "medqaa", "--out", str(tmp_path)]) == 2
    assert "did you mean 'medqa'" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="medrlvr data fetch medqa"):
        load_benchmark("medqa:train", data_root=tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDRLVR_DATA_ROOT", raising=False)
    with pytest.raises(FileNotFoundError, match=r"medrlvr data fetch medqa .*data_root=DIR"):
        load_benchmark("medqa")
