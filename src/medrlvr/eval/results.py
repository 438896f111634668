"""Results files of a benchmark evaluation: ``results.json`` (the metrics) and ``results.md`` (a Markdown
table with 95% intervals, the random baseline, pass@k and maj@k beside random guessing when K > 1, and the
predicted- vs gold-letter counts)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.1f}" if pct else f"{x:.3g}"


def _fmt_ci(acc, ci) -> str:
    if acc is None:
        return "-"
    if not ci or ci[0] is None:
        return _fmt(acc)
    return f"{_fmt(acc)} [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def results_markdown(results: Mapping[str, Any]) -> str:
    """A Markdown report of :func:`evaluate`'s results (accuracies in %)."""
    meta = results.get("_meta", {})
    benches = [k for k in results if not k.startswith("_")]
    lines = [f"# Evaluation: {meta.get('model', '?')} ({meta.get('mode', '?')})", ""]
    settings = ", ".join(f"{k}={meta[k]}" for k in ("mode", "template", "n_samples", "temperature", "max_new_tokens",
                                                    "n_shuffles", "seed", "limit", "dtype") if meta.get(k) is not None)
    lines += [f"Settings: {settings}. Accuracy in %, 95% percentile bootstrap CI over questions "
              f"({meta.get('bootstrap', '?')} resamples).", ""]
    head = ["benchmark", "dist", "n", "accuracy [95% CI]", "random [95% CI]", "answered", "format valid"]
    trunc = any(results[b].get("truncated") is not None for b in benches)
    if trunc:   # answers cut by the token limit: a low accuracy may only mean too few max_new_tokens
        head += ["hit token limit"]
    extra_k = any("pass_at_k" in results[b] for b in benches)
    cons = any("consistency" in results[b] for b in benches)
    if extra_k:
        head += ["pass@K", "maj@K"]
    if cons:
        head += ["consistency"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in benches:
        r = results[b]
        rb = r.get("random_baseline", {})
        row = [b, r.get("distribution") or "-", str(r["n"]), _fmt_ci(r["accuracy"], r["ci95"]),
               _fmt_ci(rb.get("accuracy"), rb.get("ci95")), _fmt(r.get("answer_rate")), _fmt(r.get("format_valid"))]
        if trunc:
            row += [_fmt(r.get("truncated"))]
        if extra_k:
            pk, mk = r.get("pass_at_k", {}), r.get("maj_at_k", {})
            K = str(r.get("n_samples"))
            row += [_fmt(pk.get(K)) + (f" (K={K})" if pk else ""), _fmt(mk.get(K))]
        if cons:
            c = r.get("consistency")
            row += [_fmt_ci(c["rate"], c["ci95"]) if c else "-"]
        lines.append("| " + " | ".join(row) + " |")
    for b in benches:
        r = results[b]
        if "subsets" in r:
            lines += ["", f"## {b}: subsets", "", "| subset | n | accuracy [95% CI] |", "|---|---|---|"]
            lines += [f"| {k} | {v['n']} | {_fmt_ci(v['accuracy'], v['ci95'])} |" for k, v in r["subsets"].items()]
    for b in benches:
        c = results[b].get("curves")
        if c:
            K = len(c["k"])
            ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if k < K} | {K})
            lines += ["", f"## {b}: pass@k and maj@k against random guessing", "",
                      "| k | pass@k | guessing pass@k | maj@k | guessing maj@k |", "|---|---|---|---|---|"]
            lines += [f"| {k} | {_fmt(c['pass'][k - 1])} | {_fmt(c['pass_guess'][k - 1])} | {_fmt(c['maj'][k - 1])} | "
                      f"{_fmt(c['maj_guess'][k - 1])} |" for k in ks]
    lines += ["", "## Predicted vs gold letters (position bias)", "", "| benchmark | letter | predicted | gold |",
              "|---|---|---|---|"]
    for b in benches:
        d = results[b].get("letter_distribution", {})
        for L in list(d.get("gold", {})) + (["none"] if "none" in d.get("pred", {}) else []):
            lines.append(f"| {b} | {L} | {d['pred'].get(L, 0)} | {d['gold'].get(L, '-')} |")
    return "\n".join(lines) + "\n"


def write_results(results: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``out_dir`` (each replaced atomically); returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    j, m = out / "results.json", out / "results.md"
    for path, text in ((j, json.dumps(results, indent=2, ensure_ascii=False) + "\n"), (m, results_markdown(results))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return j, m
