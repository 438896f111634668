"""The ``TrainConfig`` -> verl mapping: Hydra overrides, the values refused, and the parquet row.

Every key is checked against verl's own code in ``tests_verl/`` (``make test-verl``). A medrlvr value without a
verl equivalent is refused with the key named (:func:`check_mappable`), never dropped.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from medrlvr.records import MCQ
from medrlvr.train.config import TrainConfig

VERL_VERSION = "0.9.1"
"""The verl release the mapping and the tests are checked against (``.venv-verl``: ``verl==0.9.1``)."""


VERBATIM_TEMPLATE = "{% for message in messages %}{{ message.content }}{% endfor %}"
"""Chat template that renders the messages' contents only: the rendered medrlvr prompt reaches the model as is."""


AGENT_LOOP_NAME = "medrlvr_single_turn"


MARKER = "medrlvr_verl.json"


VIEW_DIR = "medrlvr_view"


ADV_ESTIMATOR = {"ppo": "gae", "grpo": "grpo", "dr_grpo": "grpo", "rloo": "rloo"}


KL_NAMES = {"k1": "kl", "k2": "mse", "low_var_kl": "low_var_kl", "abs": "abs"}
"""medrlvr KL estimator -> verl name (``kl_penalty`` / ``kl_loss_type``); medrlvr's unclamped ``k3`` has none:
verl's ``k3`` is an alias of its clamped ``low_var_kl``."""


NO_CLIP = 1.0e9
"""Stands for "no clipping" where verl always clips: verl clamps the log-ratio to [-20, 20], so a ratio never
exceeds e^20 ~ 4.9e8 < 1e9 and a dual clip at 1e9 never binds; a value clip of 1e9 never binds either."""


A = "actor_rollout_ref.actor"


R = "actor_rollout_ref.rollout"


# TrainConfig field -> (verl key(s), note). The table in docs/guides/verl.md is generated from this dict
# (mapping_table()).
FIELD_MAP: dict[str, tuple[str, str]] = {
    "model": ("actor_rollout_ref.model.path, critic.model.path", "aliases resolved to a local directory"),
    "dtype": (f"{A}.fsdp_config.model_dtype", "fp32 / bf16 master weights"),
    "autocast_bf16": (f"{A}.fsdp_config.dtype (bfloat16)", "verl trains under FSDP bf16 mixed precision: "
                      "medrlvr's `auto` on a CUDA sm80+ GPU"),
    "lora": ("actor_rollout_ref.model.lora_rank", "0 when off"),
    "lora_r": ("actor_rollout_ref.model.lora_rank", ""),
    "lora_alpha": ("actor_rollout_ref.model.lora_alpha", ""),
    "critic": ("critic.model.path", "`separate` only: verl's critic is its own model initialised from the policy"),
    "seed": (f"data.seed, {R}.seed, {A}.data_loader_seed", ""),
    "train_data": ("data.train_files", "rendered into train.parquet by our loaders and validation"),
    "eval_data": ("data.val_files", "rendered into val.parquet"),
    "data_root": ("(prepare)", "read by our loaders"),
    "columns": ("(prepare)", "read by our loaders"),
    "eval_limit": ("(prepare)", "val.parquet holds the first N eval questions"),
    "shuffle_options": ("(prepare)", "per-epoch option shuffle baked into train.parquet; data.shuffle=False"),
    "template": ("actor_rollout_ref.model.custom_chat_template", "rendered by medrlvr, passed verbatim"),
    "prefill_think": ("(prompt) + reward", "prompt ends with `<think>`; the reward joins it back"),
    "reward_scheme": ("reward.custom_reward_function.path", "medrlvr_reward.py with the scheme baked in"),
    "engine": (f"{R}.name", "replaced by verl's rollout engine (`--rollout vllm|sglang`)"),
    "prompts_per_step": ("data.train_batch_size", "prompts per step"),
    "samples_per_prompt": (f"{R}.n", ""),
    "max_new_tokens": ("data.max_response_length", ""),
    "temperature": (f"{R}.temperature", ""),
    "top_p": (f"{R}.top_p", ""),
    "stop": (f"{R}.agent.agent_loop_config_path", "agent loop `medrlvr_single_turn` passes the stop strings"),
    "share_prompt": ("(none needed)", "a compute shortcut with the same result; verl batches its own way"),
    "algo": ("algorithm.adv_estimator, algorithm.norm_adv_by_std_in_grpo",
             "ppo->gae, grpo->grpo, dr_grpo->grpo without std division, rloo->rloo"),
    "ppo_epochs": (f"{A}.ppo_epochs, critic.ppo_epochs", ""),
    "mini_batch_size": (f"{A}.ppo_mini_batch_size, critic.ppo_mini_batch_size",
                        "verl counts prompts: samples / samples_per_prompt; 0 = one update per step"),
    "micro_batch_size": (f"{A}.ppo_micro_batch_size_per_gpu (+ log-prob and critic micro-batches)", "per GPU"),
    "lr": (f"{A}.optim.lr", ""),
    "critic_lr": ("critic.optim.lr", ""),
    "weight_decay": (f"{A}.optim.weight_decay, critic.optim.weight_decay", "verl's default is 0.01, ours 0"),
    "adam_betas": (f"{A}.optim.betas, critic.optim.betas", ""),
    "warmup_steps": (f"{A}.optim.lr_warmup_steps, critic.optim.lr_warmup_steps", ""),
    "lr_schedule": (f"{A}.optim.lr_scheduler_type", "constant or cosine (`linear` has no verl equivalent)"),
    "max_grad_norm": (f"{A}.grad_clip, critic.grad_clip", ""),
    "clip_low": (f"{A}.clip_ratio_low", ""),
    "clip_high": (f"{A}.clip_ratio_high", ""),
    "dual_clip": (f"{A}.clip_ratio_c", "null -> 1e9, which never binds (verl always dual-clips, default 3)"),
    "value_clip": ("critic.cliprange_value", "null -> 1e9 (never binds)"),
    "vf_coef": ("(none)", "verl's critic has its own optimizer and loss weight 1: only the default 0.5 passes"),
    "gamma": ("algorithm.gamma", ""),
    "lam": ("algorithm.lam", ""),
    "kl_coef": ("algorithm.kl_ctrl.kl_coef or " f"{A}.kl_loss_coef", "0 turns both KL terms off"),
    "kl_mode": ("algorithm.use_kl_in_reward / " f"{A}.use_kl_loss", "reward: KL in the reward (PPO, the paper); "
                "loss: KL loss"),
    "kl_estimator": ("algorithm.kl_penalty or " f"{A}.kl_loss_type",
                     "k1->kl, k2->mse, low_var_kl->low_var_kl, abs->abs; our k3 is unclamped while verl's k3 is "
                     "its clamped low_var_kl: refused"),
    "loss_agg": (f"{A}.loss_agg_mode, critic.loss_agg_mode", "same four names"),
    "entropy_coef": (f"{A}.entropy_coeff", ""),
    "dynamic_sampling": ("algorithm.filter_groups.enable (metric=reward)", "verl's DAPO group filter"),
    "max_refill_rounds": ("algorithm.filter_groups.max_num_gen_batches", "rounds + 1"),
    "grpo_eps": ("(none)", "verl's GRPO epsilon is fixed at 1e-6: only the default passes"),
    "max_steps": ("trainer.total_training_steps", "trainer.total_epochs=1 over the prepared stream"),
    "stop_answered": ("(none)", "medrlvr's early stop, not in verl's trainer: only the default (off) passes"),
    "stop_patience": ("(none)", "with stop_answered off it does nothing: any value passes"),
    "eval_every": ("trainer.test_freq", "0 -> max_steps (validate at the end); verl also validates before training"),
    "eval_max_new_tokens": ("(none)", "verl validates with data.max_response_length: only 0 passes"),
    "eval_samples": (f"{R}.val_kwargs.n", "verl reports mean@n over the n answers of a question (and best@n, maj@n)"),
    "eval_temperature": (f"{R}.val_kwargs.temperature, {R}.val_kwargs.do_sample", "do_sample when > 0; "
                         "val_kwargs.top_p = top_p when sampling, else 1"),
    "save_every": ("trainer.save_freq", "0 -> max_steps"),
    "keep_checkpoints": ("trainer.max_actor_ckpt_to_keep, trainer.max_critic_ckpt_to_keep", ""),
    "sample_every": ("trainer.rollout_data_dir", "verl dumps every step: only 1 passes"),
    "rank": ("(launcher)", "set by Ray; use --nnodes / --gpus-per-node: only the default passes"),
    "world_size": ("trainer.nnodes x trainer.n_gpus_per_node", "from --nnodes / --gpus-per-node: only 1 passes"),
    # fields other branches add (listed ahead so the check stays exhaustive): default only
    "parallel": ("(none)", "verl runs its own FSDP workers (--nnodes / --gpus-per-node): only the default passes"),
    "dist_timeout_s": ("(none)", "medrlvr's process-group timeout, not used by verl: any value passes"),
    "on_alert": ("(none)", "medrlvr's monitors do not run inside verl: only the default passes"),
    "monitor": ("(none)", "thresholds of medrlvr monitor / report on the run (in its config.yaml): any value passes"),
    "reward_no_letter": ("(none)", "the reward file uses the scheme's default: only the default passes"),
    "reward_echo": ("(none)", "the reward file uses the scheme's default: only the default passes"),
    "reward_format_step": ("(none)", "the reward file uses the scheme's default: only the default passes"),
    "group_orders": ("(none)", "verl samples a group from one prompt: only the default passes"),
    "curriculum": ("(prepare)", "filter, easy_to_hard and pools are baked into train.parquet's question order, "
                   "read in order (data.shuffle=False); verl's own data.sampler (a curriculum sampler class) is "
                   "not used"),
    "difficulty_file": ("(prepare)", "read by prepare for the curriculum"),
    "curriculum_bands": ("(prepare)", "read by prepare for the curriculum"),
    "dynamic_sampling_on": ("algorithm.filter_groups.metric", "reward -> reward (as before), correct -> acc (the "
                            "reward file's 0/1 correctness)"),
    "report_to": ("(none)", "verl logs with its own trainer.logger ([console, file]: the read-back reads the file "
                  "logger; verl's wandb / mlflow / tensorboard loggers can be added to it): any value passes"),
    "log_samples_every": ("(none)", "medrlvr's tracker tables: any value passes"),
    "tracker_project": ("(none)", "verl's trainer.project_name comes from `medrlvr verl prepare`: any value passes"),
}


# fields that pass only at their default value (no verl equivalent for any other value)
DEFAULT_ONLY = ("vf_coef", "grpo_eps", "eval_max_new_tokens", "stop_answered", "sample_every", "rank", "world_size",
                "parallel", "on_alert", "reward_no_letter", "reward_echo", "reward_format_step",
                "group_orders")


def mapping_table() -> str:
    """The TrainConfig -> verl table (Markdown), in field order."""
    rows = ["| TrainConfig field | verl key (verl " + VERL_VERSION + ") | note |", "|---|---|---|"]
    for f in dataclasses.fields(TrainConfig):
        key, note = FIELD_MAP.get(f.name, ("(none)", "no verl equivalent: only the default passes"))
        shown = key if key.startswith("(") else f"`{key}`"
        rows.append(f"| `{f.name}` | {shown} | {note} |")
    return "\n".join(rows)


def check_mappable(cfg: TrainConfig) -> None:
    """Refuse values with no verl equivalent, naming the key (``ValueError``: the CLI prints it, exit 2)."""
    d = TrainConfig()

    def bad(key: str, msg: str):
        raise ValueError(f"config '{key}' = {getattr(cfg, key)!r}: {msg} (verl {VERL_VERSION}); "
                         f"change it or run `medrlvr train` instead")

    for f in dataclasses.fields(TrainConfig):
        if f.name not in FIELD_MAP and getattr(cfg, f.name) != getattr(d, f.name):
            bad(f.name, "has no verl equivalent")
    for k in DEFAULT_ONLY:
        if hasattr(d, k) and getattr(cfg, k) != getattr(d, k):
            bad(k, f"has no verl equivalent for a non-default value ({FIELD_MAP[k][1]})")
    if cfg.critic != "separate":
        bad("critic", "verl's critic is a separate model; a head on the policy trunk is not offered")
    if cfg.kl_coef > 0 and cfg.kl_estimator not in KL_NAMES:
        bad("kl_estimator", "medrlvr's k3 is unclamped; verl's k3 is an alias of its clamped low_var_kl "
            "(k3 clamped to [-10, 10]); use kl_estimator=low_var_kl for verl's estimator")
    if cfg.lr_schedule not in ("constant", "cosine"):
        bad("lr_schedule", "verl's FSDP optimizer schedules are constant and cosine")
    mb = cfg.mini_batch_size or cfg.rollout_batch
    if mb % cfg.samples_per_prompt:
        bad("mini_batch_size", f"verl's ppo_mini_batch_size counts prompts: {mb} samples is not a multiple of "
            f"samples_per_prompt={cfg.samples_per_prompt}")
    if cfg.template == "direct":
        bad("template", "the direct template has no <think>/<answer> format to reward")


def _num(v: Any) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def verl_overrides(cfg: TrainConfig, out: str | Path, *, model_path: str, max_prompt_length: int,
                   nnodes: int = 1, gpus_per_node: int = 8, rollout: str = "vllm",
                   project: str = "medrlvr", experiment: str | None = None) -> list[str]:
    """Hydra overrides of ``verl.trainer.main_ppo`` for ``cfg`` (refuses unmappable values first)."""
    check_mappable(cfg)
    out = Path(out).resolve()
    n = cfg.samples_per_prompt
    mini_prompts = (cfg.mini_batch_size or cfg.rollout_batch) // n
    ov: list[tuple[str, Any]] = [
        # data
        ("data.train_files", out / "train.parquet"), ("data.val_files", out / "val.parquet"),
        ("data.prompt_key", "prompt"), ("data.train_batch_size", cfg.prompts_per_step),
        ("data.max_prompt_length", max_prompt_length), ("data.max_response_length", cfg.max_new_tokens),
        ("data.shuffle", False), ("data.filter_overlong_prompts", False), ("data.truncation", "error"),
        ("data.seed", cfg.seed),
        # model
        ("actor_rollout_ref.model.path", model_path),
        ("actor_rollout_ref.model.custom_chat_template", VERBATIM_TEMPLATE),
        ("actor_rollout_ref.model.lora_rank", cfg.lora_r if cfg.lora else 0),
        ("actor_rollout_ref.model.lora_alpha", cfg.lora_alpha),
        ("actor_rollout_ref.model.trust_remote_code", False),
        # actor
        (f"{A}.optim.lr", cfg.lr), (f"{A}.optim.weight_decay", cfg.weight_decay),
        (f"{A}.optim.betas", list(cfg.adam_betas)), (f"{A}.optim.lr_warmup_steps", cfg.warmup_steps),
        (f"{A}.optim.lr_scheduler_type", cfg.lr_schedule), (f"{A}.optim.min_lr_ratio", 0.0),
        (f"{A}.ppo_mini_batch_size", mini_prompts), (f"{A}.ppo_micro_batch_size_per_gpu", cfg.micro_batch_size),
        (f"{A}.ppo_epochs", cfg.ppo_epochs), (f"{A}.data_loader_seed", cfg.seed),
        (f"{A}.clip_ratio_low", cfg.clip_low), (f"{A}.clip_ratio_high", cfg.clip_high),
        (f"{A}.clip_ratio_c", cfg.dual_clip if cfg.dual_clip is not None else NO_CLIP),
        (f"{A}.loss_agg_mode", cfg.loss_agg), (f"{A}.entropy_coeff", cfg.entropy_coef),
        (f"{A}.grad_clip", cfg.max_grad_norm),
        (f"{A}.fsdp_config.model_dtype", cfg.dtype),
        # reference
        ("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", cfg.micro_batch_size),
        # rollout
        (f"{R}.name", rollout), (f"{R}.n", n), (f"{R}.temperature", cfg.temperature), (f"{R}.top_p", cfg.top_p),
        (f"{R}.seed", cfg.seed), (f"{R}.log_prob_micro_batch_size_per_gpu", cfg.micro_batch_size),
        (f"{R}.tensor_model_parallel_size", 1), (f"{R}.gpu_memory_utilization", 0.6),
        (f"{R}.val_kwargs.do_sample", cfg.eval_temperature > 0), (f"{R}.val_kwargs.temperature", cfg.eval_temperature),
        (f"{R}.val_kwargs.n", cfg.eval_samples), (f"{R}.val_kwargs.top_p", cfg.top_p if cfg.eval_temperature > 0 else 1.0),
        (f"{R}.agent.default_agent_loop", AGENT_LOOP_NAME),
        (f"{R}.agent.agent_loop_config_path", out / "agent_loops.yaml"),
        # algorithm
        ("algorithm.adv_estimator", ADV_ESTIMATOR[cfg.algo]),
        ("algorithm.norm_adv_by_std_in_grpo", cfg.algo != "dr_grpo"),
        ("algorithm.gamma", cfg.gamma), ("algorithm.lam", cfg.lam),
    ]
    kl_on = cfg.kl_coef > 0
    kl_name = KL_NAMES.get(cfg.kl_estimator, "kl")
    ov += [("algorithm.use_kl_in_reward", kl_on and cfg.kl_mode == "reward"),
           (f"{A}.use_kl_loss", kl_on and cfg.kl_mode == "loss")]
    if kl_on and cfg.kl_mode == "reward":
        ov += [("algorithm.kl_penalty", kl_name), ("algorithm.kl_ctrl.type", "fixed"),
               ("algorithm.kl_ctrl.kl_coef", cfg.kl_coef)]
    elif kl_on:
        ov += [(f"{A}.kl_loss_coef", cfg.kl_coef), (f"{A}.kl_loss_type", kl_name)]
    if cfg.dynamic_sampling:
        ov += [("algorithm.filter_groups.enable", True),
               ("algorithm.filter_groups.metric", "acc" if cfg.dynamic_sampling_on == "correct" else "reward"),
               ("algorithm.filter_groups.max_num_gen_batches", cfg.max_refill_rounds + 1)]
    if cfg.algo != "ppo":
        ov += [("critic.enable", False)]
    else:
        ov += [("critic.enable", True), ("critic.model.path", model_path),
               ("critic.model.trust_remote_code", False),
               ("critic.optim.lr", cfg.critic_lr), ("critic.optim.weight_decay", cfg.weight_decay),
               ("critic.optim.betas", list(cfg.adam_betas)), ("critic.optim.lr_warmup_steps", cfg.warmup_steps),
               ("critic.optim.lr_scheduler_type", cfg.lr_schedule), ("critic.optim.min_lr_ratio", 0.0),
               ("critic.ppo_mini_batch_size", mini_prompts), ("critic.ppo_micro_batch_size_per_gpu", cfg.micro_batch_size),
               ("critic.ppo_epochs", cfg.ppo_epochs), ("critic.data_loader_seed", cfg.seed),
               ("critic.cliprange_value", cfg.value_clip if cfg.value_clip is not None else NO_CLIP),
               ("critic.loss_agg_mode", cfg.loss_agg), ("critic.grad_clip", cfg.max_grad_norm),
               ("trainer.max_critic_ckpt_to_keep", cfg.keep_checkpoints)]
    ov += [
        ("reward.custom_reward_function.path", out / "medrlvr_reward.py"),
        ("reward.custom_reward_function.name", "compute_score"),
        ("reward.reward_manager.name", "naive"),
        ("trainer.total_epochs", 1), ("trainer.total_training_steps", cfg.max_steps),
        ("trainer.test_freq", cfg.eval_every or cfg.max_steps), ("trainer.val_before_train", True),
        ("trainer.save_freq", cfg.save_every or cfg.max_steps),
        ("trainer.max_actor_ckpt_to_keep", cfg.keep_checkpoints),
        ("trainer.critic_warmup", 0), ("trainer.resume_mode", "auto"),
        ("trainer.logger", ["console", "file"]), ("trainer.project_name", project),
        ("trainer.experiment_name", experiment or out.name),
        ("trainer.default_local_dir", out / "checkpoints"),
        ("trainer.rollout_data_dir", out / "rollouts"), ("trainer.validation_data_dir", out / "validation"),
        ("trainer.nnodes", nnodes), ("trainer.n_gpus_per_node", gpus_per_node),
    ]
    return [f"{k}={_hydra_value(v)}" for k, v in ov]


def _hydra_value(v: Any) -> str:
    """A value in Hydra's override grammar (strings with special characters quoted)."""
    if isinstance(v, Path):
        v = str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_hydra_value(x) for x in v) + "]"
    if isinstance(v, str):
        if v and all(c.isalnum() or c in "-_./~:+" for c in v):
            return v
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return _num(v)


# --------------------------------------------------------------------------------------- data files
def verl_row(rec: MCQ, content: str, index: int, split: str | None = None, prefill_think: bool = True,
             data_source: str | None = None) -> dict[str, Any]:
    """One row of a verl parquet file: the prompt ``content`` as one user message, the gold letter as the rule
    reward's ground truth, and ``extra_info`` with what :func:`~medrlvr.integrations.verl.reward.compute_score`
    reads (``n_options``, ``options`` as JSON text, ``prefill_think``) plus ``id``, ``split`` (the record's own
    when None), ``index`` and ``meta`` (JSON text, so rows with different metadata keys share one schema)."""
    return {
        "data_source": data_source or rec.source,
        "prompt": [{"role": "user", "content": content}],
        "ability": "medical_mcqa",
        "reward_model": {"style": "rule", "ground_truth": rec.gold},
        "extra_info": {"id": rec.id, "split": rec.split if split is None else split, "index": index,
                       "n_options": rec.n_options, "options": json.dumps(rec.options, ensure_ascii=False),
                       "prefill_think": prefill_think, "meta": json.dumps(rec.meta, ensure_ascii=False, default=str)},
    }
