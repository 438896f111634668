"""Tests of medrlvr.analysis.report: build a report for a synthetic run and open it in Chromium.

The browser test needs Debian's ``chromium`` (``/usr/bin/chromium``; ``make chromium``) and the
``playwright`` Python package (which drives that binary; no browser download).  It is skipped,
with the reason, only when ``/usr/bin/chromium`` is absent.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from medrlvr.analysis.report import build_report
from medrlvr.rundir import read_jsonl
from medrlvr.analysis.stages import STAGES, classify_sample
from medrlvr.reward import score

FIXTURE = Path(__file__).parent / "fixtures" / "stage_labels.jsonl"
CHROMIUM = Path("/usr/bin/chromium")
CHART_NAMES = ("accuracy_length.png", "training_metrics.png", "stages.png", "hacking.png", "letters.png")
# stage the synthetic run is in at each step (the paper's order)
SCHEDULE = {
    1: "format_failure",
    2: "format_failure",
    3: "verbose_formatter",
    4: "verbose_formatter",
    5: "concise_structurer",
    6: "direct_answer_hacker",
    7: "direct_answer_hacker",
    8: "step_by_step_exploit",
    9: "reintegrated_reasoning",
    10: "reintegrated_reasoning",
}
XSS = '<think>Ferritin is low. <script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"></think><answer>A</answer>'


def make_run(run: Path, n_per_step: int = 4) -> list[dict]:
    """Write a synthetic run directory (10 steps, 40 samples + 1, two results.json); return the samples."""
    run.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(x) for x in FIXTURE.read_text(encoding="utf-8").splitlines() if x.strip()]
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    samples = []
    for step, label in SCHEDULE.items():
        for i in range(n_per_step):
            r = by_label[label][(step * n_per_step + i) % len(by_label[label])]
            samples.append((step, r["response"], r["gold"], r["n_options"], r["options"]))
    samples.append((9, XSS, "A", 4, {"A": "Low ferritin", "B": "High ferritin", "C": "Low TIBC", "D": "High MCV"}))
    recs = []
    for k, (step, resp, gold, n, opts) in enumerate(samples):
        res = score(resp, gold, n, options=opts)
        recs.append(
            {
                "step": step,
                "id": f"q{k}",
                "group": k // 4,
                "prompt": "Question: ... Assistant: <think>",
                "completion": resp.removeprefix("<think>"),
                "response": resp,
                "reward": res.reward,
                "format_ok": res.format_ok,
                "pred": res.pred,
                "gold": gold,
                "correct": res.correct,
                "flags": res.flags,
                "n_options": n,
                "options": opts,
            }
        )
    with open(run / "samples.jsonl", "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.write('{"step": 11, "id": "q99", "respo')  # truncated while training writes it
    with open(run / "metrics.jsonl", "w", encoding="utf-8") as f:
        for s in range(1, 11):
            m = {
                "step": s,
                "reward_mean": -1 + 0.15 * s,
                "accuracy": 0.2 + 0.04 * s,
                "format_valid": min(1.0, 0.15 * s),
                "response_tokens": 300 - 15 * s if s < 7 else 150 + 10 * s,
                "response_chars": 1200 - 40 * s,
                "kl": 0.01 * s,
                "entropy": 1.5 - 0.05 * s,
                "clip_frac": 0.05 + 0.002 * s,
                "zero_var_frac": 0.5 - 0.03 * s,
                "value_loss": 0.3,
                "lr": 1e-6,
            }
            if s % 2 == 0:
                m.update(eval_accuracy=0.3 + 0.03 * s, eval_format_valid=0.9, eval_n=200)
            f.write(json.dumps(m) + "\n")
        f.write('{"step": 11, "reward_mean": 0.')
    for name, acc in (("eval_before", 0.41), ("eval_after", 0.55)):
        (run / name).mkdir(exist_ok=True)
        (run / name / "results.json").write_text(
            json.dumps(
                {
                    "model": "tiny <b>model</b>",
                    "medqa": {"accuracy": acc, "ci95": [acc - 0.03, acc + 0.03], "n": 1273, "format_valid": 0.97},
                    "mmlu-pro-health": {
                        "accuracy": acc - 0.1,
                        "ci95": [acc - 0.14, acc - 0.06],
                        "n": 818,
                        "format_valid": 0.95,
                    },
                }
            )
        )
    (run / "config.yaml").write_text("model: tiny\nalgo: ppo\nprompt_suffix: '<script>x</script>'\n")
    return recs


def _png_is_drawn(data: bytes) -> bool:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    colors = img.getcolors(maxcolors=1 << 20)
    return img.width > 100 and img.height > 100 and (colors is None or len(colors) > 20)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    samples = make_run(run)
    html_path = build_report(run)
    return run, samples, html_path


# --------------------------------------------------------------------------- files


def test_read_jsonl_skips_truncated_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1}\n\n[1, 2]\n{"step": 2}\n{"step": 3, "x"', encoding="utf-8")
    recs, bad = read_jsonl(p)
    assert [r["step"] for r in recs] == [1, 2] and bad == 2
    assert read_jsonl(tmp_path / "missing.jsonl") == ([], 0)


def test_report_files_and_self_contained(built):
    run, _, html_path = built
    assert html_path == run / "report" / "report.html" and html_path.is_file()
    for name in CHART_NAMES:
        p = run / "report" / name
        assert p.is_file(), name
        assert _png_is_drawn(p.read_bytes()), f"{name} looks blank"
    text = html_path.read_text(encoding="utf-8")
    assert text.count('src="data:image/png;base64,') == len(CHART_NAMES)
    # self-contained: no external resources at all
    assert not re.search(r'(?:src|href)\s*=\s*["\']?(?:https?:)?//', text, re.IGNORECASE)
    assert "<link" not in text.lower() and "@import" not in text
    assert not re.search(r"<script[^>]*\ssrc=", text, re.IGNORECASE)
    # everything from the run is escaped: only our own <script> block exists
    assert text.count("<script>") == 1
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in text
    assert "tiny &lt;b&gt;model&lt;/b&gt;" in text
    # evaluation table with CIs
    assert "eval_after" in text and "eval_before" in text and "[52.0, 58.0]" in text
    # the truncated lines are reported as skipped
    assert "skipped 1 unreadable line" in text


def test_report_prints_what_it_skipped(tmp_path, capsys):
    run = tmp_path / "partial"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "reward_mean": -1.0, "format_valid": 0.0}\n{"step": 2, "rew')
    out = build_report(run)
    printed = capsys.readouterr().out
    assert out.is_file()
    assert "samples.jsonl not found" in printed
    assert "no results.json" in printed
    assert "config.yaml not found" in printed
    assert "skipped 1 unreadable line" in printed
    assert "kl" in printed  # absent training metrics are listed
    assert (run / "report" / "training_metrics.png").is_file()
    assert not (run / "report" / "stages.png").exists()
    assert "(no samples.jsonl)" in out.read_text(encoding="utf-8")


def test_report_on_empty_run_and_single_step(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = build_report(empty, quiet=True)
    assert out.is_file() and capsys.readouterr().out == ""
    assert "<img" not in out.read_text(encoding="utf-8")
    one = tmp_path / "one"
    one.mkdir()
    (one / "samples.jsonl").write_text(
        json.dumps(
            {
                "step": 0,
                "response": "<think>The answer is C.</think><answer>C</answer>",
                "gold": "C",
                "n_options": 4,
                "reward": 1.0,
            }
        )
        + "\n"
    )
    (one / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval_accuracy": 0.3, "response_chars": 50.0}) + "\n")
    out = build_report(one, out=tmp_path / "elsewhere" / "r.html", quiet=True)
    assert out == tmp_path / "elsewhere" / "r.html" and out.is_file()
    for name in ("accuracy_length.png", "stages.png", "hacking.png", "letters.png"):
        assert (tmp_path / "elsewhere" / name).is_file(), name
    assert "Step 0: 1 of 1 samples give a letter; C is 100% of them, while 100% of their gold answers are C." in (
        out.read_text(encoding="utf-8"))
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path / "nope")


def test_report_caps_samples_evenly_across_steps(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    out = build_report(run, out=tmp_path / "capped", max_samples=10, quiet=True)
    text = out.read_text(encoding="utf-8")
    steps = re.findall(r'<tr class="sample" data-step="(\d+)"', text)
    assert sorted(map(int, steps)) == list(range(1, 11))
    assert "10 of 41 samples (evenly across steps)" in text


# --------------------------------------------------------------------------- browser


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian chromium not installed at /usr/bin/chromium (run `make chromium`)"
)
def test_report_in_headless_chromium(built, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the browser test needs the 'playwright' Python package (pip install playwright; no browser download)"
        )
    _run, samples, html_path = built
    stages = [classify_sample(s) for s in samples]
    expected = Counter(stages)
    assert expected["step_by_step_exploit"] >= 4  # the synthetic run has an exploit step

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(html_path.as_uri(), wait_until="load")

            # (a) every chart image decoded and is not blank
            imgs = page.evaluate(
                """() => Array.from(document.images).map(img => {
                    const c = document.createElement('canvas');
                    c.width = img.naturalWidth; c.height = img.naturalHeight;
                    const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
                    const d = ctx.getImageData(0, 0, c.width, c.height).data;
                    const seen = new Set();
                    for (let i = 0; i < d.length; i += 4 * 97) seen.add((d[i] << 16) | (d[i+1] << 8) | d[i+2]);
                    return {w: img.naturalWidth, h: img.naturalHeight, complete: img.complete, colors: seen.size};
                })"""
            )
            assert len(imgs) == len(CHART_NAMES)
            for im in imgs:
                assert im["complete"] and im["w"] > 100 and im["h"] > 100, im
                assert im["colors"] > 10, f"chart looks blank: {im}"
            page.screenshot(path=str(tmp_path / "report_top.png"))
            full = tmp_path / "report_full.png"
            page.screenshot(path=str(full), full_page=True)
            assert _png_is_drawn(full.read_bytes())

            # (b) the sample filter
            def visible() -> int:
                return page.evaluate(
                    "() => Array.from(document.querySelectorAll('#samples tbody tr.sample'))"
                    ".filter(r => r.offsetParent !== null).length"
                )

            assert visible() == len(samples)
            assert page.text_content("#f-count") == f"{len(samples)} of {len(samples)} shown"
            page.select_option("#f-stage", "step_by_step_exploit")
            assert visible() == expected["step_by_step_exploit"]
            assert page.text_content("#f-count") == f"{expected['step_by_step_exploit']} of {len(samples)} shown"
            page.locator("#samples").scroll_into_view_if_needed()
            page.screenshot(path=str(tmp_path / "report_filtered.png"))
            page.select_option("#f-stage", "")
            page.select_option("#f-step", "8")
            assert visible() == sum(s["step"] == 8 for s in samples)
            page.select_option("#f-reward", "-1")
            assert visible() == sum(s["step"] == 8 and s["reward"] == -1 for s in samples)
            page.select_option("#f-step", "")
            assert visible() == sum(s["reward"] == -1 for s in samples)
            page.select_option("#f-reward", "")
            page.fill("#f-text", "tumbling motility")
            assert 0 < visible() < len(samples)
            page.fill("#f-text", "")
            for stage in STAGES:
                if expected[stage]:
                    page.select_option("#f-stage", stage)
                    assert visible() == expected[stage], stage

            # the parse is highlighted and the run's text stayed text
            assert page.locator(".seg-think").count() > 0 and page.locator(".seg-answer").count() > 0
            assert page.locator(".seg-before").count() >= expected["step_by_step_exploit"]
            assert page.evaluate("() => window.__pwned") is None
            assert page.locator("text=<script>window.__pwned=1</script>").count() == 1
            assert errors == []
            assert all(u.startswith(("file:", "data:")) for u in requests), requests
        finally:
            browser.close()


def test_report_includes_the_evaluations_the_trainer_logged(tmp_path, capsys):
    from medrlvr.cli import main

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 1, "reward_mean": -1.0},
            {"step": 2, "reward_mean": 0.0, "eval_accuracy": 0.375, "eval_n": 8, "eval_samples": 1,
             "eval_format_valid": 0.5, "eval_answered": 0.5},
            {"step": 4, "reward_mean": 0.5, "eval_accuracy": 0.625, "eval_n": 8, "eval_samples": 1,
             "eval_format_valid": 1.0, "eval_answered": 0.875}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    html = (run / "report" / "report.html").read_text(encoding="utf-8")
    table = html[html.index('<table id="trainer-eval">'):]
    table = table[:table.index("</table>")]
    assert table.count("<tr>") == 3 and "37.5%" in table and "62.5%" in table and "87.5%" in table
    assert out.count(str(run / "report" / "report.html")) == 1          # the path once
    assert "no results.json found" not in out
