"""Resuming a training run safely: which checkpoint, which log lines, which config changes.

* :func:`find_checkpoint`: the checkpoint ``checkpoints/latest`` names, or, when that pointer is
  missing, empty or names a directory that is gone or incomplete, the newest *complete* ``step_N``
  (a ``step`` file, the policy weights and the trainer state: ``step`` is written last), with a note
  saying so.
* :func:`truncate_logs`: ``metrics.jsonl`` and ``samples.jsonl`` keep the lines of steps <= the
  resumed step (a torn last line is dropped too), rewritten by temp file + rename: a kill during the
  rewrite leaves the old file, never an empty one.
* :func:`check_drift`: a resumed run must be the run that was started. Every config field that
  changes what is trained (the :data:`SAFE_TO_CHANGE` fields do not) must equal the saved
  ``config.yaml``, unless named in ``allow`` (``--allow-change KEY``); :data:`NEVER_CHANGE` fields
  (the checkpoint's shapes depend on them) cannot change at all. Accepted changes are appended to
  ``config_changes.jsonl`` in the run directory by :func:`record_changes`.

Simplification: ``max_steps`` may change without ``--allow-change`` only under a ``constant`` LR schedule
(elsewhere the schedule's length depends on it); the change is recorded all the same.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from medrlvr import fileio, rundir

SAFE_TO_CHANGE = frozenset({
    "eval_every", "save_every", "keep_checkpoints", "sample_every", "data_root", "rank", "world_size",
    "parallel", "dist_timeout_s", "eval_data", "eval_limit", "eval_max_new_tokens", "on_alert",
})
"""Fields that change what is evaluated, saved or logged, or where data is found, not the trained weights."""

NEVER_CHANGE = frozenset({"model", "algo", "critic", "lora", "lora_r", "lora_alpha", "dtype"})
"""Fields the checkpoint's tensors (weights, critic, optimizer groups) depend on."""

CHANGES_FILE = "config_changes.jsonl"


def _note(msg: str) -> None:
    print(f"[medrlvr] {msg}", file=sys.stderr, flush=True)


def is_complete(d: Path) -> bool:
    """A checkpoint directory whose save finished (``step`` is written last, after weights and state)."""
    pol = d / "policy"
    return ((d / "step").is_file() and (d / "trainer_state.pt").is_file()
            and ((pol / "model.safetensors").is_file() or (pol / "adapter_model.safetensors").is_file()
                 or any(pol.glob("model-*.safetensors"))))


def _step_of(d: Path) -> int | None:
    name = d.name
    if not name.startswith("step_") or not name[5:].isdigit():
        return None
    return int(name[5:])


def complete_checkpoints(ckdir: Path) -> list[Path]:
    """Complete ``step_N`` directories, oldest first."""
    if not ckdir.is_dir():
        return []
    out = [d for d in ckdir.iterdir() if d.is_dir() and _step_of(d) is not None and is_complete(d)]
    return sorted(out, key=_step_of)


def clean_leftovers(ckdir: Path) -> list[str]:
    """Remove ``step_N.tmp`` / ``step_N.old`` directories and a ``latest.tmp`` left by a killed save."""
    removed = []
    if not ckdir.is_dir():
        return removed
    for d in ckdir.iterdir():
        if d.name.startswith("step_") and d.name.endswith((".tmp", ".old")):
            shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)
            removed.append(d.name)
    (ckdir / "latest.tmp").unlink(missing_ok=True)
    return removed


def find_checkpoint(run_dir: Path) -> Path:
    """The checkpoint to resume from (see the module doc). Raises FileNotFoundError when there is none."""
    ckdir = Path(run_dir) / rundir.CHECKPOINTS
    latest = ckdir / "latest"
    problem = None
    if not latest.is_file():
        problem = f"{latest} is missing"
    else:
        try:
            name = latest.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            name, problem = "", f"{latest} is unreadable ({e})"
        if not name and problem is None:
            problem = f"{latest} is empty"
        elif problem is None:
            d = ckdir / name
            if "/" in name or "\\" in name or _step_of(d) is None:
                problem = f"{latest} names {name!r}, not a step_N checkpoint"
            elif not d.is_dir():
                problem = f"{latest} names {name}, which does not exist"
            elif not is_complete(d):
                problem = f"{latest} names {name}, which is incomplete"
            else:
                return d
    found = complete_checkpoints(ckdir)
    if not found:
        raise FileNotFoundError(f"--resume: no complete checkpoint in {ckdir} ({problem}): the run stopped before "
                                "its first checkpoint; start it again without --resume (add --overwrite to replace "
                                "the directory)")
    _note(f"resume: {problem}; using {found[-1].name}, the newest complete checkpoint")
    return found[-1]


def _line_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def truncate_logs(run_dir: Path, step: int, names: tuple[str, ...] = (rundir.METRICS, rundir.SAMPLES)) -> dict:
    """Keep the lines of steps <= ``step`` in each log (atomic rewrite); returns ``{name: lines dropped}``."""
    dropped = {}
    for name in names:
        p = Path(run_dir) / name
        if not p.exists():
            continue
        raw = p.read_bytes()
        keep, n_drop = [], 0
        for b in raw.split(b"\n"):
            if not b.strip():
                continue
            try:
                ln = b.decode("utf-8")
            except UnicodeDecodeError:  # a torn multi-byte character at the end of a killed write
                n_drop += 1
                continue
            s = _line_step(ln)
            if s is None or s > step:
                n_drop += 1
            else:
                keep.append(ln)
        if n_drop:
            fileio.atomic_write_lines(p, keep, label=f"resume.{name}")
        dropped[name] = n_drop
    return dropped


def _canon(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def check_drift(run_dir: Path, cfg, allow: tuple[str, ...] | list[str] = ()) -> dict[str, tuple[Any, Any]]:
    """Compare ``cfg`` with the run directory's ``config.yaml``; return the allowed changes
    ``{key: (saved, now)}``, raise ValueError listing the others (see the module doc)."""
    from dataclasses import fields

    from medrlvr.train.config import TrainConfig, build_config

    path = Path(run_dir) / rundir.CONFIG
    if not path.is_file():
        return {}
    import yaml

    try:
        saved_raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({str(e).splitlines()[0]}); cannot check the resumed config") from None
    if not isinstance(saved_raw, dict):
        raise ValueError(f"{path}: not a mapping of config keys; cannot check the resumed config")
    known = {f.name for f in fields(TrainConfig)}
    unknown_allow = [k for k in allow if k not in known]
    if unknown_allow:
        raise ValueError(f"--allow-change: unknown config key(s) {unknown_allow}")
    saved = build_config({k: v for k, v in saved_raw.items() if k in known})
    diff = {}
    for k in sorted(known):
        a, b = _canon(getattr(saved, k)), _canon(getattr(cfg, k))
        if a != b:
            diff[k] = (a, b)
    free = {}   # accepted without --allow-change, recorded like an allowed change
    if "max_steps" in diff and saved.lr_schedule == "constant" and cfg.lr_schedule == "constant":
        free["max_steps"] = diff.pop("max_steps")
    never = {k: v for k, v in diff.items() if k in NEVER_CHANGE}
    if never:
        lst = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in never.items())
        raise ValueError(f"--resume: {lst} cannot change on resume (the checkpoint in {run_dir} depends on it); "
                         "start a new run directory")
    refused = {k: v for k, v in diff.items() if k not in SAFE_TO_CHANGE and k not in allow}
    if refused:
        lst = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        keys = " ".join(f"--allow-change {k}" for k in refused)
        raise ValueError(f"--resume: the config differs from {path} ({lst} (saved -> now)); "
                         f"resume with the saved values, or accept with {keys}")
    return {**{k: v for k, v in diff.items() if k in allow}, **free}


def record_changes(run_dir: Path, step: int, changes: dict[str, tuple[Any, Any]]) -> None:
    """Append the accepted changes to ``config_changes.jsonl`` (one line per resume with changes)."""
    if not changes:
        return
    p = Path(run_dir) / CHANGES_FILE
    line = json.dumps({"resumed_at_step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "changes": {k: {"saved": a, "now": b} for k, (a, b) in changes.items()}})
    old = p.read_text(encoding="utf-8").splitlines() if p.exists() else []
    fileio.atomic_write_lines(p, old + [line], label="resume.changes")
    _note(f"resume: accepted config changes {', '.join(changes)} (recorded in {p})")
