"""The RL loop on the tiny random model: end to end with GRPO and PPO, learning on a toy task,
resume determinism, NaN handling and config validation."""

import json

import pytest
import torch
from safetensors.torch import load_file

from medrlvr import algos
from medrlvr.train.config import build_config
from medrlvr.reward import RewardResult, join_prefill, parse, score
from medrlvr.train.trainer import Trainer

TIMING = {"rollout_s", "update_s", "tokens_per_s"}


def shaped(response, rec):
    """The paper's reward plus a small dense length term, so that a random tiny model sees reward
    variance within a group (the paper's reward alone is -1 for every sample of a random model)."""
    r = score(response, rec.gold, rec.n_options, options=rec.options)
    r.reward = r.reward + 0.5 * max(0.0, 1.0 - len(response) / 200.0)
    return r


def _cfg(**kw):
    base = {"max_steps": 2, "eval_every": 0, "save_every": 0, "eval_limit": 4, "max_new_tokens": 12}
    return build_config("tiny", {**base, **kw})


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _read(path):
    return [json.loads(l) for l in open(path)]


@pytest.mark.parametrize("algo,extra", [("grpo", {}), ("dr_grpo", {"loss_agg": "seq-mean-token-sum-norm"}),
                                        ("rloo", {}),
                                        ("ppo", {"kl_coef": 0.01, "samples_per_prompt": 2, "ppo_epochs": 2,
                                                 "mini_batch_size": 2, "micro_batch_size": 1}),
                                        ("ppo", {"critic": "shared", "kl_coef": 0.0}),
                                        ("grpo", {"lora": True, "kl_coef": 0.05, "kl_mode": "loss", "lr": 1e-3})])
def test_tiny_end_to_end(tmp_path, algo, extra):
    cfg = _cfg(algo=algo, **extra)
    t = Trainer(cfg, tmp_path, quiet=True, reward_fn=shaped)
    before = _weights(t.policy)
    hist = t.train()
    assert len(hist) == 2
    # the final evaluation logs its held-out letter figures (the heldout_position monitor reads them)
    ev = {k: hist[-1][k] for k in ("eval_answered", "eval_answered_n", "eval_top_letter", "eval_top_letter_share")}
    assert 0.0 <= ev["eval_answered"] <= 1.0 and (ev["eval_top_letter"] is None) == (ev["eval_answered_n"] == 0)
    for rec in hist:
        for k in ("reward_mean", "policy_loss", "entropy", "grad_norm"):
            assert k in rec and torch.isfinite(torch.tensor(rec[k])), (k, rec)
        if algo == "ppo":
            assert torch.isfinite(torch.tensor(rec["value_loss"]))
        if cfg.kl_coef > 0:
            assert "kl" in rec
    after = _weights(t.policy)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "no weight changed"
    if extra.get("lora"):
        assert all("lora" in k for k in changed)
    # rewards in samples.jsonl come from the reward function on "<think>" + completion
    samples = _read(tmp_path / "samples.jsonl")
    assert len(samples) == 2 * cfg.rollout_batch
    for s in samples:
        r = score(s["response"], s["gold"], s["n_options"], options=s["options"])
        assert s["response"] == join_prefill(s["completion"])
        assert s["reward"] == pytest.approx(r.reward + 0.5 * max(0.0, 1.0 - len(s["response"]) / 200.0))
        assert r.format_ok == s["format_ok"] and r.pred == s["pred"]
    metrics = _read(tmp_path / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2] and "eval_accuracy" in metrics[-1]
    assert (tmp_path / "final" / ("model.safetensors")).exists()
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "seed").read_text().strip() == "0"


def test_rewards_flow_from_parser(tmp_path):
    """A policy whose completions are forced to be well-formed gets the paper's +1/0 rewards."""
    cfg = _cfg(max_steps=1)
    t = Trainer(cfg, tmp_path, quiet=True)

    class Fixed:
        def generate(self, prompts, n, params):
            from medrlvr.rollout import Completion

            texts = [" Reasoning here. </think> <answer>A</answer>", " hmm", " ok </think><answer>B</answer>"]
            return [[Completion([1], t.tok.encode(texts[i % 3]), texts[i % 3], "stop") for i in range(n)]
                    for _ in prompts]

    t.engine = Fixed()
    samples, _ = t._rollout()
    by_text = {s.completion: s.reward for s in samples}
    assert by_text[" hmm"] == -1.0
    for s in samples:
        if s.completion != " hmm":
            assert s.reward == (1.0 if s.result.pred == s.rec.gold else 0.0)


def test_learning_on_toy_task(tmp_path):
    """Toy verifiable task: reward = 1 - (decoded length / 100). A random tiny model must learn to emit
    shorter tokens: the mean reward of the last steps rises clearly above the first steps."""

    def toy(response, rec):
        text = response[len("<think>"):]
        r = max(0.0, 1.0 - len(text) / 100.0)
        return RewardResult(reward=r, format_ok=True, pred=None, correct=False, flags=[], parsed=parse(response))

    cfg = _cfg(max_steps=14, lr=3e-2, samples_per_prompt=8, prompts_per_step=2, max_new_tokens=8, stop=[],
               micro_batch_size=8)
    t = Trainer(cfg, tmp_path, quiet=True, reward_fn=toy)
    hist = t.train()
    first = sum(h["reward_mean"] for h in hist[:3]) / 3
    last = sum(h["reward_mean"] for h in hist[-3:]) / 3
    assert last > first + 0.1, (first, last, [round(h["reward_mean"], 3) for h in hist])


def test_resume_is_deterministic(tmp_path):
    cfg = _cfg(max_steps=4, save_every=2, eval_every=2, algo="ppo", kl_coef=0.01, samples_per_prompt=2,
               mini_batch_size=2, micro_batch_size=2)
    full = Trainer(cfg, tmp_path / "full", quiet=True, reward_fn=shaped)
    full.train()
    part = Trainer(cfg, tmp_path / "part", quiet=True, reward_fn=shaped)
    part.train(max_steps=3)
    # simulate a kill during step 3's checkpoint: the run resumes from step 2 and must drop step 3's logs
    import shutil

    shutil.rmtree(tmp_path / "part" / "checkpoints" / "step_3")
    (tmp_path / "part" / "checkpoints" / "latest").write_text("step_2")
    assert len(_read(tmp_path / "part" / "metrics.jsonl")) == 3
    resumed = Trainer(cfg, tmp_path / "part", resume=True, quiet=True, reward_fn=shaped)
    assert resumed.step == 2
    resumed.train()
    a, b = _weights(full.policy), _weights(resumed.policy)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = full.critic.state_dict(), resumed.critic.state_dict()
    assert all(torch.equal(ca[k], cb[k]) for k in ca)
    ma = [{k: v for k, v in m.items() if k not in TIMING} for m in _read(tmp_path / "full" / "metrics.jsonl")]
    mb = [{k: v for k, v in m.items() if k not in TIMING} for m in _read(tmp_path / "part" / "metrics.jsonl")]
    assert ma == mb
    fa = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    fb = load_file(str(tmp_path / "part" / "final" / "model.safetensors"))
    assert all(torch.equal(fa[k], fb[k]) for k in fa)


def test_nan_step_is_skipped(tmp_path, monkeypatch):
    cfg = _cfg(max_steps=1, save_every=1)
    t = Trainer(cfg, tmp_path, quiet=True, reward_fn=shaped)
    before = _weights(t.policy)
    real = algos.policy_loss

    def nan_loss(*a, **k):
        loss, m = real(*a, **k)
        return loss * float("nan"), m

    monkeypatch.setitem(algos.POLICY_LOSSES, "ppo", nan_loss)   # the trainer looks the loss up by name
    hist = t.train()
    assert hist[0]["skipped"] is True and hist[0]["skipped_updates"] == 1
    after = _weights(t.policy)
    assert all(torch.equal(before[k], after[k]) for k in before)
    saved = load_file(str(tmp_path / "checkpoints" / "step_1" / "policy" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in saved.values())


@pytest.mark.parametrize("override,msg", [
    ({"algo": "ppo2"}, "'algo'"), ({"mini_batch_size": 3}, "'mini_batch_size'"),
    ({"samples_per_prompt": 1}, "'samples_per_prompt'"), ({"lr": 0}, "'lr'"), ({"bogus": 1}, "unknown config key 'bogus'"),
    ({"temperature": 0}, "'temperature'"), ({"dual_clip": 0.5}, "'dual_clip'"), ({"lora": "maybe"}, "'lora'"),
])
def test_config_errors(override, msg):
    with pytest.raises(ValueError, match=msg):
        build_config("tiny", override)


def test_config_overrides_from_strings():
    c = build_config("tiny", ["lr=3e-5", "lora=true", "stop=['</answer>', 'END']", "dual_clip=3"])
    assert c.lr == 3e-5 and c.lora is True and c.stop == ("</answer>", "END") and c.dual_clip == 3.0
    with pytest.raises(FileNotFoundError):
        build_config("no-such-preset.yaml")


def test_trainer_logs_engine_logprob_mismatch(tmp_path, monkeypatch):
    """The trainer compares the fast engine's log-probs with its own forward before any update: in fp32
    the engine samples from the trained distribution (mismatch < 1e-3). (The hf engine returns none.)"""
    from medrlvr.rollout import fast as fast_rollout

    monkeypatch.setattr(fast_rollout, "auto_dtype", lambda model: "fp32")
    t = Trainer(_cfg(engine="fast", max_steps=1, temperature=0.8), tmp_path, quiet=True, reward_fn=shaped)
    rec = t.train_step()
    assert "logprob_mismatch" in rec, rec
    assert 0 <= rec["logprob_mismatch"] < 1e-3, rec["logprob_mismatch"]


@pytest.mark.parametrize("orders", [4, 2])
def test_group_orders_give_samples_of_a_group_their_own_option_orders(tmp_path, orders):
    """``group_orders``: the samples of one group are the same question shown in ``orders`` option orders
    (samples_per_prompt / orders samples each), the gold letter follows its option text, and every group keeps
    samples_per_prompt samples under one group id, so advantages are still computed per question."""
    cfg = _cfg(max_steps=1, group_orders=orders, samples_per_prompt=4, prompts_per_step=2)
    t = Trainer(cfg, tmp_path, quiet=True, reward_fn=shaped)
    samples, _ = t._rollout()
    assert len(samples) == 8
    groups = {}
    for s in samples:
        groups.setdefault(s.group, []).append(s)
        assert f"{s.rec.gold}. {s.rec.options[s.rec.gold]}" in s.prompt  # the prompt shows the sample's order
    assert sorted(groups) == [0, 1] and all(len(g) == 4 for g in groups.values())
    for g in groups.values():
        assert len({s.rec.id for s in g}) == 1
        assert len({s.rec.options[s.rec.gold] for s in g}) == 1  # the gold letter follows its option text
        orders_seen = {tuple(s.rec.options.values()) for s in g}
        assert 1 < len(orders_seen) <= orders, "the group's samples saw one option order"
        assert len({s.prompt for s in g}) == len(orders_seen)
        for p in {s.prompt for s in g}:
            assert sum(s.prompt == p for s in g) % (4 // orders) == 0
    # the same seed gives the same orders and samples; the default keeps one order per group
    again, _ = Trainer(cfg, tmp_path / "again", quiet=True, reward_fn=shaped)._rollout()
    assert [s.prompt for s in again] == [s.prompt for s in samples]
    assert [s.completion for s in again] == [s.completion for s in samples]
    plain, _ = Trainer(_cfg(max_steps=1, samples_per_prompt=4, prompts_per_step=2), tmp_path / "plain",
                       quiet=True, reward_fn=shaped)._rollout()
    assert all(len({s.prompt for s in plain if s.group == g}) == 1 for g in (0, 1))
    hist = t.train()
    assert torch.isfinite(torch.tensor(hist[0]["policy_loss"]))


def test_group_orders_must_divide_the_group():
    with pytest.raises(ValueError, match="'group_orders'"):
        build_config("tiny", {"samples_per_prompt": 4, "group_orders": 3})
    with pytest.raises(ValueError, match="'reward_format_step'"):
        build_config("tiny", {"reward_format_step": 0.5})


def test_unwrap_peft_finds_the_wrapped_model():
    """One helper looks through a peft wrapper for every caller (batching, distributed, fast_rollout, models)."""
    from medrlvr.train.forward import split_lm
    from medrlvr.models import apply_lora, load_policy, unwrap_peft

    plain, _ = load_policy("tiny")
    assert unwrap_peft(plain) is plain
    wrapped = apply_lora(load_policy("tiny")[0], r=2, alpha=4)
    base = unwrap_peft(wrapped)
    assert base is not wrapped and base is wrapped.get_base_model() and hasattr(base, "lm_head")
    trunk, head = split_lm(wrapped)
    assert trunk is base.model and head is base.lm_head


def test_stop_answered_ends_the_run_early_and_saves_it(tmp_path):
    """stop_answered: the run ends once enough samples are well-formed with a letter for stop_patience steps in a
    row, and that step is evaluated, checkpointed and saved like a last step; a streak that breaks starts over."""
    import itertools

    shares = itertools.cycle([1.0, 0.0, 1.0, 1.0])          # per step: every sample answered, or none
    state = {"share": None, "left": 0}

    def by_step(response, rec):   # 4 samples a step: the first of each step draws that step's share
        if state["left"] == 0:
            state["share"], state["left"] = next(shares), 4
        state["left"] -= 1
        pred = "A" if state["share"] else None
        return RewardResult(reward=float(bool(pred)) - (state["left"] % 2), format_ok=True, pred=pred,
                            correct=False, flags=[], parsed=parse(response))

    cfg = _cfg(max_steps=8, stop_answered=0.9, stop_patience=2, samples_per_prompt=2, prompts_per_step=2,
               max_new_tokens=4, eval_limit=2)
    t = Trainer(cfg, tmp_path, quiet=True, reward_fn=by_step)
    hist = t.train()
    # steps 1 (1.0), 2 (0.0: the streak starts over), 3 and 4 (1.0, 1.0): stops at 4
    assert [h["answered"] for h in hist] == [1.0, 0.0, 1.0, 1.0] and t.stopped_early and t.step == 4
    assert hist[-1]["stopped_early"] is True and "eval_accuracy" in hist[-1] and t.final_eval is not None
    assert not any(h.get("stopped_early") for h in hist[:-1])
    assert (tmp_path / "checkpoints" / "step_4").is_dir() and (tmp_path / "final" / "model.safetensors").exists()
    off = Trainer(_cfg(max_steps=3, samples_per_prompt=2, prompts_per_step=2, max_new_tokens=4, eval_limit=2),
                  tmp_path / "off", quiet=True, reward_fn=by_step)
    assert len(off.train()) == 3 and not off.stopped_early       # 0 (the default): never stops early


def test_stop_answered_streak_survives_a_resume(tmp_path):
    """A run resumed in the middle of a stop_answered streak stops at the same step as an uninterrupted one."""

    def always(response, rec):
        return RewardResult(reward=float(len(response) % 2), format_ok=True, pred="A", correct=False, flags=[],
                            parsed=parse(response))

    kw = dict(max_steps=6, stop_answered=0.9, stop_patience=3, save_every=1, keep_checkpoints=0,
              samples_per_prompt=2, prompts_per_step=2, max_new_tokens=4, eval_limit=2)
    whole = Trainer(_cfg(**kw), tmp_path / "whole", quiet=True, reward_fn=always)
    assert len(whole.train()) == 3 and whole.stopped_early
    part = Trainer(_cfg(**kw), tmp_path / "part", quiet=True, reward_fn=always)
    part.train(2)                                    # checkpointed at step 2 with a streak of 2
    resumed = Trainer(_cfg(**kw), tmp_path / "part", quiet=True, reward_fn=always, resume=True)
    assert resumed.step == 2 and len(resumed.train()) == 1 and resumed.stopped_early and resumed.step == 3
    # resuming the early stop itself trains nothing, as a run at max_steps; stop_answered=0 trains on
    again = Trainer(_cfg(**kw), tmp_path / "part", quiet=True, reward_fn=always, resume=True)
    assert again.step == 3 and again.train() == [] and again.stopped_early and again.step == 3
    on = Trainer(_cfg(**(kw | {"stop_answered": 0.0})), tmp_path / "part", quiet=True, reward_fn=always,
                 resume=True, allow_change=("stop_answered",))
    assert len(on.train()) == 3 and on.step == 6 and not on.stopped_early
