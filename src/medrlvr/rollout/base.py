"""Rollout generation behind one small interface.

An engine turns prompts into completions: ``engine.generate(prompts, n, params)`` returns, for each
prompt, ``n`` :class:`Completion` objects with token ids, text, finish reason and (when the engine
provides them) per-token log-probs under the sampling policy. Engines read the live weights of the
policy they were built on, so there is no weight sync step on a single process.

``HFEngine`` uses transformers ``generate`` and is the reference implementation; other engines
(:mod:`medrlvr.rollout.fast`) return the same structures. The registry by name is :mod:`medrlvr.rollout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class SamplingParams:
    """Sampling settings. ``temperature=0`` means greedy. ``stop`` strings end a completion (the stop
    string is kept in the text); ``ignore_eos`` keeps generating past EOS (benchmarks).

    ``prompt_seeds`` (one per prompt) seeds each prompt's samples on their own: prompt ``i``'s completions
    then depend only on ``prompt_seeds[i]`` and the weights, not on the other prompts of the call (the
    trainer uses it so that which rank samples a prompt does not change its samples). ``seed`` seeds the
    whole call otherwise."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ("</answer>",)
    seed: int | None = None
    ignore_eos: bool = False
    prompt_seeds: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str                      # "stop" (a stop string), "eos", or "length"
    logprobs: list[float] | None = None     # per generated token, under the sampling distribution


class RolloutEngine(Protocol):
    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Completion]]: ...


def truncate_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Cut ``text`` right after the first occurrence of any stop string."""
    best = None
    for s in stop:
        i = text.find(s)
        if i >= 0 and (best is None or i + len(s) < best):
            best = i + len(s)
    return (text, False) if best is None else (text[:best], True)


def trim_tokens_to_text(tokenizer, ids: list[int], text: str) -> list[int]:
    """Shortest prefix of ``ids`` whose decoding covers ``text`` (used after a stop string)."""
    for k in range(1, len(ids) + 1):
        if len(tokenizer.decode(ids[:k], skip_special_tokens=False)) >= len(text):
            return ids[:k]
    return ids


def finish(tokenizer, prompt_ids: list[int], ids: list[int], params: SamplingParams, eos_ids: set[int],
           logprobs: list[float] | None = None) -> Completion:
    """Common post-processing: cut at EOS (unless ignored) and at stop strings; set finish reason."""
    reason = "length"
    if not params.ignore_eos:
        for k, t in enumerate(ids):
            if t in eos_ids:
                ids = ids[: k + 1]
                reason = "eos"
                break
    body = [t for t in ids if t not in eos_ids] if reason == "eos" else ids
    text = tokenizer.decode(body, skip_special_tokens=False)
    if params.stop:
        cut, hit = truncate_at_stop(text, params.stop)
        if hit:
            ids = trim_tokens_to_text(tokenizer, ids, cut)
            text, reason = cut, "stop"
    if logprobs is not None:
        logprobs = logprobs[: len(ids)]
    return Completion(list(prompt_ids), list(ids), text, reason, logprobs)


def eos_token_ids(model, tokenizer) -> set[int]:
    ids = set()
    e = getattr(model.generation_config, "eos_token_id", None) if hasattr(model, "generation_config") else None
    for x in ([e] if isinstance(e, int) else list(e or [])) + [tokenizer.eos_token_id]:
        if x is not None:
            ids.add(int(x))
    return ids


class HFEngine:
    """transformers ``generate``, batched with left padding. Log-probs are not returned (the trainer
    recomputes them with a forward pass). With ``params.prompt_seeds`` each prompt's ``n`` samples are one
    ``generate`` call of their own after ``torch.manual_seed(prompt_seeds[i])`` (no padding, no other
    prompt in the batch: the samples are exactly those of the prompt alone). ``synced_gpus`` is passed to
    ``generate`` (FSDP2: ranks that finish early keep running forwards so the all-gathers line up)."""

    def __init__(self, model, tokenizer, batch_size: int = 32):
        self.model, self.tok, self.batch_size = model, tokenizer, batch_size
        self.synced_gpus = False
        self._stop_cache: dict[tuple[str, ...], object] = {}

    def _stopping(self, stop: tuple[str, ...]):
        """transformers' StopStringCriteria, built once per stop tuple (building it scans the vocabulary)."""
        if stop not in self._stop_cache:
            from transformers import StopStringCriteria

            self._stop_cache[stop] = StopStringCriteria(self.tok, list(stop))
        from transformers import StoppingCriteriaList

        return StoppingCriteriaList([self._stop_cache[stop]])

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Completion]]:
        if params.prompt_seeds is not None:
            if len(params.prompt_seeds) != len(prompts):
                raise ValueError(f"{len(params.prompt_seeds)} prompt_seeds for {len(prompts)} prompts")
            out = []
            for p, sd in zip(prompts, params.prompt_seeds):
                one = SamplingParams(**{**params.__dict__, "seed": int(sd), "prompt_seeds": None})
                out.extend(self.generate([p], n, one))
            return out
        tok, model = self.tok, self.model
        if params.seed is not None:
            torch.manual_seed(params.seed)
        eos = eos_token_ids(model, tok)
        flat = [p for p in prompts for _ in range(n)]
        outs: list[Completion] = []
        was_training = model.training
        model.eval()
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            for s in range(0, len(flat), self.batch_size):
                chunk = flat[s:s + self.batch_size]
                enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
                kw = dict(max_new_tokens=params.max_new_tokens, pad_token_id=tok.pad_token_id)
                if params.temperature > 0:
                    kw.update(do_sample=True, temperature=params.temperature, top_p=params.top_p,
                              top_k=params.top_k or None)
                else:
                    kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
                if params.ignore_eos:
                    kw.update(eos_token_id=None, min_new_tokens=params.max_new_tokens)
                else:
                    kw.update(eos_token_id=sorted(eos))
                if params.stop:
                    kw.update(stopping_criteria=self._stopping(tuple(params.stop)))
                if self.synced_gpus:
                    kw.update(synced_gpus=True)
                gen = model.generate(**enc, **kw)
                plen = enc["input_ids"].shape[1]
                for i in range(len(chunk)):
                    pids = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
                    ids = gen[i, plen:].tolist()
                    # rows that ended early are right-padded: finish() cuts at EOS / the stop string
                    outs.append(finish(tok, pids, ids, params, eos))
        finally:
            tok.padding_side = side
            model.train(was_training)
        return [outs[i * n:(i + 1) * n] for i in range(len(prompts))]
