"""The run directory: what every training run writes, and the one way to read it back.

A run directory (``medrlvr train --output DIR``, the demo, a converted verl run) holds:

- ``config.yaml``: the resolved configuration (with the seed);
- ``metrics.jsonl``: one strict-JSON row per step (``step`` plus numbers), mirrored to TensorBoard in ``tb/``;
- ``samples.jsonl``: sampled completions with their reward, verdict and flags (:func:`sample_line`);
- ``alerts.jsonl``: the monitors' alerts, one per line;
- ``checkpoints/step_N/`` (resumable) and ``final/`` (a Hugging Face model directory);
- ``report.html`` (``medrlvr report``).

Readers are lenient (:func:`read_jsonl` skips and counts a line that does not parse, such as a last line cut
by a crash); writers append one strict-JSON line at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from medrlvr.fileio import strict_json
from medrlvr.records import MCQ

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
ALERTS = "alerts.jsonl"
CHECKPOINTS = "checkpoints"
FINAL = "final"
REPORT = "report.html"
TENSORBOARD = "tb"


def read_jsonl(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Read a JSONL file leniently.

    Returns:
        ``(records, n_bad)``: the lines that parse as JSON objects, and the number of
        non-empty lines that do not (e.g. a last line truncated while training writes it).
        A missing file gives ``([], 0)``.
    """
    p = Path(path)
    if not p.is_file():
        return [], 0
    out: list[dict[str, Any]] = []
    bad = 0
    with open(p, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(rec, dict):
                out.append(rec)
            else:
                bad += 1
    return out, bad


def append_lines(path: str | Path, lines: Iterable[str]) -> None:
    """Append ``lines`` (each one JSON document, without its newline) to ``path``."""
    with open(path, "a", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


# ------------------------------------------------------------------------------------------- samples
@dataclass
class Sample:
    """One scored completion: the question, its prompt and advantage group, the tokens, the text (and the
    ``response``: the pre-fill joined to it, as scored), the reward and its :class:`~medrlvr.reward.RewardResult`."""

    rec: MCQ
    prompt: str
    group: int
    prompt_ids: list[int]
    token_ids: list[int]
    completion: str
    response: str
    finish_reason: str
    reward: float
    result: Any
    engine_logprobs: list[float] | None = None   # per token, from the rollout engine (sampling policy)


def sample_line(s: Sample, step: int) -> str:
    """One ``samples.jsonl`` line (strict JSON): the sample, its reward, verdict and flags."""
    r = s.result
    return strict_json({"step": step, "id": s.rec.id, "group": s.group, "prompt": s.prompt,
                        "completion": s.completion, "response": s.response, "reward": s.reward,
                        "format_ok": r.format_ok, "pred": r.pred, "gold": s.rec.gold, "correct": r.correct,
                        "flags": list(r.flags), "finish_reason": s.finish_reason,
                        "n_options": s.rec.n_options, "options": s.rec.options})


# -------------------------------------------------------------------------------------------- alerts
def read_alerts(path: str | Path) -> list[dict[str, Any]]:
    """Rows of an ``alerts.jsonl`` (unreadable lines skipped); ``path`` may be the run directory."""
    p = Path(path)
    return read_jsonl(p / ALERTS if p.is_dir() else p)[0]


def write_alert(run_dir: str | Path, alert: Any) -> None:
    """Append one alert (an object with ``to_dict()``, or a dict) to ``RUN_DIR/alerts.jsonl``."""
    row = alert.to_dict() if hasattr(alert, "to_dict") else dict(alert)
    append_lines(Path(run_dir) / ALERTS, [json.dumps(row)])


def write_alerts(run_dir: str | Path, alerts: Iterable[Any]) -> None:
    """Replace ``RUN_DIR/alerts.jsonl`` with ``alerts`` (a replay's verdicts)."""
    rows = [a.to_dict() if hasattr(a, "to_dict") else dict(a) for a in alerts]
    (Path(run_dir) / ALERTS).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
