"""`medrlvr demo` plumbing on the tiny model (the real demo runs SmolLM2-135M for minutes: `make demo`)."""

import json

from medrlvr.cli import main


def test_demo_plumbing_tiny(tmp_path, monkeypatch):
    import medrlvr.train.trainer as train_mod

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
    assert s["max_steps"] == 2 and s["stopped_early"] is False and s["after"]["greedy"]["n"] == 4
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
    # the preset samples 4 answers per question and adds a greedy pass before and after: 4 passes (the trainer's
    # at its last step is the demo's "after", no second sampled pass)
    assert len(calls) == 4 and s["eval"] == "4 sampled per question at T=1" and s["before"]["samples"] == 4
    assert lines[-1]["eval_accuracy"] == s["after"]["accuracy"] and lines[-1]["eval_n"] == 4
    assert not {"correct", "format_ok", "samples"} & set(lines[-1])


def test_letter_verdict_names_a_collapse():
    from medrlvr.demo import letter_verdict

    assert "**C in 97%" in letter_verdict({"letters": {"C": 31, "D": 1}, "top_letter_share": 31 / 32})
    ok = letter_verdict({"letters": {"B": 15, "D": 4, "E": 13}, "top_letter_share": 15 / 32})
    assert "**" not in ok and "B, in 47%" in ok
    assert "no answer" in letter_verdict({"letters": {}, "top_letter_share": 0.0})


def test_demo_sampled_evaluation_with_greedy_alongside(tmp_path, monkeypatch):
    """eval_samples > 1: the criteria's figures come from sampled answers (seeded per question), the greedy
    pass is reported next to them, and the CI resamples questions."""
    import medrlvr.train.trainer as train_mod

    calls = []
    real = train_mod.evaluate_policy
    monkeypatch.setattr(train_mod, "evaluate_policy", lambda *a, **k: calls.append(
        (k.get("samples"), k.get("temperature"))) or real(*a, **k))
    out = tmp_path / "demo"
    rc = main(["demo", "--output", str(out), "--max-steps", "1", "model=tiny", "engine=hf", "eval_limit=4",
               "max_new_tokens=8", "prompts_per_step=2", "samples_per_prompt=2", "micro_batch_size=4",
               "autocast_bf16=false", "eval_samples=3", "eval_temperature=1.0"])
    assert rc == 0
    # before: configured + greedy; after: the trainer's configured pass at its last step + greedy
    assert calls == [(None, None), (1, 0.0), (None, None), (1, 0.0)]
    s = json.loads((out / "summary.json").read_text())
    assert s["eval"] == "3 sampled per question at T=1"
    assert list(s["times_s"]) == ["eval_before_s", "eval_before_greedy_s", "train_s", "eval_after_greedy_s"]
    assert all(v >= 0 for v in s["times_s"].values()) and sum(s["times_s"].values()) <= s["wall_s"]
    for k in ("before", "after"):
        assert s[k]["n"] == 4 and s[k]["samples"] == 3 and s[k]["temperature"] == 1.0
        g = s[k]["greedy"]
        assert g["n"] == 4 and g["samples"] == 1 and g["temperature"] == 0.0 and "greedy" not in g
        assert sum(s[k]["letters"].values()) <= 12 and sum(g["letters"].values()) <= 4
        # every held-out answer on disk, counted as the summary counts them
        rows = [json.loads(x) for x in (out / f"eval_{k}" / "samples.jsonl").read_text().splitlines()]
        grows = [json.loads(x) for x in (out / f"eval_{k}" / "samples_greedy.jsonl").read_text().splitlines()]
        assert len(rows) == 12 and len(grows) == 4 and {r["step"] for r in rows} == {0 if k == "before" else 1}
        assert [r["id"] for r in rows[::3]] == [r["id"] for r in grows] and len({r["id"] for r in rows}) == 4
        assert sum(r["format_ok"] for r in rows) / 12 == s[k]["format_valid"]
        assert sum("template_echo" in r["flags"] for r in rows) / 12 == s[k]["template_echo"]
        assert {"reward", "response", "pred", "gold", "flags"} <= set(rows[0])
    md = (out / "summary.md").read_text()
    assert "| after, greedy |" in md and "Held-out letters (3 sampled per question at T=1)" in md
    assert "Held-out letters (greedy)" in md
    for k, tag in (("before", "before"), ("after", "after"), ("after", "after, greedy")):  # echo as a count
        f = s[k] if "greedy" not in tag else s[k]["greedy"]
        n = f["n"] * f["samples"]
        assert next(x for x in md.splitlines() if x.startswith(f"| {tag} |")).split(" | ")[6] == \
            f"{round(f['template_echo'] * n)} of {n}"
    r = json.loads((out / "eval_after" / "results.json").read_text())
    assert r["_meta"]["samples"] == 3 and r["_meta"]["temperature"] == 1.0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["eval_samples"] == 3 and lines[-1]["eval_samples"] == 3
    assert lines[0]["eval_temperature"] == lines[-1]["eval_temperature"] == 1.0


def test_question_ci_resamples_questions():
    from medrlvr.demo import question_ci

    # two questions, 4 answers each: all right / all wrong -> per-question means 1 and 0
    ci = question_ci({"correct": [1.0] * 4 + [0.0] * 4, "eval_samples": 4})
    assert ci[0] == 0.0 and ci[1] == 1.0          # two clusters: the bootstrap mean is 0, 0.5 or 1
    flat = question_ci({"correct": [1.0] * 4 + [0.0] * 4, "eval_samples": 1})
    assert flat[0] > 0.0 and flat[1] < 1.0        # eight independent answers: a narrower interval


def test_sampled_evaluation_is_seeded_per_question(tmp_path):
    """A question's sampled answers depend on the run's seed and the question, not on the batch it is in
    (so a sharded evaluation, and the passes before and after training, draw the same way)."""
    from medrlvr.train.config import build_config
    from medrlvr.eval.heldout import evaluate_policy
    from medrlvr.train.trainer import Trainer

    cfg = build_config("tiny", ["engine=hf", "eval_limit=3", "max_new_tokens=6", "eval_samples=2",
                                "eval_temperature=1.0", "autocast_bf16=false"])
    t = Trainer(cfg, tmp_path / "run", quiet=True)
    recs = t.eval_records

    def texts(ev):
        return [s.completion for s in ev["samples"]]

    whole = evaluate_policy(t.engine, recs, cfg, t.tok, details=True)
    one_by_one = evaluate_policy(t.engine, recs, cfg, t.tok, batch=1, details=True)
    assert texts(whole) == texts(one_by_one) and len(texts(whole)) == 6 and whole["eval_n"] == 3
    last = evaluate_policy(t.engine, recs[2:], cfg, t.tok, details=True)
    assert texts(last) == texts(whole)[4:]
    cfg.seed += 1
    assert texts(evaluate_policy(t.engine, recs, cfg, t.tok, details=True)) != texts(whole)
    greedy = evaluate_policy(t.engine, recs, cfg, t.tok, details=True, samples=1, temperature=0.0)
    assert greedy["eval_samples"] == 1 and len(greedy["samples"]) == 3
