"""The generated overrides against verl's Hydra config (struct mode) and its validate_config."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from conftest import prepare_dir


def _validate(cfg):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    omega_conf_to_dataclass(cfg.algorithm)  # verl's AlgoConfig dataclass accepts the values
    return need_critic(cfg), need_reference_policy(cfg)


def test_ppo_overrides_compose_and_validate(ppo_run, compose):
    cfg, d = ppo_run
    ov = json.loads((d / "medrlvr_verl.json").read_text())["overrides"]
    c = compose(ov)
    assert OmegaConf.is_struct(c)
    assert _validate(c) == (True, True)  # critic (GAE) and reference (KL in the reward)
    assert c.algorithm.adv_estimator == "gae" and c.algorithm.use_kl_in_reward is True
    assert c.algorithm.kl_penalty == "kl" and c.algorithm.kl_ctrl.kl_coef == cfg.kl_coef
    assert c.actor_rollout_ref.actor.use_kl_loss is False
    assert c.critic.cliprange_value == cfg.value_clip and c.critic.optim.lr == cfg.critic_lr
    assert c.actor_rollout_ref.actor.ppo_mini_batch_size == cfg.mini_batch_size // cfg.samples_per_prompt
    assert c.actor_rollout_ref.rollout.n == cfg.samples_per_prompt
    assert c.data.train_batch_size == cfg.prompts_per_step and c.data.shuffle is False
    assert c.actor_rollout_ref.actor.clip_ratio_c == 1e9  # dual clip off
    assert c.trainer.total_training_steps == cfg.max_steps and list(c.trainer.logger) == ["console", "file"]
    assert c.reward.custom_reward_function.path == str((d / "medrlvr_reward.py").resolve())


@pytest.mark.parametrize("algo,kl_est,verl_kl", [("grpo", "low_var_kl", "low_var_kl"), ("dr_grpo", "k2", "mse"),
                                                  ("rloo", "k1", "kl")])
def test_group_algos_kl_as_loss(tmp_path, compose, algo, kl_est, verl_kl):
    cfg, d = prepare_dir(tmp_path, algo=algo, kl_mode="loss", kl_estimator=kl_est, samples_per_prompt=4,
                         mini_batch_size=16, loss_agg="seq-mean-token-sum-norm" if algo == "dr_grpo" else "token-mean",
                         dynamic_sampling=algo == "grpo", clip_high=0.28, dual_clip=3.0, lr_schedule="cosine",
                         warmup_steps=1)
    c = compose(json.loads((d / "medrlvr_verl.json").read_text())["overrides"])
    assert _validate(c) == (False, True)
    assert c.algorithm.adv_estimator == {"grpo": "grpo", "dr_grpo": "grpo", "rloo": "rloo"}[algo]
    assert c.algorithm.norm_adv_by_std_in_grpo is (algo != "dr_grpo")
    assert c.algorithm.use_kl_in_reward is False and c.actor_rollout_ref.actor.use_kl_loss is True
    assert c.actor_rollout_ref.actor.kl_loss_type == verl_kl
    assert c.actor_rollout_ref.actor.loss_agg_mode == cfg.loss_agg
    a = c.actor_rollout_ref.actor
    assert (a.clip_ratio_high, a.clip_ratio_c, a.optim.lr_scheduler_type, a.optim.lr_warmup_steps) == (0.28, 3.0, "cosine", 1)
    assert c.algorithm.filter_groups.enable is (algo == "grpo")
    if algo == "grpo":
        assert c.algorithm.filter_groups.max_num_gen_batches == cfg.max_refill_rounds + 1


def test_misspelled_or_unknown_key_fails(ppo_run, compose):
    _, d = ppo_run
    ov = json.loads((d / "medrlvr_verl.json").read_text())["overrides"]
    for bad in ("algorithm.adv_estimatr=gae", "actor_rollout_ref.actor.clip_ratio_lo=0.2", "trainer.no_such_key=1"):
        with pytest.raises(ConfigCompositionException):
            compose(ov + [bad])
    # and a mistyped key inside our own list would fail the same way
    broken = [o.replace("clip_ratio_low", "clip_ratio_lo") for o in ov]
    with pytest.raises(ConfigCompositionException):
        compose(broken)


def test_run_sh_passes_exactly_the_overrides(ppo_run, tmp_path):
    """run.sh's shell quoting hands verl the same argv as the override list (a fake python3 records it)."""
    _, d = ppo_run
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text('#!/bin/sh\nexec "%s" -c \'import json,sys; print(json.dumps(sys.argv[1:]))\' "$@"\n'
                                  % os.sys.executable)
    (fake / "python3").chmod(stat.S_IRWXU)
    out = subprocess.run(["bash", str(d / "run.sh"), "trainer.total_training_steps=1"], capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}, check=True)
    argv = json.loads(out.stdout.strip().splitlines()[-1])
    ov = json.loads((d / "medrlvr_verl.json").read_text())["overrides"]
    assert argv[:2] == ["-m", "verl.trainer.main_ppo"]
    assert argv[-1] == "trainer.total_training_steps=1"
    want = [o for o in ov if not o.startswith(("trainer.nnodes=", "trainer.n_gpus_per_node="))]
    assert argv[2:-1] == want + ["trainer.nnodes=1", "trainer.n_gpus_per_node=8"]
