"""``medrlvr study collect``: the study's tables, tests and figures from whatever steps have finished.

Writes into the study directory:

- ``study.json``: every arm x benchmark x mode cell (accuracy, 95% CI, n, format-valid, answered, random
  baseline, its per-question correctness vector's file under ``vectors/``), the OOD pool and OOD average per
  cell, per-arm means and ranges over seeds, the paired tests of the configured pairs (per seed, per benchmark
  and on the OOD pool), and the steps still missing. Only results, no times: a study killed and resumed writes
  the same file as an uninterrupted one (wall times go to ``timing.json``).
- ``study.md`` (:func:`study_markdown`), ``accuracy.png`` / ``dynamics.png`` (:mod:`medrlvr.study.figures`),
  ``study.html`` (:mod:`medrlvr.study.html`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medrlvr import fileio
from medrlvr.eval.benchmark import read_rows
from medrlvr.eval.stats import bootstrap_ci, random_baseline
from medrlvr.study.config import StudyConfig
from medrlvr.study.stats import paired_test
from medrlvr.study.steps import (Step, Workspace, eval_dir, is_done, load_saved, marker, plan, prompt_of)

OOD_POOL = "ood_pool"


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "bench"


def _vector(rows: dict, records: list) -> list[float]:
    return [float(np.mean([bool(s["correct"]) for s in rows[(r.id, 0)]["samples"]])) for r in records]


def _cells(cfg: StudyConfig, out: Path, ws: Workspace, steps: list[Step]) -> tuple[list[dict], dict]:
    """One cell per finished eval step x benchmark, and the correctness vectors by (instance, mode, bench)."""
    sets = ws.benchmarks()
    cells, vectors = [], {}
    vdir = out / "vectors"
    for s in steps:
        if s.kind != "eval" or not is_done(out, s.id):
            continue
        d = eval_dir(out, s.instance, s.mode)
        res = json.loads((d / "results.json").read_text(encoding="utf-8"))
        template, _ = prompt_of(cfg, s.arm, s.mode)
        for bench, records in sets.items():
            rows = read_rows(d / f"{_slug(bench)}.completions.jsonl")
            vec = _vector(rows, records)
            vectors[(s.instance, s.mode, bench)] = vec
            vfile = vdir / f"{s.instance}.{s.mode}.{_slug(bench)}.json"
            vfile.parent.mkdir(parents=True, exist_ok=True)
            fileio.atomic_write_text(vfile, json.dumps({"ids": [r.id for r in records], "correct": vec}) + "\n",
                                     label="study.vector")
            m = res.get(bench, {})
            cells.append({"arm": s.arm, "instance": s.instance, "seed": s.seed, "mode": s.mode, "template": template,
                          "benchmark": bench, "distribution": ws.distribution[bench],
                          "accuracy": m.get("accuracy"), "ci95": m.get("ci95"), "n": m.get("n"),
                          "format_valid": m.get("format_valid"), "answered": m.get("answer_rate"),
                          "random_baseline": m.get("random_baseline"), "above_random": m.get("above_random"),
                          "vector": str(vfile.relative_to(out))})
    return cells, vectors


def _ood(cfg: StudyConfig, cells: list[dict], vectors: dict, ws: Workspace) -> list[dict]:
    """Per instance x mode with every OOD benchmark: the pooled OOD accuracy (all OOD questions, with its CI)
    and the OOD average (mean of the benchmarks' accuracies, the paper's column)."""
    sets = ws.benchmarks()
    ood = [b for b, d in ws.distribution.items() if d == "ood"]
    out = []
    if not ood:
        return out
    seen = []
    for c in cells:
        key = (c["arm"], c["instance"], c["seed"], c["mode"])
        if key not in seen:
            seen.append(key)
    for arm, inst, seed, mode in seen:
        if not all((inst, mode, b) in vectors for b in ood):
            continue
        pool = [x for b in ood for x in vectors[(inst, mode, b)]]
        accs = [float(np.mean(vectors[(inst, mode, b)])) for b in ood]
        nopt = [r.n_options for b in ood for r in sets[b]]
        out.append({"arm": arm, "instance": inst, "seed": seed, "mode": mode, "benchmarks": ood,
                    "pooled_accuracy": float(np.mean(pool)), "pooled_ci95": bootstrap_ci(pool, cfg.eval.bootstrap,
                                                                                         cfg.eval.seed),
                    "n": len(pool), "average": float(np.mean(accs)),
                    "random_baseline": random_baseline(nopt, cfg.eval.bootstrap, cfg.eval.seed)})
    return out


def _summary(cells: list[dict], ood: list[dict]) -> list[dict]:
    """Per arm x mode x benchmark (and ``ood_pool``): the mean and range of the accuracy over seeds."""
    groups: dict[tuple, list[float]] = {}
    for c in cells:
        groups.setdefault((c["arm"], c["mode"], c["benchmark"]), []).append(c["accuracy"])
    for o in ood:
        groups.setdefault((o["arm"], o["mode"], OOD_POOL), []).append(o["pooled_accuracy"])
    return [{"arm": a, "mode": m, "benchmark": b, "seeds": len(v), "mean": float(np.mean(v)),
             "min": float(min(v)), "max": float(max(v))} for (a, m, b), v in groups.items()]


def _pairs(cfg: StudyConfig, vectors: dict, ws: Workspace) -> list[dict]:
    """The configured pairs, per seed (base, trained once, is paired with every seed's arms), per benchmark
    and on the OOD pool."""
    ood = [b for b, d in ws.distribution.items() if d == "ood"]
    out = []
    for a, b in cfg.pair_list():
        (arm_a, mode_a), (arm_b, mode_b) = a.split(":"), b.split(":")
        for seed in cfg.seeds:
            ia = arm_a if arm_a == "base" else f"{arm_a}-s{seed}"
            ib = arm_b if arm_b == "base" else f"{arm_b}-s{seed}"
            benches = list(ws.benchmarks()) + ([OOD_POOL] if len(ood) > 1 else [])
            for bench in benches:
                parts = ood if bench == OOD_POOL else [bench]
                if not all((ia, mode_a, p) in vectors and (ib, mode_b, p) in vectors for p in parts):
                    continue
                va = [x for p in parts for x in vectors[(ia, mode_a, p)]]
                vb = [x for p in parts for x in vectors[(ib, mode_b, p)]]
                t = paired_test(va, vb, cfg.eval.bootstrap, cfg.eval.seed)
                out.append({"a": a, "b": b, "seed": seed, "benchmark": bench, **t})
    return out


def build_study_json(cfg: StudyConfig, out: Path, ws: Workspace) -> dict[str, Any]:
    steps = plan(cfg, out)
    cells, vectors = _cells(cfg, out, ws, steps)
    ood = _ood(cfg, cells, vectors, ws)
    from medrlvr import __version__

    return {"model": cfg.model, "benchmarks": {b: {"distribution": ws.distribution[b], "n": len(v)}
                                               for b, v in ws.benchmarks().items()},
            "eval": cfg.to_dict()["eval"], "seeds": list(cfg.seeds),
            "arms": {name: {"kind": type(arm).__name__, "modes": list(arm.modes),
                            "prompts": {m: prompt_of(cfg, name, m)[0] for m in arm.modes}}
                     for name, arm in cfg.arms().items()},
            "cells": cells, "ood": ood, "summary": _summary(cells, ood), "pairs": _pairs(cfg, vectors, ws),
            "missing": [s.id for s in steps if not is_done(out, s.id)], "medrlvr_version": __version__}


def _timing(out: Path, steps: list[Step]) -> dict[str, Any]:
    rows = {}
    for s in steps:
        m = marker(out, s.id)
        if m.is_file():
            rows[s.id] = json.loads(m.read_text(encoding="utf-8")).get("wall_s")
    return {"steps": rows, "total_s": round(sum(v for v in rows.values() if v), 2)}


def collect(out: str | Path, cfg: StudyConfig | None = None, ws: Workspace | None = None,
            quiet: bool = False) -> dict[str, Any]:
    """Write ``study.json``, ``study.md``, ``timing.json``, the figures and ``study.html`` from the finished
    steps of the study in ``out``; returns the ``study.json`` object."""
    from medrlvr.study.figures import plot_accuracy, plot_dynamics
    from medrlvr.study.html import study_html
    from medrlvr.study.markdown import study_markdown

    out = Path(out)
    cfg = cfg or load_saved(out)
    ws = ws or Workspace(cfg)
    data = build_study_json(cfg, out, ws)
    fileio.atomic_write_text(out / "study.json", json.dumps(data, indent=2, ensure_ascii=False) + "\n",
                             label="study.json")
    fileio.atomic_write_text(out / "timing.json", json.dumps(_timing(out, plan(cfg, out)), indent=2) + "\n",
                             label="study.timing")
    fileio.atomic_write_text(out / "study.md", study_markdown(data, cfg), label="study.md")
    figs = {"accuracy": plot_accuracy(data, out / "accuracy.png"),
            "dynamics": plot_dynamics(cfg, out, out / "dynamics.png")}
    study_html(data, cfg, out, figs)
    if not quiet:
        print(f"[study] {out / 'study.md'}, {out / 'study.html'}" + (f"; {len(data['missing'])} step(s) not done: "
                                                                    f"{', '.join(data['missing'])}"
                                                                    if data["missing"] else ""))
    return data
