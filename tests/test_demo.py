"""`medrlvr demo` plumbing on the tiny model (the real demo runs SmolLM2-135M for minutes: `make demo`)."""

import json

from medrlvr.cli import main


def test_demo_plumbing_tiny(tmp_path, monkeypatch):
    import medrlvr.train as train_mod

    calls = []
    real = train_mod.evaluate_policy
    monkeypatch.setattr(train_mod, "evaluate_policy", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / "demo"
    rc = main(["demo", "--output", str(out), "--max-steps", "2", "model=tiny", "engine=hf", "eval_limit=4",
               "max_new_tokens=8", "prompts_per_step=2", "samples_per_prompt=2", "micro_batch_size=4",
               "autocast_bf16=false"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert set(s["before"]) >= {"accuracy", "format_valid"} and set(s["after"]) >= {"accuracy", "format_valid"}
    assert s["wall_s"] > 0 and s["steps"] == 2 and s["before"]["n"] == 4
    for k in ("before", "after"):
        assert 0 <= s[k]["answered"] <= 1 and 0 <= s[k]["top_letter_share"] <= 1
        assert abs(s[k]["random_baseline"] - 0.25) < 0.26 and s[k]["template_echo"] >= 0
    assert isinstance(s["alerts"], list)
    md = (out / "summary.md").read_text()
    assert "| before |" in md and "| after |" in md and "random baseline" in md and "Monitors" in md
    assert "Held-out letters (greedy)" in md
    for tag in ("eval_before", "eval_after"):
        r = json.loads((out / tag / "results.json").read_text())
        bench = [k for k in r if not k.startswith("_")][0]
        assert r[bench]["n"] == 4 and len(r[bench]["ci95"]) == 2
        assert r["_meta"]["template"] == "chat"          # the preset's template, as trained and evaluated
    assert (out / "report.html").exists() or (out / "report" / "report.html").exists()
    assert (out / "final" / "model.safetensors").exists()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 2]      # step 0: the evaluation before training
    assert lines[0]["eval_accuracy"] == s["before"]["accuracy"] and lines[0]["eval_n"] == 4
    # two greedy passes: before training, and the trainer's at its last step, which the demo reports as "after"
    assert len(calls) == 2
    assert lines[-1]["eval_accuracy"] == s["after"]["accuracy"] and lines[-1]["eval_n"] == 4
    assert not {"correct", "format_ok", "samples"} & set(lines[-1])


def test_letter_verdict_names_a_collapse():
    from medrlvr.demo import letter_verdict

    assert "**C in 97%" in letter_verdict({"letters": {"C": 31, "D": 1}, "top_letter_share": 31 / 32})
    ok = letter_verdict({"letters": {"B": 15, "D": 4, "E": 13}, "top_letter_share": 15 / 32})
    assert "**" not in ok and "B, in 47%" in ok
    assert "no answer" in letter_verdict({"letters": {}, "top_letter_share": 0.0})
