"""Data-parallel scaling on this CPU: steps/s of cpu-demo-shaped GRPO steps with 1 and 2 processes
(torchrun, gloo, one thread each) and the ratio; peak memory per rank with DDP against FSDP2.

Work per step (the same global batch for every world size): SmolLM2-135M (the cpu-demo model, fp32
weights, bf16 autocast where native), ``--prompts`` prompts x ``--samples`` samples, exactly
``--tokens`` new tokens per sample (``ignore_eos``, no stop string: fixed lengths, so the work does not
depend on what is sampled), the cpu-demo micro-batch of 8, ``reward_scheme: shaped``, ``kl_coef: 0``.
The first step is a warm-up (kernel build, allocator) and is not timed.

Runs, one after another in this one invocation so the ratio is measured side by side:
  1. 1 process,  engine fast (the cpu-demo engine), DDP;   2. 2 processes, the same;
  3. 2 processes, engine hf, DDP;                            4. 2 processes, engine hf, FSDP2
(FSDP2 needs the hf engine). Peak memory is each rank's maximum RSS (``ru_maxrss``).

    python bench/scaling.py                      # defaults: 4 x 8 samples, 48 tokens, 2 timed steps
    python bench/scaling.py --steps 3 --tokens 80

On a shared machine the absolute figures move with the other jobs' load: read the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(a) -> None:
    import torch

    torch.set_num_threads(1)
    from medrlvr.train import distributed
    from medrlvr.train.config import build_config
    from medrlvr.rollout import SamplingParams
    from medrlvr.train.trainer import Trainer

    cfg = build_config("cpu-demo", [f"prompts_per_step={a.prompts}", f"samples_per_prompt={a.samples}",
                                    f"max_new_tokens={a.tokens}", f"max_steps={a.steps + 1}", f"engine={a.engine}",
                                    f"parallel={a.parallel}", "eval_limit=0", "save_every=0", "eval_every=0"])
    t = Trainer(cfg, a.out, quiet=True)
    gen = t.engine.generate

    def fixed(prompts, n, params):   # fixed lengths: no EOS, no stop string
        return gen(prompts, n, SamplingParams(**{**params.__dict__, "ignore_eos": True, "stop": ()}))

    t.engine.generate = fixed
    times, recs = [], []
    for i in range(a.steps + 1):
        t0 = time.perf_counter()
        rec = t.train_step()
        distributed.all_true(True)   # a barrier: the step ends when the slowest rank is done
        times.append(time.perf_counter() - t0)
        recs.append(rec)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peaks = distributed.gather_objects(rss_mib)
    if t.is_main:
        timed = times[1:]
        Path(a.result).write_text(json.dumps({
            "world_size": cfg.world_size, "engine": a.engine, "parallel": a.parallel,
            "step_s": timed, "steps_per_s": len(timed) / sum(timed),
            "rollout_s": [r["rollout_s"] for r in recs[1:]], "update_s": [r["update_s"] for r in recs[1:]],
            "response_tokens": recs[-1]["response_tokens"], "peak_rss_mib_per_rank": peaks}))


def run(nproc: int, engine: str, parallel: str, a, tmp: Path) -> dict:
    res = tmp / f"r_{nproc}_{engine}_{parallel}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", __file__,
           "--worker", "--engine", engine, "--parallel", parallel, "--prompts", str(a.prompts), "--samples",
           str(a.samples), "--tokens", str(a.tokens), "--steps", str(a.steps), "--out", str(tmp / res.stem),
           "--result", str(res)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"run {nproc} x {engine}/{parallel} failed:\n{p.stderr[-3000:]}")
    r = json.loads(res.read_text())
    r["wall_s"] = time.perf_counter() - t0
    print(f"  {nproc} proc  {engine:<4} {parallel:<5}  {r['steps_per_s']:.4f} steps/s  (steps {', '.join(f'{x:.1f}' for x in r['step_s'])} s; "
          f"rollout {sum(r['rollout_s']) / len(r['rollout_s']):.1f} s, update {sum(r['update_s']) / len(r['update_s']):.1f} s)  "
          f"peak RSS/rank {', '.join(f'{x:.0f}' for x in r['peak_rss_mib_per_rank'])} MiB", flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up step)")
    ap.add_argument("--skip-memory", action="store_true", help="only the 1- vs 2-process steps/s")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--engine", default="fast", help=argparse.SUPPRESS)
    ap.add_argument("--parallel", default="ddp", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return
    import platform
    import tempfile

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    print(f"CPU: {cpu}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at start")
    print(f"work per step: SmolLM2-135M GRPO, {a.prompts} prompts x {a.samples} samples x {a.tokens} new tokens "
          f"(fixed), micro-batch 8, one thread per process")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        r1 = run(1, "fast", "ddp", a, tmp)
        r2 = run(2, "fast", "ddp", a, tmp)
        print(f"steps/s 2 processes / 1 process: {r2['steps_per_s'] / r1['steps_per_s']:.2f} "
              f"(ideal 2.00 on 2 idle cores)")
        if not a.skip_memory:
            rd = run(2, "hf", "ddp", a, tmp)
            rf = run(2, "hf", "fsdp2", a, tmp)
            print(f"peak RSS per rank, 2 processes, hf engine: DDP {max(rd['peak_rss_mib_per_rank']):.0f} MiB, "
                  f"FSDP2 {max(rf['peak_rss_mib_per_rank']):.0f} MiB "
                  f"(ratio {max(rf['peak_rss_mib_per_rank']) / max(rd['peak_rss_mib_per_rank']):.2f}); "
                  f"steps/s FSDP2 / DDP {rf['steps_per_s'] / rd['steps_per_s']:.2f}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end (a shared machine: other jobs inflate the times)")


if __name__ == "__main__":
    main()
