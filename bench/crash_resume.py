"""Crash harness: SIGKILL `tiny` training at every file operation of its saves and logs, and at random
moments, resume until done, and compare the final weights, metrics.jsonl and samples.jsonl with those of
an uninterrupted run.

    python bench/crash_resume.py            # every fault point + 30 random kills
    python bench/crash_resume.py --random 10 --max-points 20

Each run is a forked child of this process (modules and tokenizer loaded once), one CPU thread.
* Fault-point kills: a reference run records the fault points it passes (``MEDRLVR_FAULT_TRACE``,
  :mod:`medrlvr.fileio`); run k is killed by ``MEDRLVR_FAULT=kill:*:k`` at the k-th one (a SIGKILL the
  child sends itself, between two file operations: after the temp file, before the rename, ...).
* Random kills: the parent sends SIGKILL after a uniform random delay in [0, 1.1 x the reference run's
  duration].
After a kill the run is resumed (``resume=True``) when a complete checkpoint exists, else restarted
(what a user does: ``--resume`` says there is nothing to resume). The setting moves the weights (the
``shaped`` reward is -1 for every sample of a random model, so an entropy bonus provides the gradient):
the script asserts that the final weights differ from the initial ones.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402, F401  (puts src/ on the path)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from medrlvr.train.config import build_config  # noqa: E402
from medrlvr.hardware import cpu_model  # noqa: E402
from medrlvr.models import load_tokenizer, make_tiny_model  # noqa: E402
from medrlvr.train.resume import complete_checkpoints  # noqa: E402
from medrlvr.train.trainer import Trainer  # noqa: E402

CFG = {"max_steps": 4, "save_every": 1, "keep_checkpoints": 2, "eval_every": 2, "eval_limit": 1,
       "max_new_tokens": 6, "prompts_per_step": 2, "samples_per_prompt": 2, "micro_batch_size": 4,
       "reward_scheme": "shaped", "entropy_coef": 0.05, "lr": 1e-3}
TIMING = {"rollout_s", "update_s", "tokens_per_s"}
TOK = None


def _child(out: Path, resume: bool, env: dict) -> None:
    os.environ.update(env)
    log = os.open(str(out.parent / f"{out.name}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    torch.set_num_threads(1)
    cfg = build_config("tiny", CFG)
    model = make_tiny_model(seed=cfg.seed, vocab_size=len(TOK))
    model.config.pad_token_id = TOK.pad_token_id
    Trainer(cfg, out, resume=resume, model=model, tokenizer=TOK, quiet=True).train()


def run(out: Path, resume: bool = False, env: dict | None = None, kill_after: float | None = None,
        timeout: float = 600) -> str:
    """Run one child; returns 'done', 'killed' (by its fault point or by us) or 'failed'."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _child(out, resume, env or {})
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    t0 = time.monotonic()
    killed_by_us = False
    while True:
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid:
            break
        el = time.monotonic() - t0
        if kill_after is not None and el >= kill_after and not killed_by_us:
            os.kill(pid, signal.SIGKILL)
            killed_by_us = True
        if el > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "failed"
        time.sleep(0.005)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "killed"
    return "done" if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else "failed"


def finish(out: Path) -> tuple[str, int]:
    """Resume (or restart when no complete checkpoint exists) until the run completes."""
    restarts = 0
    for _ in range(3):
        resumable = bool(complete_checkpoints(out / "checkpoints"))
        restarts += not resumable
        r = run(out, resume=resumable)
        if r == "done":
            return ("resumed" if resumable else "restarted"), restarts
    return "failed", restarts


def snapshot(out: Path) -> dict:
    w = load_file(str(out / "final" / "model.safetensors"))
    m = [{k: v for k, v in json.loads(x).items() if k not in TIMING}
         for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    s = (out / "samples.jsonl").read_text(encoding="utf-8")
    return {"weights": w, "metrics": m, "samples": s}


def same(a: dict, b: dict) -> bool:
    return (a["weights"].keys() == b["weights"].keys()
            and all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
            and a["metrics"] == b["metrics"] and a["samples"] == b["samples"])


def main() -> int:
    global TOK
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--random", type=int, default=30, help="random-moment kills (default 30)")
    ap.add_argument("--max-points", type=int, default=0, help="fault-point kills: at most this many (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.random < 0 or a.max_points < 0:
        ap.error("--random and --max-points must be >= 0")
    torch.set_num_threads(1)
    TOK = load_tokenizer("tiny")
    rng = random.Random(a.seed)
    root = Path(tempfile.mkdtemp(prefix="crash_resume_"))
    ref_dir = root / "ref"
    trace = root / "trace.txt"
    t0 = time.monotonic()
    assert run(ref_dir, env={"MEDRLVR_FAULT_TRACE": str(trace)}) == "done", (ref_dir.parent / "ref.log").read_text()
    t_ref = time.monotonic() - t0
    ref = snapshot(ref_dir)
    init = make_tiny_model(seed=0, vocab_size=len(TOK)).state_dict()
    moved = [k for k in ref["weights"] if not torch.equal(ref["weights"][k], init[k].to(ref["weights"][k].dtype))]
    assert moved, "the weights did not move: the comparison would prove nothing"
    labels = trace.read_text().split()
    print(f"reference: {CFG['max_steps']} steps in {t_ref:.1f} s, {len(labels)} fault points "
          f"({len(set(labels))} kinds), {len(moved)}/{len(ref['weights'])} weight tensors moved from init")
    points = list(range(1, len(labels) + 1))
    if a.max_points and len(points) > a.max_points:
        points = sorted(rng.sample(points, a.max_points))
    results = []  # (kind, where, outcome, identical)
    for k in points:
        d = root / f"op{k}"
        r = run(d, env={"MEDRLVR_FAULT": f"kill:*:{k}"})
        if r != "killed":
            results.append(("op", labels[k - 1], f"not killed ({r})", False))
            continue
        how, _ = finish(d)
        results.append(("op", labels[k - 1], how, how != "failed" and same(ref, snapshot(d))))
    for i in range(a.random):
        d = root / f"rand{i}"
        t = rng.uniform(0, 1.1 * t_ref)
        r = run(d, kill_after=t)
        if r != "killed":
            results.append(("random", f"{t:.2f}s", f"finished before the kill ({r})", None))
            continue
        how, _ = finish(d)
        results.append(("random", f"{t:.2f}s", how, how != "failed" and same(ref, snapshot(d))))
    for kind, where, how, ok in results:
        if ok is False:
            print(f"  MISMATCH {kind} kill at {where}: {how}")
    kills = [r for r in results if r[3] is not None]
    ident = sum(1 for r in kills if r[3])
    op = [r for r in kills if r[0] == "op"]
    rnd = [r for r in kills if r[0] == "random"]
    print(f"fault-point kills: {len(op)} kills / {sum(r[3] for r in op)} identical resumes "
          f"(resumed {sum(r[2] == 'resumed' for r in op)}, restarted from scratch {sum(r[2] == 'restarted' for r in op)})")
    print(f"random-moment kills: {len(rnd)} kills / {sum(r[3] for r in rnd)} identical resumes "
          f"(resumed {sum(r[2] == 'resumed' for r in rnd)}, restarted {sum(r[2] == 'restarted' for r in rnd)}; "
          f"{sum(1 for r in results if r[3] is None)} runs finished before their kill time)")
    print(f"total: {len(kills)} kills / {ident} identical resumes "
          f"(weights, metrics.jsonl without timings, samples.jsonl); {time.monotonic() - t0:.0f} s, "
          f"CPU: {cpu_model()} ({os.cpu_count()} cores)")
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    return 0 if ident == len(kills) and len(kills) > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
