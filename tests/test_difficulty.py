"""`medrlvr data difficulty` and `data filter` on the tiny model and hand-made files, and the pass@k guessing
curves of the evaluation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medrlvr.cli import main
from medrlvr.data import load_any
from medrlvr.data.difficulty import (FORMAT, check_source, decile_counts, filter_records, parse_band, parse_pools,
                                     question_hash, read_difficulty)
from medrlvr.eval.benchmark import k_curves
from medrlvr.eval.stats import guessing_majority_at_k, guessing_pass_at_k

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["starter:test", "--model", "tiny", "--k", "2", "--max-new-tokens", "6", "--limit", "6", "--batch-size", "2",
        "--quiet"]   # 3 batches of 2 questions, 2 sampled answers each


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _run(out: Path, *extra: str, nproc: int = 1) -> None:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m"]
                if nproc > 1 else [sys.executable, "-m"])
    p = subprocess.run([*launcher, "medrlvr", "data", "difficulty", *ARGS, "--output", str(out), *extra],
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    d = tmp_path_factory.mktemp("difficulty")
    _run(d / "one.jsonl")
    _run(d / "two.jsonl", nproc=2)
    return d


def test_measurement_is_deterministic_and_sharding_gives_the_same_file(measured, tmp_path):
    one = (measured / "one.jsonl").read_text()
    assert (measured / "two.jsonl").read_text() == one          # 2 processes under torchrun: the same bytes
    assert main(["data", "difficulty", *ARGS, "--output", str(tmp_path / "again.jsonl")]) == 0
    assert (tmp_path / "again.jsonl").read_text() == one         # in-process, again: the same bytes
    df = read_difficulty(measured / "one.jsonl")
    assert df.header["format"] == FORMAT and df.header["k"] == 2 and df.header["seed"] == 0
    assert df.header["model"] == "tiny" and df.header["temperature"] == 1.0 and df.header["mode"] == "cot"
    recs = load_any("starter:test").records[:6]
    assert list(df.entries) == [r.id for r in recs]
    assert all(e["hash"] == question_hash(r) and e["k"] == 2 and 0 <= e["correct"] <= 2
               for e, r in zip(df.entries.values(), recs))
    assert len({e["fingerprint"] for e in df.entries.values()}) == 6
    assert main(["data", "difficulty", *ARGS, "--output", str(tmp_path / "seed1.jsonl"), "--seed", "1"]) == 0
    other = read_difficulty(tmp_path / "seed1.jsonl")
    assert [e["fingerprint"] for e in other.entries.values()] != [e["fingerprint"] for e in df.entries.values()]


def test_resume_after_a_kill_gives_the_same_file(measured, tmp_path, monkeypatch):
    import medrlvr.data.difficulty as dmod

    out = tmp_path / "resumed.jsonl"
    calls = {"n": 0}
    real = dmod.difficulty_line

    def dying(*a, **k):   # killed after the first batch's lines were written
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(dmod, "difficulty_line", dying)
    assert main(["data", "difficulty", *ARGS, "--output", str(out)]) == 130   # Ctrl-C: one line, exit 130
    monkeypatch.setattr(dmod, "difficulty_line", real)
    lines = out.read_text().splitlines()
    assert len(lines) == 3                                   # header + the 2 questions of the first batch
    with open(out, "a") as f:
        f.write('{"id": "starter-a-0')                      # and a torn last line
    assert main(["data", "difficulty", *ARGS, "--output", str(out)]) == 0
    assert out.read_text() == (measured / "one.jsonl").read_text()
    # another setting into the same file is refused with one line
    assert main(["data", "difficulty", *ARGS[:-1], "--output", str(out), "--seed", "3", "--quiet"]) == 2


@pytest.mark.parametrize("argv,msg", [(["--k", "0"], "must be >= 1"), (["--limit", "-1"], "must be >= 1"),
                                      (["--mode", "loglik"], "give --k 1"), (["--temperature", "0"], "must be > 0"),
                                      (["--temperature", "-1"], "must be > 0")])
def test_bad_options_are_refused(argv, msg, capsys, tmp_path):
    args = ["starter:test", "--model", "tiny", "--k", "2", "--output", str(tmp_path / "x.jsonl")]
    try:
        rc = main(["data", "difficulty", *args, *argv])
    except SystemExit as e:      # argparse's own one-line refusal
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and "Traceback" not in err
    assert not (tmp_path / "x.jsonl").exists()


def _hand_file(path: Path, recs, rates, source="starter:test"):
    lines = [{"format": FORMAT, "version": 1, "source": source, "model": "m", "mode": "cot", "k": 8}]
    lines += [{"id": r.id, "hash": question_hash(r), "k": 8, "correct": round(8 * v), "pass_rate": v}
              for r, v in zip(recs, rates)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_filter_counts_bands_and_deciles(tmp_path, capsys):
    recs = load_any("starter:test").records
    rates = [0, 0, 0, 1 / 8, 2 / 8, 3 / 8, 4 / 8, 5 / 8, 7 / 8, 1, 1]           # 11 measured, the rest not
    f = _hand_file(tmp_path / "d.jsonl", recs, rates)
    assert main(["data", "filter", "starter:test", "--difficulty", str(f), "--keep", "1/8:7/8",
                 "--out", str(tmp_path / "kept.jsonl")]) == 0
    out = capsys.readouterr().out.splitlines()
    deciles = [int(line.split()[2]) for line in out[1:11]]
    assert deciles == [3, 1, 1, 1, 0, 1, 1, 0, 1, 2] == decile_counts(rates)
    assert out[11] == (f"kept 6 of {len(recs)} questions with a pass rate in [0.125, 0.875]; dropped 3 below, "
                       f"2 above, {len(recs) - 11} not measured")
    kept = load_any(str(tmp_path / "kept.jsonl")).records
    assert [r.id for r in kept] == [r.id for r in recs[3:9]]
    assert [(r.question, r.options, r.gold) for r in kept] == [(r.question, r.options, r.gold) for r in recs[3:9]]
    res = filter_records(recs, read_difficulty(f).rates(), parse_band("0:0"))
    assert (len(res.kept), res.below, res.above, res.unmeasured) == (3, 0, 8, len(recs) - 11)


def test_filter_refuses_a_file_made_for_another_source(tmp_path, capsys):
    recs = load_any("starter:test").records
    f = _hand_file(tmp_path / "d.jsonl", recs, [0.5] * len(recs))
    assert main(["data", "filter", "starter:train", "--difficulty", str(f), "--keep", "0:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made for another source" in err[0] and "is not in starter:train" in err[0]
    edited = tmp_path / "edited.jsonl"          # the same ids, one question edited
    rows = [{"id": r.id, "question": r.question + (" (edited)" if i == 2 else ""), "options": r.options,
             "answer_idx": r.gold} for i, r in enumerate(recs)]
    edited.write_text("".join(json.dumps(x) + "\n" for x in rows))
    assert main(["data", "filter", str(edited), "--difficulty", str(f), "--keep", "0:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"question {recs[2].id!r}" in err[0] and "content hash" in err[0]
    with pytest.raises(ValueError, match="LOW is above HIGH"):
        parse_band("0.9:0.1")
    assert main(["data", "filter", "starter:test", "--difficulty", str(f), "--keep", "2:3"]) == 2
    assert parse_pools("0:1/4=1,1/4:1=3") == [(0.0, 0.25, 1.0), (0.25, 1.0, 3.0)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(f.read_text().replace('"pass_rate": 0.5', '"pass_rate": 1.5', 1))
    assert main(["data", "filter", "starter:test", "--difficulty", str(bad), "--keep", "0:1"]) == 2
    assert f"{bad}:2: field 'pass_rate'" in capsys.readouterr().err
    assert check_source(read_difficulty(f), recs + [], "x") == []


def test_guessing_curve_hand_worked():
    assert guessing_pass_at_k([2], 1) == 0.5 and guessing_pass_at_k([2], 3) == 0.875
    assert guessing_pass_at_k([4], 2) == pytest.approx(0.4375) and guessing_pass_at_k([4], 3) == pytest.approx(0.578125)
    assert guessing_pass_at_k([2, 4], 2) == pytest.approx((0.75 + 0.4375) / 2)
    assert guessing_majority_at_k([2, 4], 5) == pytest.approx(0.375)
    c = k_curves([1, 0], [["A", "B"], [None, "C"]], ["A", "A"], [2, 4], 2)
    assert c["k"] == [1, 2] and c["pass"] == [0.25, 0.5]
    assert c["maj"] == [0.25, 0.25]                       # q1: 1/2 at k=1, a 1-1 tie at k=2; q2: never
    assert c["pass_guess"] == pytest.approx([0.375, 0.59375]) and c["maj_guess"] == [0.375, 0.375]


def test_eval_results_carry_the_curves_and_compare_draws_them(tmp_path):
    from medrlvr.eval.benchmark import evaluate
    from medrlvr.eval.compare import compare
    from medrlvr.models import load_policy

    model, tok = load_policy("tiny")
    res = evaluate(model, tok, ["starter:test"], limit=3, n_samples=3, max_new_tokens=4, bootstrap=0, engine="hf",
                   progress=False, output_dir=str(tmp_path / "ev"))
    c = res["starter:test"]["curves"]
    assert c["k"] == [1, 2, 3] and len(c["pass"]) == len(c["maj"]) == 3
    assert c["pass"][0] == pytest.approx(res["starter:test"]["pass_at_k"]["1"])
    assert c["pass_guess"][0] == pytest.approx(res["starter:test"]["random_baseline"]["accuracy"])
    md = (tmp_path / "ev" / "results.md").read_text()
    assert "## starter:test: pass@k and maj@k against random guessing" in md
    assert f"| 3 | {100 * c['pass'][2]:.1f} | {100 * c['pass_guess'][2]:.1f} |" in md
    saved = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert saved["starter:test"]["curves"]["pass_guess"] == pytest.approx(c["pass_guess"])
    paths = compare([tmp_path / "ev"], tmp_path / "cmp")
    assert paths["curves"] is not None and paths["curves"].stat().st_size > 5000
    single = evaluate(model, tok, ["starter:test"], limit=2, max_new_tokens=2, bootstrap=0, engine="hf",
                      progress=False, output_dir=str(tmp_path / "ev1"))
    assert "curves" not in single["starter:test"]
    assert compare([tmp_path / "ev1"], tmp_path / "cmp1")["curves"] is None


def test_report_draws_the_curves_of_the_results_under_a_run(tmp_path):
    from medrlvr.analysis.report import build_report

    curves = k_curves([2, 0, 1], [["A", "A"], ["B", None], ["C", "A"]], ["A", "A", "A"], [4, 4, 2], 2)
    for name, shift in (("eval_before", 0.0), ("eval_after", 0.1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(
            {"_meta": {"model": name}, "medqa": {"accuracy": 0.3 + shift, "ci95": [0.2, 0.4], "n": 3,
                                                 "curves": curves}}))
    html = build_report(tmp_path, quiet=True).read_text()
    assert "pass@k and maj@k against random guessing" in html
    assert (tmp_path / "report" / "passk_curves.png").stat().st_size > 5000
    for name in ("eval_before", "eval_after"):
        d = json.loads((tmp_path / name / "results.json").read_text())
        d["medqa"].pop("curves")
        (tmp_path / name / "results.json").write_text(json.dumps(d))
    html = build_report(tmp_path, quiet=True).read_text()
    assert "against random guessing" not in html and not (tmp_path / "report" / "passk_curves.png").exists()
