"""compare: the Figure-3 table and bar chart from two synthetic results.json files."""

import json

import pytest

from medrlvr.eval.compare import compare, comparison_table, group_of, load_runs


def _entry(acc, n=100, dist=None, rnd=0.25):
    return {"accuracy": acc, "ci95": [acc - 0.05, acc + 0.05], "n": n, "format_valid": None, "distribution": dist,
            "random_baseline": {"accuracy": rnd, "ci95": [rnd - 0.04, rnd + 0.04]}}


def _write(d, model, accs):
    d.mkdir(parents=True)
    res = {"mmlu-pro-health": _entry(accs[1], rnd=0.13), "medqa-4opt": _entry(accs[0]),
           "my_file": _entry(accs[2], dist=None), "_meta": {"model": model, "mode": "loglik"}}
    (d / "results.json").write_text(json.dumps(res))
    return d


def test_compare_builds_table_and_png(tmp_path):
    a = _write(tmp_path / "sft-run", "runs/sft/final", [0.40, 0.30, 0.5])
    b = _write(tmp_path / "rl", "smollm2-135m", [0.42, 0.36, 0.6])
    paths = compare([str(a), str(b / "results.json")], tmp_path / "out")
    md = paths["table"].read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    header = lines[0]
    # ID columns before OOD ones, unregistered benchmarks last
    assert header.index("medqa-4opt (ID)") < header.index("mmlu-pro-health (OOD)") < header.index("my_file (OTHER)")
    assert any(ln.startswith("| sft/final |") and "40.0 ± 5.0 [35.0, 45.0]" in ln for ln in lines)
    assert any(ln.startswith("| smollm2-135m |") and "36.0 ± 5.0" in ln for ln in lines)
    assert any(ln.startswith("| random |") and "25.0" in ln and "13.0" in ln for ln in lines)
    png = paths["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    data = json.loads(paths["json"].read_text())
    assert data["benchmarks"] == {"medqa-4opt": "id", "mmlu-pro-health": "ood", "my_file": "other"}
    assert data["models"]["smollm2-135m"]["medqa-4opt"]["accuracy"] == 0.42


def test_labels_groups_and_errors(tmp_path):
    a = _write(tmp_path / "x", "same", [0.3, 0.2, 0.1])
    b = _write(tmp_path / "y", "same", [0.3, 0.2, 0.1])
    labs = [lab for lab, _ in load_runs([a, b])]
    assert labs == ["same (x)", "same (y)"]
    assert [lab for lab, _ in load_runs([a, b], labels=["p", "q"])] == ["p", "q"]
    assert group_of("medqa-4opt:dev") == "id" and group_of("pubmedqa") == "ood"
    assert group_of("custom", {"distribution": "id"}) == "id" and group_of("custom") == "other"
    md, _ = comparison_table(load_runs([a]), include_random=False)
    assert "| random |" not in md
    with pytest.raises(FileNotFoundError):
        compare([tmp_path / "missing"], tmp_path / "o")


def test_compare_cli(tmp_path, capsys):
    from medrlvr.cli import main

    a = _write(tmp_path / "a", "m1", [0.3, 0.2, 0.1])
    b = _write(tmp_path / "b", "m2", [0.35, 0.25, 0.15])
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "| m1 |" in out and "| m2 |" in out and (tmp_path / "cmp" / "compare.png").exists()
    assert "Warning" not in out and "warning" not in capsys.readouterr().err   # same question sets: no warning


def test_compare_warns_when_rows_were_scored_on_different_question_sets(tmp_path, capsys):
    from medrlvr.cli import main

    a = _write(tmp_path / "a", "m1", [0.3, 0.2, 0.1])
    b = tmp_path / "b"
    b.mkdir()
    res = json.loads((a / "results.json").read_text())
    res["medqa-4opt"]["n"] = 4
    res["_meta"]["model"] = "m2"
    (b / "results.json").write_text(json.dumps(res))
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    cap = capsys.readouterr()
    assert "compare: warning: medqa-4opt: rows scored on different question sets (n = m1: 100, m2: 4)" in cap.err
    assert "mmlu-pro-health" not in cap.err                     # the same n there
    assert "**Warning**: medqa-4opt" in (tmp_path / "cmp" / "compare.md").read_text()
