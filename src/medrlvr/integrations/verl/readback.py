"""Read a verl run back as a medrlvr run, so that ``medrlvr report`` and ``medrlvr monitor`` work on it.

verl writes ``rollouts/<step>.jsonl`` and ``validation/<step>.jsonl`` (its ``_write_generations``: one JSON
object per sample with ``input``, ``output``, ``gts``, ``score``, ``step`` and any reward extra info) and the
``file`` logger's ``metrics.jsonl`` (``{"step": s, "data": {name: value}}``). :func:`convert_run` re-scores every
dumped response with :func:`medrlvr.reward.score` (same scheme, pre-fill joined), writes
``DIR/medrlvr_view/{samples,metrics}.jsonl`` in medrlvr's layout (:mod:`medrlvr.rundir`) and the last validation
step's ``results.json``, and counts in its notes whatever it could not match or read.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medrlvr import rundir
from medrlvr.eval.stats import bootstrap_ci
from medrlvr.integrations.verl.mapping import MARKER, VIEW_DIR
from medrlvr.prompts import parse_options, response_prefix
from medrlvr.reward import join_prefill, score
from medrlvr.rundir import read_jsonl


def is_verl_run(run_dir: str | Path) -> bool:
    """A directory written by ``medrlvr verl prepare`` or holding verl generation dumps."""
    d = Path(run_dir)
    return (d / MARKER).is_file() or (not (d / rundir.SAMPLES).is_file() and (d / "rollouts").is_dir())


def _dump_files(d: Path) -> list[tuple[int, Path]]:
    if not d.is_dir():
        return []
    out = []
    for p in d.glob("*.jsonl"):
        try:
            out.append((int(p.stem), p))
        except ValueError:
            continue
    return sorted(out)


def _prompt_index(d: Path) -> dict[str, dict]:
    idx: dict[str, dict] = {}
    for name in ("train.parquet", "val.parquet"):
        p = d / name
        if not p.is_file():
            continue
        import pyarrow.parquet as pq

        for row in pq.read_table(p, columns=["prompt", "extra_info", "reward_model"]).to_pylist():
            text = row["prompt"][0]["content"]
            info = row.get("extra_info") or {}
            try:
                opts = json.loads(info.get("options") or "{}")
            except ValueError:
                opts = {}
            idx.setdefault(text.strip(), {"id": info.get("id"), "n_options": info.get("n_options"), "options": opts,
                                         "gold": (row.get("reward_model") or {}).get("ground_truth")})
    return idx


def _samples(rows: list[dict], step: int, idx: dict, scheme: str, prefill: str, stats: dict) -> list[dict]:
    out = []
    groups: dict[str, int] = {}
    for r in rows:
        prompt = r.get("input") if isinstance(r.get("input"), str) else ""
        completion = r.get("output") if isinstance(r.get("output"), str) else ""
        meta = idx.get(prompt.strip())
        if meta is None:
            stats["unmatched"] += 1
            opts = parse_options(prompt)
            meta = {"id": None, "n_options": len(opts) or None, "options": opts, "gold": r.get("gts")}
        gold = str(r.get("gts") if r.get("gts") is not None else meta["gold"] or "").strip().upper()
        n = meta["n_options"] or 5
        response = join_prefill(completion, prefill) if prefill else completion
        try:
            res = score(response, gold, int(n), scheme=scheme, options=meta["options"] or None, prefill=None)
        except ValueError:
            stats["unscorable"] += 1
            continue
        dumped = r.get("score")
        reward = float(dumped) if isinstance(dumped, (int, float)) and not isinstance(dumped, bool) else res.reward
        if abs(reward - res.reward) > 1e-6:
            stats["score_mismatch"] += 1
        g = groups.setdefault(prompt, len(groups))
        out.append({"step": int(r.get("step", step)) if isinstance(r.get("step"), int) else step,
                    "id": meta["id"], "group": g, "prompt": prompt, "completion": completion, "response": response,
                    "reward": reward, "format_ok": res.format_ok, "pred": res.pred, "gold": gold,
                    "correct": res.correct, "flags": list(res.flags), "finish_reason": None,
                    "n_options": int(n), "options": meta["options"] or None})
    return out


VERL_METRICS = {"reward_mean": "critic/score/mean", "response_tokens": "response_length/mean",
                "entropy": "actor/entropy", "clip_frac": "actor/pg_clipfrac",
                "truncated_frac": "response_length/clip_ratio"}
"""medrlvr metric name -> verl metric name (file logger); ``kl`` is ``actor/reward_kl_penalty`` (KL in the
reward) or ``actor/kl_loss`` / ``kl_loss`` (KL loss: the legacy and the engine workers' names). verl's own
names are kept too."""


def convert_run(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, list[str]]:
    """Write medrlvr's ``samples.jsonl`` / ``metrics.jsonl`` / ``config.yaml`` / ``results.json`` for a verl run.

    Returns ``(view_dir, notes)``; notes count what could not be matched or read (never dropped silently).
    """
    d = Path(run_dir)
    view = Path(out) if out else d / VIEW_DIR
    view.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    marker = {}
    if (d / MARKER).is_file():
        try:
            marker = json.loads((d / MARKER).read_text(encoding="utf-8"))
        except ValueError:
            notes.append(f"{MARKER}: unreadable, assuming the paper scheme and the <think> pre-fill")
    scheme = marker.get("reward_scheme", "paper")
    prefill = response_prefix(marker.get("template", "r1-zero"), marker.get("prefill_think", True))
    idx = _prompt_index(d)
    stats = defaultdict(int)
    samples: list[dict] = []
    per_step: dict[int, list[dict]] = {}
    bad = 0
    for step, p in _dump_files(d / "rollouts"):
        rows, b = read_jsonl(p)
        bad += b
        s = _samples(rows, step, idx, scheme, prefill, stats)
        per_step[step] = s
        samples.extend(s)
    val: dict[int, list[dict]] = {}
    for step, p in _dump_files(d / "validation"):
        rows, b = read_jsonl(p)
        bad += b
        val[step] = _samples(rows, step, idx, scheme, prefill, stats)
    if bad:
        notes.append(f"verl dumps: skipped {bad} unreadable line(s)")
    if stats["unmatched"]:
        notes.append(f"verl dumps: {stats['unmatched']} prompt(s) not found in train/val.parquet: options read "
                     "from the prompt text")
    if stats["unscorable"]:
        notes.append(f"verl dumps: {stats['unscorable']} sample(s) without a usable gold letter, not scored")
    if stats["score_mismatch"]:
        notes.append(f"verl dumps: {stats['score_mismatch']} dumped score(s) differ from medrlvr's re-score "
                     f"(scheme {scheme}); the report shows verl's")
    metrics_path = d / rundir.METRICS
    logged, b = read_jsonl(metrics_path)
    if b:
        notes.append(f"metrics.jsonl: skipped {b} unreadable line(s)")
    by_step: dict[int, dict] = {}
    for rec in logged:
        st, data = rec.get("step"), rec.get("data")
        if isinstance(st, int) and isinstance(data, Mapping):
            by_step.setdefault(st, {}).update(data)
    steps = sorted(set(by_step) | set(per_step) | set(val))
    records = []
    for st in steps:
        data = by_step.get(st, {})
        rec: dict[str, Any] = {"step": st}
        rec.update({k: v for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        for ours, theirs in VERL_METRICS.items():
            if isinstance(data.get(theirs), (int, float)):
                rec[ours] = data[theirs]
        for k in ("actor/reward_kl_penalty", "actor/kl_loss", "kl_loss"):
            if isinstance(data.get(k), (int, float)):
                rec["kl"] = data[k]
                break
        s = per_step.get(st)
        if s:
            n = len(s)
            rec.setdefault("reward_mean", sum(x["reward"] for x in s) / n)
            rec["accuracy"] = sum(x["correct"] for x in s) / n
            rec["format_valid"] = sum(x["format_ok"] for x in s) / n
            rec["response_chars"] = sum(len(x["completion"]) for x in s) / n
            grp: dict[int, set] = defaultdict(set)
            size: dict[int, int] = defaultdict(int)
            for x in s:
                grp[x["group"]].add(x["reward"])
                size[x["group"]] += 1
            multi = [g for g in grp if size[g] > 1]
            if multi:
                rec["zero_var_frac"] = sum(len(grp[g]) == 1 for g in multi) / len(multi)
        v = val.get(st)
        if v:
            rec["eval_accuracy"] = sum(x["correct"] for x in v) / len(v)
            rec["eval_format_valid"] = sum(x["format_ok"] for x in v) / len(v)
            rec["eval_n"] = len(v)
        if len(rec) > 1:
            records.append(rec)
    if not logged:
        notes.append("metrics.jsonl (verl's file logger) not found: curves from the dumps only")
    if not per_step:
        notes.append("rollouts/ (trainer.rollout_data_dir) holds no dump: no training samples")
    with open(view / rundir.METRICS, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    with open(view / rundir.SAMPLES, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    if (d / rundir.CONFIG).is_file():
        (view / rundir.CONFIG).write_text((d / rundir.CONFIG).read_text(encoding="utf-8"), encoding="utf-8")
    for old in view.glob("eval_step_*"):
        for f in old.glob("*"):
            f.unlink()
        old.rmdir()
    if val:
        st = max(val)
        v = val[st]
        res: dict[str, dict] = {}
        by_src = defaultdict(list)
        for x in v:
            by_src["verl-validation"].append(x)
        for name, xs in by_src.items():
            corr = [float(x["correct"]) for x in xs]
            res[name] = {"accuracy": sum(corr) / len(corr), "ci95": bootstrap_ci(corr), "n": len(corr),
                         "format_valid": sum(x["format_ok"] for x in xs) / len(xs), "step": st,
                         "note": "greedy validation generations dumped by verl, re-scored by medrlvr"}
        ed = view / f"eval_step_{st}"
        ed.mkdir(exist_ok=True)
        (ed / "results.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    return view, notes
