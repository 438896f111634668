"""Monitors (medrlvr.monitor): synthetic runs for each failure mode raise the right alert at the
right step, a healthy run raises none, the trainer raises the same alerts online as the offline
`medrlvr monitor`, `on_alert: stop` checkpoints and exits with code 3, and the report shows the panel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medrlvr.cli import main
from medrlvr.monitor import ALERT_EXIT_CODE, MONITORS, MonitorConfig, replay, replay_run

ONSET = 4      # the synthetic failure starts at this step ...
STEPS = 9      # ... of a run this long; with k = 3 the alert is raised at step ONSET + 2
GOLDS = "ABCD"  # one gold per group (4 groups x 8 samples)
THINKS = ["The fever and the rash point to an infection, so antibiotics fit best here.",
          "Low platelets with bleeding suggest a clotting problem; the drug must act on it.",
          "This drug blocks the enzyme, which explains the side effect in this patient."]


def _sample(step: int, g: int, j: int, response: str, pred: str | None) -> dict:
    gold = GOLDS[g]
    return {"step": step, "id": f"q{step}-{g}", "group": g, "response": response, "reward": float(pred == gold),
            "format_ok": True, "pred": pred, "gold": gold, "correct": pred == gold, "flags": [], "n_options": 4,
            "options": {"A": "Aspirin", "B": "Heparin", "C": "Warfarin", "D": "Ibuprofen"}}


def _healthy_samples(step: int) -> list[dict]:
    out = []
    for g in range(4):
        for j in range(8):
            pred = "ABCD"[(g + j * 3 + step) % 4]
            out.append(_sample(step, g, j, f"<think>{THINKS[(j + g) % 3]}</think><answer>{pred}</answer>", pred))
    return out


def _healthy_metrics(step: int) -> dict:
    return {"step": step, "reward_mean": 0.2, "accuracy": 0.25, "format_valid": 1.0, "response_tokens": 40.0,
            "entropy": 1.2, "zero_var_frac": 0.25, "kl": 0.01}


def _run(bad_metrics=None, bad_samples=None, evals=None):
    """metrics and samples of a synthetic run: healthy before ONSET, then altered from ONSET on."""
    metrics = [{"step": 0, "eval_accuracy": 0.25, "eval_format_valid": 1.0}]
    samples: list[dict] = []
    for step in range(1, STEPS + 1):
        m, s = _healthy_metrics(step), _healthy_samples(step)
        if step >= ONSET:
            if bad_metrics:
                m.update(bad_metrics)
            if bad_samples:
                s = bad_samples(step)
        if evals and step in evals:
            m["eval_accuracy"] = evals[step]
        metrics.append(m)
        samples.extend(s)
    return metrics, samples


def _echo(step):
    return [_sample(step, g, j, "<think> reasoning process here </think> <answer> answer here </answer>", None)
            for g in range(4) for j in range(8)]


def _position(step):  # every answer is D; the golds are A, B, C, A (D never)
    out = []
    for g, gold in enumerate("ABCA"):
        for j in range(8):
            s = _sample(step, g, j, f"<think>{THINKS[j % 3]}</think><answer>D</answer>", "D")
            s["gold"], s["id"] = gold, f"q{step}-{g}"
            out.append(s)
    return out


def _answer_in_think(step):
    return [_sample(step, g, j, f"<think>The answer is {GOLDS[g]}.</think><answer>{GOLDS[g]}</answer>", GOLDS[g])
            for g in range(4) for j in range(8)]


def _before_think(step):
    pre = "Step 1: the patient has a fever and a rash. Step 2: that points to an infection, treat it. "
    return [_sample(step, g, j, f"{pre}<think>{THINKS[0]}</think><answer>{GOLDS[(g + j) % 4]}</answer>",
                    GOLDS[(g + j) % 4]) for g in range(4) for j in range(8)]


def _letterless(step):  # well-formed, but the answer names no option letter (seen in demo runs)
    return [_sample(step, g, j, f"<think>{THINKS[j % 3]}</think><answer> yes </answer>", None)
            for g in range(4) for j in range(8)]


def _empty(step):  # every tag, nothing inside: the shaped scheme's partial credit (seen in a demo run)
    return [_sample(step, g, j, "<think> </think><answer> </answer>", None) for g in range(4) for j in range(8)]


CASES = {
    "entropy_collapse": ({"entropy": 0.04}, None),
    "no_learning_signal": ({"zero_var_frac": 1.0}, None),
    "length_collapse": ({"response_tokens": 6.0}, None),
    "kl_blowup": ({"kl": 2.5}, None),
    "template_echo": (None, _echo),
    "position_hack": (None, _position),
    "answer_in_think": (None, _answer_in_think),
    "reasoning_before_think": (None, _before_think),
    "letterless_answers": (None, _letterless),
    "empty_answers": (None, _empty),
}


def test_healthy_run_raises_nothing():
    metrics, samples = _run(evals={3: 0.3, 6: 0.35, 9: 0.4})
    assert replay(metrics, samples) == []


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_failure_mode_raises_its_alert_at_onset(name):
    bad_m, bad_s = CASES[name]
    metrics, samples = _run(bad_m, bad_s)
    alerts = replay(metrics, samples)
    assert [a.monitor for a in alerts] == [name]
    a = alerts[0]
    assert (a.onset_step, a.raised_step, a.active) == (ONSET, ONSET + 2, True)
    assert a.what == MONITORS[name] and a.advice and a.evidence
    if bad_s is not None:  # two example samples of the failure, from the onset step
        assert len(a.examples) == 2 and all(x["step"] == ONSET for x in a.examples)


def test_short_excursion_is_not_an_alert_and_recovery_is_recorded():
    metrics, samples = _run({"entropy": 0.04})
    metrics[ONSET + 1]["entropy"] = 1.0  # two bad steps, one good, then bad again
    assert [(a.onset_step, a.raised_step) for a in replay(metrics, samples)] == [(ONSET + 2, ONSET + 4)]
    metrics, samples = _run({"entropy": 0.04})
    metrics[-1]["entropy"] = 1.0
    (a,) = replay(metrics, samples)
    assert (a.onset_step, a.active, a.last_step) == (ONSET, False, STEPS)
    # k is a threshold of the config
    (a,) = replay(*_run({"entropy": 0.04}), MonitorConfig(k=1))
    assert (a.onset_step, a.raised_step) == (ONSET, ONSET)


def test_train_accuracy_rising_while_heldout_flat():
    # accuracy among well-formed answers 0.25 -> 0.8 from ONSET on; held-out flat at 0.25
    bad = {"accuracy": 0.8, "format_valid": 1.0}
    (a,) = replay(*_run(bad, evals={3: 0.25, 6: 0.25, 9: 0.25}))
    assert (a.monitor, a.onset_step, a.raised_step) == ("train_heldout_gap", 6, 6)
    # held-out rising with it: no alert
    assert replay(*_run(bad, evals={3: 0.25, 6: 0.5, 9: 0.6})) == []
    # format gains alone (accuracy rises only because more answers are well formed): no alert
    metrics, samples = _run(evals={3: 0.25, 6: 0.25, 9: 0.25})
    for m in metrics[1:]:
        fv = min(1.0, 0.1 * m["step"])
        m.update(format_valid=fv, accuracy=0.25 * fv)
    assert replay(metrics, samples) == []


def _heldout(top_share: float, gold_share: float = 0.2, answered: int = 32, top: str = "C") -> dict:
    return {"eval_accuracy": 0.25, "eval_answered_n": answered, "eval_top_letter": top,
            "eval_top_letter_share": top_share, "eval_top_letter_gold_share": gold_share}


def test_heldout_letter_collapse_while_training_letters_mix():
    """Greedy held-out answers on one letter while the temperature-1 training samples still mix letters
    (as in demo runs): only ``heldout_position`` fires, at the first evaluation past the share."""
    metrics, samples = _run()
    metrics[3].update(_heldout(0.44))        # C in 44%: at most half, no alert
    metrics[6].update(_heldout(0.84, top="D"))
    metrics[9].update(_heldout(1.0))
    (a,) = replay(metrics, samples)
    assert (a.monitor, a.onset_step, a.raised_step, a.active) == ("heldout_position", 6, 6, True)
    assert "letter D in 84% of 32" in a.evidence and a.what == MONITORS["heldout_position"]
    assert "held-out (greedy)" in a.evidence
    metrics, samples = _run()                # a sampled evaluation (eval_samples 4) says so in the evidence
    metrics[6].update(_heldout(0.84, answered=128) | {"eval_samples": 4})
    (a,) = replay(metrics, samples)
    assert "held-out (4 sampled per question): letter C in 84% of 128" in a.evidence
    metrics[6]["eval_temperature"] = 0.7     # rows that log the temperature name it, as the demo's summary does
    (a,) = replay(metrics, samples)
    assert "held-out (4 sampled per question at T=0.7): letter C" in a.evidence
    # the share must pass the threshold; the letter being the gold that often, or too few answers, is no hack
    for ev in (_heldout(0.5), _heldout(0.9, gold_share=0.8), _heldout(1.0, answered=5)):
        metrics, samples = _run()
        metrics[6].update(ev)
        assert replay(metrics, samples) == [], ev
    # its own floor of well-formed answers, not train_heldout_gap's gap_min_format_valid
    metrics, samples = _run()
    metrics[6].update(eval_format_valid=0.1, eval_answered=0.0)
    assert [a.monitor for a in replay(metrics, samples, MonitorConfig(heldout_min_format_valid=0.05))] == [
        "heldout_letterless"]
    assert replay(metrics, samples, MonitorConfig(gap_min_format_valid=0.05)) == []


def test_heldout_letterless_answers():
    """Well-formed greedy held-out answers that name no letter (format-valid 1.000, no letter in 32 of 32: a
    demo run) raise ``heldout_letterless`` at that evaluation; a model that has not learned the format
    yet, or whose well-formed answers mostly name a letter, does not."""
    metrics, samples = _run()
    metrics[3].update(eval_format_valid=0.5, eval_answered=0.4)     # 80% of the well-formed name a letter
    metrics[9].update(eval_format_valid=1.0, eval_answered=0.0)
    (a,) = replay(metrics, samples)
    assert (a.monitor, a.onset_step, a.raised_step, a.active) == ("heldout_letterless", 9, 9, True)
    assert "only 0% name an option letter" in a.evidence and a.what == MONITORS["heldout_letterless"]
    for ev in ({"eval_format_valid": 0.1, "eval_answered": 0.0}, {"eval_format_valid": 1.0, "eval_answered": 0.5}):
        metrics, samples = _run()
        metrics[6].update(ev)
        assert replay(metrics, samples) == [], ev


def test_heldout_letter_metrics_from_pairs():
    from medrlvr.analysis.stages import heldout_letter_metrics

    m = heldout_letter_metrics([("C", "A"), ("C", "C"), ("C", "B"), ("A", "A"), (None, "D")])
    assert m == {"eval_answered": 0.8, "eval_answered_n": 4, "eval_top_letter": "C", "eval_top_letter_share": 0.75,
                 "eval_top_letter_gold_share": 0.25}
    assert heldout_letter_metrics([]) == {}
    assert heldout_letter_metrics([(None, "A")])["eval_top_letter"] is None


def _write_run(d: Path, metrics, samples):
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (d / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return d


def test_monitor_cli(tmp_path, capsys):
    bad = _write_run(tmp_path / "bad", *_run(None, _echo))
    assert main(["monitor", str(bad)]) == ALERT_EXIT_CODE
    out = capsys.readouterr().out
    assert "ALERT template_echo since step 4 (raised at step 6)" in out
    assert main(["monitor", str(bad), "--json"]) == ALERT_EXIT_CODE
    (row,) = json.loads(capsys.readouterr().out)
    assert row["monitor"] == "template_echo" and row["onset_step"] == 4
    good = _write_run(tmp_path / "good", *_run())
    assert main(["monitor", str(good)]) == 0
    assert "no alert" in capsys.readouterr().out
    assert main(["monitor", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err


FIXTURE = Path(__file__).parent / "fixtures" / "collapsed_run"


def test_collapsed_run_fixture(tmp_path):
    """A real run kept as a fixture (tests/fixtures/collapsed_run: `medrlvr train --config tiny
    reward_scheme=paper max_steps=4 prompts_per_step=2 samples_per_prompt=4 max_new_tokens=16`): the paper's
    gated reward gives the random tiny model -1 for every sample, so every group has zero variance
    from step 1. Its recorded alerts.jsonl, the offline replay and the report panel agree."""
    from medrlvr.analysis.report import build_report

    alerts, notes = replay_run(FIXTURE)
    assert notes == []
    assert [(a.monitor, a.onset_step, a.raised_step) for a in alerts] == [("no_learning_signal", 1, 3)]
    recorded = [json.loads(x) for x in (FIXTURE / "alerts.jsonl").read_text().splitlines()]
    assert [(r["monitor"], r["onset_step"], r["raised_step"]) for r in recorded] == [("no_learning_signal", 1, 3)]
    import shutil

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    text = build_report(run, quiet=True).read_text()
    assert text.index('id="alerts"') < text.index("<h2>Accuracy")
    assert "no learning signal: since step 1" in text


# ------------------------------------------------------------------------------ the trainer's hook
def _tiny(**kw):
    from medrlvr.train.config import build_config

    # the paper's reward on a random tiny model: every sample -1, every group zero-variance
    base = {"reward_scheme": "paper", "max_steps": 4, "eval_every": 0, "save_every": 0, "prompts_per_step": 2,
            "samples_per_prompt": 2, "max_new_tokens": 8, "eval_limit": 2}
    return build_config("tiny", {**base, **kw})


def test_trainer_raises_alerts_online_like_offline(tmp_path, capsys, one_thread):
    from medrlvr.train.trainer import Trainer

    t = Trainer(_tiny(), tmp_path, quiet=True)
    t.train()
    out = capsys.readouterr().out
    assert "[monitor] ALERT no_learning_signal since step 1 (raised at step 3)" in out
    online = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    offline, _ = replay_run(tmp_path)
    assert online == [a.to_dict() | {"active": online[i]["active"], "last_step": online[i]["last_step"]}
                      for i, a in enumerate(offline)]
    assert [a["monitor"] for a in online] == [a.monitor for a in t.monitor.alerts]


def test_on_alert_stop_checkpoints_and_exits_3(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    code = main(["train", "--config", "tiny", "--output", str(out), "reward_scheme=paper", "max_steps=6",
                 "eval_every=0", "save_every=0", "prompts_per_step=2", "samples_per_prompt=2", "max_new_tokens=8",
                 "eval_limit=2", "on_alert=stop"])
    assert code == ALERT_EXIT_CODE == 3
    assert "stopped by the monitor" in capsys.readouterr().err
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_3"
    assert not (out / "final").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_thresholds_from_the_config_live_offline_and_in_the_report(tmp_path, capsys, one_thread):
    """``monitor.k=2`` raises the zero-variance alert one step earlier than the default k=3; the run's config.yaml
    keeps the section, so ``medrlvr monitor`` and the report replay with it (and a foreign k would differ)."""
    from medrlvr.analysis.report import build_report
    from medrlvr.train.trainer import Trainer

    cfg = _tiny(max_steps=3, monitor={"k": 2, "entropy_min": 0.0})
    assert cfg.monitor == {"k": 2, "entropy_min": 0.0}
    Trainer(cfg, tmp_path, quiet=True).train()
    assert "[monitor] ALERT no_learning_signal since step 1 (raised at step 2)" in capsys.readouterr().out
    alerts, notes = replay_run(tmp_path)
    assert notes == [] and [(a.monitor, a.raised_step) for a in alerts] == [("no_learning_signal", 2)]
    assert [a.raised_step for a in replay_run(tmp_path, MonitorConfig())[0]] == [3]
    assert "raised at step 2" in build_report(tmp_path, quiet=True).read_text()
    assert main(["monitor", str(tmp_path)]) == 0   # tiny's no_learning_signal is expected: printed, not counted
    out = capsys.readouterr().out
    assert "(raised at step 2)" in out and "[expected: the tiny model has random weights" in out
    saved = (tmp_path / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(saved.replace("model: tiny", "model: smollm2-135m"))
    assert main(["monitor", str(tmp_path)]) == ALERT_EXIT_CODE   # the same alert of a real model: exit 3
    assert "expected" not in capsys.readouterr().out
    # an unreadable section: the defaults, said so
    (tmp_path / "config.yaml").write_text("monitor: {k: 0}\n")
    alerts, notes = replay_run(tmp_path)
    assert [a.raised_step for a in alerts] == [3]
    assert len(notes) == 1 and "config.yaml: 'monitor.k': must be >= 1" in notes[0] and "defaults used" in notes[0]


def test_dotted_monitor_overrides_merge_into_the_file_section(tmp_path):
    from medrlvr.train.config import build_config

    f = tmp_path / "c.yaml"
    f.write_text("model: tiny\nmonitor:\n  k: 2\n  echo_rate: 0.5\n")
    cfg = build_config(str(f), ["monitor.echo_rate=0.1", "monitor.kl_max=1"])
    assert cfg.monitor == {"k": 2, "echo_rate": 0.1, "kl_max": 1}
    m = MonitorConfig.from_mapping(cfg.monitor)
    assert (m.k, m.echo_rate, m.kl_max, m.entropy_min) == (2, 0.1, 1.0, MonitorConfig().entropy_min)
    assert build_config("tiny").monitor == {}


@pytest.mark.parametrize("override, message", [
    ("monitor.entropy_mn=0.1", "config 'monitor.entropy_mn': unknown monitor threshold; known: k, "),
    ("monitor.echo_rate=1.5", "config 'monitor.echo_rate': a share: must be in [0, 1], got 1.5"),
    ("monitor.k=0", "config 'monitor.k': must be >= 1, got 0"),
    ("monitor.k=1.5", "config 'monitor.k': must be an integer, got 1.5"),
    ("monitor.kl_max=-1", "config 'monitor.kl_max': must be >= 0, got -1.0"),
    ("monitor.entropy_min=.nan", "config 'monitor.entropy_min': must be a finite number, got nan"),
    ("monitor=3", "config 'monitor': must be a mapping of monitor thresholds, got 3"),
])
def test_bad_monitor_thresholds_are_one_line_exit_2(tmp_path, capsys, override, message):
    assert main(["train", "--config", "tiny", "--output", str(tmp_path / "r"), override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r").exists()


def test_on_alert_is_validated():
    with pytest.raises(ValueError, match="on_alert"):
        _tiny(on_alert="panic")


# ------------------------------------------------------------------------------ the report panel
def test_report_panel(tmp_path):
    from medrlvr.analysis.report import build_report

    run = _write_run(tmp_path / "bad", *_run(None, _echo))
    text = build_report(run, quiet=True).read_text()
    top = text.index('id="alerts"')
    assert top < text.index("<h2>Accuracy")  # at the top
    assert "template echo: since step 4" in text and "What to try" in text
    assert text.count('class="alert-example"') == 2
    good = _write_run(tmp_path / "good", *_run())
    assert "No alert" in build_report(good, quiet=True).read_text()


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian chromium not installed at /usr/bin/chromium (run `make chromium`)"
)
def test_report_panel_in_headless_chromium(tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs the 'playwright' Python package (pip install playwright)")
    from medrlvr.analysis.report import build_report

    run = _write_run(tmp_path / "bad", *_run(None, _echo))
    html_path = build_report(run, quiet=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                          "--disable-background-networking", "--disable-component-update"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(html_path.as_uri(), wait_until="load")
            panel = page.locator("#alerts")
            assert panel.is_visible()
            box = panel.bounding_box()
            assert box["y"] < 900  # on the first screen
            assert box["y"] < page.locator("img").first.bounding_box()["y"]  # above every chart
            text = panel.inner_text()
            assert "template echo: since step 4" in text and "What to try" in text
            assert page.locator("#alerts .alert-example").count() == 2
            assert "reasoning process here" in page.locator("#alerts .alert-example pre").first.inner_text()
            page.screenshot(path=str(tmp_path / "report_alerts.png"))
            assert not errors, errors
        finally:
            browser.close()


def test_format_not_learned_after_the_grace_steps():
    """No well-formed sample by step 8 (as two fp32 demo runs did): alert since step 8, raised at 10; a slow
    learner that passes the threshold at step 9 raises nothing; the first steps never count."""
    def run(fvs):
        return [{"step": i + 1, "format_valid": f, "reward_mean": -0.9} for i, f in enumerate(fvs)], []

    (a,) = replay(*run([0.0] * 12))
    assert (a.monitor, a.onset_step, a.raised_step, a.active) == ("format_not_learned", 8, 10, True)
    assert "0% of the step's samples are well-formed" in a.evidence and a.advice
    assert replay(*run([0.0] * 8 + [0.12, 0.5, 0.8, 0.9])) == []
    assert replay(*run([0.0] * 9)) == []                                        # steps 8-9: only two past
    (a,) = replay(*run([0.0] * 10 + [0.3, 0.6]))
    assert (a.onset_step, a.active) == (8, False)                              # learned late: recorded, inactive
    assert replay(*run([0.0] * 12), MonitorConfig(format_grace_steps=20)) == []
