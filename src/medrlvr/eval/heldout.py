"""The held-out evaluation of a policy in the training format: sampled or greedy chain-of-thought answers,
scored by the training reward.

Used by the trainer before, during and after training, the demo and SFT's reports; one sampling seed per
question (:func:`eval_prompt_seeds`) makes the answers of a question independent of the batch and of the rank
that draws them.
"""

from __future__ import annotations

import zlib

from medrlvr.analysis.stages import heldout_letter_metrics
from medrlvr.data import MCQ
from medrlvr.prompts import render
from medrlvr.rollout import SamplingParams
from medrlvr.train.config import TrainConfig
from medrlvr.train.stream import score_completions


DETAIL_KEYS = ("correct", "format_ok", "samples")   # the per-question parts of evaluate_policy(details=True)


def eval_prompt_seeds(records: list[MCQ], seed: int) -> tuple[int, ...]:
    """One sampling seed per held-out question, from the run's seed and the question's id (not its position,
    so a sharded evaluation and the evaluations before and after training draw each question's answers
    from the same seed)."""
    return tuple((zlib.crc32(str(r.id).encode()) ^ (seed * 2_654_435_761)) % 2 ** 62 for r in records)


def evaluate_policy(engine, records: list[MCQ], cfg: TrainConfig, tokenizer, batch: int = 32,
                    details: bool = False, samples: int | None = None,
                    temperature: float | None = None) -> dict[str, float]:
    """Held-out evaluation: greedy decoding (``eval_samples`` 1, ``eval_temperature`` 0), or ``eval_samples``
    answers per question sampled at ``eval_temperature`` (``samples`` / ``temperature`` override the config).
    Returns accuracy, format-valid rate, mean response length (means over every answer), ``eval_samples``
    (answers per question), the letter figures of :func:`~medrlvr.analysis.stages.heldout_letter_metrics`
    (for the ``heldout_*`` monitors) and, with ``details``, the per-answer ``correct`` / ``format_ok`` lists
    and samples, question by question (``eval_samples`` consecutive entries per question)."""
    k = cfg.eval_samples if samples is None else samples
    temp = cfg.eval_temperature if temperature is None else temperature
    if k < 1 or temp < 0 or (k > 1 and temp == 0):
        raise ValueError(f"evaluation: {k} answers per question at temperature {temp}: needs k >= 1, and "
                         "temperature > 0 when k > 1")
    prompts = [render(r, cfg.template, tokenizer, cfg.prefill_think) for r in records]
    groups = []
    seeds = eval_prompt_seeds(records, cfg.seed) if temp > 0 else None
    for s in range(0, len(prompts), batch):
        params = SamplingParams(max_new_tokens=cfg.eval_max_new_tokens or cfg.max_new_tokens, temperature=temp,
                                top_p=cfg.top_p if temp > 0 else 1.0, stop=tuple(cfg.stop),
                                prompt_seeds=seeds[s:s + batch] if seeds else None)
        groups.extend(engine.generate(prompts[s:s + batch], k, params))
    samples_ = score_completions(records, prompts, groups, cfg)
    n = max(1, len(samples_))
    out = {"eval_accuracy": sum(s.result.correct for s in samples_) / n,
           "eval_format_valid": sum(s.result.format_ok for s in samples_) / n,
           "eval_response_chars": sum(len(s.completion) for s in samples_) / n,
           "eval_n": len(records), "eval_samples": k, "eval_temperature": float(temp)}
    out.update(heldout_letter_metrics((s.result.pred, s.rec.gold) for s in samples_))
    if details:
        out["correct"] = [float(s.result.correct) for s in samples_]
        out["format_ok"] = [float(s.result.format_ok) for s in samples_]
        out["samples"] = samples_
    return out
