"""The data layer on real-world file layouts: every case either loads right or fails loudly, with
one line naming the file, the line and the field. Each test writes its own small files."""

import json

import pyarrow.parquet as pq
import pytest

from medrlvr.cli import main
from medrlvr.data import DataError, load_any, load_generic, make_mcq
from medrlvr.data.loaders import read_csv
from medrlvr.data.sources import columns_for_sources
from medrlvr.records import options_in_question

Q1, Q2, Q3 = "Which organ makes insulin?", "Which vitamin prevents scurvy?", "Which ion is mostly intracellular?"


def _jsonl(path, rows, encoding="utf-8"):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding=encoding)
    return path


def _err_lines(capsys):
    """(stdout lines, stderr lines) of the last command."""
    c = capsys.readouterr()
    return c.out.splitlines(), c.err.splitlines()


# 1 ------------------------------------------------------------------------------- options as objects
def test_options_as_list_of_objects(tmp_path):
    p = _jsonl(tmp_path / "objs.jsonl", [
        {"id": "o1", "question": Q1, "options": [{"letter": "B", "content": "Pancreas"},
                                                 {"letter": "A", "content": "Liver"}], "answer": "B"},
        {"id": "o2", "question": Q2, "options": [{"key": "A", "value": "Vitamin C"}, {"key": "B", "value": "Vitamin K"}],
         "answer": "A"},
        {"id": "o3", "question": Q3, "options": [{"label": "(A)", "text": "Sodium"}, {"label": "b", "text": "Potassium"}],
         "answer": "B"},
        {"id": "o4", "question": Q1, "options": [{"text": "Liver"}, {"text": "Pancreas"}], "answer": "B"},
    ])
    s = load_generic(p)
    assert [r.options for r in s] == [{"A": "Liver", "B": "Pancreas"}, {"A": "Vitamin C", "B": "Vitamin K"},
                                      {"A": "Sodium", "B": "Potassium"}, {"A": "Liver", "B": "Pancreas"}]
    assert [r.gold_text for r in s] == ["Pancreas", "Vitamin C", "Potassium", "Pancreas"]


@pytest.mark.parametrize("opts,msg", [
    ([{"opt": "A", "txt": "Liver"}, {"opt": "B", "txt": "Pancreas"}],
     "option 1 is an object with keys ['opt', 'txt']; expected one of letter/content, key/value, label/text"),
    ([{"label": "A", "text": "Liver", "is_correct": False}, {"label": "B", "text": "Pancreas", "is_correct": True}],
     "keys ['label', 'text', 'is_correct']"),
    ([{"label": 0, "text": "Liver"}, {"label": 1, "text": "Pancreas"}], "option 1: label 0 is not a letter"),
    ([{"letter": "A", "content": "Liver"}, "Pancreas"], "option 2 is a str among option objects"),
])
def test_unknown_option_objects_refused(tmp_path, opts, msg):
    p = _jsonl(tmp_path / "bad.jsonl", [{"id": "x", "question": Q1, "options": ["Liver", "Pancreas"], "answer": "A"},
                                       {"id": "y", "question": Q1, "options": opts, "answer": "B"}])
    with pytest.raises(DataError) as e:
        load_generic(p)
    assert str(e.value).startswith(f"{p}:2: field 'options': ") and msg in str(e.value)
    # never turned into option text such as "{'letter': 'A', ...}"
    with pytest.raises(DataError, match="option A is a dict"):
        make_mcq("q", Q1, [{"letter": "A", "content": "Liver"}, "x"], "A")


# 2 ------------------------------------------------------------------------------------ nested JSON
NESTED = {"setA": {"0001": {"question": Q1, "options": {"A": "Liver", "B": "Pancreas"}, "answer": "B"},
                   "0002": {"question": Q2, "options": {"A": "Vitamin C", "B": "Vitamin K"}, "answer": "A"}},
          "setB": {"0001": {"question": Q3, "options": {"A": "Sodium", "B": "Potassium"}, "answer": "B"}}}


def test_nested_json_selector(tmp_path, capsys):
    p = tmp_path / "nested.json"
    p.write_text(json.dumps(NESTED))
    with pytest.raises(DataError) as e:
        load_any(str(p))
    msg = str(e.value)
    assert "holding sets of records" in msg and "'setA' (2 records), 'setB' (1 record)" in msg
    assert f"{p}:setA" in msg and "records=setA" in msg
    a = load_any(f"{p}:setA")
    assert [r.id for r in a] == ["0001", "0002"] and a[0].gold == "B"
    b = load_generic(p, "records=setB")
    assert [r.gold_text for r in b] == ["Potassium"]
    both = load_any(f"{p}:*")
    assert [r.id for r in both] == ["setA/0001", "setA/0002", "setB/0001"]
    with pytest.raises(DataError, match=r"no key 'setC' in the top level; keys there: setA, setB"):
        load_any(f"{p}:setC")
    with pytest.raises(DataError, match="two record selectors"):
        load_generic(p, "records=setB", select="setA")
    # errors inside a set name the key path
    bad = {"setA": {"0001": {**NESTED["setA"]["0001"], "answer": "Z"}}}
    p.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"nested.json:setA/0001: field 'gold'"):
        load_any(f"{p}:setA")
    # a {"version": ..., "data": [...]} file: told what to write; a list inside works with the same selector
    w = tmp_path / "wrapped.json"
    w.write_text(json.dumps({"version": "1.0", "data": [{"question": Q1, "options": ["Liver", "Pancreas"],
                                                          "answer": "B"}]}))
    assert main(["data", "validate", str(w)]) == 2
    _, err = _err_lines(capsys)
    assert len(err) == 1 and f"select it with {w}:data or --columns records=data" in err[0]
    assert len(load_any(f"{w}:data")) == 1
    with pytest.raises(DataError, match="only applies to .json files"):
        load_generic(_jsonl(tmp_path / "x.jsonl", [{"question": Q1}]), "records=setA")


# 3 ---------------------------------------------------------------------------- gold as a 1-element list
def test_gold_one_element_list(tmp_path):
    p = _jsonl(tmp_path / "g.jsonl", [{"id": "g1", "question": Q1, "options": ["Liver", "Pancreas", "Spleen"],
                                       "label": ["B"]},
                                      {"id": "g2", "question": Q2, "options": ["Vitamin C", "Vitamin K"],
                                       "label": ["Vitamin C"]}])
    assert [r.gold for r in load_generic(p, "gold=label")] == ["B", "A"]
    c = tmp_path / "g.csv"
    c.write_text('question,A,B,label\nWhich organ makes insulin?,Liver,Pancreas,"[""B""]"\n')
    assert load_generic(c, "gold=label")[0].gold == "B"
    _jsonl(p, [{"id": "g3", "question": Q1, "options": ["Liver", "Pancreas"], "label": ["A", "B"]}])
    with pytest.raises(DataError, match=r"g.jsonl:1: field 'label': gold is a list of 2 answers \['A', 'B'\]"):
        load_generic(p, "gold=label")


# 4 ------------------------------------------------------------------------------------------- BOM
def test_utf8_bom_is_stripped(tmp_path):
    rows = [{"id": f"b{i}", "question": q, "options": ["Liver", "Pancreas"], "answer": "B"}
            for i, q in enumerate((Q1, Q2))]
    assert len(load_generic(_jsonl(tmp_path / "bom.jsonl", rows, encoding="utf-8-sig"))) == 2
    j = tmp_path / "bom.json"
    j.write_text(json.dumps(rows), encoding="utf-8-sig")
    assert len(load_generic(j)) == 2
    c = tmp_path / "bom.csv"
    c.write_text("question,A,B,answer\nq1?,x,y,A\nq2?,x,y,B\n", encoding="utf-8-sig")
    s = load_generic(c)
    assert len(s) == 2 and s[0].question == "q1?"
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"question": "caf\xe9?"}\n')
    with pytest.raises(DataError, match=r"latin.jsonl:1: not UTF-8 text"):
        load_generic(latin)


# 5 ------------------------------------------------------------------------ empty files, cut-off CSV
@pytest.mark.parametrize("name,content,msg", [
    ("empty.jsonl", "", "empty file: no JSON lines"),
    ("blank.jsonl", "\n\n  \n", "empty file: no JSON lines"),
    ("empty.json", "", "empty file"),
    ("list.json", "[]", "no records: the file is an empty list or object"),
    ("empty.csv", "", "empty file"),
    ("header.csv", "question,A,B,answer\n", "no records: only a header row (question, A, B, answer)"),
])
def test_empty_and_header_only_refused(tmp_path, capsys, name, content, msg):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(DataError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        load_generic(p, skip_invalid=True)
    assert main(["data", "validate", str(p)]) == 2
    out, err = _err_lines(capsys)
    assert out == [] and err == [f"medrlvr: error: {p}: {msg}"]
    assert main(["data", "stats", str(p)]) == 2


def test_empty_file_eval_refused(tmp_path, capsys):
    p = tmp_path / "header.csv"
    p.write_text("question,A,B,answer\n")
    # the data is checked before the model loads: this model does not exist, the error is the file's
    assert main(["eval", "--model", str(tmp_path / "no-model"), "--benchmarks", str(p), "--mode", "loglik",
                 "--quiet", "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"medrlvr: error: {p}: no records: only a header row (question, A, B, answer)\n"
    assert not (tmp_path / "o" / "results.json").exists()


def test_cut_off_quoted_field(tmp_path):
    p = tmp_path / "cut.csv"
    p.write_text('question,A,B,answer,explanation\n"Which organ makes insulin?",Liver,Pancreas,B,"The beta cells\n'
                 'of the islets"\n"Which vitamin prevents scurvy?",Vitamin C,Vitamin K,A,"Ascorbic acid is\nneeded')
    with pytest.raises(DataError) as e:
        load_generic(p)
    assert e.value.line == 4 and e.value.field == "<row>" and "unterminated quoted field" in str(e.value)
    s = load_generic(p, skip_invalid=True)
    assert len(s) == 1 and [(k.line, k.field) for k in s.skipped] == [(4, "<row>")]
    # text after a closing quote is malformed too, and the next record still loads under --skip-invalid
    p.write_text('question,A,B,answer\n"q1?"junk,x,y,A\nq2?,x,y,B\n')
    s = load_generic(p, skip_invalid=True)
    assert [r.question for r in s] == ["q2?"] and s.skipped[0].line == 2 and "malformed CSV" in s.skipped[0].reason


# 6 ------------------------------------------------------------------------------- missing column
def test_missing_column_one_header_error(tmp_path, capsys):
    p = tmp_path / "cols.csv"
    p.write_text("q,a,b,key\n" + "".join(f"Question {i}?,x{i},y{i},A\n" for i in range(308)))
    with pytest.raises(DataError) as e:
        load_generic(p, "question=stem,options=a|b,gold=key", skip_invalid=True)
    assert e.value.line == 1 and e.value.field == "<columns>"
    assert "column 'stem' (question=stem)" in str(e.value) and "The file has columns: q, a, b, key" in str(e.value)
    assert main(["data", "validate", str(p), "--columns", "question=stem,options=a|b,gold=key"]) == 2
    out, err = _err_lines(capsys)
    assert out == [] and len(err) == 1 and err[0].startswith(f"medrlvr: error: {p}:1: field '<columns>': not found")
    # defaults that the file lacks are named as defaults, with what to write
    with pytest.raises(DataError, match=r"column 'question' \(question=question, the default\).*say gold=COL"):
        load_generic(p)
    assert len(load_generic(p, "question=q,options=a|b,gold=key")) == 308
    # JSONL: the columns are those of all records; a field missing in only some records stays per record
    j = _jsonl(tmp_path / "c.jsonl", [{"question": Q1, "options": ["x", "y"], "answer": "A"}, {"question": Q2,
                                                                                            "options": ["x", "y"]}])
    with pytest.raises(DataError, match=r"c.jsonl:2: field 'answer': missing field"):
        load_generic(j)
    with pytest.raises(DataError, match=r"column 'subj' \(meta=subj\).*columns: question, options, answer"):
        load_generic(j, "meta=subj")


# 7 ---------------------------------------------------------------------------- CSV starting lines
def test_csv_records_reported_at_their_first_line(tmp_path):
    p = tmp_path / "multi.csv"
    p.write_text('question,A,B,answer\n"Line one\nline two\nline three?",x,y,A\n\n"Second\nrecord",x,y,Z\n')
    assert [line for line, _ in read_csv(p)] == [2, 6]
    with pytest.raises(DataError, match=r"multi.csv:6: field 'gold'"):
        load_generic(p)
    lines = "\n".join(["question,A,B,answer"] + [f'"q{i}\n' + "more\n" * 9 + '?",x,y,A' for i in range(3)]) + "\n"
    p.write_text(lines + '"bad",x,y\n')        # records on lines 2-12, 13-23, 24-34, then 35
    assert [line for line, _ in read_csv(p)] == [2, 13, 24, 35]
    with pytest.raises(DataError, match=r"multi.csv:35: field '<row>': expected 4 columns, got 3"):
        load_generic(p)


# 8 ----------------------------------------------------- --skip-invalid in eval and show, duplicate options
def _mixed(tmp_path):
    return _jsonl(tmp_path / "mixed.jsonl", [
        {"id": "m1", "question": Q1, "options": ["Liver", "Pancreas"], "answer": "B"},
        {"id": "m2", "question": Q2, "options": ["Vitamin C", "Vitamin K"], "answer": "Q"},
        {"id": "m3", "question": Q3, "options": ["Sodium", "sodium ", "Potassium"], "answer": "C"},
    ])


def test_eval_and_show_skip_invalid_report_like_validate(tmp_path, capsys):
    p = _mixed(tmp_path)
    assert main(["data", "validate", str(p)]) == 1
    report, _ = _err_lines(capsys)
    invalid = [x for x in report if x.startswith("invalid: ")]
    assert invalid == [f"invalid: {p}:2: field 'gold': gold letter 'Q' is not among the option letters AB"]
    assert f"warning: {p}:3: field 'options': duplicate option texts in options A, B (kept)" in report
    assert main(["data", "show", str(p), "--skip-invalid", "--n", "5"]) == 0
    out, err = _err_lines(capsys)
    assert sum(x.startswith("=====") for x in out) == 2 and invalid[0] in err
    assert "mixed:test: 2 valid, 1 invalid (skipped), 1 with warnings" in err
    assert main(["data", "show", str(p)]) == 2
    assert _err_lines(capsys)[1] == [f"medrlvr: error: {p}:2: field 'gold': gold letter 'Q' is not among the option "
                                     "letters AB"]
    args = ["eval", "--model", "tiny", "--benchmarks", str(p), "--mode", "loglik", "--quiet", "--json",
            "--bootstrap", "20", "--output", str(tmp_path / "o")]
    assert main(args) == 2
    _, err = _err_lines(capsys)
    assert err == [f"medrlvr: error: {p}:2: field 'gold': gold letter 'Q' is not among the option letters AB"]
    assert main(args + ["--skip-invalid"]) == 0
    c = capsys.readouterr()
    assert json.loads(c.out)["mixed"]["n"] == 2 and invalid[0] in c.err.splitlines()
    saved = json.loads((tmp_path / "o" / "results.json").read_text())["mixed"]
    assert saved["n"] == 2 and saved["skipped_invalid"] == 1  # results.json counts what was left out


def test_duplicate_option_texts_warn_as_in_medmcqa(tmp_path):
    s = load_generic(_mixed(tmp_path), skip_invalid=True)
    assert [r.id for r in s] == ["m1", "m3"] and s[1].meta["duplicate_options"] == "AB"
    assert [(w.line, w.field) for w in s.warnings] == [(3, "options")]
    # a gold given as the duplicated text is ambiguous: an error
    p = _jsonl(tmp_path / "d.jsonl", [{"question": Q3, "options": ["Sodium", "sodium", "K"], "answer": "Sodium"}])
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'gold': gold text 'Sodium' matches several options"):
        load_generic(p)


# 9 ------------------------------------------------------------------------------ one map per file
def _two_layouts(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text(f"stem,o1,o2,o3,key\n{Q1},Liver,Pancreas,Spleen,2\n{Q2},Vitamin C,Vitamin K,Vitamin D,1\n")
    b = _jsonl(tmp_path / "b.jsonl", [{"q": Q3, "choices": ["Sodium", "Potassium"], "label": 1, "subject": "physio"}])
    cols = ("a.csv=question=stem,options=o1|o2|o3,gold=key,gold_type=index1;"
            "b.jsonl=question=q,options=choices,gold=label,gold_type=index0,meta=subject")
    return a, b, cols


def test_columns_per_file(tmp_path, capsys):
    a, b, cols = _two_layouts(tmp_path)
    maps = columns_for_sources(cols, [str(a), str(b), "starter"])
    assert maps[str(a)]["gold_type"] == "index1" and maps[str(b)]["options"] == "choices" and maps["starter"] == {}
    # a default entry (no FILE=) applies to every file; a file's entry is merged over it
    maps = columns_for_sources("gold_type=index0;b.jsonl=question=q", [str(a), str(b)])
    assert maps[str(b)] == {"gold_type": "index0", "question": "q"} and maps[str(a)] == {"gold_type": "index0"}
    for bad, msg in (("c.csv=question=q", "not among the sources"), ("starter=question=q", "built-in benchmark"),
                     ("b.jsonl", "not key=value")):
        with pytest.raises(ValueError, match=msg):
            columns_for_sources(bad, [str(a), str(b), "starter"])
    # load_any (train / sft data) takes the same value and uses this source's entry
    assert load_any(str(b), columns=cols)[0].meta == {"subject": "physio"}
    assert main(["data", "stats", str(a), str(b), "--columns", cols, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[str(a)]["count"] == 2 and out[str(a)]["gold_distribution"] == {"A": 1, "B": 1}
    assert out[str(b)]["gold_distribution"] == {"B": 1}
    # one map for both files: the second is refused with the columns it has
    assert main(["data", "stats", str(a), str(b), "--columns", cols.split(";")[0].split("=", 1)[1]]) == 2
    assert "The file has columns: q, choices, label, subject" in capsys.readouterr().err


def test_eval_two_files_two_layouts(tmp_path, capsys):
    a, b, cols = _two_layouts(tmp_path)
    assert main(["eval", "--model", "tiny", "--benchmarks", f"{a},{b},starter:test", "--columns", cols,
                 "--mode", "loglik", "--limit", "2", "--quiet", "--json", "--bootstrap", "20",
                 "--output", str(tmp_path / "o")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["a"]["n"], res["b"]["n"], res["starter:test"]["n"]) == (2, 1, 2)


# 10 --------------------------------------------------------------------- stats FILE, contamination
def test_stats_file_and_contamination_cli(tmp_path, capsys):
    from medrlvr.data import load_starter

    st = load_starter("test")
    mine = _jsonl(tmp_path / "mine.jsonl", [
        {"id": "copy", "question": st[0].question, "options": list(st[0].options.values()), "answer": st[0].gold},
        {"id": "near", "question": st[1].question + " Choose the best answer.", "options": ["x", "y"], "answer": "A"},
        {"id": "new", "question": "An entirely new question about the renal tubule and its transporters?",
         "options": ["x", "y"], "answer": "A"},
    ])
    assert main(["data", "stats", str(mine), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)[str(mine)]
    assert out["count"] == 3 and out["options_histogram"] == {"2": 2, str(st[0].n_options): 1} and not out["skipped"]
    assert main(["data", "contamination", str(mine), "starter", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    pairs = {(p["a_id"], p["b_id"], p["kind"]) for p in got["pairs"]}
    assert pairs == {("copy", st[0].id, "exact"), ("near", st[1].id, "ngram")}
    assert next(p["score"] for p in got["pairs"] if p["kind"] == "ngram") > 0.5
    assert main(["data", "contamination", str(mine), "starter"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["a", "id", "b", "id"]
    assert any(x.startswith("copy") and st[0].id in x and "exact  1.000" in x for x in lines)
    assert lines[-1].startswith(f"2 of 3 questions of {mine} overlap starter (64 questions): 1 exact, 1 by 8-grams")
    # file against file
    other = _jsonl(tmp_path / "other.jsonl", [{"id": "o", "question": st[0].question.upper(), "options": ["x", "y"],
                                               "answer": "A"}])
    assert main(["data", "contamination", str(mine), str(other)]) == 0
    assert "1 of 3 questions" in capsys.readouterr().out.splitlines()[-1]


# 11 ---------------------------------------------------------------------------------- export meta
def test_export_keeps_meta(tmp_path):
    _, b, cols = _two_layouts(tmp_path)
    bcols = cols.split(";")[1].split("=", 1)[1]
    for fmt, out in (("verl", tmp_path / "v.parquet"), ("trl", tmp_path / "t.jsonl"), ("openrlhf", tmp_path / "o.jsonl")):
        assert main(["data", "export", str(b), "--columns", bcols, "--format", fmt, "--out", str(out)]) == 0
        if fmt == "verl":
            row = pq.read_table(out).to_pylist()[0]
            assert json.loads(row["extra_info"]["meta"]) == {"subject": "physio"}
        else:
            row = json.loads(out.read_text().splitlines()[0])
            assert row["meta"] == {"subject": "physio"}


# 12 ----------------------------------------------------------------------- options listed in question
def test_options_listed_in_question_warns(tmp_path, capsys):
    p = _jsonl(tmp_path / "listed.jsonl", [
        {"id": "l1", "question": f"{Q1} Answer Choices: (A) Liver (B) Pancreas (C) Spleen",
         "options": ["Liver", "Pancreas", "Spleen"], "answer": "B"},
        {"id": "l2", "question": f"{Q2}\nA. Vitamin C\nB. Vitamin K", "options": ["Vitamin C", "Vitamin K"],
         "answer": "A"},
        {"id": "l3", "question": "Deficiency of vitamin A. causes which sign? (one answer)",
         "options": ["Night blindness", "Scurvy"], "answer": "A"},
    ])
    assert main(["data", "validate", str(p)]) == 0
    out, _ = _err_lines(capsys)
    assert out[:2] == [f"warning: {p}:1: field 'question': the question text already lists the options (A) ... (C); "
                       "the prompt will show them twice",
                       f"warning: {p}:2: field 'question': the question text already lists the options (A) ... (B); "
                       "the prompt will show them twice"]
    assert out[-1].endswith("3 valid, 0 invalid, 2 with warnings")
    assert not options_in_question("Which of these is a vitamin? A. None of these apply.", {"A": "Vitamin C",
                                                                                           "B": "Iron"})
