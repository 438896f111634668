"""Training configuration: one dataclass, every field documented with its default and origin.

A config is built from a preset name (``tiny``, ``cpu-demo``, ``paper-3b``: YAML files shipped in
``medrlvr/presets``) or a YAML file, then ``key=value`` overrides. Unknown keys and values that make
no sense are refused with an error that names the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from medrlvr.argtypes import did_you_mean

ALGOS = ("ppo", "grpo", "dr_grpo", "rloo")
LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3", "low_var_kl", "abs")


@dataclass
class TrainConfig:
    # --- model --------------------------------------------------------------------------------
    model: str = "tiny"
    """``tiny`` (random, tests), ``smollm2-135m`` (embedded default), a local HF dir or a Hub id."""
    dtype: str = "fp32"
    """Dtype of the trained weights (fp32 or bf16). fp32 master weights are the safe default."""
    autocast_bf16: bool | str = False
    """Run training forward/backward under CPU/CUDA bf16 autocast: ``true``, ``false`` or ``auto`` (on only
    where bf16 is native, :func:`medrlvr.hardware.fast_bf16`: CUDA sm80+, AVX512-BF16/AMX CPUs; on an
    AVX2-only CPU bf16 matmuls are many times slower than fp32; evidence: docs/decisions/bf16-and-hardware.md)."""
    lora: bool = False
    """Train a LoRA adapter (peft) instead of all weights; the reference is the adapter disabled."""
    lora_r: int = 16
    """LoRA rank (with ``lora``)."""
    lora_alpha: int = 32
    """LoRA scaling alpha (with ``lora``)."""
    critic: str = "separate"
    """PPO critic: ``separate`` (a copy of the policy trunk + scalar head, OpenRLHF style) or ``shared``."""
    seed: int = 0
    """Seeds the data order, option shuffles, sampling and initialisation: a run is reproducible from it."""

    # --- data ---------------------------------------------------------------------------------
    train_data: str = "starter:train"
    """A benchmark name (``medqa:dev``), a file (generic loader with ``columns``) or ``hub:ID``."""
    eval_data: str = "starter:test"
    """Held-out questions for the evaluations (same forms as ``train_data``)."""
    data_root: str | None = None
    """Folder of the named benchmarks (None: ``$MEDRLVR_DATA_ROOT``, else ``../shared/data``)."""
    columns: str | None = None
    """Column map for a generic train/eval file (see :mod:`medrlvr.data.loaders`)."""
    eval_limit: int = 64
    """Evaluate on the first N eval questions (0 = all)."""
    shuffle_options: bool = True
    """Shuffle each training question's options with a per-epoch seed (against position-bias hacking)."""
    group_orders: int = 1
    """Distinct option orders within one GRPO group (1: every sample sees the same order; ``samples_per_prompt``:
    each sample its own). Each order, seeded by (run seed, step, question, order), is shown to
    ``samples_per_prompt / group_orders`` samples: a fixed letter, or copying the first option's text, can then
    no longer win a whole group. Costs shared-prompt work: each order is prefilled and trained as its own prompt."""
    curriculum: str = "none"
    """Which training questions are drawn, by their pass rate in ``difficulty_file`` (:mod:`medrlvr.data.difficulty`):
    ``none`` (every question, the seeded order), ``filter`` (only those in the band ``curriculum_bands``: a group
    the model always or never solves has zero advantage and teaches nothing), ``easy_to_hard`` (the band's
    questions, each epoch from the highest pass rate down) or ``pools`` (bands with weights, each question drawn
    from a pool picked by weight). Every step logs the pass rates of the questions drawn."""
    difficulty_file: str | None = None
    """A file of ``medrlvr data difficulty`` made for ``train_data`` (refused when its ids or content hashes do
    not match); needed by every curriculum but ``none``."""
    curriculum_bands: str = "0:1"
    """``LOW:HIGH`` pass rates kept, both included (``filter``, ``easy_to_hard``; ``1/8:7/8`` drops the questions
    solved by none or all of 8 samples), or weighted pools ``LOW:HIGH=W,...`` (``pools``)."""

    # --- prompt and reward -----------------------------------------------------------------------
    template: str = "r1-zero"
    """Prompt template: ``r1-zero`` (the paper's text prompt), ``chat`` (the same through the tokenizer's chat
    template) or ``direct`` (see :mod:`medrlvr.prompts`)."""
    prefill_think: bool = True
    """End the prompt with ``<think>`` (the reward sees ``<think>`` + completion)."""
    reward_scheme: str = "paper"
    """``paper``: -1 bad format, 0 wrong, +1 right (Med-RLVR). Also ``strict``, ``composite``."""
    reward_no_letter: float = -0.1
    """``shaped``: reward of a well-formed answer that names no option letter."""
    reward_echo: float = -1.0
    """``shaped``: reward of a template echo (think/answer copying the prompt's placeholder text), a bad format."""
    reward_format_step: float = 0.25
    """``shaped``: credit per format tag reached in order inside the bad-format band (-1 + step x tags, at most
    3 tags). Keep ``reward_no_letter`` above ``-1 + 3 x step`` so every valid answer beats every invalid one."""

    # --- rollout ------------------------------------------------------------------------------
    engine: str = "auto"
    """Rollout engine: ``auto`` (``fast`` on the CPU, ``hf`` on CUDA: :func:`medrlvr.rollout.choose_engine`),
    ``hf`` (transformers generate, the reference) or ``fast`` (the fused CPU decoder)."""
    prompts_per_step: int = 4
    """Questions per training step: the global batch, split over processes."""
    samples_per_prompt: int = 4
    """Completions sampled per question (a GRPO group)."""
    max_new_tokens: int = 128
    """Most tokens a training completion may have."""
    temperature: float = 1.0
    """Sampling temperature of the training rollouts."""
    top_p: float = 1.0
    """Nucleus sampling of the training rollouts (1.0: off)."""
    stop: tuple[str, ...] = ("</answer>",)
    """Strings that end a completion (kept in it)."""

    share_prompt: bool = True
    """Training forwards run each group's prompt once and its responses on the repeated KV cache
    (:mod:`medrlvr.train.forward`): same log-probs and gradients, the prompt's FLOPs once per group."""

    # --- algorithm ----------------------------------------------------------------------------
    algo: str = "grpo"
    """``ppo`` (critic + GAE, the paper), ``grpo`` (Shao et al. 2024), ``dr_grpo`` (Liu et al. 2025), ``rloo``."""
    ppo_epochs: int = 1
    """Passes over each rollout batch."""
    mini_batch_size: int = 0
    """Samples per optimizer step inside a PPO epoch (0 = the whole rollout batch: one update per epoch)."""
    micro_batch_size: int = 4
    """Samples per forward/backward (gradient accumulation up to the mini-batch)."""
    lr: float = 1e-6
    """Policy learning rate (AdamW)."""
    critic_lr: float = 5e-6
    """TinyZero/OpenRLHF PPO defaults: actor 1e-6, critic 1e-5 (here 5e-6)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps."""
    lr_schedule: str = "constant"
    """``constant``, ``linear`` (to 0 at max_steps) or ``cosine``, after warm-up."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    clip_low: float = 0.2
    """PPO clip range below 1 (ratio floor 1 - clip_low)."""
    clip_high: float = 0.2
    """PPO clip range; clip_high > clip_low is DAPO's clip-higher."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 for negative advantages (Ye et al. 2020); None disables."""
    value_clip: float | None = 0.2
    """PPO critic value clipping around the old values; None disables."""
    vf_coef: float = 0.5
    """Weight of the critic's value loss (``critic: shared``; a separate critic has its own optimizer)."""
    gamma: float = 1.0
    """GAE discount."""
    lam: float = 1.0
    """GAE(gamma, lambda); 1.0/1.0 as in TinyZero's PPO defaults for outcome rewards."""
    kl_coef: float = 0.001
    """Beta of the KL penalty to the reference (TinyZero PPO default 0.001). 0 skips the reference forward."""
    kl_mode: str = "reward"
    """``reward``: -beta*KL folded into per-token rewards (PPO, the paper); ``loss``: KL term in the loss (GRPO)."""
    kl_estimator: str = "k1"
    """KL estimator: ``k1``, ``k2``, ``k3``, ``low_var_kl`` (k3 clamped) or ``abs``."""
    loss_agg: str = "token-mean"
    """How token losses become one loss: ``token-mean``, ``seq-mean-token-mean``, ``seq-mean-token-sum`` or
    ``seq-mean-token-sum-norm`` (Dr. GRPO)."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus in the policy loss (0: none)."""
    dynamic_sampling: bool = False
    """Drop prompt groups whose rewards are all equal and refill from the data (DAPO)."""
    dynamic_sampling_on: str = "reward"
    """What must vary within a group for ``dynamic_sampling`` to keep it: ``reward`` (any reward difference,
    format terms included: the signal while the format is being learned) or ``correct`` (the correctness: a
    group of wrong answers that differ only in format is dropped, the signal once the format is learned)."""
    max_refill_rounds: int = 2
    """With ``dynamic_sampling``: most extra rounds of sampling a step draws to refill dropped groups."""
    grpo_eps: float = 1e-6
    """GRPO: added to the group's reward std before dividing."""

    # --- loop ---------------------------------------------------------------------------------
    max_steps: int = 10
    """Training steps (a step is one rollout batch and its updates)."""
    stop_answered: float = 0.0
    """Stop before ``max_steps`` once at least this share of a step's samples are well-formed and name an
    option letter, for ``stop_patience`` steps in a row (0 = off; the metrics row of that step has
    ``stopped_early``; it is then evaluated, checkpointed and saved like the last step). For a model without the
    domain's knowledge the reward teaches the format and the letters and nothing after that: further steps
    only drift its letter preference (evidence: docs/decisions/cpu-demo-preset.md)."""
    stop_patience: int = 3
    """Consecutive steps at ``stop_answered`` before stopping."""
    eval_every: int = 0
    """Evaluate every N steps (0 = only at the end)."""
    eval_max_new_tokens: int = 0
    """0 = same as max_new_tokens."""
    eval_samples: int = 1
    """Answers per held-out question. 1 with ``eval_temperature`` 0 is greedy decoding. With more, each
    question's answers are sampled at ``eval_temperature`` (seeded per question, the same seeds before and
    after training): accuracy is the mean over all answers (avg@k, DeepSeek-R1's pass@1 estimate), and the
    format and letter figures (and the ``heldout_*`` monitors) count every answer."""
    eval_temperature: float = 0.0
    """Sampling temperature of the held-out evaluation (0 = greedy; needs ``eval_samples`` 1)."""
    save_every: int = 0
    """Checkpoint every N steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk, newest first (0 = all). The newest complete one is never deleted."""
    sample_every: int = 1
    """Write every completion of every N-th step to samples.jsonl."""
    report_to: tuple[str, ...] = ("tensorboard",)
    """Experiment trackers that receive the metrics (at the global step), the config, the alerts and the sample
    tables, from rank 0 (:mod:`medrlvr.tracking`): any of ``tensorboard`` (``tb/``), ``wandb`` (``wandb/``; mode
    from ``WANDB_MODE``), ``mlflow`` (``MLFLOW_TRACKING_URI``, else ``mlflow/`` in the run directory); ``[]`` for
    none. ``wandb`` and ``mlflow`` are the extras ``medrlvr[wandb]`` / ``medrlvr[mlflow]``."""
    log_samples_every: int = 10
    """Send the completions of every N-th step to the W&B / MLflow trackers as a table (step, id, stage, reward,
    correct, format, letters, flags, completion); only steps that ``sample_every`` writes are sent."""
    tracker_project: str = "medrlvr"
    """W&B project and MLflow experiment name (the run's name is its directory's name)."""
    rank: int = 0
    """Global rank of this process (set from torchrun's environment, as ``world_size``)."""
    world_size: int = 1
    """Set from torchrun's environment when the trainer starts (:func:`medrlvr.train.distributed.init`)."""
    parallel: str = "ddp"
    """Data parallelism with several processes: ``ddp`` (DistributedDataParallel, replicated models) or
    ``fsdp2`` (``fully_shard``: parameters, gradients and optimizer state sharded). One process: ignored."""
    dist_timeout_s: float = 600.0
    """Process-group timeout (``init_process_group(timeout=...)``): how long a collective waits for a rank
    that hangs without exiting. A rank that exits is handled at once by torchrun (see medrlvr.train.distributed)."""
    on_alert: str = "warn"
    """What a raised monitor alert (:mod:`medrlvr.monitor`) does: ``warn`` (console line + ``alerts.jsonl``)
    or ``stop`` (also checkpoint and exit with code 3, so a sweep can move on)."""
    monitor: dict[str, Any] = field(default_factory=dict)
    """Monitor thresholds that differ from :class:`medrlvr.monitor.MonitorConfig`'s defaults (each documented
    there), e.g. ``monitor: {entropy_min: 0.05, k: 2}`` in YAML or ``monitor.entropy_min=0.05`` on the command
    line. Kept in the run's ``config.yaml``, so ``medrlvr monitor`` and the report replay with them."""

    @property
    def rollout_batch(self) -> int:
        return self.prompts_per_step * self.samples_per_prompt

    def validate(self) -> "TrainConfig":
        def bad(key, msg):
            raise ValueError(f"config '{key}': {msg}")

        _check_types(self)  # each value has its field's type (and numbers are finite) before any arithmetic
        _check_ranges(self)
        if self.algo not in ALGOS:
            bad("algo", f"{self.algo!r} is not one of {ALGOS}")
        if self.loss_agg not in LOSS_AGGS:
            bad("loss_agg", f"{self.loss_agg!r} is not one of {LOSS_AGGS}")
        if self.kl_estimator not in KL_ESTIMATORS:
            bad("kl_estimator", f"{self.kl_estimator!r} is not one of {KL_ESTIMATORS}")
        if self.kl_mode not in ("reward", "loss"):
            bad("kl_mode", "must be 'reward' or 'loss'")
        if self.critic not in ("separate", "shared"):
            bad("critic", "must be 'separate' or 'shared'")
        if self.dtype not in ("fp32", "bf16"):
            bad("dtype", "must be fp32 or bf16")
        try:
            self.autocast_bf16 = autocast_setting(self.autocast_bf16)
        except ValueError as e:
            bad("autocast_bf16", str(e))
        if self.lr_schedule not in ("constant", "linear", "cosine"):
            bad("lr_schedule", "must be constant, linear or cosine")
        for k in ("prompts_per_step", "samples_per_prompt", "max_new_tokens", "ppo_epochs", "micro_batch_size",
                  "max_steps", "sample_every", "world_size", "log_samples_every"):
            if getattr(self, k) < 1:
                bad(k, f"must be >= 1, got {getattr(self, k)}")
        for k in ("mini_batch_size", "eval_every", "save_every", "warmup_steps", "eval_limit", "kl_coef",
                  "entropy_coef", "weight_decay"):
            if getattr(self, k) < 0:
                bad(k, f"must be >= 0, got {getattr(self, k)}")
        if self.lr <= 0:
            bad("lr", "must be > 0")
        if self.algo in ("grpo", "dr_grpo", "rloo") and self.samples_per_prompt < 2:
            bad("samples_per_prompt", f"{self.algo} compares samples of one prompt: needs >= 2")
        mb = self.mini_batch_size or self.rollout_batch
        if mb > self.rollout_batch:
            bad("mini_batch_size", f"{mb} exceeds the rollout batch {self.rollout_batch}")
        if self.rollout_batch % mb:
            bad("mini_batch_size", f"{mb} does not divide the rollout batch {self.rollout_batch}")
        if mb % self.micro_batch_size and self.micro_batch_size < mb:
            bad("micro_batch_size", f"{self.micro_batch_size} does not divide the mini-batch {mb}")
        from medrlvr.reward import SCHEMES

        if self.reward_scheme not in SCHEMES:
            bad("reward_scheme", f"{self.reward_scheme!r} is not one of {sorted(SCHEMES)}")
        if not 0 <= self.clip_low < 1 or self.clip_high < 0:
            bad("clip_low", "clip_low must be in [0, 1) and clip_high >= 0")
        if self.dual_clip is not None and self.dual_clip <= 1:
            bad("dual_clip", "must be > 1 or null")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            bad("gamma", "gamma and lam must be in [0, 1]")
        if self.temperature <= 0:
            bad("temperature", "training samples need temperature > 0")
        if not 0 <= self.rank < self.world_size:
            bad("rank", f"must be in [0, world_size={self.world_size})")
        if self.parallel not in ("ddp", "fsdp2"):
            bad("parallel", f"{self.parallel!r} is not one of ('ddp', 'fsdp2')")
        if self.parallel == "fsdp2" and self.lora:
            bad("parallel", "fsdp2 with lora is not supported (use ddp: the adapter is small)")
        if self.dist_timeout_s <= 0:
            bad("dist_timeout_s", "must be > 0")
        if self.on_alert not in ("warn", "stop"):
            bad("on_alert", f"must be warn or stop, got {self.on_alert!r}")
        if self.group_orders < 1 or self.samples_per_prompt % self.group_orders:
            bad("group_orders", f"must be >= 1 and divide samples_per_prompt={self.samples_per_prompt}, "
                f"got {self.group_orders}")
        if not 0 <= self.reward_format_step <= 1 / 3:
            bad("reward_format_step", f"must be in [0, 1/3] (3 steps keep the band below 0), got {self.reward_format_step}")
        if self.template not in ("r1-zero", "chat", "direct"):
            bad("template", "must be r1-zero, chat or direct")
        _check_curriculum(self)
        from medrlvr.tracking import check_names

        self.report_to = check_names(self.report_to)
        from medrlvr.monitor import MonitorConfig

        MonitorConfig.from_mapping(self.monitor)
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _check_curriculum(cfg: TrainConfig) -> None:
    """``curriculum``, ``curriculum_bands``, ``difficulty_file`` and ``dynamic_sampling_on``, by key (the file
    itself is read and checked against the training data when the trainer starts)."""
    from medrlvr.data.difficulty import CURRICULA, parse_band, parse_pools

    if cfg.dynamic_sampling_on not in ("reward", "correct"):
        raise ValueError(f"config 'dynamic_sampling_on': must be reward or correct, got {cfg.dynamic_sampling_on!r}")
    if cfg.curriculum not in CURRICULA:
        raise ValueError(f"config 'curriculum': {cfg.curriculum!r} is not one of {CURRICULA}")
    if cfg.curriculum != "none" and not cfg.difficulty_file:
        raise ValueError(f"config 'difficulty_file': curriculum {cfg.curriculum!r} needs a file of "
                         "`medrlvr data difficulty`")
    try:
        (parse_pools if cfg.curriculum == "pools" else parse_band)(cfg.curriculum_bands)
    except ValueError as e:
        raise ValueError(f"config 'curriculum_bands': {e}") from None


def _check_types(cfg: TrainConfig) -> None:
    """Refuse a value whose type is not its field's (``samples_per_prompt=2.5``, ``stop=5``, ``lr=.nan``)
    with the key named. Annotations this does not know are left to the field's own checks."""
    for f in fields(cfg):
        v, t = getattr(cfg, f.name), str(f.type).replace(" ", "")
        opt = t.endswith("|None")
        base = t[: -len("|None")] if opt else t
        if v is None:
            if opt:
                continue
            if base in ("int", "float", "bool", "str"):
                raise ValueError(f"config '{f.name}': must be a {base}, got null")
            continue
        isnum = isinstance(v, (int, float)) and not isinstance(v, bool)
        if base == "int" and not (isinstance(v, int) and not isinstance(v, bool)):
            raise ValueError(f"config '{f.name}': must be an integer, got {v!r}")
        if base == "float":
            if not isnum:
                raise ValueError(f"config '{f.name}': must be a number, got {v!r}")
            if not math.isfinite(v):
                raise ValueError(f"config '{f.name}': must be finite, got {v!r}")
        if base == "str" and not isinstance(v, str):
            raise ValueError(f"config '{f.name}': must be a string, got {v!r}")
        if base == "bool" and not isinstance(v, bool):
            raise ValueError(f"config '{f.name}': must be true or false, got {v!r}")
        if base == "tuple[str,...]":
            if not isinstance(v, (tuple, list)) or not all(isinstance(x, str) for x in v):
                raise ValueError(f"config '{f.name}': must be a list of strings, got {v!r}")
            setattr(cfg, f.name, tuple(v))
        if base == "tuple[float,float]":
            ok = (isinstance(v, (tuple, list)) and len(v) == 2
                  and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v))
            if not ok:
                raise ValueError(f"config '{f.name}': must be a list of two finite numbers, got {v!r}")
            setattr(cfg, f.name, tuple(float(x) for x in v))


def _check_ranges(cfg: TrainConfig) -> None:
    """Numbers that are finite but make no sense (``lr=1e30``, ``keep_checkpoints=-1``), by key."""
    def bad(key, msg):
        raise ValueError(f"config '{key}': {msg}, got {getattr(cfg, key)!r}")

    for k in ("lr", "critic_lr"):
        if not 0 < getattr(cfg, k) <= 1:
            bad(k, "must be in (0, 1]")
    if cfg.max_grad_norm <= 0:
        bad("max_grad_norm", "must be > 0")
    if not 0 < cfg.top_p <= 1:
        bad("top_p", "must be in (0, 1]")
    if cfg.temperature > 100:
        bad("temperature", "must be <= 100")
    if not all(0 <= b < 1 for b in cfg.adam_betas):
        bad("adam_betas", "both must be in [0, 1)")
    if not 0 <= cfg.stop_answered <= 1:
        bad("stop_answered", "a share of samples: must be in [0, 1] (0 = off)")
    if cfg.stop_patience < 1:
        bad("stop_patience", "must be >= 1")
    if cfg.eval_samples < 1:
        bad("eval_samples", "must be >= 1")
    if not 0 <= cfg.eval_temperature <= 100:
        bad("eval_temperature", "must be in [0, 100] (0 = greedy)")
    if cfg.eval_samples > 1 and cfg.eval_temperature == 0:
        bad("eval_samples", "greedy answers per question would all be the same: "
                            "set eval_temperature > 0 or eval_samples 1")
    for k in ("keep_checkpoints", "max_refill_rounds", "eval_max_new_tokens", "vf_coef"):
        if getattr(cfg, k) < 0:
            bad(k, "must be >= 0" + (" (0 keeps every checkpoint)" if k == "keep_checkpoints" else ""))
    if cfg.grpo_eps <= 0:
        bad("grpo_eps", "must be > 0")
    if cfg.value_clip is not None and cfg.value_clip <= 0:
        bad("value_clip", "must be > 0 or null")
    for k in ("lora_r", "lora_alpha"):
        if getattr(cfg, k) < 1:
            bad(k, "must be >= 1")


PRESETS = ("tiny", "cpu-demo", "paper-3b")


def _coerce(key: str, value: Any, typ: Any, default: Any) -> Any:
    if isinstance(value, str) and not (isinstance(default, str) or typ in ("str", "str | None")):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"config '{key}': cannot parse {value!r}: {e}") from None
    if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
        try:  # YAML 1.1 reads "3e-5" as a string
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    if isinstance(default, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(default, bool) and not isinstance(value, bool) and "str" not in str(typ):
        raise ValueError(f"config '{key}': expected true/false, got {value!r}")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(default, (int, float)) and not isinstance(default, bool) and not isinstance(value, (int, float)):
        if value is not None or "None" not in str(typ):
            raise ValueError(f"config '{key}': expected a number, got {value!r}")
    return value


def autocast_setting(value: bool | str) -> bool | str:
    """An ``autocast_bf16`` setting as ``True``, ``False`` or ``"auto"`` (strings in any case, e.g. from YAML or
    a CLI flag); ``ValueError`` for anything else. :func:`medrlvr.hardware.use_autocast` resolves ``"auto"``."""
    if isinstance(value, bool):
        return value
    low = value.strip().lower() if isinstance(value, str) else None
    if low not in ("auto", "true", "false"):
        raise ValueError(f"must be true, false or auto, got {value!r}")
    return low if low == "auto" else low == "true"


def build_config(source: str | dict | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """``source``: a preset name, a YAML path, a dict or None (defaults); ``overrides``: ``["k=v", ...]``."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if isinstance(source, dict):
        data, origin = dict(source), "dict"
    elif source:
        if source in PRESETS:
            text = resources.files("medrlvr.presets").joinpath(f"{source}.yaml").read_text(encoding="utf-8")
            origin = f"preset {source}"
        else:
            p = Path(source)
            if not p.exists():
                raise FileNotFoundError(f"config {source!r} is neither a preset ({', '.join(PRESETS)}) nor a file"
                                        + did_you_mean(source, PRESETS))
            text, origin = p.read_text(encoding="utf-8"), str(p)
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{origin}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{origin}: expected a mapping of config keys")
    dotted: dict[str, Any] = {}  # monitor.KEY=v overrides, merged into the monitor section below
    if isinstance(overrides, dict):
        ov = dict(overrides)
    else:
        ov = {}
        for item in overrides or []:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not key=value")
            k, v = item.split("=", 1)
            k = k.strip()
            if k.startswith("monitor."):  # one threshold: monitor.entropy_min=0.05
                dotted[k[len("monitor."):]] = _scalar(k, v)
            else:
                ov[k] = v
    is_file = origin not in ("defaults", "dict") and not origin.startswith("preset ")
    lines = _key_lines(text) if is_file else {}

    def at(key: str) -> str:
        """``FILE:LINE: `` of a key of the config file (``monitor.k`` or ``lr``); empty for a preset or a dict."""
        if not is_file:
            return ""
        line = lines.get(key) or lines.get(key.split(".")[0])
        return f"{origin}:{line}: " if line else f"{origin}: "

    known = {f.name: f for f in fields(TrainConfig)}
    defaults = TrainConfig()
    values: dict[str, Any] = {}
    for src_name, src in ((origin, data), ("override", ov)):
        for k, v in src.items():
            if k not in known:
                where = (at(k) or f"{src_name}: ") if src is data else "override: "
                raise ValueError(f"{where}unknown config key {k!r}" + did_you_mean(k, known))
            try:
                values[k] = _coerce(k, v, known[k].type, getattr(defaults, k))
            except ValueError as e:
                raise ValueError((at(k) if src is data else "") + str(e)) from None
    if dotted:  # monitor.X=v overrides merge into the file's monitor section
        base = values.get("monitor") or {}
        values["monitor"] = {**base, **dotted} if isinstance(base, dict) else base
    try:
        return TrainConfig(**values).validate()
    except ValueError as e:  # named with the file's line when the value it names came from the file
        m = re.match(r"config '([^']+)'", str(e))
        top, _, sub = (m.group(1) if m else "").partition(".")
        from_file = top in data and top not in ov and sub not in dotted
        raise ValueError((at(m.group(1)) if m and from_file else "") + str(e)) from None


def _key_lines(text: str) -> dict[str, int]:
    """Line (1-based) of each top-level key of a YAML config, and of each key of a nested mapping as
    ``outer.inner`` (for ``monitor:``), so an error can name where the value is."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for kn, vn in node.value:
            out[str(kn.value)] = kn.start_mark.line + 1
            if isinstance(vn, yaml.MappingNode):
                for kn2, _ in vn.value:
                    out[f"{kn.value}.{kn2.value}"] = kn2.start_mark.line + 1
    return out


def _scalar(key: str, value: str) -> Any:
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ValueError(f"config '{key}': cannot parse {value!r}: {e}") from None


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    from medrlvr.fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False), label="config")
