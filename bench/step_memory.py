"""Peak memory (RSS) and time of a ``cpu-demo`` training step: before vs after the fast path.

Each configuration runs in its own fresh process (peak RSS is a per-process high-water mark), side by
side in one invocation:

* ``before``: the transformers ``generate`` rollout (``engine=hf``) and a training forward over every
  full prompt+response row (``share_prompt=false``), as the trainer ran before the fast-rollout work;
* ``after``: the ``cpu-demo`` preset as shipped (``engine=fast``, ``share_prompt=true``).

Both use the ``cpu-demo`` batch (4 prompts x 8 samples, <= 80 new tokens) on SmolLM2-135M, ``--steps``
steps (default 2; the first includes warm-up). Per configuration: RSS after building the trainer
(model, optimizer state not yet allocated), peak RSS after the steps, the growth, and seconds per step.
The last line: ``peak_rss_mb_before=<..> peak_rss_mb_after=<..> ratio=<after / before>``.

    PYTHONPATH=src .venv/bin/python bench/step_memory.py [--steps 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = {
    "before": {"engine": "hf", "share_prompt": False},
    "after": {},
}

_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from medrlvr.train.config import build_config
from medrlvr.train.trainer import Trainer

def rss_mb():  # peak resident set size of this process so far (Linux: KiB)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

ov = json.loads(sys.argv[2])
steps = int(sys.argv[3])
cfg = build_config("cpu-demo", {**ov, "max_steps": steps, "eval_every": 0, "save_every": 0})
t = Trainer(cfg, sys.argv[4], quiet=True)
out = {"rss_after_init_mb": rss_mb(), "step_s": []}
for _ in range(steps):
    t0 = time.perf_counter()
    t.train_step()
    out["step_s"].append(time.perf_counter() - t0)
out["peak_rss_mb"] = rss_mb()
print("RESULT " + json.dumps(out), flush=True)
"""


def run_config(name: str, overrides: dict, steps: int, workdir: str) -> dict:
    src = str(Path(__file__).resolve().parents[1] / "src")
    cmd = [sys.executable, "-c", _CHILD, src, json.dumps(overrides), str(steps), os.path.join(workdir, name)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{name}: the training process failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for both configurations (e.g. max_new_tokens=128)")
    a = p.parse_args(argv)
    if a.steps < 1:
        p.error("--steps must be >= 1")
    extra = {}
    for kv in a.set:
        if "=" not in kv:
            p.error(f"--set expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        extra[k] = v
    res = {}
    with tempfile.TemporaryDirectory() as d:
        for name, ov in CONFIGS.items():
            r = res[name] = run_config(name, {**extra, **ov}, a.steps, d)
            print(f"{name:6s} {json.dumps({**extra, **ov}) if ov or extra else '(cpu-demo as shipped)'}: "
                  f"RSS after init {r['rss_after_init_mb']:.0f} MB, peak {r['peak_rss_mb']:.0f} MB "
                  f"(+{r['peak_rss_mb'] - r['rss_after_init_mb']:.0f} MB in the steps), "
                  f"s/step {[round(x, 1) for x in r['step_s']]}", flush=True)
    b, f = res["before"]["peak_rss_mb"], res["after"]["peak_rss_mb"]
    print(f"peak_rss_mb_before={b:.0f} peak_rss_mb_after={f:.0f} ratio={f / b:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
