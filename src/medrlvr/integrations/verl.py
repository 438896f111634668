"""Run medrlvr's recipe on verl, and read verl runs back (``medrlvr verl prepare|launch``, ``medrlvr report``).

Pinned: verl ``0.9.1`` (:data:`VERL_VERSION`). Every key below was checked against that release's own code
(``tests_verl/``, run in the ``.venv-verl`` environment by ``make test-verl``): the Hydra trainer config in
struct mode, ``verl.utils.config.validate_config``, ``RLHFDataset``, the single-turn agent loop's prompt
tokenization, the custom reward loader with the ``naive`` reward manager, and the generation dump writer.

``prepare(cfg, out)`` writes a verl run directory::

    DIR/train.parquet      the exact question stream ``medrlvr train`` would use (max_steps x prompts_per_step
                           rows, per-epoch permutation and option shuffle of :class:`medrlvr.train.PromptStream`),
                           so verl reads it in order (data.shuffle=False)
    DIR/val.parquet        the first eval_limit eval questions (all when 0)
    DIR/medrlvr_reward.py  verl's custom reward function (``compute_score``), medrlvr's scheme and pre-fill baked in
    DIR/agent_loops.yaml   verl agent loop ``medrlvr_single_turn``: the rendered prompt verbatim, the stop strings
    DIR/config.yaml        the resolved medrlvr TrainConfig (shown by the report)
    DIR/medrlvr_verl.json  the marker the report detects: verl version, overrides, scheme, template
    DIR/run.sh             ``python -m verl.trainer.main_ppo <overrides>`` (one node), extra args are appended
    DIR/run_multinode.sh   the same through a Ray cluster: ``head`` / ``worker HEAD_IP`` / ``submit``

Prompt fidelity: each row's ``prompt`` is one user message whose content is ``medrlvr.prompts.render`` (R1-Zero
text with the ``<think>`` pre-fill by default), and ``actor_rollout_ref.model.custom_chat_template`` is
:data:`VERBATIM_TEMPLATE`, which renders that content and nothing else: no chat markup reaches a base model.
The prompt's token ids are then those of ``tokenizer(render(rec), add_special_tokens=False)`` (tested token for
token with the SmolLM2 tokenizer through verl's own agent loop).

Read-back (:func:`convert_run`): verl writes ``rollouts/<step>.jsonl`` and ``validation/<step>.jsonl`` (its
``_write_generations``: one JSON object per sample with ``input``, ``output``, ``gts``, ``score``, ``step`` and
any reward extra info) and the ``file`` logger's ``metrics.jsonl`` (``{"step": s, "data": {name: value}}``).
The converter re-scores every dumped response with :func:`medrlvr.reward.score` (same scheme, pre-fill joined),
writes ``DIR/medrlvr_view/{samples,metrics}.jsonl`` in medrlvr's layout and the last validation step's
``results.json``; ``medrlvr report DIR`` then draws the same report as for a medrlvr run.

Simplifications, stated: ``mini_batch_size`` must be a multiple of ``samples_per_prompt`` (verl counts
mini-batches in prompts); micro-batches become per-GPU micro-batches; a medrlvr value without a verl
equivalent is refused with the key named (:func:`check_mappable`), never dropped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import TrainConfig, save_config
from ..prompts import THINK_PREFILL, render, response_prefix

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

# TrainConfig field -> (verl key(s), note). The README table is generated from this dict (mapping_table()).
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
        ov += [("algorithm.filter_groups.enable", True), ("algorithm.filter_groups.metric", "reward"),
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
def _row(rec, template: str, tok, prefill: bool, index: int, split: str) -> dict[str, Any]:
    return {
        "data_source": rec.source,
        "prompt": [{"role": "user", "content": render(rec, template, tok, prefill_think=prefill)}],
        "ability": "medical_mcqa",
        "reward_model": {"style": "rule", "ground_truth": rec.gold},
        "extra_info": {"id": rec.id, "split": split, "index": index, "n_options": rec.n_options,
                       "options": json.dumps(rec.options, ensure_ascii=False), "prefill_think": prefill},
    }


def _write_parquet(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


def training_stream(cfg: TrainConfig, records) -> list:
    """The questions ``medrlvr train`` would draw, step by step, for ``max_steps`` steps (one rank)."""
    from ..train import PromptStream

    k = cfg.max_steps * cfg.prompts_per_step * ((cfg.max_refill_rounds + 1) if cfg.dynamic_sampling else 1)
    return PromptStream(records, cfg.seed, cfg.shuffle_options).take(k)


REWARD_FILE = '''"""verl custom reward function, written by `medrlvr verl prepare` (medrlvr {version}, verl {verl}).

verl loads it with reward.custom_reward_function.path=<this file> name=compute_score; medrlvr must be
importable on every node that computes rewards.
"""
from medrlvr.integrations.verl import compute_score as _compute_score

SCHEME = {scheme!r}
PREFILL = {prefill!r}


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return _compute_score(data_source, solution_str, ground_truth, extra_info, scheme=SCHEME, prefill=PREFILL)
'''

AGENT_LOOPS_FILE = """# verl agent loops, written by `medrlvr verl prepare`
- name: {name}
  _target_: medrlvr.integrations.verl_agent_loop.MedrlvrSingleTurnAgentLoop
  stop: {stop}
"""


def compute_score(data_source: Any, solution_str: Any, ground_truth: Any, extra_info: Mapping | None = None,
                  scheme: str = "paper", prefill: str | None = THINK_PREFILL, **_: Any) -> dict[str, Any]:
    """verl reward entry point: joins the pre-fill, scores with :func:`medrlvr.reward.score`.

    Returns ``{"score", "acc", "correct", "format_ok", "pred", <flag>: bool ...}``: verl's ``naive`` reward
    manager uses ``score`` as the reward and keeps every other key as reward extra info (validation metrics
    ``val-aux/<data_source>/<key>/mean@N``, ``acc`` is verl's core validation metric, ``pred`` its majority vote;
    all keys are written to the validation dumps). ``n_options`` and ``options`` (a dict or its JSON text)
    come from the row's ``extra_info``.
    """
    from ..reward import FLAGS, LETTERS, join_prefill, score

    info = extra_info if isinstance(extra_info, Mapping) else {}
    opts = info.get("options")
    if isinstance(opts, str):
        try:
            opts = json.loads(opts)
        except ValueError:
            opts = None
    opts = {str(k): str(v) for k, v in opts.items()} if isinstance(opts, Mapping) else None
    gold = str(ground_truth).strip().upper()
    n = info.get("n_options")
    if n is None:
        n = len(opts) if opts else max(5, LETTERS.index(gold) + 1 if gold in LETTERS and len(gold) == 1 else 5)
    text = solution_str if isinstance(solution_str, str) else str(solution_str)
    if info.get("prefill_think", True) and prefill:
        text = join_prefill(text, prefill)
    r = score(text, gold, int(n), scheme=scheme, options=opts)
    out: dict[str, Any] = {"score": r.reward, "acc": float(r.correct), "correct": r.correct,
                           "format_ok": r.format_ok, "pred": r.pred or ""}
    for f in FLAGS:
        out[f] = f in r.flags
    return out


def _max_prompt_tokens(prompts: Sequence[str], model: str) -> tuple[int, str]:
    """Longest prompt in tokens with the model's tokenizer, else a UTF-8 byte bound (byte-level BPE tokens
    cover at least one byte each). verl 0.9.1's agent loop left-truncates a prompt longer than
    ``data.max_prompt_length`` with only a warning, so the bound must hold for every prompt."""
    try:
        from ..models import load_tokenizer

        tok = load_tokenizer(model)
        longest = 0
        for i in range(0, len(prompts), 1024):
            enc = tok(list(prompts[i:i + 1024]), add_special_tokens=False)["input_ids"]
            longest = max(longest, max(map(len, enc)))
        return longest, "tokens"
    except Exception as e:  # noqa: BLE001 - no tokenizer here (e.g. a Hub id offline): bound instead
        return max(len(p.encode("utf-8")) for p in prompts), f"UTF-8 bytes (tokenizer unavailable: {type(e).__name__})"


def prepare(cfg: TrainConfig, out: str | Path, *, nnodes: int = 1, gpus_per_node: int = 8, rollout: str = "vllm",
            max_prompt_length: int | None = None, model_path: str | None = None) -> Path:
    """Write a verl run directory for ``cfg`` (see the module docstring). Returns its path."""
    from ..data import load_any
    from ..models import TINY_ALIAS, resolve_model_path

    check_mappable(cfg)
    if cfg.model == TINY_ALIAS and model_path is None:
        raise ValueError("config 'model' = 'tiny': the random tiny model has no checkpoint directory for verl; "
                         "pass a Hugging Face directory or smollm2-135m")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = None
    if cfg.template == "chat":
        from ..models import load_tokenizer

        tok = load_tokenizer(cfg.model)
    train = load_any(cfg.train_data, cfg.data_root, cfg.columns, split=None)
    ev = load_any(cfg.eval_data, cfg.data_root, cfg.columns, split=None)
    for s in (train, ev):
        if s.skipped:
            print(f"note: {s.name}: {len(s.skipped)} invalid records skipped (see `medrlvr data validate`)",
                  file=sys.stderr)
    if not train.records:
        raise ValueError(f"config 'train_data': {cfg.train_data!r} has no valid records")
    stream = training_stream(cfg, train.records)
    ev_recs = ev.records[: cfg.eval_limit] if cfg.eval_limit else ev.records
    tr_rows = [_row(r, cfg.template, tok, cfg.prefill_think, i, "train") for i, r in enumerate(stream)]
    va_rows = [_row(r, cfg.template, tok, cfg.prefill_think, i, "val") for i, r in enumerate(ev_recs)]
    _write_parquet(tr_rows, out / "train.parquet")
    _write_parquet(va_rows, out / "val.parquet")
    prompts = sorted({r["prompt"][0]["content"] for r in tr_rows + va_rows})
    longest, unit = _max_prompt_tokens(prompts, cfg.model)  # every distinct prompt: verl would cut a longer one
    if max_prompt_length is None:
        max_prompt_length = int(math.ceil(longest / 64) * 64)
    elif max_prompt_length < longest:
        raise ValueError(f"--max-prompt-length {max_prompt_length}: the longest prompt has {longest} {unit}; "
                         "verl would cut it (left truncation)")
    mpath = model_path or resolve_model_path(cfg.model)
    overrides = verl_overrides(cfg, out, model_path=mpath, max_prompt_length=max_prompt_length, nnodes=nnodes,
                               gpus_per_node=gpus_per_node, rollout=rollout)
    from .. import __version__ as medrlvr_version

    (out / "medrlvr_reward.py").write_text(REWARD_FILE.format(
        version=medrlvr_version, verl=VERL_VERSION, scheme=cfg.reward_scheme,
        prefill=response_prefix(cfg.template, cfg.prefill_think) or None), encoding="utf-8")
    (out / "agent_loops.yaml").write_text(AGENT_LOOPS_FILE.format(
        name=AGENT_LOOP_NAME, stop=json.dumps(list(cfg.stop))), encoding="utf-8")
    save_config(cfg, out / "config.yaml")
    marker = {"verl_version": VERL_VERSION, "medrlvr_version": medrlvr_version, "model_path": mpath,
              "reward_scheme": cfg.reward_scheme, "template": cfg.template, "prefill_think": cfg.prefill_think,
              "train_rows": len(tr_rows), "val_rows": len(va_rows), "max_prompt_length": max_prompt_length,
              "longest_prompt": [longest, unit], "nnodes": nnodes, "gpus_per_node": gpus_per_node,
              "rollout": rollout, "overrides": overrides}
    (out / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
    _write_scripts(out, overrides, nnodes, gpus_per_node)
    return out


def _shell(word: str) -> str:
    if all(c.isalnum() or c in "-_./=:+,@%" for c in word):
        return word
    if not any(c in word for c in '"$`\\!'):
        return '"' + word + '"'
    return shlex.quote(word)


def _command(overrides: list[str]) -> str:
    return "python3 -m verl.trainer.main_ppo \\\n  " + " \\\n  ".join(_shell(o) for o in overrides) + ' \\\n  "$@"'


RUN_SH = """#!/usr/bin/env bash
# verl {verl} run of a medrlvr config, written by `medrlvr verl prepare` (one node, {gpus} GPUs).
# Extra arguments are appended as verl overrides: ./run.sh trainer.total_training_steps=10
set -euo pipefail
cd "$(dirname "$0")"
export VERL_FILE_LOGGER_PATH="$PWD/metrics.jsonl"
{cmd}
"""

RUN_MULTI_SH = """#!/usr/bin/env bash
# verl {verl} on a Ray cluster of {nnodes} nodes x {gpus} GPUs, written by `medrlvr verl prepare`.
#   on the head node:        ./run_multinode.sh head
#   on every other node:     ./run_multinode.sh worker HEAD_IP
#   then, on the head node:  ./run_multinode.sh submit [verl overrides ...]
# This directory must be at the same path on every node (shared filesystem), with medrlvr and verl installed.
set -euo pipefail
cd "$(dirname "$0")"
PORT="${{RAY_PORT:-6379}}"
case "${{1:-}}" in
  head)   ray start --head --port="$PORT" --num-gpus={gpus} --dashboard-host=0.0.0.0 ;;
  worker) ray start --address="$2:$PORT" --num-gpus={gpus} ;;
  submit) shift
    ray job submit --address="${{RAY_DASHBOARD:-http://127.0.0.1:8265}}" --working-dir=. \\
      --runtime-env-json='{{"env_vars": {{"VERL_FILE_LOGGER_PATH": "'"$PWD"'/metrics.jsonl"}}}}' -- \\
      {cmd} ;;
  *) echo "usage: $0 head | worker HEAD_IP | submit [overrides...]" >&2; exit 2 ;;
esac
"""


def _write_scripts(out: Path, overrides: list[str], nnodes: int, gpus: int) -> None:
    single = [o for o in overrides if not o.startswith(("trainer.nnodes=", "trainer.n_gpus_per_node="))]
    single += ["trainer.nnodes=1", f"trainer.n_gpus_per_node={gpus}"]
    multi = [o for o in overrides if not o.startswith("trainer.nnodes=")] + [f"trainer.nnodes={max(nnodes, 2)}"]
    for name, text in (("run.sh", RUN_SH.format(verl=VERL_VERSION, gpus=gpus, cmd=_command(single))),
                       ("run_multinode.sh", RUN_MULTI_SH.format(verl=VERL_VERSION, gpus=gpus, nnodes=max(nnodes, 2),
                                                                cmd=_command(multi).replace("\n", "\n    ")))):
        p = out / name
        p.write_text(text, encoding="utf-8")
        p.chmod(0o755)


def launch(run_dir: str | Path, extra: Sequence[str] = (), dry_run: bool = False) -> int:
    """Run ``DIR/run.sh`` with extra verl overrides (verl must be importable by ``python3``)."""
    d = Path(run_dir)
    if not (d / MARKER).is_file() or not (d / "run.sh").is_file():
        raise FileNotFoundError(f"{d}: not a directory written by `medrlvr verl prepare` (no {MARKER} / run.sh)")
    cmd = ["bash", str(d / "run.sh"), *extra]
    if dry_run:
        print(" ".join(shlex.quote(c) for c in cmd))
        return 0
    probe = subprocess.run(["python3", "-c", "import verl, sys; sys.stdout.write(verl.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise ValueError(f"verl is not importable by python3 here: pip install 'verl[vllm]=={VERL_VERSION}'")
    if probe.stdout.strip() != VERL_VERSION:
        print(f"warning: verl {probe.stdout.strip()} installed; the mapping is tested against {VERL_VERSION}",
              file=sys.stderr)
    return subprocess.call(cmd)


# ------------------------------------------------------------------------------------------ read-back
def is_verl_run(run_dir: str | Path) -> bool:
    """A directory written by ``medrlvr verl prepare`` or holding verl generation dumps."""
    d = Path(run_dir)
    return (d / MARKER).is_file() or (not (d / "samples.jsonl").is_file() and (d / "rollouts").is_dir())


def _read_jsonl(path: Path) -> tuple[list[dict], int]:
    from ..analysis.report import read_jsonl

    return read_jsonl(path)


def _dump_files(d: Path) -> list[tuple[int, Path]]:
    if not d.is_dir():
        return []
    out = []
    for p in d.glob("*.jsonl"):
        try:
            out.append((int(p.stem), p))
        except ValueError:
            continue
    return sorted(out)


def _parse_options(prompt: str) -> dict[str, str]:
    import re

    opts = {}
    for m in re.finditer(r"^([A-Z])\. (.*)$", prompt, flags=re.M):
        if m.group(1) not in opts:
            opts[m.group(1)] = m.group(2).strip()
    return opts


def _prompt_index(d: Path) -> dict[str, dict]:
    idx: dict[str, dict] = {}
    for name in ("train.parquet", "val.parquet"):
        p = d / name
        if not p.is_file():
            continue
        import pyarrow.parquet as pq

        for row in pq.read_table(p, columns=["prompt", "extra_info", "reward_model"]).to_pylist():
            text = row["prompt"][0]["content"]
            info = row.get("extra_info") or {}
            try:
                opts = json.loads(info.get("options") or "{}")
            except ValueError:
                opts = {}
            idx.setdefault(text.strip(), {"id": info.get("id"), "n_options": info.get("n_options"), "options": opts,
                                         "gold": (row.get("reward_model") or {}).get("ground_truth")})
    return idx


def _samples(rows: list[dict], step: int, idx: dict, scheme: str, prefill: str, stats: dict) -> list[dict]:
    from ..reward import join_prefill, score

    out = []
    groups: dict[str, int] = {}
    for r in rows:
        prompt = r.get("input") if isinstance(r.get("input"), str) else ""
        completion = r.get("output") if isinstance(r.get("output"), str) else ""
        meta = idx.get(prompt.strip())
        if meta is None:
            stats["unmatched"] += 1
            opts = _parse_options(prompt)
            meta = {"id": None, "n_options": len(opts) or None, "options": opts, "gold": r.get("gts")}
        gold = str(r.get("gts") if r.get("gts") is not None else meta["gold"] or "").strip().upper()
        n = meta["n_options"] or 5
        response = join_prefill(completion, prefill) if prefill else completion
        try:
            res = score(response, gold, int(n), scheme=scheme, options=meta["options"] or None)
        except ValueError:
            stats["unscorable"] += 1
            continue
        dumped = r.get("score")
        reward = float(dumped) if isinstance(dumped, (int, float)) and not isinstance(dumped, bool) else res.reward
        if abs(reward - res.reward) > 1e-6:
            stats["score_mismatch"] += 1
        g = groups.setdefault(prompt, len(groups))
        out.append({"step": int(r.get("step", step)) if isinstance(r.get("step"), int) else step,
                    "id": meta["id"], "group": g, "prompt": prompt, "completion": completion, "response": response,
                    "reward": reward, "format_ok": res.format_ok, "pred": res.pred, "gold": gold,
                    "correct": res.correct, "flags": list(res.flags), "finish_reason": None,
                    "n_options": int(n), "options": meta["options"] or None})
    return out


VERL_METRICS = {"reward_mean": "critic/score/mean", "response_tokens": "response_length/mean",
                "entropy": "actor/entropy", "clip_frac": "actor/pg_clipfrac",
                "truncated_frac": "response_length/clip_ratio"}
"""medrlvr metric name -> verl metric name (file logger); ``kl`` is ``actor/reward_kl_penalty`` (KL in the
reward) or ``actor/kl_loss`` / ``kl_loss`` (KL loss: the legacy and the engine workers' names). verl's own
names are kept too."""


def convert_run(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, list[str]]:
    """Write medrlvr's ``samples.jsonl`` / ``metrics.jsonl`` / ``config.yaml`` / ``results.json`` for a verl run.

    Returns ``(view_dir, notes)``; notes count what could not be matched or read (never dropped silently).
    """
    from ..evaluate import bootstrap_ci

    d = Path(run_dir)
    view = Path(out) if out else d / VIEW_DIR
    view.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    marker = {}
    if (d / MARKER).is_file():
        try:
            marker = json.loads((d / MARKER).read_text(encoding="utf-8"))
        except ValueError:
            notes.append(f"{MARKER}: unreadable, assuming the paper scheme and the <think> pre-fill")
    scheme = marker.get("reward_scheme", "paper")
    prefill = response_prefix(marker.get("template", "r1-zero"), marker.get("prefill_think", True))
    idx = _prompt_index(d)
    stats = defaultdict(int)
    samples: list[dict] = []
    per_step: dict[int, list[dict]] = {}
    bad = 0
    for step, p in _dump_files(d / "rollouts"):
        rows, b = _read_jsonl(p)
        bad += b
        s = _samples(rows, step, idx, scheme, prefill, stats)
        per_step[step] = s
        samples.extend(s)
    val: dict[int, list[dict]] = {}
    for step, p in _dump_files(d / "validation"):
        rows, b = _read_jsonl(p)
        bad += b
        val[step] = _samples(rows, step, idx, scheme, prefill, stats)
    if bad:
        notes.append(f"verl dumps: skipped {bad} unreadable line(s)")
    if stats["unmatched"]:
        notes.append(f"verl dumps: {stats['unmatched']} prompt(s) not found in train/val.parquet: options read "
                     "from the prompt text")
    if stats["unscorable"]:
        notes.append(f"verl dumps: {stats['unscorable']} sample(s) without a usable gold letter, not scored")
    if stats["score_mismatch"]:
        notes.append(f"verl dumps: {stats['score_mismatch']} dumped score(s) differ from medrlvr's re-score "
                     f"(scheme {scheme}); the report shows verl's")
    metrics_path = d / "metrics.jsonl"
    logged, b = _read_jsonl(metrics_path)
    if b:
        notes.append(f"metrics.jsonl: skipped {b} unreadable line(s)")
    by_step: dict[int, dict] = {}
    for rec in logged:
        st, data = rec.get("step"), rec.get("data")
        if isinstance(st, int) and isinstance(data, Mapping):
            by_step.setdefault(st, {}).update(data)
    steps = sorted(set(by_step) | set(per_step) | set(val))
    records = []
    for st in steps:
        data = by_step.get(st, {})
        rec: dict[str, Any] = {"step": st}
        rec.update({k: v for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        for ours, theirs in VERL_METRICS.items():
            if isinstance(data.get(theirs), (int, float)):
                rec[ours] = data[theirs]
        for k in ("actor/reward_kl_penalty", "actor/kl_loss", "kl_loss"):
            if isinstance(data.get(k), (int, float)):
                rec["kl"] = data[k]
                break
        s = per_step.get(st)
        if s:
            n = len(s)
            rec.setdefault("reward_mean", sum(x["reward"] for x in s) / n)
            rec["accuracy"] = sum(x["correct"] for x in s) / n
            rec["format_valid"] = sum(x["format_ok"] for x in s) / n
            rec["response_chars"] = sum(len(x["completion"]) for x in s) / n
            grp: dict[int, set] = defaultdict(set)
            size: dict[int, int] = defaultdict(int)
            for x in s:
                grp[x["group"]].add(x["reward"])
                size[x["group"]] += 1
            multi = [g for g in grp if size[g] > 1]
            if multi:
                rec["zero_var_frac"] = sum(len(grp[g]) == 1 for g in multi) / len(multi)
        v = val.get(st)
        if v:
            rec["eval_accuracy"] = sum(x["correct"] for x in v) / len(v)
            rec["eval_format_valid"] = sum(x["format_ok"] for x in v) / len(v)
            rec["eval_n"] = len(v)
        if len(rec) > 1:
            records.append(rec)
    if not logged:
        notes.append("metrics.jsonl (verl's file logger) not found: curves from the dumps only")
    if not per_step:
        notes.append("rollouts/ (trainer.rollout_data_dir) holds no dump: no training samples")
    with open(view / "metrics.jsonl", "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    with open(view / "samples.jsonl", "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    if (d / "config.yaml").is_file():
        (view / "config.yaml").write_text((d / "config.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    for old in view.glob("eval_step_*"):
        for f in old.glob("*"):
            f.unlink()
        old.rmdir()
    if val:
        st = max(val)
        v = val[st]
        res: dict[str, dict] = {}
        by_src = defaultdict(list)
        for x in v:
            by_src["verl-validation"].append(x)
        for name, xs in by_src.items():
            corr = [float(x["correct"]) for x in xs]
            res[name] = {"accuracy": sum(corr) / len(corr), "ci95": bootstrap_ci(corr), "n": len(corr),
                         "format_valid": sum(x["format_ok"] for x in xs) / len(xs), "step": st,
                         "note": "greedy validation generations dumped by verl, re-scored by medrlvr"}
        ed = view / f"eval_step_{st}"
        ed.mkdir(exist_ok=True)
        (ed / "results.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    return view, notes


# ---------------------------------------------------------------------------------------------- CLI
def _cmd_prepare(a) -> int:
    from ..config import build_config

    cfg = build_config(a.config, a.overrides)
    if a.data_root:
        cfg.data_root = a.data_root
    out = prepare(cfg, a.out, nnodes=a.nnodes, gpus_per_node=a.gpus_per_node, rollout=a.rollout,
                  max_prompt_length=a.max_prompt_length, model_path=a.model_path)
    m = json.loads((out / MARKER).read_text(encoding="utf-8"))
    for f in ("engine", "share_prompt", "autocast_bf16"):
        print(f"note: {f}={getattr(cfg, f)!r}: {FIELD_MAP[f][1]}")
    print(f"wrote {out}: train.parquet ({m['train_rows']} rows), val.parquet ({m['val_rows']} rows), "
          f"data.max_prompt_length={m['max_prompt_length']} (longest prompt {m['longest_prompt'][0]} "
          f"{m['longest_prompt'][1]}), run.sh, run_multinode.sh (verl {VERL_VERSION})")
    print(f"next: medrlvr verl launch {out}   (or: bash {out}/run.sh); then: medrlvr report {out}")
    return 0


def _cmd_launch(a) -> int:
    return launch(a.run_dir, a.overrides, dry_run=a.dry_run)


def add_cli(sub) -> None:
    """``medrlvr verl prepare|launch``."""
    v = sub.add_parser("verl", help=f"run a medrlvr config on verl {VERL_VERSION} (prepare, launch)")
    vs = v.add_subparsers(dest="verl_cmd", required=True)
    p = vs.add_parser("prepare", help="write train/val parquet, the reward entry point and run.sh")
    p.add_argument("--config", required=True, help="preset (paper-3b, cpu-demo, ...) or a YAML file")
    p.add_argument("--out", required=True, help="the verl run directory to write")
    p.add_argument("--nnodes", type=int, default=1, help="nodes (run_multinode.sh uses at least 2)")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--rollout", default="vllm", choices=["vllm", "sglang"], help="verl rollout engine")
    p.add_argument("--max-prompt-length", type=int, default=None,
                   help="data.max_prompt_length (default: the longest prompt, rounded up to 64)")
    p.add_argument("--model-path", default=None, help="model directory as the GPU nodes see it (default: model)")
    p.add_argument("--data-root", default=None)
    p.add_argument("overrides", nargs="*", help="key=value overrides of the medrlvr config")
    p.set_defaults(func=_cmd_prepare)
    la = vs.add_parser("launch", help="run DIR/run.sh where verl is installed (extra args: verl overrides)")
    la.add_argument("run_dir")
    la.add_argument("--dry-run", action="store_true", help="print the command only")
    la.add_argument("overrides", nargs="*", help="verl overrides appended to the command (key=value)")
    la.set_defaults(func=_cmd_launch)
