"""Robustness of the main job: the cpu-demo preset for several seeds on each arithmetic path.

Runs ``medrlvr demo`` (the real preset, nothing shortened) once per (seed, path), one after the other, each in
a fresh process: ``MEDRLVR_BF16=1`` (bf16 autocast, native on AVX512-BF16/AMX CPUs) and ``MEDRLVR_BF16=0``
(fp32), and prints a table of the demo's criteria with the wall time of each run:

    held-out format-valid >= 0.9, an option letter in >= 90% of held-out answers, template echo 0,
    no letter in more than 50% of the answers, no monitor alert at the end.

Usage::

    python experiments/demo_robustness.py [--seeds 0,1,2] [--paths auto,fp32] [--out runs/robustness] [--threads N]
                                          [--keep-weights] [--tail K] [KEY=VALUE ...]

``auto`` is the path the machine picks by default (bf16 where native); ``bf16``/``fp32`` force one. Where
bf16 is emulated (AVX2-only CPUs) it is ~4x slower: run it with one seed there. Results are appended
to ``OUT/results.jsonl`` as each run ends (a run already there is not repeated, so the script can be
restarted), and the table of every run in ``OUT`` is written to ``OUT/table.md``. Each run's weights
(checkpoint and final model, ~2.1 GB) are deleted once its summary is read, unless ``--keep-weights``. Wall
times depend on the machine's load: say what else ran.

``--tail K`` (0 = off) also draws K answers per held-out question from each final model at the demo's
evaluation temperature with ``experiments/heldout_tail.py`` (before its weights are deleted) and adds a column with the
template-echo count of those answers and a 95% Wilson interval of its rate: "echo 0" over 4 answers per question
passes or fails by chance for a model that echoes a few times in a thousand (docs/results/demo-robustness.md). The
criteria are unchanged; the column is evidence next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))
import harness  # noqa: E402  (puts src/ on the path)

PATHS = ("auto", "bf16", "fp32")
CRITERIA = (
    ("format_valid", "format-valid >= 0.9", lambda a, s: a["format_valid"] >= 0.9),
    ("answered", "letter in >= 90%", lambda a, s: a["answered"] >= 0.9),
    ("template_echo", "echo 0", lambda a, s: a["template_echo"] == 0),
    ("top_letter_share", "top letter <= 50%", lambda a, s: a["top_letter_share"] <= 0.5),
    ("alerts", "no alert at the end", lambda a, s: not [x for x in s["alerts"] if x.get("active")]),
)



def drop_weights(d: Path) -> None:
    """Delete a finished run's weights: its checkpoint (1.6 GB for SmolLM2-135M: fp32 policy + AdamW state) and
    final model (517 MB). Nine runs kept filled a 100 GB disk quota; the table needs only the summaries."""
    import shutil

    for sub in ("checkpoints", "final"):
        shutil.rmtree(d / sub, ignore_errors=True)


def tail_of(d: Path, k: int, temperature: float, env: dict, log) -> dict | None:
    """``experiments/heldout_tail.py`` on run ``d`` (K answers per question at ``temperature``, the run's own seeds, in
    the run's environment): its row, or None (and a line in the run's log) when it failed."""
    js = d / "heldout_tail.json"
    cmd = [sys.executable, str(Path(__file__).with_name("heldout_tail.py")), str(d), "--k", str(k),
           "--temps", f"{temperature:g}", "--json", str(js)]
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0 or not js.is_file():
        print(f"[robustness] heldout_tail failed (rc {rc}): {' '.join(cmd)}", file=log, flush=True)
        return None
    row = json.loads(js.read_text())[0]
    return {f: row[f] for f in ("k", "temperature", "answers", "echo", "echo_ci95", "echo_examples")} | {
        "wall_s": round(time.perf_counter() - t0, 1)}


def run_one(path: str, seed: int, out: Path, extra: list[str], threads: int = 0, tail: int = 0) -> dict:
    env = harness.child_env()
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if path == "bf16":
        env["MEDRLVR_BF16"] = "1"
    elif path == "fp32":
        env["MEDRLVR_BF16"] = "0"
    else:
        env.pop("MEDRLVR_BF16", None)
    d = out / f"{path}-seed{seed}"
    cmd = [sys.executable, "-c", "import sys; from medrlvr.cli import main; sys.exit(main())", "demo",
           "--output", str(d), f"seed={seed}", *extra]
    t0 = time.perf_counter()
    with open(out / f"{path}-seed{seed}.log", "w") as log:
        rc = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
        row = {"path": path, "seed": seed, "rc": rc, "wall_s": round(wall, 1), "dir": str(d),
               "threads": threads or None}
        if rc == 0 and (d / "summary.json").is_file():
            s = json.loads((d / "summary.json").read_text())
            row |= {"summary": s}
            if tail:   # at the demo's own evaluation temperature (1 when it evaluated greedily)
                row["tail"] = tail_of(d, tail, s["after"].get("temperature") or 1.0, env, log)
    return row


def read_done(res: Path) -> dict:
    done = {}
    if res.is_file():
        for line in res.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[(r["path"], r["seed"])] = r
    return done


def tail_cell(t: dict | None) -> str:
    """The ``--tail`` column: echo count in the answers drawn, with the 95% Wilson interval of its rate."""
    if not t:
        return "failed (see the run's log)"
    lo, hi = t["echo_ci95"]
    return f"{t['echo']} in {t['answers']:,} [{lo:.2%}, {hi:.2%}]"


def table(rows: list[dict]) -> str:
    from medrlvr.demo import echo_count   # the held-out echoes as summary.md counts them

    tail = any("tail" in r for r in rows)
    head = ("| path | seed | accuracy [95% CI] | random | format-valid | letter | echo | top letter | greedy: "
            "letter, top letter | alerts | all criteria | wall s |" + (" tail: echo [95% CI of the rate] |" if tail
                                                                         else ""))
    out = [head, "|" + "---|" * (13 if tail else 12)]
    for r in rows:
        s = r.get("summary")
        if not s:
            out.append(f"| {r['path']} | {r['seed']} | failed (rc {r['rc']}) | | | | | | | | no | {r['wall_s']:.0f} |"
                       + (" |" if tail else ""))
            continue
        a = s["after"]
        ok = all(f(a, s) for _, _, f in CRITERIA)
        ci = a.get("ci95") or [float("nan")] * 2
        alerts = ", ".join(f"{x['monitor']}@{x['onset_step']}{'' if x['active'] else ' (recovered)'}"
                           for x in s["alerts"]) or "none"
        top = max(a["letters"], key=a["letters"].get) if a["letters"] else "-"
        g = a.get("greedy")     # the greedy pass next to a sampled evaluation (summary.json's "greedy")
        gtop = (max(g["letters"], key=g["letters"].get) if g["letters"] else "-") if g else ""
        greedy = f"{g['answered']:.2f}, {gtop} {g['top_letter_share']:.0%}" if g else "(greedy above)"
        out.append(f"| {r['path']} | {r['seed']} | {a['accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | "
                   f"{a['random_baseline']:.3f} | {a['format_valid']:.3f} | {a['answered']:.2f} | "
                   f"{echo_count(a)} | {top} {a['top_letter_share']:.0%} | {greedy} | {alerts} | "
                   f"{'yes' if ok else 'no'} | {r['wall_s']:.0f}{' (' + str(r['threads']) + ' thread)' if r.get('threads') else ''} |"
                   + (f" {tail_cell(r['tail']) if 'tail' in r else ''} |" if tail else ""))
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=harness.ints, default="0,1,2")
    ap.add_argument("--paths", type=harness.names, default="auto,fp32", help="comma-separated: auto, bf16, fp32")
    ap.add_argument("--out", default="runs/robustness")
    ap.add_argument("--threads", type=int, default=0,
                    help="OMP_NUM_THREADS of each run (0: torch's default). Two scripts with --threads 1 and "
                         "disjoint --seeds can share one --out on 2 cores (their wall times then say so)")
    ap.add_argument("--keep-weights", action="store_true",
                    help="keep each run's checkpoint and final model (~2.1 GB a run); by default they are deleted "
                         "once the run's summary is read")
    ap.add_argument("--tail", type=int, default=0, metavar="K",
                    help="also draw K answers per held-out question from each final model (experiments/heldout_tail.py) "
                         "and add their template-echo count with a 95%% interval (0: off)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the cpu-demo preset (probes only)")
    a = ap.parse_args()
    if a.threads < 0:
        ap.error(f"--threads must be >= 0, got {a.threads}")
    if a.tail < 0:
        ap.error(f"--tail must be >= 0, got {a.tail}")
    if not a.seeds or not a.paths:
        ap.error("--seeds and --paths must name one or more")
    bad = [p for p in a.paths if p not in PATHS]
    if bad:
        ap.error(f"--paths: {', '.join(bad)} is not one of {', '.join(PATHS)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = out / "results.jsonl"
    done = read_done(res)
    import torch

    from medrlvr.hardware import cpu_model, fast_bf16

    auto = "bf16" if fast_bf16(torch.device("cpu")) else "fp32"
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}; "
          f"auto = {auto}", flush=True)
    rows = []
    for seed in a.seeds:  # seed-major: both paths of seed 0 come first
        for path in a.paths:
            key = (path, seed)
            done.update(read_done(res))  # another script may share this --out
            if key not in done:
                print(f"[robustness] {path} seed {seed} ...", flush=True)
                done[key] = run_one(path, seed, out, a.overrides, a.threads, a.tail)
                if not a.keep_weights:
                    drop_weights(Path(done[key]["dir"]))
                with open(res, "a") as f:
                    f.write(json.dumps(done[key]) + "\n")
                print(table([done[key]]).splitlines()[-1], flush=True)
            rows.append(done[key])
    # the table holds every run in OUT (other scripts may have added theirs), seed-major
    rank = {"auto": 0, "bf16": 1, "fp32": 2}
    rows = sorted(read_done(res).values(), key=lambda r: (r["seed"], rank.get(r["path"], 3), r["path"]))
    md = (f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), auto = {auto}.\n\n" + table(rows) + "\n")
    (out / "table.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
