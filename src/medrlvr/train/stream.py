"""What each training step sees: the question stream and the scoring of sampled completions.

- :class:`PromptStream`: an endless, resumable, seeded order over the training questions (one permutation per
  epoch, options re-shuffled per epoch when asked); the trainer, SFT and ``medrlvr verl prepare`` draw from it,
  so the three see the same questions in the same order for the same seed.
- :func:`stream_for`: the stream of a config, with its curriculum (:mod:`medrlvr.data.difficulty`);
- :func:`uniform_groups`: the groups dynamic sampling drops (all rewards, or all correctness, alike);
- :func:`score_completions`: completions of a batch of prompts -> :class:`~medrlvr.rundir.Sample` rows scored by
  the configured reward scheme.
"""

from __future__ import annotations

import random

from medrlvr.data import MCQ, shuffle_options
from medrlvr.data.difficulty import Curriculum, in_band, load_curriculum
from medrlvr.prompts import response_prefix
from medrlvr.reward import RewardConfig, join_prefill, score
from medrlvr.rundir import Sample
from medrlvr.train.config import TrainConfig


class PromptStream:
    """An endless, resumable stream over the records (``rank::world_size`` of them when given; the trainer
    reads the global stream on every rank and slices each step's batch): epoch e visits them in the order
    of a permutation seeded by (seed, e); options are re-shuffled per epoch when asked.

    ``curriculum`` (:class:`~medrlvr.data.difficulty.Curriculum`, see :func:`stream_for`) changes what is drawn:
    ``filter`` keeps the records in its band; ``easy_to_hard`` keeps them too and sorts each epoch's permutation
    by pass rate, highest first (a stable sort: ties keep the seeded order); ``pools`` draws each question from
    a pool picked with probability proportional to its weight (seeded by the run seed and the draw's index),
    each pool with its own seeded epochs. Without one the stream is exactly what it always was."""

    def __init__(self, records: list[MCQ], seed: int, shuffle_opts: bool, rank: int = 0, world_size: int = 1,
                 curriculum: Curriculum | None = None):
        self.curriculum = curriculum
        if curriculum is not None and curriculum.kind in ("filter", "easy_to_hard"):
            records = [r for r in records if r.id in curriculum.rates and in_band(curriculum.rates[r.id],
                                                                                 curriculum.band)]
        self.records = records[rank::world_size]
        if not self.records:
            raise ValueError(f"rank {rank} of {world_size} has no training questions")
        self.seed, self.shuffle_opts = seed, shuffle_opts
        self.epoch, self.pos = 0, 0
        self.draws = 0
        self.pools: list[list[MCQ]] = []
        self.pool_state: list[list[int]] = []      # per pool: [epoch, pos]
        if curriculum is not None and curriculum.kind == "pools":
            self.pools = [[] for _ in curriculum.pools]
            for r in self.records:
                i = curriculum.pool_of(r.id)
                if i is not None:
                    self.pools[i].append(r)
            self.pool_state = [[0, 0] for _ in self.pools]
            self._pool_orders = [self._pool_perm(i) for i in range(len(self.pools))]
        self._order = self._perm()

    def _perm(self) -> list[int]:
        order = list(range(len(self.records)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        if self.curriculum is not None and self.curriculum.kind == "easy_to_hard":
            rates = self.curriculum.rates
            order.sort(key=lambda i: -rates[self.records[i].id])
        return order

    def _pool_perm(self, i: int) -> list[int]:
        order = list(range(len(self.pools[i])))
        random.Random((self.seed * 1_000_003 + self.pool_state[i][0]) * 101 + i).shuffle(order)
        return order

    def _take_pool(self) -> MCQ:
        cur = self.curriculum
        live = [i for i, p in enumerate(self.pools) if p]
        i = random.Random(self.seed * 1_000_033 + self.draws).choices(live, [cur.pools[j][2] for j in live])[0]
        self.draws += 1
        st = self.pool_state[i]
        if st[1] >= len(self._pool_orders[i]):
            st[0], st[1] = st[0] + 1, 0
            self._pool_orders[i] = self._pool_perm(i)
        rec = self.pools[i][self._pool_orders[i][st[1]]]
        st[1] += 1
        return shuffle_options(rec, self.seed * 7919 + st[0]) if self.shuffle_opts else rec

    def take(self, k: int) -> list[MCQ]:
        if self.pools:
            return [self._take_pool() for _ in range(k)]
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
        if self.pools:
            return {"epoch": self.epoch, "pos": self.pos, "draws": self.draws, "pools": [list(x) for x in self.pool_state]}
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, st: dict) -> None:
        self.epoch, self.pos = int(st["epoch"]), int(st["pos"])
        self._order = self._perm()
        if self.pools:
            if "pools" not in st or len(st["pools"]) != len(self.pools):
                raise ValueError("the checkpoint's question stream has no state for these curriculum pools")
            self.draws = int(st["draws"])
            self.pool_state = [[int(e), int(p)] for e, p in st["pools"]]
            self._pool_orders = [self._pool_perm(i) for i in range(len(self.pools))]


def stream_for(cfg: TrainConfig, records: list[MCQ]) -> PromptStream:
    """The trainer's question stream for ``cfg``: its seed, option shuffling and curriculum (the difficulty file
    read and checked against ``records``, :func:`medrlvr.data.difficulty.load_curriculum`)."""
    cur = load_curriculum(cfg.curriculum, cfg.difficulty_file, cfg.curriculum_bands, records, cfg.train_data)
    return PromptStream(records, cfg.seed, cfg.shuffle_options, curriculum=cur)


def uniform_groups(samples: list[Sample], on: str) -> set[int]:
    """The groups whose samples all score alike: the same reward (``on="reward"``) or the same correctness
    (``on="correct"``), the groups :attr:`~medrlvr.train.config.TrainConfig.dynamic_sampling` drops. A group of
    wrong answers that differ in format is uniform on ``correct`` but not on ``reward``."""
    vals: dict[int, set] = {}
    for x in samples:
        vals.setdefault(x.group, set()).add(bool(x.result.correct) if on == "correct" else x.reward)
    return {g for g, v in vals.items() if len(v) == 1}


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
                 score(resp, rec.gold, rec.n_options, scheme=cfg.reward_scheme, options=rec.options, config=rcfg,
                       prefill=None))                     # resp is joined above
            out.append(Sample(rec, prompt, group_offset + gi // group_size, c.prompt_ids, c.token_ids, c.text, resp,
                              c.finish_reason, float(r.reward), r, c.logprobs))
    return out
