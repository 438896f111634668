import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medrlvr.cli import main
from medrlvr.data import (BENCHMARKS, DataError, contamination, load_benchmark, load_generic, load_medmcqa,
                          load_starter, make_mcq, parse_column_map, shuffle_options)

EXPECTED = {"medqa": 1273, "medqa-4opt": 1273, "mmlu-pro-health": 818, "medmcqa": 4183, "pubmedqa": 500,
            "mmlu-medical": 1089, "medqa:dev": 1272, "medqa-4opt:dev": 1272, "pubmedqa:train": 500}


@pytest.mark.parametrize("spec,count", EXPECTED.items())
def test_benchmark_counts(data_root, spec, count):
    s = load_benchmark(spec, data_root)
    assert len(s) == count
    assert not s.skipped
    assert len({r.id for r in s}) == count
    for r in s:
        assert r.gold in r.options


def test_medqa_fields(data_root):
    s = load_benchmark("medqa", data_root)
    assert all(r.n_options == 5 for r in s)
    assert {r.meta["meta_info"] for r in s} == {"step1", "step2&3"}
    s4 = load_benchmark("medqa-4opt", data_root)
    assert all(r.n_options == 4 for r in s4)


def test_mmlu_pro_health(data_root):
    s = load_benchmark("mmlu-pro-health", data_root)
    ns = {r.n_options for r in s}
    assert min(ns) == 3 and max(ns) == 10
    assert all(r.meta["category"] == "health" for r in s)


def test_medmcqa_cop_base(data_root, tmp_path):
    s = load_benchmark("medmcqa", data_root)
    # first line of the file: cop == 1 -> A in this (1-based) file
    first = json.loads((data_root / "medmcqa" / "dev.jsonl").open().readline())
    assert first["cop"] == 1 and s[0].gold == "A"
    assert len(s.warnings) == 21  # duplicate option texts: kept, reported
    p = tmp_path / "hub.jsonl"
    p.write_text(json.dumps({**first, "cop": 0}) + "\n")
    assert load_medmcqa(p, cop_base=0)[0].gold == "A"
    p.write_text(json.dumps({**first, "cop": 4}) + "\n")
    with pytest.raises(DataError, match="cop"):
        load_medmcqa(p, cop_base=0)


def test_pubmedqa_context(data_root):
    s = load_benchmark("pubmedqa", data_root)
    assert all(r.context and list(r.options.values()) == ["yes", "no", "maybe"] for r in s)
    train = load_benchmark("pubmedqa:train", data_root)
    assert not {r.id for r in s} & {r.id for r in train}


def test_mmlu_subjects(data_root):
    s = load_benchmark("mmlu-medical", data_root)
    from collections import Counter

    c = Counter(r.meta["subject"] for r in s)
    assert c["anatomy"] == 135 and c["professional_medicine"] == 272 and len(c) == 6


def test_unknown_benchmark_and_split(data_root):
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("nope", data_root)
    with pytest.raises(ValueError, match="splits"):
        load_benchmark("mmlu-pro-health:dev", data_root)


# ------------------------------------------------------------------------------------ validation
def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"id": "q1", "question": "Which organ makes insulin?", "options": ["Liver", "Pancreas", "Spleen"], "answer": "B"}


@pytest.mark.parametrize("bad,field,msg", [
    ({**GOOD, "question": "  "}, "question", "empty question"),
    ({**GOOD, "options": ["Only one"]}, "options", "at least 2"),
    ({**GOOD, "answer": "D"}, "gold", "not among"),
    ({**GOOD, "answer": "Kidney"}, "gold", "not among"),
    ({k: v for k, v in GOOD.items() if k != "answer"}, "answer", "missing"),
])
def test_validation_errors_name_file_line_field(tmp_path, bad, field, msg):
    p = _write_jsonl(tmp_path / "d.jsonl", [GOOD | {"id": "q0"}, bad])
    with pytest.raises(DataError) as e:
        load_generic(p)
    assert e.value.line == 2 and e.value.field == field
    assert f"{p}:2" in str(e.value) and field in str(e.value) and msg in str(e.value)


def test_malformed_line_and_duplicate_ids(tmp_path):
    p = _write_jsonl(tmp_path / "d.jsonl", [GOOD, "{not json", GOOD])
    with pytest.raises(DataError, match=r"d.jsonl:2: field '<line>': malformed JSON"):
        load_generic(p)
    s = load_generic(p, skip_invalid=True)
    assert len(s) == 1 and len(s.skipped) == 2
    assert s.skipped[0].line == 2 and "malformed" in s.skipped[0].reason
    assert s.skipped[1].line == 3 and s.skipped[1].field == "id" and "duplicate id" in s.skipped[1].reason


def test_skip_invalid_counts_everything(tmp_path):
    rows = [GOOD | {"id": f"q{i}"} for i in range(5)] + [GOOD | {"id": "x", "answer": "Z"}, GOOD | {"id": "y", "options": []}]
    s = load_generic(_write_jsonl(tmp_path / "d.jsonl", rows), skip_invalid=True)
    assert len(s) + len(s.skipped) == len(rows)
    assert "2 skipped" in s.summary()


def test_column_map_variants(tmp_path):
    rows = [{"Q": "Which vitamin deficiency causes scurvy?", "a": "Vitamin A", "b": "Vitamin C", "c": "Vitamin D",
             "idx0": 1, "idx1": 2, "txt": "Vitamin C", "key": "s1", "subj": "nutrition"}]
    p = _write_jsonl(tmp_path / "d.jsonl", rows)
    for gold_spec in ("gold=idx0,gold_type=index0", "gold=idx1,gold_type=index1", "gold=txt,gold_type=text",
                      "gold=txt"):
        s = load_generic(p, f"question=Q,options=a|b|c,{gold_spec},id=key,meta=subj")
        assert s[0].gold == "B" and s[0].id == "s1" and s[0].meta == {"subj": "nutrition"}
    with pytest.raises(DataError, match="gold_type=index0 or gold_type=index1"):
        load_generic(p, "question=Q,options=a|b|c,gold=idx1")
    # options as a dict and as a list, CSV and parquet
    p2 = _write_jsonl(tmp_path / "e.jsonl", [{"question": "q?", "options": {"B": "y", "A": "x"}, "answer": "A"}])
    assert load_generic(p2)[0].options == {"A": "x", "B": "y"}
    csvp = tmp_path / "f.csv"
    csvp.write_text("question,A,B,C,answer\nWhat is 1+1?,1,2,3,B\n")
    assert load_generic(csvp)[0].gold == "B"
    pqp = tmp_path / "g.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q?", "choices": ["x", "y"], "label": 0}]), pqp)
    assert load_generic(pqp, "options=choices,gold=label,gold_type=index0")[0].gold == "A"
    with pytest.raises(ValueError, match="unknown column map key"):
        parse_column_map("questoin=Q")


def test_csv_wrong_column_count(tmp_path):
    p = tmp_path / "f.csv"
    p.write_text("question,A,B,answer\nq?,x,y,A\nq2?,x,A\n")
    with pytest.raises(DataError, match=r"f.csv:3: field '<row>': expected 4 columns"):
        load_generic(p)


# ---------------------------------------------------------------------------------- transforms
def test_shuffle_options_keeps_gold_text():
    r = make_mcq("q", "Q?", ["w", "x", "y", "z"], "C")
    seen = set()
    for seed in range(10):
        s = shuffle_options(r, seed)
        assert s.gold_text == "y" and sorted(s.options.values()) == ["w", "x", "y", "z"]
        assert shuffle_options(r, seed) == s
        seen.add(s.gold)
    assert len(seen) > 1


def test_contamination_exact_and_ngram():
    a = [make_mcq("a1", "A 45-year-old man presents with crushing chest pain radiating to the left arm.", ["x", "y"], "A"),
         make_mcq("a2", "Completely unrelated question about the kidney and its tubules?", ["x", "y"], "A"),
         make_mcq("a3", "Which enzyme is deficient in phenylketonuria in most affected children today?", ["x", "y"], "A")]
    b = [make_mcq("b1", "a 45 year old man presents with crushing chest pain radiating to the left arm", ["x", "y"], "A"),
         make_mcq("b2", "Which enzyme is deficient in phenylketonuria in most affected children? Choose one.", ["x", "y"], "A")]
    hits = {(o.a_id, o.b_id, o.kind) for o in contamination(a, b)}
    assert hits == {("a1", "b1", "exact"), ("a3", "b2", "ngram")}


# ------------------------------------------------------------------------------------- starter
def test_starter_set():
    s = load_starter("all")
    assert len(s) >= 300
    test, train = load_starter("test"), load_starter("train")
    assert len(test) + len(train) == len(s) and len(test) >= 60
    assert not {r.id for r in test} & {r.id for r in train}
    assert all(4 <= r.n_options <= 5 for r in s)
    golds = {r.gold for r in s}
    assert {"A", "B", "C", "D"} <= golds
    assert load_starter("test")[0] == test[0]  # fixed split


def test_starter_not_from_benchmarks(data_root):
    starter = load_starter("all").records
    assert not contamination(starter, starter[:0])
    others = []
    for name in BENCHMARKS:
        if name == "starter":
            continue
        for split in BENCHMARKS[name].splits:
            if name.startswith("medqa") and split == "train":   # not in ../shared/data (medrlvr data fetch medqa)
                continue
            others.extend(load_benchmark(name, data_root, split=split).records)
    found = contamination(starter, others, n=8, threshold=0.3)
    assert found == [], f"starter questions overlapping benchmarks: {found[:5]}"
    self_dups = contamination(starter[1::2], starter[0::2], n=8, threshold=0.5)
    assert self_dups == []


# ------------------------------------------------------------------------------------------ CLI
def test_cli_data_stats_json(data_root, capsys):
    assert main(["data", "stats", "--data-root", str(data_root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for name in ("medqa", "medqa-4opt", "mmlu-pro-health", "medmcqa", "pubmedqa", "mmlu-medical"):
        assert out[name]["count"] == EXPECTED[name]
    assert out["starter"]["count"] >= 60
    assert sum(out["medqa"]["gold_distribution"].values()) == 1273


def test_cli_validate_reports_and_fails(tmp_path, capsys):
    p = _write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD | {"id": "q2", "answer": "Q"}])
    assert main(["data", "validate", str(p)]) == 1
    out = capsys.readouterr().out
    assert "d.jsonl:2" in out and "1 valid, 1 invalid" in out


def test_cli_show_and_export(data_root, tmp_path, capsys):
    assert main(["data", "show", "medqa-4opt", "--data-root", str(data_root), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("=====") == 2 and "<think>" in out and "D. " in out
    p = tmp_path / "v.parquet"
    assert main(["data", "export", "pubmedqa", "--data-root", str(data_root), "--format", "verl", "--out", str(p)]) == 0
    rows = pq.read_table(p).to_pylist()
    assert len(rows) == 500 and rows[0]["reward_model"]["style"] == "rule"
    assert rows[0]["reward_model"]["ground_truth"] in "ABC" and rows[0]["extra_info"]["n_options"] == 3
    t = tmp_path / "t.jsonl"
    assert main(["data", "export", "medqa", "--data-root", str(data_root), "--format", "trl", "--out", str(t)]) == 0
    first = json.loads(t.open().readline())
    assert set(first) >= {"prompt", "gold", "n_options"} and first["n_options"] == 5
