"""The study's time estimate, printed before it starts: a cost per unit of work for each kind of step.

The costs are wall seconds on a quiet 2-core AMD EPYC (Zen 4, AVX512-BF16, native bf16) for the embedded
SmolLM2-135M (sources next to each number; docs/results/study-cpu.md compares the estimate with a full run);
other CPUs, and a CPU shared with other jobs, are slower. No estimate is printed
for other models or with a GPU (the costs were not measured there).

Units: ``prefill`` seconds per prompt token (a no-grad forward under bf16 autocast), ``decode`` seconds per
generated token of one sequence inside a batch, ``train_token`` seconds per token of a forward + backward
(SFT), ``rl_sample_token`` seconds per sample per ``max_new_tokens`` of an RL step (rollout, scoring, update).
A ``cot`` answer is counted at half of ``max_new_tokens`` (SmolLM2's answers stop at ``</answer>`` or its end of
text well before the limit: 32 tokens on average at a limit of 96 in the measurement).
"""

from __future__ import annotations

import math
import sys
from typing import Any

from medrlvr.study.config import StudyConfig
from medrlvr.study.steps import Step, Workspace

COSTS: dict[str, dict[str, float]] = {
    # prefill: 270-330 prompt tokens/s of loglik scoring (docs/results/sft-loglik-200) -> 2.5 ms a token;
    # train_token: an SFT step of 16 MedQA questions (~3,800 tokens) in 16-18 s under bf16 autocast (README);
    # rl_sample_token: a cpu-demo step (32 samples x 80 tokens) in ~13.5 s (docs/decisions/cpu-demo-preset.md), x1.5
    # for MedQA's longer prompts; decode: one sequence's token inside a batch of 16 (bench/study_costs.py)
    "smollm2-135m": {"prefill": 2.5e-3, "decode": 6e-3, "train_token": 4.3e-3, "rl_sample_token": 8e-3},
    "tiny": {"prefill": 2e-5, "decode": 2e-4, "train_token": 5e-5, "rl_sample_token": 2e-4},
}
DIRECT_TOKENS = 5
COT_LENGTH = 0.5     # a cot answer's expected share of max_new_tokens
COT_PROMPT = 1.5     # the chat / R1-Zero prompt's length against the direct prompt's


def _prompt_tokens(ws: Workspace) -> dict[str, float]:
    """Mean prompt length in tokens per benchmark (the direct prompt; ~4 characters a token)."""
    from medrlvr.prompts import render

    return {b: sum(len(render(r, "direct")) for r in recs) / max(1, len(recs)) / 4.0
            for b, recs in ws.benchmarks().items()}


def estimate_steps(cfg: StudyConfig, steps: list[Step], ws: Workspace) -> dict[str, float] | None:
    """Estimated seconds per step, or None where no costs were measured (another model, a GPU)."""
    import torch

    c = COSTS.get(cfg.model)
    if c is None or torch.cuda.is_available():
        return None
    pt = _prompt_tokens(ws)
    n = {b: len(v) for b, v in ws.benchmarks().items()}
    e = cfg.eval
    out: dict[str, float] = {}
    for s in steps:
        if s.kind == "eval":
            prefill = sum(n[b] * pt[b] for b in n) * c["prefill"]
            if s.mode == "loglik":
                t = prefill
            elif s.mode == "direct":
                t = prefill + sum(n.values()) * e.n_samples * DIRECT_TOKENS * c["decode"]
            else:
                t = COT_PROMPT * prefill + sum(n.values()) * e.n_samples * COT_LENGTH * e.max_new_tokens * c["decode"]
        elif s.kind == "train" and s.arm == "sft":
            sc = cfg.sft_config(s.seed)
            from medrlvr.data import load_any

            recs = load_any(sc.train_data, sc.data_root, sc.columns).records
            n_train = len(recs[: sc.train_limit] if sc.train_limit else recs)
            n_dev = min(sc.dev_limit or n_train, max(1, round(sc.dev_fraction * n_train))) if not sc.dev_data \
                else (sc.dev_limit or 300)
            toks = sum(len(render_direct(r)) for r in recs[:200]) / max(1, min(200, len(recs))) / 4.0
            spe = math.ceil(n_train * (1 - sc.dev_fraction) / sc.batch_size)
            steps_ = sc.max_steps or sc.epochs * spe
            per_lr = (steps_ // spe if sc.eval_every_epoch else 0) + (0 if sc.eval_every_epoch and steps_ % spe == 0
                                                                      else 1)
            evals = len(sc.lrs) * per_lr + 1
            t = len(sc.lrs) * steps_ * sc.batch_size * toks * c["train_token"] + evals * n_dev * toks * c["prefill"]
        elif s.kind == "train":
            tc = cfg.train_config(s.arm, s.seed)
            per_step = tc.rollout_batch * tc.max_new_tokens * c["rl_sample_token"]
            n_evals = 2 + (tc.max_steps // tc.eval_every if tc.eval_every else 0)
            ev = n_evals * (tc.eval_limit or 100) * tc.eval_samples * (tc.eval_max_new_tokens or tc.max_new_tokens) \
                * c["decode"]
            t = tc.max_steps * per_step + ev
        else:
            continue
        out[s.id] = t
    return out


def render_direct(rec) -> str:
    from medrlvr.prompts import render

    return render(rec, "direct")


def print_estimate(cfg: StudyConfig, steps: list[Step], ws: Workspace, done: list[str],
                   stream: Any = None) -> float | None:
    """Print the estimate of the steps not done (one line each and the total); returns the total seconds."""
    stream = stream or sys.stdout
    est = estimate_steps(cfg, steps, ws)
    if est is None:
        print(f"[study] no time estimate for {cfg.model} here (costs measured for "
              f"{', '.join(COSTS)} on CPU only)", file=stream, flush=True)
        return None
    todo = {k: v for k, v in est.items() if k not in done}
    for k, v in todo.items():
        print(f"[study] estimate {k}: {v / 60:.1f} min", file=stream)
    total = sum(todo.values())
    print(f"[study] estimate: {total / 60:.0f} min for {len(todo)} step(s) on a 2-core Zen 4 CPU with native bf16 "
          f"({len(done)} done)", file=stream, flush=True)
    return total
