"""What each training step sees: the question stream and the scoring of sampled completions.

- :class:`PromptStream`: an endless, resumable, seeded order over the training questions (one permutation per
  epoch, options re-shuffled per epoch when asked); the trainer, SFT and ``medrlvr verl prepare`` draw from it,
  so the three see the same questions in the same order for the same seed.
- :func:`score_completions`: completions of a batch of prompts -> :class:`~medrlvr.rundir.Sample` rows scored by
  the configured reward scheme.
"""

from __future__ import annotations

import random

from medrlvr.data import MCQ, shuffle_options
from medrlvr.prompts import response_prefix
from medrlvr.reward import RewardConfig, join_prefill, score
from medrlvr.rundir import Sample
from medrlvr.train.config import TrainConfig


class PromptStream:
    """An endless, resumable stream over the records (``rank::world_size`` of them when given; the trainer
    reads the global stream on every rank and slices each step's batch): epoch e visits them in the order
    of a permutation seeded by (seed, e); options are re-shuffled per epoch when asked."""

    def __init__(self, records: list[MCQ], seed: int, shuffle_opts: bool, rank: int = 0, world_size: int = 1):
        self.records = records[rank::world_size]
        if not self.records:
            raise ValueError(f"rank {rank} of {world_size} has no training questions")
        self.seed, self.shuffle_opts = seed, shuffle_opts
        self.epoch, self.pos = 0, 0
        self._order = self._perm()

    def _perm(self) -> list[int]:
        order = list(range(len(self.records)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[MCQ]:
        out = []
        for _ in range(k):
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._perm()
            rec = self.records[self._order[self.pos]]
            self.pos += 1
            out.append(shuffle_options(rec, self.seed * 7919 + self.epoch) if self.shuffle_opts else rec)
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, st: dict) -> None:
        self.epoch, self.pos = int(st["epoch"]), int(st["pos"])
        self._order = self._perm()


def score_completions(recs: list[MCQ], prompts: list[str], groups, cfg: TrainConfig, group_offset: int = 0,
                      reward_fn=None, group_size: int = 1) -> list[Sample]:
    """Score ``prefix + completion`` with the configured scheme, or with ``reward_fn(response, rec)``
    (any callable returning a :class:`~medrlvr.reward.RewardResult`) when given. ``group_size`` consecutive
    prompts form one advantage group (``group_orders``: one prompt per option order of a question)."""
    prefix = response_prefix(cfg.template, cfg.prefill_think)
    rcfg = RewardConfig(no_letter_reward=cfg.reward_no_letter, echo_reward=cfg.reward_echo,
                        format_step_reward=cfg.reward_format_step)
    out = []
    for gi, (rec, prompt, comps) in enumerate(zip(recs, prompts, groups)):
        for c in comps:
            resp = join_prefill(c.text, prefix)
            r = (reward_fn(resp, rec) if reward_fn is not None else
                 score(resp, rec.gold, rec.n_options, scheme=cfg.reward_scheme, options=rec.options, config=rcfg))
            out.append(Sample(rec, prompt, group_offset + gi // group_size, c.prompt_ids, c.token_ids, c.text, resp,
                              c.finish_reason, float(r.reward), r, c.logprobs))
    return out
