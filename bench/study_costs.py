"""Per-unit costs of the study's steps on this machine (the constants of medrlvr.study.estimate).

Each cost is reported twice: wall seconds, and process CPU seconds (user + system) per unit. On a CPU shared
with other jobs the wall time grows with the load, the CPU time much less: ``CPU / threads`` is the quiet-machine
estimate of the wall time.

Runs small pieces of each step kind with the embedded SmolLM2-135M and prints seconds per unit as JSON:
``prefill`` (s per prompt token, loglik), ``decode`` (s per generated token per sequence, cot in a batch),
``train_token`` (s per SFT token, forward + backward), ``rl_sample_token`` (s per sample x max_new_tokens of an
RL step of the study-cpu arm). Usage: ``python bench/study_costs.py [--questions 48]``. Timings on a shared CPU
vary with the load; run it on a quiet machine for the constants.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=48)
    ap.add_argument("--cot-questions", type=int, default=16)
    ap.add_argument("--cot-tokens", type=int, default=96)
    ap.add_argument("--rl-steps", type=int, default=2)
    ap.add_argument("--parts", default="loglik,cot,sft,rl", help="which pieces to time (comma-separated)")
    a = ap.parse_args()
    import torch

    from medrlvr.data import load_any
    from medrlvr.eval.benchmark import evaluate, encode
    from medrlvr.models import load_policy
    from medrlvr.prompts import render
    from medrlvr.sft import SFTConfig, sft
    from medrlvr.study.config import build_study
    from medrlvr.train.trainer import Trainer

    import resource

    parts = set(a.parts.split(","))
    out: dict = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def rss(tag):
        out[f"max_rss_gb_after_{tag}"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        print(json.dumps(out), flush=True)
    recs = load_any("medqa-4opt:test").records
    model, tok = load_policy("smollm2-135m", "fp32")
    qs = recs[: a.questions]
    toks = sum(len(encode(tok, render(r, "direct-chat", tok))) for r in qs)
    if "loglik" in parts:
        c0, t = cpu(), time.perf_counter()
        evaluate(model, tok, {"q": qs}, mode="loglik", template="direct-chat", bootstrap=0, progress=False)
        out["prefill"] = (time.perf_counter() - t) / toks
        out["prefill_cpu"] = (cpu() - c0) / toks
        rss("loglik")
    cq = recs[: a.cot_questions]
    if "cot" in parts:
        c0, t = cpu(), time.perf_counter()
        r = evaluate(model, tok, {"q": cq}, mode="cot", template="chat", max_new_tokens=a.cot_tokens, bootstrap=0,
                     engine="fast", progress=False)
        gen = r["_meta"]["timing"]["q"]["generated_tokens"]
        out["cot_s"] = time.perf_counter() - t
        out["decode"] = out["cot_s"] / max(1, gen)
        out["cot_cpu_s"] = cpu() - c0
        out["cot_prompt_tokens"] = sum(len(encode(tok, render(r, "chat", tok))) for r in cq)
        out["cot_generated_tokens"] = gen
        rss("cot")
    with tempfile.TemporaryDirectory() as d:
        if "sft" in parts:
            cfg = SFTConfig(model="smollm2-135m", train_data="medqa-4opt:dev", train_limit=64, dev_limit=8, max_steps=4,
                            batch_size=16, micro_batch_size=2, eval_every_epoch=False)
            c0, t = cpu(), time.perf_counter()
            sft(cfg, d, quiet=True)
            dt = time.perf_counter() - t
            ntok = sum(len(encode(tok, render(x, "direct"))) + 2 for x in load_any("medqa-4opt:dev").records[:64])
            out["train_token"] = dt / ntok
            out["train_token_cpu"] = (cpu() - c0) / ntok
            rss("sft")
        if "rl" in parts:
            study = build_study("study-cpu")
            tc = study.train_config("rlvr", 0)
            tc.max_steps, tc.eval_limit = a.rl_steps, 0
            tr = Trainer(tc, d + "/rl", quiet=True)
            c0, t = cpu(), time.perf_counter()
            for _ in range(a.rl_steps):
                tr.train_step()
            units = a.rl_steps * tc.rollout_batch * tc.max_new_tokens
            out["rl_sample_token"] = (time.perf_counter() - t) / units
            out["rl_sample_token_cpu"] = (cpu() - c0) / units
            rss("rl")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
