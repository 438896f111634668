"""experiments/demo_robustness.py and experiments/heldout_tail.py plumbing on the tiny model (the real runs take
minutes each: docs/results/demo-robustness.md). One demo run of one step in a subprocess, its tail drawn, the table
read back."""

import importlib.util
import json
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_robustness_run_with_tail_tiny(tmp_path):
    rob = _load("demo_robustness")
    tiny = ["model=tiny", "engine=hf", "eval_limit=3", "max_new_tokens=8", "prompts_per_step=2",
            "samples_per_prompt=2", "micro_batch_size=4", "max_steps=1", "stop_answered=0"]
    row = rob.run_one("fp32", 0, tmp_path, tiny, tail=5)
    assert row["rc"] == 0, (tmp_path / "fp32-seed0.log").read_text()[-2000:]
    s, t = row["summary"], row["tail"]
    # 5 answers for each of the 3 held-out questions, at the demo's evaluation temperature
    assert t["answers"] == 15 and t["k"] == 5 and t["temperature"] == s["after"]["temperature"] == 1.0
    lo, hi = t["echo_ci95"]
    assert 0 <= t["echo"] <= 15 and 0 <= lo <= t["echo"] / 15 <= hi <= 1 and len(t["echo_examples"]) <= 3
    assert json.loads((Path(row["dir"]) / "heldout_tail.json").read_text())[0]["answers"] == 15
    rob.drop_weights(Path(row["dir"]))
    assert not (Path(row["dir"]) / "final").exists()
    tab = rob.table([row, {"path": "auto", "seed": 1, "rc": 1, "wall_s": 3.0}]).splitlines()
    assert tab[0].endswith("| tail: echo [95% CI of the rate] |") and tab[1].count("---") == 13
    assert tab[2].endswith(f"| {t['echo']} in 15 [{lo:.2%}, {hi:.2%}] |")
    a = s["after"]
    assert tab[2].split(" | ")[6] == f"{round(a['template_echo'] * 3 * a['samples'])} of {3 * a['samples']}"
    assert tab[3].startswith("| auto | 1 | failed (rc 1)") and tab[3].count("|") == tab[2].count("|")
    # a tail that failed says so; without --tail the table has no such column
    assert rob.tail_cell(None).startswith("failed")
    assert "tail:" not in rob.table([{k: v for k, v in row.items() if k != "tail"}])


def test_wilson_interval():
    w = _load("heldout_tail").wilson
    lo, hi = w(0, 1024)
    assert lo == 0 and 0.0036 < hi < 0.0038           # the 0.37% upper bound of the echo-tail table (docs/results)
    lo, hi = w(1, 128)
    assert lo < 1 / 128 < hi and w(0, 0) == (0.0, 1.0)


def test_heldout_tail_refuses_bad_runs_up_front(tmp_path, capsys):
    import pytest

    tail = _load("heldout_tail")
    with pytest.raises(SystemExit) as e:
        tail.main([str(tmp_path / "gone"), "--k", "2"])
    assert e.value.code == 2 and "gone/final/model.safetensors: not found" in capsys.readouterr().err
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "model.safetensors").touch()
    (tmp_path / "run" / "config.yaml").touch()
    with pytest.raises(SystemExit) as e:
        tail.main([str(tmp_path / "run"), "--json", str(tmp_path / "no" / "t.json")])
    assert e.value.code == 2 and "--json" in capsys.readouterr().err.splitlines()[-1]
