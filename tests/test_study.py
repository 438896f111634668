"""Tests of ``medrlvr study`` on the tiny model: outputs, paired statistics, kill and resume, plans, bad input.

The browser test needs Debian's ``chromium`` (``/usr/bin/chromium``) and the ``playwright`` package, as the run
report's test does; it is skipped, with the reason, only when the binary is absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from medrlvr import fileio
from medrlvr.cli import main
from medrlvr.study.config import build_study
from medrlvr.study.run import run_study
from medrlvr.study.stats import min_significant_discordance, paired_test
from medrlvr.study.steps import format_plan, plan

CHROMIUM = Path("/usr/bin/chromium")
OUTPUTS = ("study.json", "study.md", "accuracy.png", "dynamics.png", "study.html", "timing.json")


def _ood_file(d: Path) -> Path:
    """Eight starter questions in a generic JSONL file: a second benchmark, loaded by the generic loader."""
    src = Path(__file__).parents[1] / "src" / "medrlvr" / "data" / "starter_b.jsonl"
    rows = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines()[:8]]
    p = d / "ood.jsonl"
    p.write_text("".join(json.dumps({k: r[k] for k in ("id", "question", "options", "answer")}) + "\n"
                         for r in rows), encoding="utf-8")
    return p


def _config(d: Path, **changes) -> dict:
    cfg = {"model": "tiny", "train_data": "starter:train", "id_benchmarks": ["starter:test"],
           "ood_benchmarks": [str(_ood_file(d))],
           "eval": {"limit": 6, "max_new_tokens": 8, "bootstrap": 200, "engine": "hf"},
           "base": {"modes": ["loglik", "cot"]},
           "sft": {"modes": ["loglik", "direct"],
                   "config": {"max_steps": 2, "batch_size": 4, "dev_limit": 4, "train_limit": 16,
                              "lr_grid": [1e-4, 1e-3]}},
           "rlvr": {"config": "tiny", "modes": ["cot"],
                    "overrides": {"max_steps": 4, "save_every": 2, "eval_every": 2, "eval_limit": 4,
                                  "max_new_tokens": 8}}}
    cfg.update(changes)
    return cfg


def _write(d: Path, cfg: dict, name: str = "study.yaml") -> Path:
    p = d / name
    p.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    cfg = build_study(_config(d))
    data = run_study(cfg, d / "out", quiet=True)
    return d, d / "out", data


# --------------------------------------------------------------------------- statistics
def test_paired_test_equals_scipy_on_hand_made_vectors():
    from scipy.stats import binom, binomtest

    a = [1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1]
    b = [0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0]
    t = paired_test(a, b, n_resamples=500, seed=0)
    n10 = sum(x and not y for x, y in zip(a, b))
    n01 = sum(y and not x for x, y in zip(a, b))
    assert (t["n10"], t["n01"]) == (n10, n01) == (10, 1)
    assert t["p_mcnemar"] == pytest.approx(binomtest(n10, n10 + n01, 0.5).pvalue, rel=1e-12)
    # the same p from the binomial distribution directly (exact McNemar: twice the smaller tail)
    assert t["p_mcnemar"] == pytest.approx(min(1.0, 2 * binom.cdf(min(n10, n01), n10 + n01, 0.5)), rel=1e-9)
    assert t["diff"] == pytest.approx((sum(a) - sum(b)) / len(a))
    lo, hi = t["ci95"]
    assert lo < t["diff"] < hi and lo > 0          # 9 more right of 20 paired: the interval excludes 0
    assert t["significant"]
    # fewer than 6 discordant questions can never be significant; 6 all one way can
    assert min_significant_discordance(5) is None and min_significant_discordance(6) == 6
    assert paired_test([1, 0, 1], [1, 0, 1])["p_mcnemar"] == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        paired_test([1, 0], [1])


# --------------------------------------------------------------------------- the whole study
def test_tiny_study_writes_every_output_and_cell(study):
    _d, out, data = study
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert json.loads((out / "study.json").read_text()) == data
    benches = list(data["benchmarks"])
    assert len(benches) == 2 and [data["benchmarks"][b]["distribution"] for b in benches] == ["id", "ood"]
    want = {("base", "loglik"), ("base", "cot"), ("sft", "loglik"), ("sft", "direct"), ("rlvr", "cot")}
    got = {(c["arm"], c["mode"], c["benchmark"]) for c in data["cells"]}
    assert got == {(a, m, b) for a, m in want for b in benches}
    for c in data["cells"]:
        assert c["n"] == 6 and c["random_baseline"]["accuracy"] > 0
        vec = json.loads((out / c["vector"]).read_text())
        assert len(vec["correct"]) == 6 and sum(vec["correct"]) / 6 == pytest.approx(c["accuracy"])
    # every arm answered the same questions in the same order
    ids = {json.dumps(json.loads((out / c["vector"]).read_text())["ids"]) for c in data["cells"]
           if c["benchmark"] == benches[0]}
    assert len(ids) == 1
    assert data["missing"] == []
    pairs = {(p["a"], p["b"]) for p in data["pairs"]}
    # a pair without modes compares like with like where both arms have the mode (rlvr:cot with base:cot)
    assert pairs == {("rlvr:cot", "sft:loglik"), ("rlvr:cot", "base:cot"), ("sft:loglik", "base:loglik")}
    md = (out / "study.md").read_text()
    assert "| arm | mode | prompt |" in md and "OOD average" in md and "random guess" in md
    assert "McNemar" in md and "## Prompts" in md and "## Answer format" in md
    # the tiny random model is at chance: the table says so, computed from the intervals
    if not any(c["above_random"] for c in data["cells"]):
        assert "No arm is above the random baseline" in md
    timing = json.loads((out / "timing.json").read_text())
    assert set(timing["steps"]) == {s.id for s in plan(build_study(_config(_d)), out)}
    assert (out / "arms" / "rlvr-s0" / "report" / "report.html").is_file()


def test_several_seeds_show_mean_and_range(study):
    from medrlvr.study.markdown import table_rows

    _d, _out, data = study
    two = json.loads(json.dumps(data))
    two["seeds"] = [0, 1]
    extra = []
    for c in two["cells"]:
        if c["arm"] == "sft":
            c2 = dict(c, seed=1, instance="sft-s1", accuracy=c["accuracy"] + 0.5)
            extra.append(c2)
    two["cells"] += extra
    head, rows = table_rows(two)
    row = next(r for r in rows if r[:2] == ["sft", "loglik"])
    a = next(c["accuracy"] for c in data["cells"] if (c["arm"], c["mode"]) == ("sft", "loglik"))
    assert row[3] == f"{100 * (a + 0.25):.1f} ({100 * a:.1f}–{100 * (a + 0.5):.1f}, 2 seeds)"


def test_rerun_skips_finished_steps(study, capsys):
    d, out, data = study
    before = {p: p.stat().st_mtime_ns for p in (out / "steps").iterdir()}
    cfg = build_study(_config(d))
    again = run_study(cfg, out, quiet=False)
    assert again == data
    assert {p: p.stat().st_mtime_ns for p in (out / "steps").iterdir()} == before
    assert "[study] eval/" not in capsys.readouterr().out.replace("estimate", "")


def test_resume_from_the_saved_config_and_collect_from_the_command_line(study, tmp_path, capsys):
    _d, out, data = study
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "study.json").unlink()
    assert main(["study", "--output", str(copy), "--resume", "--quiet"]) == 0
    assert json.loads((copy / "study.json").read_text()) == data
    (copy / "steps" / "eval__rlvr-s0__cot.done").unlink()      # as if that evaluation had not finished
    assert main(["study", "collect", str(copy), "--quiet"]) == 0
    partial = json.loads((copy / "study.json").read_text())
    assert partial["missing"] == ["eval/rlvr-s0/cot"]
    assert not any(c["arm"] == "rlvr" for c in partial["cells"])
    assert "eval/rlvr-s0/cot" in (copy / "study.md").read_text()
    err = _fails(capsys, ["study", "--output", str(tmp_path / "none"), "--resume"])
    assert "holds no study" in err


def test_kill_inside_sft_and_rl_then_resume_gives_the_same_study_json(study, tmp_path):
    d, _out, data = study
    out = tmp_path / "killed"
    cfg = build_study(_config(d))
    seen: dict[str, int] = {}

    def kill_at(label: str, nth: int):
        def hook(lab: str):
            if lab == label:
                seen[lab] = seen.get(lab, 0) + 1
                if seen[lab] == nth:
                    raise fileio.SimulatedCrash(lab)
        return hook

    try:
        fileio.HOOK = kill_at("dir.written", 1)          # SFT: saving its first model to final/
        with pytest.raises(fileio.SimulatedCrash):
            run_study(cfg, out, quiet=True, estimate=False)
        assert not (out / "steps" / "train__sft-s0.done").exists()
        seen.clear()
        fileio.HOOK = kill_at("ckpt.state", 2)           # RL: inside the step-4 checkpoint (step 2's is complete)
        with pytest.raises(fileio.SimulatedCrash):
            run_study(cfg, out, quiet=True, estimate=False)
        assert (out / "steps" / "train__sft-s0.done").exists()
        assert not (out / "steps" / "train__rlvr-s0.done").exists()
        assert (out / "arms" / "rlvr-s0" / "checkpoints" / "step_2" / "step").is_file()
    finally:
        fileio.HOOK = None
    resumed = run_study(cfg, out, quiet=True, estimate=False)
    assert resumed == data


# --------------------------------------------------------------------------- plans
def test_plan_lists_steps_in_dependency_order(study, capsys):
    _d, out, _data = study
    assert main(["study", "plan", str(out)]) == 0
    text = capsys.readouterr().out
    ids = [ln.split()[1] for ln in text.splitlines() if ln[:3].strip().rstrip(".").isdigit()]
    assert ids[-1] == "collect"
    steps = {s.id: s for s in plan(build_study(_config(_d)), out)}
    assert ids[:-1] == list(steps)
    for i, sid in enumerate(ids[:-1]):
        assert all(ids.index(n) < i for n in steps[sid].needs), sid
    assert ids.index("train/sft-s0") < ids.index("eval/sft-s0/loglik")
    assert ids.index("train/rlvr-s0") < ids.index("eval/rlvr-s0/cot")
    assert f"medrlvr study step {out} train/rlvr-s0" in text and "[done]" in text


def test_verl_backend_plan_has_the_verl_commands(tmp_path, capsys):
    cfg = _config(tmp_path, rlvr={"config": "tiny", "backend": "verl", "nproc": 4, "modes": ["cot"],
                                  "overrides": {"max_steps": 7}}, seeds=[0, 1])
    p = _write(tmp_path, cfg)
    assert main(["study", "plan", str(tmp_path / "out"), "--config", str(p)]) == 0
    text = capsys.readouterr().out
    for seed in (0, 1):
        arm = tmp_path / "out" / "arms" / f"rlvr-s{seed}"
        assert f"medrlvr verl prepare --config {arm}.yaml --out {arm} --gpus-per-node 4" in text
        assert f"medrlvr verl launch {arm}" in text
        assert f"python -m verl.model_merger merge --backend fsdp --local_dir {arm}/checkpoints/global_step_7/actor" \
               in text
        assert text.index(f"prepare/rlvr-s{seed}") < text.index(f"train/rlvr-s{seed}") \
            < text.index(f"export/rlvr-s{seed}") < text.index(f"eval/rlvr-s{seed}/cot")
    # the saved arm config is what `verl prepare` reads
    assert yaml.safe_load((tmp_path / "out" / "arms" / "rlvr-s1.yaml").read_text())["seed"] == 1
    assert "export/rlvr-s0" in format_plan(build_study(cfg), tmp_path / "out")


# --------------------------------------------------------------------------- bad input
def _fails(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_unknown_arm_key_names_file_and_line(tmp_path, capsys):
    cfg = _config(tmp_path)
    cfg["grpo"] = {"config": "tiny"}             # an extra arm belongs under extra_arms
    p = _write(tmp_path, cfg)
    line = next(i for i, ln in enumerate(p.read_text().splitlines(), 1) if ln.startswith("grpo:"))
    err = _fails(capsys, ["study", "--config", str(p), "--output", str(tmp_path / "out")])
    assert f"{p}:{line}:" in err and "'grpo'" in err and "unknown key" in err
    cfg = _config(tmp_path, extra_arms={"grpo": {"config": "tiny", "overides": {}}})
    p = _write(tmp_path, cfg, "s2.yaml")
    err = _fails(capsys, ["study", "--config", str(p), "--output", str(tmp_path / "out")])
    assert "'extra_arms.grpo.overides'" in err and f"{p}:" in err
    assert not (tmp_path / "out").exists()


def test_bad_values_are_refused_by_key(tmp_path, capsys):
    p = _write(tmp_path, _config(tmp_path))
    out = str(tmp_path / "out")
    assert "'eval.limit'" in _fails(capsys, ["study", "--config", str(p), "--output", out, "eval.limit=-1"])
    assert "'rlvr.overrides.lr'" in _fails(capsys, ["study", "--config", str(p), "--output", out,
                                                    "rlvr.overrides.lr=0"])
    assert "'sft.modes'" in _fails(capsys, ["study", "--config", str(p), "--output", out, "sft.modes=[sing]"])
    assert "'rlvr.overrides.model'" in _fails(capsys, ["study", "--config", str(p), "--output", out,
                                                       "rlvr.overrides.model=other"])
    assert not (tmp_path / "out").exists()


def test_benchmark_that_does_not_load_is_named(tmp_path, capsys):
    p = _write(tmp_path, _config(tmp_path, ood_benchmarks=[str(tmp_path / "missing.jsonl")]))
    err = _fails(capsys, ["study", "--config", str(p), "--output", str(tmp_path / "out")])
    assert "ood_benchmarks" in err and "missing.jsonl" in err
    assert not (tmp_path / "out").exists()


def test_mode_the_model_cannot_run_is_refused_before_anything_runs(tmp_path, capsys):
    from medrlvr.models import load_policy

    model, tok = load_policy("tiny", "fp32", seed=0)
    mdir = tmp_path / "plain-model"
    model.save_pretrained(mdir, safe_serialization=True)
    tok.chat_template = None                      # a base model's tokenizer: no chat template
    tok.save_pretrained(mdir)
    capsys.readouterr()                           # the save's progress bar
    cfg = _config(tmp_path, model=str(mdir), base={"modes": ["loglik"], "direct_template": "direct-chat"})
    p = _write(tmp_path, cfg)
    err = _fails(capsys, ["study", "--config", str(p), "--output", str(tmp_path / "out")])
    assert "'base.direct_template'" in err and "chat template" in err
    assert not (tmp_path / "out").exists()


def test_directory_holding_another_study_is_refused(study, tmp_path, capsys):
    d, out, _data = study
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    saved = (copy / "study.yaml").read_bytes()
    p = _write(tmp_path, _config(d, eval={"limit": 5, "max_new_tokens": 8, "bootstrap": 200, "engine": "hf"}))
    err = _fails(capsys, ["study", "--config", str(p), "--output", str(copy)])
    assert "holds another study" in err and "eval.limit (saved 6, now 5)" in err
    assert (copy / "study.yaml").read_bytes() == saved
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    err = _fails(capsys, ["study", "--config", str(p), "--output", str(tmp_path / "other")])
    assert "holds no study" in err
    assert sorted(x.name for x in (tmp_path / "other").iterdir()) == ["notes.txt"]


# --------------------------------------------------------------------------- evaluation pieces
def test_question_seeds_make_a_questions_answers_independent_of_its_batch():
    from medrlvr.data import load_any
    from medrlvr.eval.benchmark import evaluate
    from medrlvr.models import load_policy

    model, tok = load_policy("tiny", "fp32", seed=0)
    recs = load_any("starter:test").records[:5]
    kw = dict(mode="direct", n_samples=2, temperature=1.0, max_new_tokens=4, bootstrap=0, progress=False,
              engine="hf", question_seeds=True)

    def texts(rs, bs):
        from medrlvr.eval.benchmark import EvalConfig

        r = {}
        import tempfile

        with tempfile.TemporaryDirectory() as t:
            evaluate(model, tok, {"b": rs}, EvalConfig(**kw, batch_size=bs, output_dir=t))
            for ln in (Path(t) / "b.completions.jsonl").read_text().splitlines():
                row = json.loads(ln)
                r[row["id"]] = [s["text"] for s in row["samples"]]
        return r

    alone = texts(recs[2:3], 1)
    batched = texts(recs, 5)
    assert alone[recs[2].id] == batched[recs[2].id]


def test_direct_chat_prompt_uses_the_chat_template():
    from medrlvr.data import load_any
    from medrlvr.models import load_tokenizer
    from medrlvr.prompts import render

    tok = load_tokenizer("tiny")
    rec = load_any("starter:test").records[0]
    p = render(rec, "direct-chat", tok)
    assert render(rec, "direct") in p and p != render(rec, "direct") and p.rstrip().endswith("assistant")


# --------------------------------------------------------------------------- browser
@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="Debian chromium not installed at /usr/bin/chromium (run `make chromium`)")
def test_study_html_in_headless_chromium(study):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs the 'playwright' Python package (pip install playwright)")
    _d, out, data = study
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu",
                                          "--disable-background-networking", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((out / "study.html").as_uri(), wait_until="load")
            imgs = page.evaluate("""() => Array.from(document.images).map(img => {
                const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
                const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
                const d = ctx.getImageData(0, 0, c.width, c.height).data; const seen = new Set();
                for (let i = 0; i < d.length; i += 4 * 97) seen.add((d[i] << 16) | (d[i+1] << 8) | d[i+2]);
                return {id: img.id, w: img.naturalWidth, h: img.naturalHeight, colors: seen.size};})""")
            assert sorted(i["id"] for i in imgs) == ["fig-accuracy", "fig-dynamics"]
            for im in imgs:
                assert im["w"] > 300 and im["h"] > 150 and im["colors"] > 5, im
            rows = page.evaluate("() => document.querySelectorAll('#results tbody tr').length")
            assert rows == len({(c["arm"], c["mode"]) for c in data["cells"]}) + 1
            assert page.evaluate("() => document.querySelectorAll('#pairs tbody tr').length") == len(data["pairs"])
            from medrlvr.monitor import replay_run

            arm = page.locator('li[data-arm="rlvr-s0"]')
            alerts, _ = replay_run(out / "arms" / "rlvr-s0")     # the run's monitor verdict, replayed
            for word in [a.monitor for a in alerts] or ["no monitor alert"]:
                assert word in arm.inner_text()
            href = arm.locator("a").get_attribute("href")
            assert href == "arms/rlvr-s0/report/report.html" and (out / href).is_file()
            assert errors == []
        finally:
            browser.close()
