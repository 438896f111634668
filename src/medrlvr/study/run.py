"""``medrlvr study``: run a study's steps in order (each resumable), then collect its outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medrlvr.study.collect import collect
from medrlvr.study.config import StudyConfig
from medrlvr.study.estimate import print_estimate
from medrlvr.study.steps import Workspace, check_prompts, init_dir, is_done, plan, run_step


def run_study(cfg: StudyConfig, out: str | Path, quiet: bool = False, estimate: bool = True) -> dict[str, Any]:
    """Run every step not done yet (in plan order), then collect. The steps of a ``backend: verl`` arm (and
    those waiting for them) are listed and left to the GPU nodes (``medrlvr study plan``); the outputs then
    cover what has finished. Returns the ``study.json`` object."""
    out = Path(out)
    ws = Workspace(cfg)
    ws.benchmarks()           # a benchmark that does not load: refused before anything is written
    check_prompts(cfg, ws)
    init_dir(cfg, out)
    steps = plan(cfg, out)
    if estimate:
        print_estimate(cfg, steps, ws, [s.id for s in steps if is_done(out, s.id)])
    done = {s.id for s in steps if is_done(out, s.id)}
    waiting: list[str] = []
    for s in steps:
        if s.id in done:
            continue
        if any(n not in done for n in s.needs) or s.runs.startswith("verl"):
            waiting.append(s.id)
            continue
        if not quiet:
            print(f"[study] {s.id} ...", flush=True)
        dt = run_step(cfg, out, s, ws, quiet=quiet)
        done.add(s.id)
        if not quiet:
            print(f"[study] {s.id} done in {dt:.0f} s", flush=True)
    if waiting and not quiet:
        print(f"[study] {len(waiting)} step(s) wait for verl's GPU nodes or for those: {', '.join(waiting)} "
              f"(`medrlvr study plan {out}` lists their commands)", flush=True)
    return collect(out, cfg, ws, quiet=quiet)


