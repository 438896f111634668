"""Curricula over a difficulty file (filter, easy-to-hard, pools), what dynamic sampling drops (reward or
correctness), the per-step log and the verl mapping; on the tiny model and hand-made difficulty files."""

import dataclasses
import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from medrlvr.data import load_any
from medrlvr.data.difficulty import FORMAT, load_curriculum, question_hash
from medrlvr.reward import score
from medrlvr.rundir import Sample
from medrlvr.train.config import PRESETS, build_config
from medrlvr.train.stream import PromptStream, stream_for, uniform_groups
from medrlvr.train.trainer import Trainer

TRAIN = load_any("starter:train").records
RATES = {r.id: round((i % 9) / 8, 6) for i, r in enumerate(TRAIN)}        # 0, 1/8, ..., 1, 0, 1/8, ...
SMALL = {"model": "tiny", "prompts_per_step": 2, "samples_per_prompt": 2, "max_new_tokens": 6, "micro_batch_size": 4,
         "eval_limit": 2, "max_steps": 1, "kl_coef": 0.0, "algo": "grpo"}


@pytest.fixture
def dfile(tmp_path):
    p = tmp_path / "train.difficulty.jsonl"
    lines = [{"format": FORMAT, "version": 1, "source": "starter:train", "model": "m", "mode": "cot", "k": 8}]
    lines += [{"id": r.id, "hash": question_hash(r), "k": 8, "correct": round(8 * RATES[r.id]),
               "pass_rate": RATES[r.id]} for r in TRAIN]
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return p


def test_presets_keep_their_behaviour():
    for name in PRESETS:
        c = build_config(name)
        assert (c.curriculum, c.difficulty_file, c.curriculum_bands, c.dynamic_sampling_on) == \
            ("none", None, "0:1", "reward")
        s = stream_for(c, TRAIN)
        assert s.curriculum is None
        ref = PromptStream(TRAIN, c.seed, c.shuffle_options)
        assert [r.id for r in s.take(100)] == [r.id for r in ref.take(100)]


def test_config_refusals(dfile):
    for over, key in ((["curriculum=filter"], "difficulty_file"), (["curriculum=harder"], "curriculum"),
                      ([f"difficulty_file={dfile}", "curriculum=filter", "curriculum_bands=0.2"], "curriculum_bands"),
                      ([f"difficulty_file={dfile}", "curriculum=pools", "curriculum_bands=0:1=0"], "curriculum_bands"),
                      (["dynamic_sampling_on=format"], "dynamic_sampling_on")):
        with pytest.raises(ValueError, match=f"config '{key}'"):
            build_config("tiny", over)


def test_filter_and_easy_to_hard_streams(dfile):
    cur = load_curriculum("filter", str(dfile), "1/8:7/8", TRAIN, "starter:train")
    kept = {i for i, v in RATES.items() if 1 / 8 <= v <= 7 / 8}
    assert f"{len(kept)} of {len(TRAIN)} questions kept" in cur.summary
    s = PromptStream(TRAIN, 0, True, curriculum=cur)
    drawn = s.take(3 * len(kept))
    assert {r.id for r in drawn} == kept and Counter(r.id for r in drawn).most_common(1)[0][1] == 3
    e2h = PromptStream(TRAIN, 0, False, curriculum=load_curriculum("easy_to_hard", str(dfile), "0:1", TRAIN, "x"))
    epoch = [RATES[r.id] for r in e2h.take(len(TRAIN))]
    assert epoch == sorted(epoch, reverse=True) and epoch[0] == 1 and epoch[-1] == 0
    nxt = e2h.take(len(TRAIN))
    assert [RATES[r.id] for r in nxt] == epoch and [r.id for r in nxt] != [r.id for r in e2h.records]
    with pytest.raises(ValueError, match="no training question"):
        load_curriculum("filter", str(dfile), "0.3:0.31", TRAIN, "x")


def test_pools_draw_by_weight_and_resume(dfile):
    cur = load_curriculum("pools", str(dfile), "0:0=1,1/8:7/8=3", TRAIN, "starter:train")
    s = PromptStream(TRAIN, 0, False, curriculum=cur)
    drawn = s.take(400)
    hard = sum(RATES[r.id] == 0 for r in drawn)
    assert all(RATES[r.id] < 1 for r in drawn) and 70 <= hard <= 130           # ~1/4 of the draws
    s2 = PromptStream(TRAIN, 0, False, curriculum=cur)
    s2.take(150)
    st = json.loads(json.dumps(s2.state()))
    s3 = PromptStream(TRAIN, 0, False, curriculum=cur)
    s3.load_state(st)
    assert [r.id for r in s3.take(250)] == [r.id for r in drawn[150:]]


def _sample(group, reward, correct, text):
    r = dataclasses.replace(score(text, "A", 4), reward=reward, correct=correct)
    return Sample(TRAIN[group], "p", group, [1], [2], text, text, "stop", reward, r)


def test_uniform_groups_on_reward_and_on_correctness():
    # group 0: all wrong, formats differ (rewards -1 and 0); group 1: one right; group 2: all wrong, same reward
    samples = [_sample(0, -1.0, False, "no tags"), _sample(0, 0.0, False, "<answer>B</answer>"),
               _sample(1, 1.0, True, "<answer>A</answer>"), _sample(1, 0.0, False, "<answer>C</answer>"),
               _sample(2, 0.0, False, "x"), _sample(2, 0.0, False, "y")]
    assert uniform_groups(samples, "reward") == {2}
    assert uniform_groups(samples, "correct") == {0, 2}


@pytest.mark.parametrize("on,dropped", [("reward", 0), ("correct", 2)])
def test_dynamic_sampling_on_a_reward_with_format_terms(tmp_path, on, dropped):
    """Every answer is wrong, but rewards alternate -1 / 0 (a format term): the reward filter keeps every group,
    the correctness filter drops them all (one refill round: 2 groups dropped, the last round kept)."""
    calls = {"n": 0}

    def reward_fn(resp, rec):
        calls["n"] += 1
        return dataclasses.replace(score(resp, rec.gold, rec.n_options), reward=-float(calls["n"] % 2),
                                   correct=False)

    cfg = build_config(SMALL | {"dynamic_sampling": True, "dynamic_sampling_on": on, "max_refill_rounds": 1})
    t = Trainer(cfg, tmp_path / on, quiet=True, reward_fn=reward_fn)
    samples, info = t._rollout()
    assert info["dropped_groups"] == dropped and len(samples) == cfg.rollout_batch
    assert info["uniform_correct_groups"] == 2 * (1 + (on == "correct")) and info["uniform_reward_groups"] == 0


def test_training_logs_the_drawn_band(tmp_path, dfile, capsys):
    cfg = build_config(SMALL | {"curriculum": "filter", "difficulty_file": str(dfile), "curriculum_bands": "1/2:1",
                                "max_steps": 2})
    t = Trainer(cfg, tmp_path / "run")
    assert "curriculum filter 0.5:1: " in capsys.readouterr().out
    t.train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "drawn_pass_rate_mean" in r]
    assert len(steps) == 2
    assert all(0.5 <= r["drawn_pass_rate_min"] <= r["drawn_pass_rate_mean"] <= r["drawn_pass_rate_max"] <= 1
               for r in steps)


def test_verl_mapping(tmp_path, dfile):
    from medrlvr.integrations.verl.mapping import verl_overrides
    from medrlvr.integrations.verl.prepare import prepare

    cfg = build_config(SMALL | {"dynamic_sampling": True, "dynamic_sampling_on": "correct", "curriculum": "filter",
                                "difficulty_file": str(dfile), "curriculum_bands": "1/8:7/8", "max_steps": 20,
                                "mini_batch_size": 4})
    ov = verl_overrides(cfg, tmp_path / "v", model_path="m", max_prompt_length=512)
    assert "algorithm.filter_groups.metric=acc" in ov
    d = prepare(cfg, tmp_path / "v", model_path="m", max_prompt_length=512)
    ids = [r["extra_info"]["id"] for r in pq.read_table(d / "train.parquet").to_pylist()]
    assert len(ids) == 20 * 2 * 3 and all(1 / 8 <= RATES[i] <= 7 / 8 for i in ids)
    plain = verl_overrides(build_config(SMALL | {"dynamic_sampling": True}), tmp_path / "w", model_path="m",
                           max_prompt_length=512)
    assert "algorithm.filter_groups.metric=reward" in plain
