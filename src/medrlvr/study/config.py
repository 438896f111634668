"""The study configuration: one documented dataclass per section, validated before anything loads.

A study config is a preset name (``study-cpu``, ``paper-3b``: YAML files in ``medrlvr/study/presets``) or a
YAML file, then ``key=value`` overrides with dotted keys for the sections (``eval.limit=50``,
``rlvr.overrides.max_steps=3``, ``sft.config.epochs=1``, ``base=null`` drops an arm). An unknown key, a value
of the wrong type or out of range is refused with one line naming the file, the line and the key, as
:func:`medrlvr.train.config.build_config` does.

Sections (every one documented on its dataclass):

- the top level (:class:`StudyConfig`): the model, the training data, the in- and out-of-distribution
  benchmarks, the seeds and the pairs of arms to test;
- ``eval`` (:class:`EvalSettings`): the evaluation every arm gets (question limit, samples, temperature, ...);
- ``base`` (:class:`BaseArm`), ``sft`` (:class:`SFTArm`), ``rlvr`` and each of ``extra_arms`` (:class:`RLArm`).
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

from medrlvr.eval.benchmark import MODES
from medrlvr.sft import SFTConfig
from medrlvr.train.config import TrainConfig, build_config

PRESETS = ("study-cpu", "paper-3b")
DIRECT_TEMPLATES = ("direct", "direct-chat")
COT_TEMPLATES = ("r1-zero", "chat")
BACKENDS = ("local", "verl")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# the study sets these for every arm: an arm that changed them would no longer compare the same model
_STUDY_OWNED = ("model", "seed", "data_root")


class StudyConfigError(ValueError):
    """A study config that cannot run; the message names the file, line and key."""


@dataclass
class EvalSettings:
    """The evaluation every arm gets: the same questions, option orders and sampling seeds for all.

    Attributes:
        limit: the first N questions of each benchmark (0: all).
        n_samples: answers per question (``direct`` / ``cot``; ``loglik`` is deterministic and draws one).
            Accuracy is the mean over a question's answers; the paired test counts a question as right when more
            than half its answers are.
        temperature: 0 is greedy decoding (needs ``n_samples`` 1); above 0 each question's answers are drawn
            from a seed of the question's own (:class:`medrlvr.eval.benchmark.EvalConfig` ``question_seeds``),
            so every arm samples a question from the same seed.
        max_new_tokens: the longest ``cot`` answer in tokens (``direct`` answers take 5).
        seed: the evaluation seed (sampling seeds, bootstrap resamples).
        engine: rollout engine for ``direct`` and ``cot`` (``fast``: falls back to ``hf`` where it cannot run).
        bootstrap: bootstrap resamples of every 95% interval (accuracy and paired differences).
        batch_size: questions per batch (0: the mode's default).
    """

    limit: int = 0
    n_samples: int = 1
    temperature: float = 0.0
    max_new_tokens: int = 512
    seed: int = 0
    engine: str = "fast"
    bootstrap: int = 1000
    batch_size: int = 0

    def check(self, bad) -> None:
        for k in ("limit", "batch_size"):
            if getattr(self, k) < 0:
                bad(f"eval.{k}", f"must be >= 0 (0: {'all questions' if k == 'limit' else 'the default'})")
        for k in ("n_samples", "max_new_tokens", "bootstrap"):
            if getattr(self, k) < 1:
                bad(f"eval.{k}", "must be >= 1")
        if not 0 <= self.temperature <= 100:
            bad("eval.temperature", "must be in [0, 100] (0 = greedy)")
        if self.n_samples > 1 and self.temperature == 0:
            bad("eval.n_samples", "greedy answers per question would all be the same: set eval.temperature > 0")


@dataclass
class BaseArm:
    """The untouched model.

    Attributes:
        modes: evaluation modes, the first one the arm's main mode (the one the pairs test):
            ``loglik``, ``direct``, ``cot`` (:mod:`medrlvr.eval.benchmark`).
        template: the ``cot`` prompt: ``r1-zero`` (base models) or ``chat`` (instruct models).
        prefill_think: the ``cot`` prompt ends with ``<think>``.
        direct_template: the ``direct`` / ``loglik`` prompt: ``direct`` or ``direct-chat`` (through the model's
            chat template: an instruct model puts its probability on the letters there).
    """

    modes: tuple[str, ...] = ("loglik", "direct", "cot")
    template: str = "r1-zero"
    prefill_think: bool = True
    direct_template: str = "direct"


@dataclass
class SFTArm:
    """The model after supervised fine-tuning (:mod:`medrlvr.sft`: direct prompt -> answer letter).

    Attributes:
        modes: evaluation modes, the first one the arm's main mode (SFT trains the ``direct`` prompt).
        direct_template: the ``direct`` / ``loglik`` prompt (SFT trains the plain ``direct`` one).
        template, prefill_think: the ``cot`` prompt, when ``cot`` is one of the modes.
        config: :class:`medrlvr.sft.SFTConfig` fields (``lr_grid``, ``epochs``, ``dev_data``, ...); the model, the
            training data and the seed come from the study.
    """

    modes: tuple[str, ...] = ("loglik", "direct")
    direct_template: str = "direct"
    template: str = "r1-zero"
    prefill_think: bool = True
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class RLArm:
    """The model after RL training (``rlvr``, the paper's PPO, or an extra named arm for ablations).

    Attributes:
        config: a train preset (``tiny``, ``cpu-demo``, ``paper-3b``) or a train YAML file
            (:class:`medrlvr.train.config.TrainConfig`).
        overrides: TrainConfig keys over the preset (``max_steps``, ``algo``, ``shuffle_options``, ...); the
            model, the data root and the seed come from the study, the training data from the study unless set here.
        modes: evaluation modes (``cot``: the template the arm trained with; ``direct`` / ``loglik`` also work).
        direct_template: the ``direct`` / ``loglik`` prompt.
        backend: ``local`` (this package's trainer; ``nproc`` > 1 starts torchrun) or ``verl`` (``medrlvr verl
            prepare`` / ``launch``, verl's model merger, then the evaluation; needs GPUs and verl).
        nproc: data-parallel processes on one node for ``local``; GPUs per node for ``verl``.
    """

    config: str = "paper-3b"
    overrides: dict[str, Any] = field(default_factory=dict)
    modes: tuple[str, ...] = ("cot",)
    direct_template: str = "direct"
    backend: str = "local"
    nproc: int = 1


@dataclass
class StudyConfig:
    """A study: base vs SFT vs RLVR (and ablations), in and out of distribution, with paired tests.

    Attributes:
        model: the model every arm starts from (``smollm2-135m``, ``tiny``, a Hugging Face dir or Hub id).
        dtype: the evaluated models' dtype (``fp32``, ``bf16``).
        train_data: the training questions of the SFT and RL arms (benchmark ``NAME[:SPLIT]`` or a file).
        data_root: benchmark data folder (default: ``$MEDRLVR_DATA_ROOT``, else ``../shared/data``).
        columns: column map for data files (:mod:`medrlvr.data.loaders`; one per file as ``"a.csv=...;b.jsonl=..."``).
        id_benchmarks: in-distribution benchmarks (names or files).
        ood_benchmarks: out-of-distribution benchmarks (names or files); pooled for the OOD test.
        seeds: training seeds: each SFT and RL arm is trained once per seed (the base model once).
        pairs: the comparisons tested, ``"A vs B"`` with ``A``/``B`` an arm or ``ARM:MODE`` (without a mode: the
            mode both arms were evaluated in, else the arm's first mode); pairs naming an absent arm are left out.
        eval: :class:`EvalSettings`.
        base, sft, rlvr: the three arms of the paper (``null`` leaves one out).
        extra_arms: more RL arms by name (``grpo``, ``rlvr-shuffled``, ...).
    """

    model: str = "smollm2-135m"
    dtype: str = "fp32"
    train_data: str = "medqa-4opt:dev"
    data_root: str | None = None
    columns: str | None = None
    id_benchmarks: tuple[str, ...] = ("medqa-4opt:test",)
    ood_benchmarks: tuple[str, ...] = ("mmlu-pro-health",)
    seeds: tuple[int, ...] = (0,)
    pairs: tuple[str, ...] = ("rlvr vs sft", "rlvr vs base", "sft vs base")
    eval: EvalSettings = field(default_factory=EvalSettings)
    base: BaseArm | None = field(default_factory=BaseArm)
    sft: SFTArm | None = field(default_factory=SFTArm)
    rlvr: RLArm | None = field(default_factory=RLArm)
    extra_arms: dict[str, RLArm] = field(default_factory=dict)

    # ------------------------------------------------------------------ derived
    def arms(self) -> dict[str, BaseArm | SFTArm | RLArm]:
        """Every arm present, by name, in the order base, sft, rlvr, extra arms."""
        out: dict[str, Any] = {}
        for k in ("base", "sft", "rlvr"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        out.update(self.extra_arms)
        return out

    def rl_arms(self) -> dict[str, RLArm]:
        return {k: v for k, v in self.arms().items() if isinstance(v, RLArm)}

    def sft_config(self, seed: int) -> SFTConfig:
        """The SFT arm's :class:`~medrlvr.sft.SFTConfig` for one seed."""
        assert self.sft is not None
        kw = {**self.sft.config, "model": self.model, "seed": seed, "data_root": self.data_root}
        kw.setdefault("train_data", self.train_data)
        kw.setdefault("columns", self.columns)
        kw.setdefault("dtype", self.dtype)
        return SFTConfig(**kw)

    def train_config(self, name: str, seed: int) -> TrainConfig:
        """An RL arm's :class:`~medrlvr.train.config.TrainConfig` for one seed."""
        arm = self.rl_arms()[name]
        ov = {"train_data": self.train_data, "columns": self.columns, **arm.overrides,
              "model": self.model, "seed": seed, "data_root": self.data_root}
        return build_config(arm.config, {k: v for k, v in ov.items() if v is not None or k in arm.overrides})

    def pair_list(self) -> list[tuple[str, str]]:
        """The pairs as ``(A, B)`` cell names ``ARM:MODE`` whose arms are present."""
        arms = self.arms()
        out = []
        for p in self.pairs:
            a, b = _pair_cells(*(x.strip() for x in p.split(" vs ")), arms)
            if a and b:
                out.append((a, b))
        return out

    def to_dict(self) -> dict[str, Any]:
        def plain(v):
            if dataclasses.is_dataclass(v):
                return {f.name: plain(getattr(v, f.name)) for f in fields(v)}
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (tuple, list)):
                return [plain(x) for x in v]
            return v
        return plain(self)


def _pair_cells(spec_a: str, spec_b: str, arms: dict[str, Any]) -> tuple[str | None, str | None]:
    """``ARM[:MODE]`` x 2 -> cell names. A side without a mode takes the other side's mode when its arm was
    evaluated in it (so ``sft vs base`` compares like with like), else the first mode both arms share, else its
    arm's first mode. An absent arm gives None."""
    (arm_a, _, mode_a), (arm_b, _, mode_b) = spec_a.partition(":"), spec_b.partition(":")
    if arm_a not in arms or arm_b not in arms:
        return None, None
    modes_a, modes_b = list(arms[arm_a].modes), list(arms[arm_b].modes)
    if not mode_a and not mode_b:
        shared = [m for m in modes_a if m in modes_b]
        mode_a = mode_b = shared[0] if shared else None
    mode_a = mode_a or (mode_b if mode_b in modes_a else modes_a[0])
    mode_b = mode_b or (mode_a if mode_a in modes_b else modes_b[0])
    return f"{arm_a}:{mode_a}", f"{arm_b}:{mode_b}"


# ---------------------------------------------------------------------------------------------- building
def _key_lines(text: str) -> dict[str, int]:
    """1-based line of every key of a YAML mapping, nested keys as ``a.b.c``."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    out: dict[str, int] = {}

    def walk(n, prefix: str):
        if isinstance(n, yaml.MappingNode):
            for kn, vn in n.value:
                key = f"{prefix}{kn.value}"
                out[key] = kn.start_mark.line + 1
                walk(vn, key + ".")

    walk(node, "")
    return out


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    d = data
    for i, p in enumerate(parts[:-1]):
        nxt = d.get(p)
        if nxt is None:
            nxt = d[p] = {}
        if not isinstance(nxt, dict):
            raise StudyConfigError(f"override {key}: '{'.'.join(parts[:i + 1])}' is not a section")
        d = nxt
    d[parts[-1]] = value


def _check_value(key: str, value: Any, typ: str, bad) -> Any:
    t = typ.replace(" ", "")
    opt = t.endswith("|None")
    base = t[:-5] if opt else t
    if value is None:
        if opt:
            return None
        bad(key, f"must be a {base}, got null")
    if base == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            bad(key, f"must be an integer, got {value!r}")
    elif base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            bad(key, f"must be a finite number, got {value!r}")
        value = float(value)
    elif base == "bool":
        if not isinstance(value, bool):
            bad(key, f"must be true or false, got {value!r}")
    elif base == "str":
        if not isinstance(value, str) or not value.strip():
            bad(key, f"must be a non-empty string, got {value!r}")
    elif base.startswith("tuple[str"):
        if isinstance(value, str):
            value = [x.strip() for x in value.split(",") if x.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) and x.strip() for x in value):
            bad(key, f"must be a list of names, got {value!r}")
        value = tuple(value)
    elif base.startswith("tuple[int"):
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool)
                                                           for x in value):
            bad(key, f"must be a list of integers, got {value!r}")
        value = tuple(value)
    elif base.startswith("dict"):
        if not isinstance(value, dict):
            bad(key, f"must be a mapping, got {value!r}")
    return value


def _section(cls, data: Any, prefix: str, bad) -> Any:
    if not isinstance(data, dict):
        bad(prefix.rstrip("."), f"must be a mapping of {cls.__name__} keys (or null), got {data!r}")
    known = {f.name: f for f in fields(cls)}
    kw = {}
    for k, v in data.items():
        if k not in known:
            bad(f"{prefix}{k}", f"unknown key; the {cls.__name__} keys are {', '.join(known)}")
        kw[k] = _check_value(f"{prefix}{k}", v, str(known[k].type), bad)
    return cls(**kw)


def load_study_source(source: str) -> tuple[dict[str, Any], str, str | None]:
    """``(data, origin, text)`` of a preset name or YAML file (``text`` only for a file)."""
    if source in PRESETS:
        text = resources.files("medrlvr.study").joinpath(f"presets/{source}.yaml").read_text(encoding="utf-8")
        origin, is_file = f"preset {source}", False
    else:
        p = Path(source)
        if not p.is_file():
            raise FileNotFoundError(f"study config {source!r} is neither a study preset ({', '.join(PRESETS)}) "
                                    "nor a file")
        text, origin, is_file = p.read_text(encoding="utf-8"), str(p), True
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise StudyConfigError(f"{origin}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise StudyConfigError(f"{origin}: expected a mapping of study config keys")
    return data, origin, text if is_file else None


def build_study(source: str | dict | None = None, overrides: list[str] | None = None) -> StudyConfig:
    """A validated :class:`StudyConfig` from a preset name, a YAML file or a dict, then ``key=value`` overrides
    (dotted keys reach into sections). Raises :class:`StudyConfigError` (``FILE:LINE: study config 'KEY': why``)."""
    if isinstance(source, dict):
        data, origin, text = dict(source), "dict", None
    elif source:
        data, origin, text = load_study_source(source)
    else:
        data, origin, text = {}, "defaults", None
    lines = _key_lines(text) if text else {}
    from_override: set[str] = set()
    for item in overrides or []:
        if "=" not in item:
            raise StudyConfigError(f"override {item!r} is not key=value")
        k, v = item.split("=", 1)
        try:
            val = yaml.safe_load(v)
        except yaml.YAMLError as e:
            raise StudyConfigError(f"override {k}: cannot parse {v!r}: {e}") from None
        _set_dotted(data, k.strip(), val)
        from_override.add(k.strip())

    def bad(key: str, msg: str):
        where = origin
        if key not in from_override and not any(key.startswith(o + ".") for o in from_override):
            probe = key
            while probe and probe not in lines:
                probe = probe.rpartition(".")[0]
            if probe:
                where = f"{origin}:{lines[probe]}"
        else:
            where = "override"
        raise StudyConfigError(f"{where}: study config '{key}': {msg}")

    known = {f.name: f for f in fields(StudyConfig)}
    kw: dict[str, Any] = {}
    for k, v in data.items():
        if k not in known:
            bad(k, f"unknown key; the study config keys are {', '.join(known)}")
        if k == "eval":
            kw[k] = _section(EvalSettings, v if v is not None else {}, "eval.", bad)
        elif k == "base":
            kw[k] = None if v is None else _section(BaseArm, v, "base.", bad)
        elif k == "sft":
            kw[k] = None if v is None else _section(SFTArm, v, "sft.", bad)
        elif k == "rlvr":
            kw[k] = None if v is None else _section(RLArm, v, "rlvr.", bad)
        elif k == "extra_arms":
            if v is None:
                v = {}
            if not isinstance(v, dict):
                bad(k, f"must be a mapping of arm name -> RL arm, got {v!r}")
            kw[k] = {}
            for name, arm in v.items():
                if not isinstance(name, str) or not _NAME.match(name) or name in ("base", "sft", "rlvr"):
                    bad(f"{k}.{name}", "an arm name: lower-case letters, digits, - and _, not base/sft/rlvr")
                kw[k][name] = _section(RLArm, arm if arm is not None else {}, f"{k}.{name}.", bad)
        else:
            kw[k] = _check_value(k, v, str(known[k].type), bad)
    cfg = StudyConfig(**kw)
    _validate(cfg, bad)
    return cfg


def _validate(cfg: StudyConfig, bad) -> None:
    if cfg.dtype not in ("fp32", "bf16"):
        bad("dtype", f"must be fp32 or bf16, got {cfg.dtype!r}")
    if not cfg.id_benchmarks and not cfg.ood_benchmarks:
        bad("id_benchmarks", "no benchmark: give id_benchmarks and/or ood_benchmarks")
    names = list(cfg.id_benchmarks) + list(cfg.ood_benchmarks)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        bad("ood_benchmarks", f"benchmark(s) {', '.join(dup)} listed twice")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds) or any(s < 0 for s in cfg.seeds):
        bad("seeds", f"must be distinct integers >= 0, got {list(cfg.seeds)}")
    cfg.eval.check(bad)
    arms = cfg.arms()
    if not arms:
        bad("base", "no arm: give at least one of base, sft, rlvr, extra_arms")
    for name, arm in arms.items():
        key = name if name in ("base", "sft", "rlvr") else f"extra_arms.{name}"
        if not arm.modes:
            bad(f"{key}.modes", "at least one mode")
        for m in arm.modes:
            if m not in MODES:
                bad(f"{key}.modes", f"{m!r} is not one of {', '.join(MODES)}")
        if len(set(arm.modes)) != len(arm.modes):
            bad(f"{key}.modes", "a mode listed twice")
        if arm.direct_template not in DIRECT_TEMPLATES:
            bad(f"{key}.direct_template", f"must be one of {', '.join(DIRECT_TEMPLATES)}, got {arm.direct_template!r}")
        if isinstance(arm, (BaseArm, SFTArm)) and arm.template not in COT_TEMPLATES:
            bad(f"{key}.template", f"must be one of {', '.join(COT_TEMPLATES)}, got {arm.template!r}")
        if isinstance(arm, SFTArm):
            for k in arm.config:
                if k in _STUDY_OWNED:
                    bad(f"sft.config.{k}", "set by the study (its model, data root and seeds)")
            try:
                cfg.sft_config(cfg.seeds[0])
            except TypeError as e:
                m = re.search(r"'(\w+)'", str(e))
                bad(f"sft.config.{m.group(1) if m else ''}".rstrip("."),
                    f"unknown key; the SFTConfig keys are {', '.join(f.name for f in fields(SFTConfig))}")
            except ValueError as e:
                bad("sft.config", str(e))
        if isinstance(arm, RLArm):
            if arm.backend not in BACKENDS:
                bad(f"{key}.backend", f"must be one of {', '.join(BACKENDS)}, got {arm.backend!r}")
            if arm.nproc < 1:
                bad(f"{key}.nproc", f"must be >= 1, got {arm.nproc}")
            for k in arm.overrides:
                if k in _STUDY_OWNED:
                    bad(f"{key}.overrides.{k}", "set by the study (its model, data root and seeds)")
            try:
                tc = cfg.train_config(name, cfg.seeds[0])
            except FileNotFoundError as e:
                bad(f"{key}.config", str(e))
            except ValueError as e:
                m = re.search(r"'([^']+)'", str(e))
                sub = f"{key}.overrides.{m.group(1)}" if m and m.group(1) in arm.overrides else f"{key}.config"
                bad(sub, str(e))
            if arm.backend == "local" and arm.nproc > 1 and tc.prompts_per_step % arm.nproc:
                bad(f"{key}.nproc", f"{arm.nproc} processes do not divide prompts_per_step={tc.prompts_per_step}")
    for p in cfg.pairs:
        parts = [x.strip() for x in p.split(" vs ")]
        if len(parts) != 2 or not all(parts):
            bad("pairs", f"{p!r} is not 'A vs B'")
        for x in parts:
            arm, _, mode = x.partition(":")
            if not _NAME.match(arm):
                bad("pairs", f"{x!r} is not an arm name")
            if mode and arm in arms and mode not in arms[arm].modes:
                bad("pairs", f"{x!r}: arm {arm} is not evaluated in mode {mode!r} (its modes: "
                    f"{', '.join(arms[arm].modes)})")
            if arm not in arms and arm not in ("base", "sft", "rlvr"):
                bad("pairs", f"{x!r}: no arm {arm!r}")
