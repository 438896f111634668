"""Self-contained HTML report of a training run (``medrlvr report RUN_DIR``).

:func:`build_report` reads a run directory written by the trainer::

    RUN_DIR/config.yaml       resolved configuration (shown verbatim)
    RUN_DIR/metrics.jsonl     one JSON object per training step
    RUN_DIR/samples.jsonl     one JSON object per sampled completion
    RUN_DIR/**/results.json   evaluation results {benchmark: {accuracy, ci95, n, format_valid}}

and writes ``RUN_DIR/report/report.html`` together with the PNG charts it shows. A verl run directory
(``medrlvr verl prepare``) is first converted to these files by :func:`medrlvr.integrations.verl.convert_run`.  The HTML
needs no network: every chart is inlined as a base64 PNG and all CSS/JS is inline.  It holds

- test accuracy and mean response length vs step (twin axes) over shaded bands of the
  dominant training stage (as Figure 2 of Med-RLVR);
- small multiples of reward, format-valid rate, KL, entropy, clip fraction and
  zero-variance-group fraction vs step (absent metrics are skipped);
- the stacked stage distribution vs step and the reward-hacking flag rates vs step
  (stages from :mod:`medrlvr.analysis.stages`);
- the evaluation table with 95% confidence intervals;
- a sample browser filterable by step, stage, reward and text, with each completion's parse
  coloured (text before the think block, think, answer, trailing text).

A partial run (training still going, a truncated last JSONL line, no samples, no evaluation)
gives a partial report: what is skipped is printed and listed in the report.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import itertools
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medrlvr.analysis.stages import (
    STAGE_DESCRIPTIONS,
    STAGES,
    StageConfig,
    classify_samples,
    hacking_rates,
    letter_distribution,
    sample_features,
    sample_response,
    segments,
    stage_distribution,
)
from medrlvr.eval.compare import curves_plot
from medrlvr.monitor import MONITORS, Alert, monitor_config_of, replay
from medrlvr import rundir
from medrlvr.rundir import read_jsonl
from medrlvr.reward import FLAGS

__all__ = ["STAGE_COLORS", "TRAINING_METRICS", "alert_panel_html", "build_report", "stage_bands"]

STAGE_COLORS: dict[str, str] = {
    "format_failure": "#9e9e9e",
    "verbose_formatter": "#f4a261",
    "concise_structurer": "#2a9d8f",
    "direct_answer_hacker": "#e63946",
    "step_by_step_exploit": "#8e44ad",
    "reintegrated_reasoning": "#3a86ff",
    "template_echo": "#ffb703",
    "other": "#6d4c41",
}
"""Colour of each stage in every chart."""

TRAINING_METRICS: tuple[tuple[str, str], ...] = (
    ("reward_mean", "mean reward"),
    ("format_valid", "format-valid rate"),
    ("kl", "KL to reference"),
    ("entropy", "entropy"),
    ("clip_frac", "clip fraction"),
    ("zero_var_frac", "zero-variance group fraction"),
)
"""``metrics.jsonl`` keys drawn as small multiples, with their titles."""

_MAX_RESPONSE_CHARS = 8000  # per sample in the browser; the rest is cut with a note


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _step(rec: Mapping[str, Any]) -> int | None:
    s = rec.get("step")
    if isinstance(s, bool):
        return None
    try:
        return int(s)
    except (TypeError, ValueError):
        return None


def _series(metrics: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Steps and finite values of ``key`` (the last record wins for a repeated step)."""
    by_step: dict[int, float] = {}
    for r in metrics:
        st, v = _step(r), _num(r.get(key))
        if st is not None and v is not None:
            by_step[st] = v
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _find_results(run_dir: Path, skip: Path) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for p in sorted(run_dir.rglob("results.json")):
        try:
            p.relative_to(skip)
            continue
        except ValueError:
            pass
        found.append(p)
    out = []
    for p in found:
        rel = p.parent.relative_to(run_dir).as_posix()
        try:
            data = json.loads(p.read_text(encoding="utf-8", errors="replace"))
        except (OSError, ValueError) as e:
            out.append((rel or ".", {"__error__": f"unreadable ({type(e).__name__})"}))
            continue
        out.append((rel or ".", data if isinstance(data, dict) else {"__error__": "not a JSON object"}))
    return out


# --------------------------------------------------------------------------- #
# Charts
# --------------------------------------------------------------------------- #


def _new_figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight", facecolor="white")
    return path


def _stage_bands(dist: Mapping[int, Mapping[str, float]]) -> list[tuple[float, float, str]]:
    """Dominant stage over windows of logged sample steps, merged into ``(x0, x1, stage)`` bands.

    The logged steps are cut into at most 20 windows of consecutive steps; a window's dominant
    stage is the one with the largest summed fraction.  Band edges lie half-way between windows
    (half the median step gap beyond the first and last step).
    """
    steps = sorted(dist)
    if not steps:
        return []
    gaps = sorted(b - a for a, b in itertools.pairwise(steps))
    half = (gaps[len(gaps) // 2] if gaps else 1) / 2
    w = max(1, math.ceil(len(steps) / 20))
    windows = [steps[i : i + w] for i in range(0, len(steps), w)]
    merged: list[tuple[float, float, str]] = []
    for k, win in enumerate(windows):
        tot = {st: sum(dist[s][st] for s in win) for st in STAGES}
        dom = max(STAGES, key=lambda st: (tot[st], -STAGES.index(st)))
        x0 = win[0] - half if k == 0 else (windows[k - 1][-1] + win[0]) / 2
        x1 = win[-1] + half if k + 1 == len(windows) else (win[-1] + windows[k + 1][0]) / 2
        if merged and merged[-1][2] == dom:
            merged[-1] = (merged[-1][0], float(x1), dom)
        else:
            merged.append((float(x0), float(x1), dom))
    return merged


def stage_bands(dist: Mapping[int, Mapping[str, float]]) -> list[tuple[float, float, str]]:
    """The shaded ``(x0, x1, stage)`` bands of the report's step charts (the study's dynamics figure draws the same)."""
    return _stage_bands(dist)


def _plot_accuracy_length(metrics, dist, out: Path, notes: list[str]) -> Path | None:
    acc_s, acc_v = _series(metrics, "eval_accuracy")
    acc_label = "test accuracy"
    if not acc_s:
        acc_s, acc_v = _series(metrics, "accuracy")
        acc_label = "train accuracy"
        if acc_s:
            notes.append("accuracy/length chart: no eval_accuracy in metrics.jsonl, drew training accuracy instead")
    len_s, len_v = _series(metrics, "response_tokens")
    len_label = "mean response length (tokens)"
    if not len_s:
        len_s, len_v = _series(metrics, "response_chars")
        len_label = "mean response length (characters)"
    if not acc_s and not len_s and not dist:
        notes.append("accuracy/length chart: no accuracy, response length or samples")
        return None
    if not len_s:
        notes.append("accuracy/length chart: no response_tokens/response_chars in metrics.jsonl")
    if not dist:
        notes.append("accuracy/length chart: no samples, so no stage bands")
    fig = _new_figure(9.5, 4.2)
    ax = fig.add_subplot(111)
    bands = _stage_bands(dist)
    for x0, x1, st in bands:
        ax.axvspan(x0, x1, color=STAGE_COLORS[st], alpha=0.18, lw=0)
    handles = []
    if acc_s:
        (h,) = ax.plot(acc_s, acc_v, "-o", color="#1d3557", ms=3.5, lw=1.8, label=acc_label)
        handles.append(h)
        ax.set_ylabel(acc_label)
        ax.set_ylim(0, max(1.0, max(acc_v) * 1.05))
    else:
        ax.set_yticks([])
    ax.set_xlabel("training step")
    if len_s:
        ax2 = ax.twinx()
        (h,) = ax2.plot(len_s, len_v, "-s", color="#e76f51", ms=3, lw=1.4, label=len_label)
        handles.append(h)
        ax2.set_ylabel(len_label)
        ax2.set_ylim(0, max(len_v) * 1.15 if max(len_v) > 0 else 1)
    from matplotlib.patches import Patch

    seen = []
    for _, _, st in bands:
        if st not in seen:
            seen.append(st)
    handles += [Patch(color=STAGE_COLORS[st], alpha=0.35, label=st.replace("_", " ")) for st in seen]
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4, fontsize=8, frameon=False)
    ax.set_title("Accuracy and response length over training, shaded by dominant stage")
    ax.grid(alpha=0.25)
    return _save(fig, out)


def _plot_training(metrics, out: Path, notes: list[str]) -> Path | None:
    present = [(k, t, *_series(metrics, k)) for k, t in TRAINING_METRICS]
    absent = [k for k, _, s, _ in present if not s]
    present = [p for p in present if p[2]]
    if absent:
        notes.append(f"training metrics: absent from metrics.jsonl, not drawn: {', '.join(absent)}")
    if not present:
        notes.append("training metrics chart: no training metric found")
        return None
    ncols = min(3, len(present))
    nrows = math.ceil(len(present) / ncols)
    fig = _new_figure(3.4 * ncols, 2.5 * nrows)
    for i, (key, title, s, v) in enumerate(present):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.plot(s, v, "-o", ms=2.5, lw=1.4, color="#264653")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.25)
    fig.tight_layout()
    return _save(fig, out)


def _finish_step_chart(fig, ax, out: Path, title: str, ylim: tuple[float, float], xlabel: str = "training step",
                       ylabel: str = "fraction of samples") -> Path:
    """Limits, labels, title and the legend right of the axes for a per-step share chart; saves it."""
    ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return _save(fig, out)


def _plot_stages(dist, out: Path) -> Path:
    steps = sorted(dist)
    fig = _new_figure(9.5, 3.8)
    ax = fig.add_subplot(111)
    ys = [[dist[s][st] for s in steps] for st in STAGES]
    labels = [st.replace("_", " ") for st in STAGES]
    colors = [STAGE_COLORS[st] for st in STAGES]
    if len(steps) >= 3:
        ax.stackplot(steps, ys, labels=labels, colors=colors, alpha=0.9, step="mid")
        ax.set_xlim(steps[0], steps[-1])
    else:
        x = list(range(len(steps)))
        bottom = [0.0] * len(steps)
        for y, lab, c in zip(ys, labels, colors):
            ax.bar(x, y, bottom=bottom, color=c, label=lab, width=0.6)
            bottom = [b + yy for b, yy in zip(bottom, y)]
        ax.set_xticks(x, [str(s) for s in steps])
    return _finish_step_chart(fig, ax, out, "Stage distribution of sampled completions", (0, 1))


def _plot_hacking(rates, out: Path) -> Path:
    steps = sorted(rates)
    fig = _new_figure(9.5, 3.6)
    ax = fig.add_subplot(111)
    for f in FLAGS:
        ax.plot(steps, [rates[s][f] for s in steps], "-o", ms=3, lw=1.5, label=f.replace("_", " "))
    ax.grid(alpha=0.25)
    return _finish_step_chart(fig, ax, out, "Reward-hacking flags", (-0.02, 1.02))


def _answered_steps(letters) -> list[int]:
    """Steps of :func:`letter_distribution` output with at least one predicted letter, in order."""
    return [s for s in sorted(letters) if letters[s]["answered"]]


def _plot_letters(letters, out: Path) -> Path | None:
    """Stacked share of each predicted option letter per step (answered samples only), with the gold
    share of the most predicted letter as a dashed line: a band that grows while its gold share stays
    flat is a position hack."""
    steps = _answered_steps(letters)
    if not steps:
        return None
    used = sorted({L for s in steps for L in letters[s]["pred"]})
    fig = _new_figure(9.5, 3.6)
    ax = fig.add_subplot(111)
    x = list(range(len(steps)))
    bottom = [0.0] * len(steps)
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    for j, L in enumerate(used):
        y = [letters[s]["pred"].get(L, 0.0) for s in steps]
        ax.bar(x, y, bottom=bottom, width=0.7, color=cmap(j % 10), label=f"answers {L}")
        bottom = [b + v for b, v in zip(bottom, y)]
    ax.plot(x, [letters[s]["gold_top_share"] for s in steps], "k--o", ms=3, lw=1.2,
            label="gold share of the most\nanswered letter")
    for xi, s in zip(x, steps):
        ax.text(xi, 1.01, str(letters[s]["answered"]), ha="center", va="bottom", fontsize=7, color="#555")
    ax.set_xticks(x, [str(s) for s in steps], fontsize=8 if len(steps) <= 30 else 6)
    return _finish_step_chart(fig, ax, out, "Predicted option letters (position bias)", (0, 1.08),
                              xlabel="training step (number above a bar: samples with a letter)",
                              ylabel="share of answered samples")


def _letters_summary(letters) -> str:
    """One sentence on the last step with answers: its most predicted letter and that letter's gold share."""
    steps = _answered_steps(letters)
    if not steps:
        return "No sample has a predicted letter (no well-formed answer)."
    d = letters[steps[-1]]
    return (f"Step {steps[-1]}: {d['answered']} of {d['n']} samples give a letter; "
            f"{d['top']} is {d['top_share']:.0%} of them, while {d['gold_top_share']:.0%} of their gold answers "
            f"are {d['top']}.")


# --------------------------------------------------------------------------- #
# HTML
# --------------------------------------------------------------------------- #

_E = html.escape

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
main{max-width:1200px;margin:auto;padding:16px 24px 64px}
h1{font-size:1.5em;margin:.4em 0}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;font-size:.9em}.chart{max-width:100%;height:auto;background:#fff;border:1px solid #e3e3e3;margin:6px 0}
table{border-collapse:collapse;font-size:.88em;background:#fff}th,td{border:1px solid #ddd;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
.notes li{color:#8a5300}.controls{display:flex;gap:14px;flex-wrap:wrap;align-items:center;margin:8px 0;font-size:.9em}
.resp{white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.82em;max-height:22em;overflow:auto;min-width:420px}
.seg-before{background:#f1e4f7}.seg-think{background:#e3efff}.seg-answer{background:#d9f5df;font-weight:600}
.seg-after{background:#ffe8cc}.seg-between{background:#eee}.seg-unparsed{background:#fde2e2}
.seg-tag{color:#666;background:#f4f4f4;font-weight:700}.seg-cut{color:#999;font-style:italic}
.stage{display:inline-block;padding:1px 6px;border-radius:8px;color:#fff;font-size:.85em;white-space:nowrap}
.legend span{margin-right:10px;padding:1px 5px;font-size:.85em}
details pre{background:#fff;border:1px solid #ddd;padding:8px;overflow:auto;max-height:30em}
"""

_JS = """
(function(){
  var rows = Array.prototype.slice.call(document.querySelectorAll('#samples tbody tr.sample'));
  var fStep = document.getElementById('f-step'), fStage = document.getElementById('f-stage'),
      fReward = document.getElementById('f-reward'), fText = document.getElementById('f-text'),
      count = document.getElementById('f-count');
  function apply(){
    var st = fStep.value, sg = fStage.value, rw = fReward.value, tx = fText.value.toLowerCase(), n = 0;
    rows.forEach(function(r){
      var ok = (st === '' || r.dataset.step === st) && (sg === '' || r.dataset.stage === sg) &&
               (rw === '' || r.dataset.reward === rw) &&
               (tx === '' || r.textContent.toLowerCase().indexOf(tx) >= 0);
      r.style.display = ok ? '' : 'none';
      if (ok) n++;
    });
    count.textContent = n + ' of ' + rows.length + ' shown';
  }
  [fStep, fStage, fReward].forEach(function(e){ e.addEventListener('change', apply); });
  fText.addEventListener('input', apply);
  apply();
})();
"""


def _img(path: Path, alt: str) -> str:
    b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="chart" alt="{_E(alt)}" src="data:image/png;base64,{b64}">'


def _fmt_reward(v: Any) -> str:
    n = _num(v)
    if n is None:
        return "none"
    return f"{n:+g}" if n != 0 else "0"


def _fmt_pct(v: Any) -> str:
    n = _num(v)
    return "–" if n is None else f"{100 * n:.1f}%"


def _eval_table(results: list[tuple[str, dict[str, Any]]], notes: list[str]) -> str:
    rows = []
    for src, data in results:
        if "__error__" in data:
            notes.append(f"evaluation: {src}/results.json {data['__error__']}")
            continue
        model = data.get("model") if isinstance(data.get("model"), str) else ""
        for bench, r in data.items():
            if not isinstance(r, dict):
                continue
            ci = r.get("ci95")
            ci_s = "–"
            if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_num(c) is not None for c in ci):
                ci_s = f"[{100 * _num(ci[0]):.1f}, {100 * _num(ci[1]):.1f}]"
            n = r.get("n")
            rows.append(
                "<tr>"
                f"<td>{_E(src)}</td><td>{_E(model)}</td><td>{_E(str(bench))}</td>"
                f'<td class="num">{_fmt_pct(r.get("accuracy"))}</td><td class="num">{ci_s}</td>'
                f'<td class="num">{_E(str(n)) if n is not None else "–"}</td>'
                f'<td class="num">{_fmt_pct(r.get("format_valid"))}</td>'
                "</tr>"
            )
    if not rows:
        return ""
    return (
        '<table id="eval"><thead><tr><th>results</th><th>model</th><th>benchmark</th><th>accuracy</th>'
        "<th>95% CI</th><th>n</th><th>format valid</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _trainer_eval_table(metrics: list[dict[str, Any]]) -> str:
    """The held-out evaluations the trainer logged (``eval_*`` keys of ``metrics.jsonl``), one row per step;
    empty when there are none."""
    rows = []
    for r in metrics:
        if _num(r.get("eval_accuracy")) is None:
            continue
        n, k = r.get("eval_n"), r.get("eval_samples")
        rows.append(
            "<tr>"
            f'<td class="num">{_E(str(r.get("step", "?")))}</td>'
            f'<td class="num">{_E(str(n)) if n is not None else "–"}</td>'
            f'<td class="num">{_E(str(k)) if k is not None else "–"}</td>'
            f'<td class="num">{_fmt_pct(r.get("eval_accuracy"))}</td>'
            f'<td class="num">{_fmt_pct(r.get("eval_format_valid"))}</td>'
            f'<td class="num">{_fmt_pct(r.get("eval_answered"))}</td>'
            "</tr>"
        )
    if not rows:
        return ""
    return ('<table id="trainer-eval"><thead><tr><th>step</th><th>questions</th><th>answers per question</th>'
            "<th>accuracy</th><th>format valid</th><th>answered with a letter</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _render_response(text: str, prefill: str) -> str:
    parts = []
    budget = _MAX_RESPONSE_CHARS
    for kind, seg in segments(text, prefill):
        if budget <= 0:
            break
        piece = seg[:budget]
        budget -= len(piece)
        parts.append(f'<span class="seg-{kind}">{_E(piece)}</span>')
    if len(text) > _MAX_RESPONSE_CHARS:
        parts.append(f'<span class="seg-cut"> … [{len(text) - _MAX_RESPONSE_CHARS} more characters]</span>')
    if not text:
        parts.append('<span class="seg-cut">(empty response)</span>')
    return "".join(parts)


def _pick_samples(samples: list[dict], stages: list[str], flags: list[list[str]], max_samples: int) -> list[tuple]:
    pairs = list(zip(samples, stages, flags))
    if len(pairs) <= max_samples:
        return pairs
    by_step: dict[Any, list] = defaultdict(list)
    for p in pairs:
        by_step[_step(p[0])].append(p)
    k = max(1, max_samples // max(1, len(by_step)))
    out = []
    for st in sorted(by_step, key=lambda x: (x is None, x if x is not None else 0)):
        out.extend(by_step[st][:k])
    return out[:max_samples]


def _sample_browser(picked: list[tuple[dict, str, list[str]]], total: int, prefill: str) -> str:
    steps = sorted({_step(s) for s, _, _ in picked if _step(s) is not None})
    stages_present = [st for st in STAGES if any(x == st for _, x, _ in picked)]
    rewards = sorted(
        {_fmt_reward(s.get("reward")) for s, _, _ in picked},
        key=lambda r: (r == "none", -float(r) if r != "none" else 0),
    )
    opt = lambda v, lab: f'<option value="{_E(v)}">{_E(lab)}</option>'
    controls = (
        '<div class="controls">'
        '<label>step <select id="f-step">'
        + opt("", "all")
        + "".join(opt(str(s), str(s)) for s in steps)
        + "</select></label>"
        '<label>stage <select id="f-stage">'
        + opt("", "all")
        + "".join(opt(st, st.replace("_", " ")) for st in stages_present)
        + "</select></label>"
        '<label>reward <select id="f-reward">'
        + opt("", "all")
        + "".join(opt(r, r) for r in rewards)
        + "</select></label>"
        '<label>text <input id="f-text" type="search" placeholder="contains…"></label>'
        '<span id="f-count"></span></div>'
    )
    legend = (
        '<div class="legend">parse: <span class="seg-before">before think</span><span class="seg-tag">tag</span>'
        '<span class="seg-think">think</span><span class="seg-between">between</span><span class="seg-answer">answer</span>'
        '<span class="seg-after">after answer</span><span class="seg-unparsed">unparsed (missing tag)</span></div>'
    )
    body = []
    for s, st, computed_flags in picked:
        step = _step(s)
        flags = s.get("flags") if isinstance(s.get("flags"), list) else computed_flags
        pred, gold = s.get("pred"), s.get("gold")
        body.append(
            f'<tr class="sample" data-step="{_E(str(step) if step is not None else "")}" data-stage="{_E(st)}" '
            f'data-reward="{_E(_fmt_reward(s.get("reward")))}">'
            f'<td class="num">{_E(str(step) if step is not None else "?")}</td>'
            f"<td>{_E(str(s.get('id', '')))}</td>"
            f'<td><span class="stage" style="background:{STAGE_COLORS[st]}">{_E(st.replace("_", " "))}</span></td>'
            f'<td class="num">{_E(_fmt_reward(s.get("reward")))}</td>'
            f"<td>{_E(str(pred) if pred is not None else '–')} / {_E(str(gold) if gold is not None else '–')}</td>"
            f"<td>{_E(', '.join(str(f) for f in flags))}</td>"
            f'<td><div class="resp">{_render_response(sample_response(s, prefill), prefill)}</div></td>'
            "</tr>"
        )
    shown = f"{len(picked)} of {total} samples" + (" (evenly across steps)" if len(picked) < total else "")
    return (
        f'<p class="meta">{_E(shown)}</p>'
        + controls
        + legend
        + '<table id="samples"><thead><tr><th>step</th><th>id</th><th>stage</th><th>reward</th><th>pred / gold</th>'
        "<th>flags (as recorded)</th><th>response (pre-fill included)</th></tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
    )


def _stage_legend_table() -> str:
    rows = "".join(
        f'<tr><td><span class="stage" style="background:{STAGE_COLORS[st]}">{_E(st.replace("_", " "))}</span></td>'
        f"<td>{_E(STAGE_DESCRIPTIONS[st])}</td></tr>"
        for st in STAGES
    )
    return f"<details><summary>stage definitions</summary><table>{rows}</table></details>"


# --------------------------------------------------------------------------- #
# Monitor alerts
# --------------------------------------------------------------------------- #


def alert_panel_html(alerts: Sequence[Alert]) -> str:
    """The report's top panel: what, since when, two example samples and what to try, per alert; a
    short all-clear line when there is none."""
    E = html.escape
    if not alerts:
        return ('<section id="alerts" class="alerts ok"><h2>Monitors</h2><p>No alert: none of the '
                f'{len(MONITORS)} monitors ({E(", ".join(MONITORS))}) passed its threshold.</p></section>')
    items = []
    for a in alerts:
        ex = "".join(
            f'<li class="alert-example"><span class="meta">step {E(str(x.get("step")))} · {E(str(x.get("id")))} · '
            f'reward {E(str(x.get("reward")))} · pred {E(str(x.get("pred")))} · gold {E(str(x.get("gold")))}</span>'
            f'<pre>{E(str(x.get("response") or ""))}</pre></li>' for x in a.examples[:2])
        state = "still active at the last step" if a.active else f"recovered by step {a.last_step}"
        items.append(
            f'<div class="alert" data-monitor="{E(a.monitor)}"><h3>{E(a.monitor.replace("_", " "))}: '
            f'since step {a.onset_step}</h3><p>{E(a.what)}. {E(a.evidence)} (raised at step {a.raised_step}, '
            f'{E(state)}).</p>' + (f"<ul>{ex}</ul>" if ex else "<p>(no example samples at these steps)</p>")
            + f'<p class="advice"><b>What to try:</b> {E(a.advice)}</p></div>')
    return (f'<section id="alerts" class="alerts"><h2>Monitor alerts ({len(alerts)})</h2>' + "".join(items)
            + "</section>")


ALERT_CSS = (".alerts{border:2px solid #e63946;border-radius:6px;padding:.5em 1em;margin:1em 0;background:#fff5f5}"
             ".alerts.ok{border-color:#2a9d8f;background:#f3fbfa}.alert h3{color:#b00020;margin:.6em 0 .2em}"
             ".alert pre{white-space:pre-wrap;background:#fff;border:1px solid #ddd;padding:.3em;max-height:12em;"
             "overflow:auto}.alert .advice{margin-top:.3em}")
"""CSS of :func:`alert_panel_html`, appended to the report's style."""


def build_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    max_samples: int = 2000,
    stage_config: StageConfig | None = None,
    quiet: bool = False,
) -> Path:
    """Write a self-contained HTML report of a run directory and return the HTML path.

    Args:
        run_dir: the run directory (``config.yaml``, ``metrics.jsonl``, ``samples.jsonl``,
            ``**/results.json``; any may be missing).
        out: output folder (default ``run_dir/report``) receiving ``report.html`` and the PNGs;
            a path ending in ``.html`` names the HTML file itself (PNGs go beside it).
        max_samples: at most this many samples in the browser (taken evenly across steps).
        stage_config: thresholds for the stage classifier.
        quiet: do not print the list of skipped parts.

    Returns:
        The path of ``report.html``.

    Raises:
        FileNotFoundError: if ``run_dir`` is not a directory.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory not found: {run}")
    out_p = Path(out) if out is not None else run / "report"
    if out_p.suffix.lower() == ".html":
        html_path, out_dir = out_p, out_p.parent
    else:
        out_dir = out_p
        html_path = out_dir / rundir.REPORT
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = stage_config or StageConfig()
    notes: list[str] = []

    src = run  # a verl run directory is first converted to medrlvr's layout (medrlvr.integrations.verl)
    from medrlvr.integrations.verl import convert_run, is_verl_run

    if is_verl_run(run):
        src, verl_notes = convert_run(run)
        notes += verl_notes
    metrics, bad_m = read_jsonl(src / rundir.METRICS)
    if not (src / rundir.METRICS).is_file():
        notes.append("metrics.jsonl not found: no training curves")
    if bad_m:
        notes.append(f"metrics.jsonl: skipped {bad_m} unreadable line(s) (e.g. a truncated last line)")
    samples, bad_s = read_jsonl(src / rundir.SAMPLES)
    if not (src / rundir.SAMPLES).is_file():
        notes.append("samples.jsonl not found: no stage charts, hacking rates or sample browser")
    if bad_s:
        notes.append(f"samples.jsonl: skipped {bad_s} unreadable line(s) (e.g. a truncated last line)")
    results = _find_results(run, out_dir)
    config_text = None
    cpath = src / rundir.CONFIG
    if cpath.is_file():
        config_text = cpath.read_text(encoding="utf-8", errors="replace")
    else:
        notes.append("config.yaml not found")
    mon_cfg, mon_notes = monitor_config_of(src)  # the run's own thresholds (config.yaml's monitor section)
    notes += mon_notes

    feats = sample_features(samples, cfg)
    stages = classify_samples(samples, cfg, feats=feats)
    dist = stage_distribution(samples, cfg, stages) if samples else {}
    rates = hacking_rates(samples, cfg, feats=feats) if samples else {}
    letters = letter_distribution(samples, feats) if samples else {}

    # charts (stale PNGs from an earlier report are removed first)
    names = {
        "acc": "accuracy_length.png",
        "train": "training_metrics.png",
        "stages": "stages.png",
        "hack": "hacking.png",
        "letters": "letters.png",
        "curves": "passk_curves.png",
    }
    for n in names.values():
        (out_dir / n).unlink(missing_ok=True)
    charts: dict[str, Path | None] = {
        "acc": _plot_accuracy_length(metrics, dist, out_dir / names["acc"], notes),
        "train": _plot_training(metrics, out_dir / names["train"], notes),
        "stages": _plot_stages(dist, out_dir / names["stages"]) if dist else None,
        "hack": _plot_hacking(rates, out_dir / names["hack"]) if rates else None,
        "letters": _plot_letters(letters, out_dir / names["letters"]) if letters else None,
        "curves": curves_plot([(src_, d) for src_, d in results if "__error__" not in d],
                              out_dir / names["curves"]),
    }
    if not dist:
        notes.append("stage distribution and hacking-rate charts: no samples")

    eval_html = _eval_table(results, notes)
    if not eval_html and not any(_num(r.get("eval_accuracy")) is not None for r in metrics):
        notes.append("evaluation table: no results.json found under the run directory")

    # summary
    m_steps = sorted({s for s in (_step(r) for r in metrics) if s is not None})
    summary = [
        f"{len(metrics)} metric records" + (f", steps {m_steps[0]}–{m_steps[-1]}" if m_steps else ""),
        f"{len(samples)} samples over {len(dist)} step(s)",
        f"{len(results)} results.json file(s)",
    ]
    if stages:
        from collections import Counter

        c = Counter(stages)
        summary.append(
            "stages overall: "
            + ", ".join(f"{st.replace('_', ' ')} {c[st] / len(stages):.0%}" for st in STAGES if c[st])
        )

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>medrlvr report: {_E(run.resolve().name)}</title>",
        f"<style>{_CSS}{ALERT_CSS}</style></head><body><main>",
        f"<h1>medrlvr run report: {_E(run.resolve().name)}</h1>",
        f'<p class="meta">{_E(str(run.resolve()))} · generated {_E(_dt.datetime.now().isoformat(timespec="seconds"))}</p>',
        '<ul class="meta">' + "".join(f"<li>{_E(s)}</li>" for s in summary) + "</ul>",
        alert_panel_html(replay(metrics, samples, mon_cfg)),  # the monitors' verdicts (medrlvr.monitor), at the top
    ]
    if notes:
        parts.append('<h2>Skipped</h2><ul class="notes">' + "".join(f"<li>{_E(n)}</li>" for n in notes) + "</ul>")
    parts.append("<h2>Accuracy, response length and stages</h2>")
    parts.append(
        _img(charts["acc"], "accuracy and response length vs step") if charts["acc"] else "<p>(not available)</p>"
    )
    parts.append("<h2>Training metrics</h2>")
    parts.append(_img(charts["train"], "training metrics vs step") if charts["train"] else "<p>(not available)</p>")
    parts.append("<h2>Stages</h2>" + _stage_legend_table())
    parts.append(_img(charts["stages"], "stage distribution vs step") if charts["stages"] else "<p>(no samples)</p>")
    parts.append("<h2>Reward hacking</h2>")
    parts.append(_img(charts["hack"], "hacking rates vs step") if charts["hack"] else "<p>(no samples)</p>")
    parts.append("<h2>Position bias</h2>")
    if letters:
        parts.append(f'<p class="meta">{_E(_letters_summary(letters))}</p>')
    parts.append(_img(charts["letters"], "predicted option letters vs step") if charts["letters"]
                 else "<p>(no samples with a predicted letter)</p>")
    parts.append("<h2>Evaluation</h2>")
    trainer_eval = _trainer_eval_table(metrics)
    if trainer_eval:
        parts.append("<h3>Held-out evaluations during training (metrics.jsonl)</h3>" + trainer_eval)
        parts.append("<h3>Benchmark evaluations (results.json)</h3>")
    parts.append(eval_html or "<p>(no results.json)</p>")
    if charts["curves"]:
        parts.append("<h3>pass@k and maj@k against random guessing</h3>")
        parts.append(_img(charts["curves"], "pass@k and maj@k vs k, with the random-guessing curves"))
    parts.append("<h2>Samples</h2>")
    if samples:
        picked = _pick_samples(samples, stages, [f["flags"] for f in feats], max_samples)
        parts.append(_sample_browser(picked, len(samples), cfg.prefill))
        parts.append(f"<script>{_JS}</script>")
    else:
        parts.append("<p>(no samples.jsonl)</p>")
    if config_text is not None:
        parts.append(
            f"<h2>Configuration</h2><details><summary>config.yaml</summary><pre>{_E(config_text)}</pre></details>"
        )
    parts.append("</main></body></html>")

    html_path.write_text("\n".join(parts), encoding="utf-8")
    if not quiet:
        for n in notes:
            print(f"report: skipped: {n}")
        print(f"report: wrote {html_path}")
    return html_path
