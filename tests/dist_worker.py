"""Worker for tests/test_distributed.py, started by torchrun: runs the trainer jobs (or ``eval`` jobs:
keyword arguments of medrlvr.eval.benchmark.evaluate) given in a JSON file one after another in the same
process group. ``fail`` = [rank, step] raises RuntimeError on that rank in
that step's update (a rank failing mid-step)."""

import json
import sys

import torch

from medrlvr.train.config import build_config
from medrlvr.train.distributed import record
from medrlvr.train.trainer import Trainer


@record
def main(spec_path: str) -> None:
    torch.set_num_threads(1)
    spec = json.loads(open(spec_path).read())
    for job in spec["jobs"]:
        if "eval" in job:   # medrlvr.eval.benchmark.evaluate with the process group up: batches sharded over ranks
            from medrlvr.eval.benchmark import evaluate
            from medrlvr.models import load_policy

            model, tok = load_policy("tiny")
            evaluate(model, tok, **job["eval"])
            continue
        cfg = build_config(job["config"])
        t = Trainer(cfg, job["output"], resume=job.get("resume", False), quiet=True)
        if job.get("fail"):
            rank, step = job["fail"]
            orig = t._update

            def failing(*a, _orig=orig, **k):
                if t.cfg.rank == rank and t.step + 1 == step:
                    raise RuntimeError(f"injected failure on rank {rank} at step {step}")
                return _orig(*a, **k)

            t._update = failing
        t.train(job.get("max_steps"))


if __name__ == "__main__":
    main(sys.argv[1])
