"""File layouts of public question sets that used to be refused or misread: fixed yes/no/maybe options, options
written as a Python dict, filler options, a gold option with a twin, errors in JSON arrays, and how many
per-record warnings a command prints. Each test writes its own small files."""

import csv
import json

import pytest

from medrlvr.cli import main
from medrlvr.data import DataError, load_any, load_generic

Q1, Q2, Q3 = "Does aspirin reduce fever?", "Which organ makes insulin?", "Which vitamin prevents scurvy?"


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_fixed_choices_for_a_set_without_options(tmp_path):
    p = _jsonl(tmp_path / "pqa.jsonl", [
        {"pmid": "1", "QUESTION": Q1, "CONTEXTS": ["Background.", "Results."], "final_decision": "yes"},
        {"pmid": "2", "QUESTION": Q1, "CONTEXTS": ["Other."], "final_decision": "Maybe"},
        {"pmid": "3", "QUESTION": Q1, "CONTEXTS": ["Third."], "final_decision": "B"},
    ])
    s = load_generic(p, "question=QUESTION,context=CONTEXTS,gold=final_decision,id=pmid,choices=yes|no|maybe")
    assert [r.options for r in s] == [{"A": "yes", "B": "no", "C": "maybe"}] * 3
    assert [r.gold for r in s] == ["A", "C", "B"]
    assert s[0].context == "Background.\nResults."
    with pytest.raises(DataError, match="not among the options"):
        load_generic(_jsonl(tmp_path / "bad.jsonl", [{"question": Q1, "ans": "perhaps"}]),
                     "gold=ans,choices=yes|no|maybe")
    for bad, msg in (("choices=yes", "at least two"), ("options=a|b,choices=yes|no", "both options=")):
        with pytest.raises(ValueError, match=msg):
            load_generic(p, f"question=QUESTION,gold=final_decision,{bad}")


def test_options_as_a_python_dict_literal(tmp_path):
    p = tmp_path / "py.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:   # what pandas' to_csv writes for dict/list cells
        w = csv.writer(f)
        w.writerow(["question", "options", "answer"])
        w.writerow([Q2, str({"A": "Liver", "B": "Pancreas", "C": "Kidney's cortex"}), "B"])
        w.writerow([Q3, str(["Vitamin C", "Vitamin K"]), "A"])
    s = load_generic(p)
    assert s[0].options == {"A": "Liver", "B": "Pancreas", "C": "Kidney's cortex"} and s[0].gold_text == "Pancreas"
    assert s[1].options == {"A": "Vitamin C", "B": "Vitamin K"}
    bad = tmp_path / "call.csv"   # not a literal: refused, never evaluated
    bad.write_text(f'question,options,answer\n"{Q2}","{{\'A\': __import__(\'os\').getcwd()}}",A\n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_generic(bad)
    assert str(e.value).startswith(f"{bad}:2: field 'options': ") and "looks like a Python dict" in str(e.value)


def test_filler_options_are_counted_and_dropped_on_request(tmp_path, capsys):
    p = _jsonl(tmp_path / "fill.jsonl", [
        {"id": "f1", "question": Q2, "options": ["Liver", "Pancreas", "n/a", "None"], "answer": "B"},
        {"id": "f2", "question": Q3, "options": ["N/A", "Vitamin C", "Vitamin K"], "answer": "A"},   # gold is filler
        {"id": "f3", "question": Q3, "options": ["Vitamin C", "  ", "Vitamin K"], "answer_idx": "C"},
        {"id": "f4", "question": Q2, "options": ["Liver", "Pancreas"], "answer": "B"},
    ])
    with pytest.raises(DataError) as e:   # an empty option is an error unless dropped
        load_generic(p)
    assert str(e.value).startswith(f"{p}:3: field 'options': option B is empty") and "--drop-filler-options" in str(e.value)
    kept = load_generic(p, skip_invalid=True)
    assert [r.id for r in kept] == ["f1", "f2", "f4"] and kept[0].n_options == 4
    assert [(w.line, w.field) for w in kept.warnings] == [(1, "options"), (2, "options")]
    assert "C, D" in kept.warnings[0].reason
    s = load_generic(p, "filler=drop")
    assert [r.options for r in s] == [{"A": "Liver", "B": "Pancreas"}, {"A": "N/A", "B": "Vitamin C", "C": "Vitamin K"},
                                      {"A": "Vitamin C", "B": "Vitamin K"}, {"A": "Liver", "B": "Pancreas"}]
    assert [r.gold_text for r in s] == ["Pancreas", "N/A", "Vitamin K", "Pancreas"]
    assert sum("dropped" in w.reason for w in s.warnings) == 2 and sum("kept as real" in w.reason for w in s.warnings) == 1
    assert main(["data", "stats", str(p), "--drop-filler-options", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[str(p)]["count"] == 4


def test_gold_with_a_twin_is_an_error(tmp_path):
    p = _jsonl(tmp_path / "twin.jsonl", [
        {"id": "t1", "question": Q2, "options": ["Liver", "Pancreas", "Kidney", "Liver"], "answer_idx": "C"},
        {"id": "t2", "question": Q2, "options": ["Pancreas", "Liver", "pancreas"], "answer_idx": "A"},
    ])
    with pytest.raises(DataError) as e:
        load_generic(p)
    assert str(e.value).startswith(f"{p}:2: field 'gold': the gold option A ('Pancreas') has the same text as "
                                   "option C")
    s = load_generic(p, skip_invalid=True)
    assert [r.id for r in s] == ["t1"] and len(s.skipped) == 1
    assert "duplicate option texts in options A, D (kept)" in s.warnings[0].reason


def test_json_array_errors_name_the_file_line(tmp_path):
    p = tmp_path / "arr.json"
    p.write_text('[\n  {"question": "%s", "options": ["a", "b"], "answer": "A"},\n'
                 '  {"question": "%s",\n   "options": ["a", "b"],\n   "answer": "Z"}\n]\n' % (Q2, Q3), encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_generic(p)
    assert str(e.value).startswith(f"{p}:3 (record 2): field 'gold': ")
    s = load_any(str(p), skip_invalid=True)
    assert s.skipped[0].line == "3 (record 2)" and s[0].id == "arr-1"   # ids still count records


def test_show_prints_a_count_of_warnings_not_each(tmp_path, capsys):
    rows = [{"id": f"d{i}", "question": f"{Q2} ({i})", "options": ["Liver", "Liver ", "Kidney"], "answer": "C"}
            for i in range(12)]
    p = _jsonl(tmp_path / "dups.jsonl", rows)
    assert main(["data", "show", str(p), "--n", "1"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert sum(line.startswith("warning: ") for line in err) == 5
    assert "... 7 more warning record lines" in err[5]
    assert err[-1] == "dups:test: 12 valid, 12 with warnings"     # no "skipped" without --skip-invalid
    bad = _jsonl(tmp_path / "bad.jsonl", rows[:2] + [{"id": "x", "question": Q2, "options": ["a"], "answer": "A"}])
    assert main(["data", "show", str(bad), "--n", "1", "--skip-invalid"]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == "bad:test: 2 valid, 1 invalid (skipped), 2 with warnings"
