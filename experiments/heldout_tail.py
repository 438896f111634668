"""The rare held-out answers of a trained demo model: many samples per question, at several temperatures.

The demo judges "template echo 0" on 32 questions x 4 sampled answers. An answer that copies the prompt's
placeholder text once in a few hundred samples passes or fails that criterion by chance, so this script draws
K answers per held-out question from a run's kept final model (``experiments/demo_robustness.py --keep-weights``)
at each temperature and prints, per run and temperature, the template-echo count with a 95% Wilson interval on
its rate, format-valid, the share naming a letter, the top letter's share and the wall time, with the first
echoed answers. It is a measurement, not a test.

Usage::

    python experiments/heldout_tail.py RUN_DIR [RUN_DIR ...] [--k 32] [--temps 1.0,0.6] [--path auto|bf16|fp32]
                                       [--seed S] [--json FILE]

Each RUN_DIR is a demo run directory with ``final/`` (its ``config.yaml`` gives the preset values); the
questions, prompts and per-question seeds are the demo's (``eval_limit`` questions of ``eval_data``).
``--path`` sets ``MEDRLVR_BF16`` as the run had it (fp32 runs: ``--path fp32``). ``--seed`` draws with another
seed's per-question seeds than the run's own (a second, independent draw of the same model). ``--json FILE``
also writes the rows (one per run and temperature) as a JSON list; ``experiments/demo_robustness.py --tail K``
reads it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))
import harness  # noqa: E402  (puts src/ on the path)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a rate k/n (sound at k = 0, unlike the normal approximation)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def measure(run_dir: Path, k: int, temps: list[float], seed: int | None = None) -> list[dict]:
    from medrlvr.train.config import build_config
    from medrlvr.train.trainer import Trainer

    final = run_dir / "final"        # checked by main: final/model.safetensors and config.yaml are there
    over = [f"model={final}"] + ([f"seed={seed}"] if seed is not None else [])
    cfg = build_config(str(run_dir / "config.yaml"), over)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(cfg, Path(tmp) / "run", quiet=True)
        for temp in temps:
            t0 = time.perf_counter()
            ev = t.evaluate(details=True, samples=k, temperature=temp)
            xs = ev["samples"]
            echo = [x for x in xs if "template_echo" in x.result.flags]
            rows.append({"run": str(run_dir), "temperature": temp, "k": k, "answers": len(xs), "echo": len(echo),
                         "echo_ci95": wilson(len(echo), len(xs)), "format_valid": ev["eval_format_valid"],
                         "answered": ev.get("eval_answered"), "top_letter": ev.get("eval_top_letter"),
                         "top_letter_share": ev.get("eval_top_letter_share"),
                         "wall_s": round(time.perf_counter() - t0, 1),
                         "echo_examples": [x.response for x in echo[:3]]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--k", type=int, default=32, help="answers sampled per held-out question")
    ap.add_argument("--temps", type=harness.floats, default="1.0,0.6", help="comma-separated sampling temperatures (> 0)")
    ap.add_argument("--path", choices=("auto", "bf16", "fp32"), default="auto")
    ap.add_argument("--seed", type=int, default=None, help="draw with this seed instead of the run's")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows to this file (a JSON list)")
    a = ap.parse_args(argv)
    temps = a.temps
    if a.k < 1 or not temps or any(t <= 0 for t in temps):
        ap.error("--k must be >= 1 and every temperature > 0")
    for r in a.runs:   # every run before the first draw: a bad one would otherwise end the script minutes in
        for need in ("final/model.safetensors", "config.yaml"):
            if not (r / need).is_file():
                ap.error(f"{r / need}: not found (a demo run directory kept with --keep-weights)")
    if a.json and not a.json.parent.is_dir():
        ap.error(f"--json {a.json}: no such directory {a.json.parent}")
    if a.path != "auto":
        os.environ["MEDRLVR_BF16"] = "1" if a.path == "bf16" else "0"
    from medrlvr.hardware import cpu_model, fast_bf16

    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; path {a.path} (bf16 {'on' if fast_bf16() else 'off'}); "
          f"seed {'of each run' if a.seed is None else a.seed}")
    print("| run | T | answers | template echo [95% CI of the rate] | format-valid | letter | top letter | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for r in a.runs:
        for row in measure(r, a.k, temps, a.seed):
            rows.append(row)
            lo, hi = row["echo_ci95"]
            top = f"{row['top_letter']} {row['top_letter_share']:.0%}" if row["top_letter"] else "none"
            print(f"| {r} | {row['temperature']:g} | {row['answers']} | {row['echo']} [{lo:.2%}, {hi:.2%}] | "
                  f"{row['format_valid']:.3f} | {row['answered']:.3f} | {top} | {row['wall_s']:.0f} |", flush=True)
            for e in row["echo_examples"]:
                print(f"|   echo: {json.dumps(e)[:150]} |||||||", flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
