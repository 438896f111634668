"""Reward-hacking and collapse monitors: raise an alert at the step a failure begins.

Every training step the trainer already logs a metrics row (``metrics.jsonl``) and, every
``sample_every`` steps, its completions (``samples.jsonl``). :class:`Monitor` reads exactly those
records, one step at a time, so the verdicts of a live run (:class:`medrlvr.train.trainer.Trainer` calls
:meth:`Monitor.update` from its logging hook) and of ``medrlvr monitor RUN_DIR`` (:func:`replay`
over the files) are the same.

Monitors (thresholds: :class:`MonitorConfig`):

``entropy_collapse``
    mean token entropy of the update (``entropy``) below ``entropy_min``: sampling has become
    near-greedy, exploration is over.
``no_learning_signal``
    fraction of prompt groups whose rewards are all equal (``zero_var_frac``) at least
    ``zero_var_max``: every group-relative advantage is 0, nothing more can be learned.
``length_collapse``
    mean response length (``response_tokens``) below ``length_min_frac`` x its mean over the
    first ``baseline_steps`` steps and below ``length_min_tokens``.
``position_hack``
    one option letter takes at least ``position_top_share`` of a step's answers (with at least
    ``position_min_answered`` answers) while that letter is the gold of at most
    ``position_gold_share_max`` of them.
``template_echo``, ``answer_in_think``, ``reasoning_before_think``
    share of a step's samples raising that flag of :mod:`medrlvr.reward` (recomputed from the
    response text by :func:`medrlvr.analysis.stages.sample_features`, so older runs are judged
    alike) at least ``echo_rate`` / ``answer_in_think_rate`` / ``reasoning_before_think_rate``.
``kl_blowup``
    KL to the reference (``kl``, logged when ``kl_coef > 0``) above ``kl_max``.
``train_heldout_gap``
    at a step with a held-out evaluation (``eval_accuracy``): the training accuracy *among
    well-formed answers* (``accuracy / format_valid``, mean of the last ``baseline_steps`` steps)
    rose by at least ``gap_train_gain`` over its first ``baseline_steps`` steps, while held-out
    accuracy rose by at most ``gap_heldout_gain_max`` over the first evaluation. Dividing by the
    format-valid rate keeps format gains alone from raising it.
``heldout_position``
    at a step with a held-out evaluation that logged its letters (``eval_top_letter_share``; greedy,
    or ``eval_samples`` sampled answers per question): one option letter is named by more than
    ``heldout_top_share`` of the answers that name a letter (at least ``position_min_answered`` of them)
    while it is the gold letter of at most
    ``position_gold_share_max`` of them. Training samples are drawn at temperature 1 and can still mix
    letters when greedy decoding already picks one position for most questions, so ``position_hack`` alone
    misses it.
``letterless_answers``
    at least ``letterless_rate`` (0.75) of a step's samples are well-formed but name no option letter
    (``<answer> yes </answer>``): the format is learned, the task is not; a run can end so with no other
    alert.
``format_not_learned``
    from step ``format_grace_steps`` (8) on, fewer than ``format_min`` (10%) of a step's samples are
    well-formed: the format (the paper's first stage) has not been learned, e.g. every sample writes
    ``<think>...</think>`` and then nothing (partial tag credit under ``shaped``), which no other monitor sees.
``empty_answers``
    at least ``empty_answer_rate`` (0.5) of a step's samples close an ``<answer>`` block with nothing in
    it (``<think> </think><answer> </answer>``): the ``shaped`` scheme credits each tag reached, so empty
    tags earn its best bad-format score (-1 + 3 x ``reward_format_step``) with no content at all, which no other
    monitor sees.
``heldout_letterless``
    at a step with a held-out evaluation: at least ``heldout_min_format_valid`` of the answers are well-formed,
    but fewer than ``heldout_answered_min`` of the well-formed ones name a letter
    (``eval_answered / eval_format_valid``).

Onset rule: a monitor is *past* its threshold at a step where it can be measured; its alert is
raised when it has been past for ``k`` consecutive measured steps (``k_eval`` for ``train_heldout_gap``,
``heldout_position`` and ``heldout_letterless``, measured only at evaluations), and the alert's
``onset_step`` is the first of them. Steps where a monitor cannot be measured (no samples written, no ``kl`` logged) neither
extend nor break its run. One alert per monitor per run; ``active`` says whether it was still past
its threshold at the last measured step.

Simplifications: thresholds are absolute, set for SmolLM2-135M with GRPO and 8 samples per prompt (the
``cpu-demo`` preset; evidence: docs/decisions/monitor-thresholds.md); a larger model or other sampling settings may need
others: set them in the training config's ``monitor:`` section (``monitor.entropy_min=0.05`` on the command
line), which the run's ``config.yaml`` keeps for ``medrlvr monitor`` and the report. Per-step rates come from
at most ``rollout_batch`` samples.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from medrlvr import rundir
from medrlvr.rundir import read_jsonl, write_alerts

__all__ = ["ALERT_EXIT_CODE", "ADVICE", "MONITORS", "Alert", "MonitorConfig", "MonitorStop", "Monitor",
           "eval_how", "monitor_config_of", "replay", "replay_run", "add_cli"]

ALERT_EXIT_CODE = 3
"""Exit code of ``medrlvr train``/``demo`` stopped by ``on_alert: stop``, and of ``medrlvr monitor`` when
an alert was raised (0: none; 2: bad input, as every command)."""

MONITORS: dict[str, str] = {
    "entropy_collapse": "token entropy collapsed: sampling is near-greedy, exploration is over",
    "no_learning_signal": "most prompt groups have equal rewards for every sample: zero advantage, no learning signal",
    "length_collapse": "responses shrank to a few tokens",
    "position_hack": "one option letter takes most answers while it is rarely the gold letter",
    "template_echo": "samples copy the prompt's placeholder/fixed text instead of answering",
    "answer_in_think": "the answer is given away inside <think> (the paper's direct-answer hacker)",
    "reasoning_before_think": "reasoning is written before <think> (the paper's step-by-step exploit)",
    "kl_blowup": "the policy drifted far from the reference (KL blow-up)",
    "train_heldout_gap": "training accuracy rises while held-out accuracy stays flat",
    "heldout_position": "held-out answers name one option letter for most questions (a position, not an answer)",
    "letterless_answers": "well-formed answers name no option letter: the format is learned, the task is not",
    "heldout_letterless": "held-out answers are well-formed but most name no option letter",
    "empty_answers": "samples close empty <think>/<answer> tags: the format's partial credit without content",
    "format_not_learned": "almost no sample is well-formed after the first steps: the format is not being learned",
}
"""Monitor names mapped to what their alert means."""

_EVAL_MONITORS = ("train_heldout_gap", "heldout_position", "heldout_letterless")
"""Measured only at held-out evaluations: their onset rule uses ``k_eval``."""

ADVICE: dict[str, str] = {
    "entropy_collapse": "add an entropy bonus (entropy_coef) or a KL term (kl_coef), lower lr, raise temperature",
    "no_learning_signal": "use dynamic_sampling, more samples_per_prompt, a graded reward (reward_scheme=shaped), "
                          "or stop: the policy has converged or collapsed",
    "length_collapse": "check the samples for a template copy or a bare letter; lower lr, add kl_coef",
    "position_hack": "keep shuffle_options on, lower lr, add kl_coef or entropy_coef; check the gold-letter balance",
    "template_echo": "score echoes as a bad format (reward_scheme=shaped, whose reward_echo is -1, or composite), "
                     "or drop the placeholder text from the prompt",
    "answer_in_think": "penalise it (reward_scheme=composite), or accept it as the paper's stage 4",
    "reasoning_before_think": "use reward_scheme=strict or composite (penalises text before <think>)",
    "kl_blowup": "lower lr, raise kl_coef, lower clip_high",
    "train_heldout_gap": "the gains do not transfer: more/other training data, fewer steps, evaluate more often",
    "heldout_position": "a model without the knowledge turns a mild letter preference into one greedy letter: "
                        "evaluate sampled answers (eval_samples, eval_temperature) to see whether the policy or only "
                        "its argmax picks one position; add entropy_coef, train longer at a lower lr, or use a "
                        "model that knows the domain",
    "letterless_answers": "score a letterless answer below a wrong letter (reward_no_letter, e.g. -0.5 in the shaped "
                          "scheme), check that the prompt lists the options with letters, or try another seed",
    "heldout_letterless": "see letterless_answers; evaluate more often (eval_every) to see when letters were lost",
    "format_not_learned": "use a graded reward (reward_scheme=shaped), the model's chat template (template=chat), "
                          "more samples_per_prompt, or another seed; check the samples for where they stop",
    "empty_answers": "the shaped scheme's tag credit is being farmed: lower reward_format_step (less credit per "
                     "tag), penalise empty_think (reward_scheme=composite), lower lr, or try another seed",
}
"""What to try, per monitor (shown in the console line, alerts.jsonl and the report)."""


def eval_how(samples: float | None, temperature: float | None = None) -> str:
    """How held-out answers were drawn: ``greedy`` or ``K sampled per question at T=...`` (without the
    temperature where it is unknown, e.g. metrics rows written before it was logged). The demo's summary and
    the ``heldout_*`` evidence both say it this way."""
    if temperature == 0 or (temperature is None and (not samples or samples <= 1)):
        return "greedy"
    k = f"{samples:.0f} sampled" if samples and samples > 1 else "1 sampled"
    return f"{k} per question" + (f" at T={temperature:g}" if temperature is not None else "")


def _eval_how(rec: Mapping[str, Any]) -> str:
    return eval_how(_num(rec.get("eval_samples")), _num(rec.get("eval_temperature")))


@dataclass(frozen=True)
class MonitorConfig:
    """Thresholds and onset rule of every monitor (see the module docstring).

    Attributes:
        k: consecutive measured steps past a threshold before an alert is raised (default 3).
        k_eval: the same for ``train_heldout_gap``, ``heldout_position`` and ``heldout_letterless``, measured
            only at held-out evaluations (default 1).
        baseline_steps: steps averaged for the start-of-run baselines (length, training accuracy)
            and for the recent training accuracy (default 3).
        entropy_min: ``entropy_collapse`` when the mean token entropy is below this, nats per
            token (default 0.1: a template-echo collapse sits at ~0.05, healthy runs above 0.3).
        zero_var_max: ``no_learning_signal`` when at least this fraction of groups has
            zero reward variance (default 0.9).
        length_min_frac: ``length_collapse`` when the mean response length is below this
            fraction of its baseline ... (default 0.2)
        length_min_tokens: ... and below this many tokens (default 16; the template echo is ~15).
        position_top_share: ``position_hack`` when the most frequent letter has at least this share
            of the step's answers ... (default 0.6)
        position_gold_share_max: ... while it is the gold letter of at most this share of them
            (default 0.35) ...
        position_min_answered: ... and the step has at least this many answers with a letter (default 8).
        echo_rate: ``template_echo`` when at least this share of a step's samples echo the
            template (default 0.25).
        answer_in_think_rate: ``answer_in_think`` rate threshold (default 0.5; the flag also
            fires on honest reasoning that names the right option, hence high).
        reasoning_before_think_rate: ``reasoning_before_think`` rate threshold (default 0.25).
        kl_max: ``kl_blowup`` when the logged ``kl`` exceeds this, nats per token (default 0.5).
        gap_train_gain: ``train_heldout_gap`` when training accuracy among well-formed answers rose
            by at least this ... (default 0.2)
        gap_heldout_gain_max: ... while held-out accuracy rose by at most this (default 0.02).
        gap_min_format_valid: steps with a lower format-valid rate do not count for the training
            accuracy (too few well-formed answers to measure it; default 0.25).
        heldout_top_share: ``heldout_position`` when one letter has more than this share of the
            held-out answers naming a letter (default 0.5, the ``cpu-demo`` acceptance criterion); it uses
            ``position_gold_share_max`` and ``position_min_answered`` as ``position_hack`` does.
        letterless_rate: ``letterless_answers`` when at least this share of a step's samples are
            well-formed answers naming no option letter (default 0.75: learning the format before the letters
            is a normal phase that can pass 0.5 for a few steps; evidence: docs/decisions/monitor-thresholds.md).
        heldout_answered_min: ``heldout_letterless`` when fewer than this share of the well-formed held-out
            answers name a letter (default 0.5) ...
        heldout_min_format_valid: ... with at least this share of the held-out answers well-formed (default
            0.25; fewer are too few to measure the share naming a letter).
        empty_answer_rate: ``empty_answers`` when at least this share of a step's samples have an
            ``<answer>`` block with no word in it (default 0.5: a run stuck on empty tags sits above it,
            healthy demo runs stay well below; evidence: docs/decisions/monitor-thresholds.md).
        format_min, format_grace_steps: ``format_not_learned`` when fewer than ``format_min`` (0.1) of a
            step's samples are well-formed at step ``format_grace_steps`` (8) or later (most demo runs pass 0.1
            by step 7; evidence: docs/decisions/monitor-thresholds.md).
    """

    k: int = 3
    k_eval: int = 1
    baseline_steps: int = 3
    entropy_min: float = 0.1
    zero_var_max: float = 0.9
    length_min_frac: float = 0.2
    length_min_tokens: float = 16.0
    position_top_share: float = 0.6
    position_gold_share_max: float = 0.35
    position_min_answered: int = 8
    echo_rate: float = 0.25
    answer_in_think_rate: float = 0.5
    reasoning_before_think_rate: float = 0.25
    kl_max: float = 0.5
    gap_train_gain: float = 0.2
    gap_heldout_gain_max: float = 0.02
    gap_min_format_valid: float = 0.25
    heldout_top_share: float = 0.5
    letterless_rate: float = 0.75
    heldout_answered_min: float = 0.5
    heldout_min_format_valid: float = 0.25
    empty_answer_rate: float = 0.5
    format_min: float = 0.1
    format_grace_steps: int = 8

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            isnum = isinstance(v, (int, float)) and not isinstance(v, bool)
            if f.type == "int" and not (isnum and isinstance(v, int)):
                raise ValueError(f"monitor '{f.name}': must be an integer, got {v!r}")
            if f.type == "float" and not (isnum and math.isfinite(v)):
                raise ValueError(f"monitor '{f.name}': must be a finite number, got {v!r}")
            if f.name in _AT_LEAST_ONE and v < 1:
                raise ValueError(f"monitor '{f.name}': must be >= 1, got {v!r}")
            if f.name in _SHARES and not 0 <= v <= 1:
                raise ValueError(f"monitor '{f.name}': a share: must be in [0, 1], got {v!r}")
            if v < 0:
                raise ValueError(f"monitor '{f.name}': must be >= 0, got {v!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, label: str = "config") -> "MonitorConfig":
        """Thresholds from a mapping (the ``monitor`` section of a training config). Errors name the key as
        ``{label} 'monitor.KEY'``; unknown keys are refused by name; an int is accepted for a float."""
        if values is None:
            return cls()
        if not isinstance(values, Mapping):
            raise ValueError(f"{label} 'monitor': must be a mapping of monitor thresholds, got {values!r}")
        known = {f.name: f for f in fields(cls)}
        kw = {}
        for k, v in values.items():
            if k not in known:
                raise ValueError(f"{label} 'monitor.{k}': unknown monitor threshold; known: {', '.join(known)}")
            if known[k].type == "float" and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            kw[k] = v
        try:
            return cls(**kw)
        except ValueError as e:
            raise ValueError(str(e).replace("monitor '", f"{label} 'monitor.", 1)) from None


_SHARES = ("zero_var_max", "length_min_frac", "position_top_share", "position_gold_share_max", "echo_rate",
           "answer_in_think_rate", "reasoning_before_think_rate", "gap_train_gain", "gap_heldout_gain_max",
           "gap_min_format_valid", "heldout_top_share", "letterless_rate", "heldout_answered_min",
           "heldout_min_format_valid", "empty_answer_rate", "format_min")
_AT_LEAST_ONE = ("k", "k_eval", "baseline_steps", "position_min_answered")


def monitor_config_of(run_dir: str | Path) -> tuple[MonitorConfig, list[str]]:
    """The thresholds a run was trained with: the ``monitor`` section of ``RUN_DIR/config.yaml``, so
    ``medrlvr monitor`` and the report give the verdicts the live run gave. Defaults (and a note) when the
    file is missing or its section unreadable."""
    path = Path(run_dir) / rundir.CONFIG
    if not path.is_file():
        return MonitorConfig(), []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return MonitorConfig.from_mapping(data.get("monitor") if isinstance(data, dict) else None,
                                          label=f"{path}:"), []
    except (yaml.YAMLError, ValueError, OSError) as e:
        return MonitorConfig(), [f"{path}: monitor thresholds unreadable ({str(e).splitlines()[0]}); defaults used"]


@dataclass
class Alert:
    """One raised alert (a line of ``alerts.jsonl``)."""

    monitor: str
    onset_step: int
    raised_step: int
    value: float
    threshold: float
    evidence: str
    what: str
    advice: str
    examples: list[dict[str, Any]] = field(default_factory=list)
    active: bool = True
    last_step: int = 0

    def line(self) -> str:
        """The console line."""
        return (f"[monitor] ALERT {self.monitor} since step {self.onset_step} (raised at step {self.raised_step}): "
                f"{self.evidence}. Try: {self.advice}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MonitorStop(RuntimeError):
    """Raised by the trainer with ``on_alert: stop`` after it checkpointed; the CLI exits with
    :data:`ALERT_EXIT_CODE`."""

    def __init__(self, alerts: Sequence[Alert], checkpoint: str | None = None):
        self.alerts, self.checkpoint = list(alerts), checkpoint
        names = ", ".join(f"{a.monitor} (since step {a.onset_step})" for a in alerts)
        super().__init__(f"stopped by the monitor (on_alert: stop): {names}"
                         + (f"; checkpoint {checkpoint}" if checkpoint else ""))


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _example(s: Mapping[str, Any]) -> dict[str, Any]:
    from medrlvr.analysis.stages import sample_response

    return {"step": s.get("step"), "id": s.get("id"), "response": sample_response(s)[:2000],
            "reward": s.get("reward"), "pred": s.get("pred"), "gold": s.get("gold")}


class Monitor:
    """Stateful per-step monitor; feed it each metrics row with that step's sample rows.

    Example::

        mon = Monitor()
        for rec, samples in steps:
            for alert in mon.update(rec, samples):
                print(alert.line())
    """

    def __init__(self, config: MonitorConfig | None = None):
        self.cfg = config or MonitorConfig()
        self.alerts: list[Alert] = []
        self._raised: dict[str, Alert] = {}
        self._run: dict[str, list[tuple[int, float, str, list[dict]]]] = {}
        self._len: list[float] = []
        self._train_acc: list[float] = []
        self._first_eval: float | None = None

    # ---------------------------------------------------------------- measurements
    def _measure(self, rec: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]) -> dict[str, tuple]:
        """``{monitor: (past, value, threshold, evidence, examples)}`` for the monitors measurable now."""
        c = self.cfg
        out: dict[str, tuple] = {}
        ent = _num(rec.get("entropy"))
        if ent is not None:
            out["entropy_collapse"] = (ent < c.entropy_min, ent, c.entropy_min,
                                       f"mean token entropy {ent:.3f} < {c.entropy_min}", None)
        zv = _num(rec.get("zero_var_frac"))
        if zv is not None:
            out["no_learning_signal"] = (zv >= c.zero_var_max, zv, c.zero_var_max,
                                         f"{zv:.0%} of prompt groups have zero reward variance (>= {c.zero_var_max:.0%})",
                                         None)
        ln = _num(rec.get("response_tokens"))
        if ln is not None:
            if len(self._len) < c.baseline_steps:
                self._len.append(ln)
            base = sum(self._len) / len(self._len)
            lim = c.length_min_frac * base
            out["length_collapse"] = (ln < lim and ln < c.length_min_tokens, ln, min(lim, c.length_min_tokens),
                                      f"mean response {ln:.1f} tokens, < {c.length_min_frac:.0%} of the first steps' "
                                      f"{base:.1f} and < {c.length_min_tokens:g}", None)
        kl = _num(rec.get("kl"))
        if kl is not None:
            out["kl_blowup"] = (kl > c.kl_max, kl, c.kl_max, f"KL to the reference {kl:.3f} > {c.kl_max}", None)
        acc, fv = _num(rec.get("accuracy")), _num(rec.get("format_valid"))
        step = _num(rec.get("step"))
        if fv is not None and step is not None and step >= c.format_grace_steps:
            out["format_not_learned"] = (fv < c.format_min, fv, c.format_min,
                                         f"{fv:.0%} of the step's samples are well-formed (< {c.format_min:.0%}) at "
                                         f"step {step:.0f}, past the first {c.format_grace_steps} steps", None)
        if acc is not None and fv is not None and fv >= c.gap_min_format_valid:
            self._train_acc.append(acc / fv)
        ev = _num(rec.get("eval_accuracy"))
        if ev is not None:
            if self._first_eval is None:
                self._first_eval = ev
            elif len(self._train_acc) >= 2 * c.baseline_steps:
                b = c.baseline_steps
                first = sum(self._train_acc[:b]) / b
                recent = sum(self._train_acc[-b:]) / b
                gain, hgain = recent - first, ev - self._first_eval
                out["train_heldout_gap"] = (
                    gain >= c.gap_train_gain and hgain <= c.gap_heldout_gain_max, gain, c.gap_train_gain,
                    f"training accuracy among well-formed answers {first:.2f} -> {recent:.2f} (+{gain:.2f}) while "
                    f"held-out accuracy {self._first_eval:.3f} -> {ev:.3f} ({hgain:+.3f})", None)
        hs, hk = _num(rec.get("eval_top_letter_share")), _num(rec.get("eval_answered_n"))
        if hs is not None and hk is not None and hk >= c.position_min_answered and rec.get("eval_top_letter"):
            top, gs = rec["eval_top_letter"], _num(rec.get("eval_top_letter_gold_share")) or 0.0
            out["heldout_position"] = (
                hs > c.heldout_top_share and gs <= c.position_gold_share_max, hs, c.heldout_top_share,
                f"held-out ({_eval_how(rec)}): letter {top} in {hs:.0%} of {hk:.0f} answers (> {c.heldout_top_share:.0%}) but "
                f"gold in {gs:.0%} of them (<= {c.position_gold_share_max:.0%})", None)
        ans, efv = _num(rec.get("eval_answered")), _num(rec.get("eval_format_valid"))
        if ans is not None and efv is not None and efv >= c.heldout_min_format_valid:
            share = min(1.0, ans / efv)
            out["heldout_letterless"] = (
                share < c.heldout_answered_min, share, c.heldout_answered_min,
                f"held-out ({_eval_how(rec)}): {efv:.0%} of answers well-formed, but only {ans:.0%} name an option letter "
                f"({share:.0%} of the well-formed, < {c.heldout_answered_min:.0%})", None)
        if samples:
            out.update(self._measure_samples(samples))
        return out

    def _measure_samples(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, tuple]:
        from medrlvr.analysis.stages import letter_distribution, sample_features, sample_letter

        c = self.cfg
        out: dict[str, tuple] = {}
        feats = sample_features(samples)
        n = len(samples)
        for name, rate_thr in (("template_echo", c.echo_rate), ("answer_in_think", c.answer_in_think_rate),
                               ("reasoning_before_think", c.reasoning_before_think_rate)):
            hits = [s for s, f in zip(samples, feats) if name in f["flags"]]
            r = len(hits) / n
            out[name] = (r >= rate_thr, r, rate_thr,
                         f"{len(hits)} of {n} samples ({r:.0%}) flagged {name} (>= {rate_thr:.0%})",
                         [_example(s) for s in hits[:2]])
        bare = [s for s, f in zip(samples, feats)   # template echoes have their own monitor
                if f.get("format_ok") and not sample_letter(s, f) and "template_echo" not in f["flags"]]
        r = len(bare) / n
        out["letterless_answers"] = (r >= c.letterless_rate, r, c.letterless_rate,
                                     f"{len(bare)} of {n} samples ({r:.0%}) are well-formed answers naming no option "
                                     f"letter (>= {c.letterless_rate:.0%})", [_example(s) for s in bare[:2]])
        empty = [s for s, f in zip(samples, feats) if f.get("n_answer_blocks") and not f.get("answer_words")]
        r = len(empty) / n
        out["empty_answers"] = (r >= c.empty_answer_rate, r, c.empty_answer_rate,
                                f"{len(empty)} of {n} samples ({r:.0%}) close an <answer> block with nothing in it "
                                f"(>= {c.empty_answer_rate:.0%})", [_example(s) for s in empty[:2]])
        ld = letter_distribution(samples, feats)
        if len(ld) == 1:
            (d,) = ld.values()
            top, share, gshare, k = d["top"], d["top_share"], d["gold_top_share"], d["answered"]
            if k >= c.position_min_answered and top:
                past = share >= c.position_top_share and gshare <= c.position_gold_share_max
                ex = [_example(s) for s, f in zip(samples, feats) if sample_letter(s, f) == top][:2]
                out["position_hack"] = (past, share, c.position_top_share,
                                        f"letter {top} in {share:.0%} of {k} answers (>= {c.position_top_share:.0%}) "
                                        f"but gold in {gshare:.0%} of them (<= {c.position_gold_share_max:.0%})", ex)
        return out

    # ---------------------------------------------------------------- the onset rule
    def update(self, rec: Mapping[str, Any], samples: Sequence[Mapping[str, Any]] = ()) -> list[Alert]:
        """Take one metrics row and the sample rows of the same step; return the alerts raised now."""
        try:
            step = int(rec.get("step"))
        except (TypeError, ValueError):
            return []
        new: list[Alert] = []
        for name, (past, value, thr, evidence, ex) in self._measure(rec, samples).items():
            run = self._run.setdefault(name, [])
            if name in self._raised:
                a = self._raised[name]
                a.active, a.last_step = bool(past), step
                continue
            if not past:
                run.clear()
                continue
            run.append((step, value, evidence, ex or []))
            k = self.cfg.k_eval if name in _EVAL_MONITORS else self.cfg.k
            if len(run) >= k:
                onset = run[0]
                examples = next((e for _, _, _, e in run if e), [])[:2]
                a = Alert(monitor=name, onset_step=onset[0], raised_step=step, value=round(float(value), 4),
                          threshold=float(thr), evidence=evidence, what=MONITORS[name], advice=ADVICE[name],
                          examples=examples, active=True, last_step=step)
                self._raised[name] = a
                self.alerts.append(a)
                new.append(a)
        return new


def _by_step(samples: Iterable[Mapping[str, Any]]) -> dict[int, list[Mapping[str, Any]]]:
    out: dict[int, list[Mapping[str, Any]]] = {}
    for s in samples:
        try:
            out.setdefault(int(s.get("step")), []).append(s)
        except (TypeError, ValueError):
            continue
    return out


def replay(metrics: Iterable[Mapping[str, Any]], samples: Iterable[Mapping[str, Any]],
           config: MonitorConfig | None = None) -> list[Alert]:
    """The alerts a live run raises, from its metrics and sample rows (the last row of a repeated step wins)."""
    return _feed(Monitor(config), metrics, samples).alerts


def _feed(mon: Monitor, metrics: Iterable[Mapping[str, Any]], samples: Iterable[Mapping[str, Any]]) -> Monitor:
    rows: dict[int, Mapping[str, Any]] = {}
    for r in metrics:
        try:
            rows[int(r.get("step"))] = r
        except (TypeError, ValueError):
            continue
    by = _by_step(samples)
    for step in sorted(rows):
        mon.update(rows[step], by.get(step, []))
    return mon


def replay_run(run_dir: str | Path, config: MonitorConfig | None = None) -> tuple[list[Alert], list[str]]:
    """:func:`replay` over ``RUN_DIR/metrics.jsonl`` and ``samples.jsonl``, with the thresholds of the run's
    ``config.yaml`` unless ``config`` is given; also returns notes on what was missing or unreadable.

    Raises:
        FileNotFoundError: ``run_dir`` is not a directory or has no ``metrics.jsonl``.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory not found: {run}")
    if not (run / rundir.METRICS).is_file():
        raise FileNotFoundError(f"{run / 'metrics.jsonl'}: not found (not a training run directory?)")
    metrics, bad_m = read_jsonl(run / rundir.METRICS)
    samples, bad_s = read_jsonl(run / rundir.SAMPLES)
    notes = []
    if bad_m:
        notes.append(f"{run / 'metrics.jsonl'}: {bad_m} unreadable line(s) skipped")
    if bad_s:
        notes.append(f"{run / 'samples.jsonl'}: {bad_s} unreadable line(s) skipped")
    if not (run / rundir.SAMPLES).is_file():
        notes.append(f"{run / 'samples.jsonl'}: not found; sample-based monitors not measured")
    if config is None:
        config, cnotes = monitor_config_of(run)
        notes += cnotes
    return replay(metrics, samples, config), notes


def resume_monitor(run_dir: str | Path, config: MonitorConfig | None = None) -> Monitor:
    """A monitor fed with a resumed run's (already truncated) logs; ``alerts.jsonl`` is rewritten to
    the alerts of those steps, so the resumed run raises each alert once."""
    run = Path(run_dir)
    mon = _feed(Monitor(config), read_jsonl(run / rundir.METRICS)[0], read_jsonl(run / rundir.SAMPLES)[0])
    write_alerts(run, mon.alerts)
    return mon


# -------------------------------------------------------------------------------------------- report
# ------------------------------------------------------------------------------------------------ cli
EXPECTED_ALERTS: dict[str, dict[str, str]] = {
    "tiny": {"no_learning_signal": "expected: the tiny model has random weights and cannot answer, so every reward "
                                   "is -1 (a smoke test of the machinery)"},
}
"""Alerts that are expected of a model (the run's ``config.yaml`` ``model``), with why: printed as expected and not
counted for the exit code."""


def expected_alerts(run_dir: str | Path) -> dict[str, str]:
    """The :data:`EXPECTED_ALERTS` of the run's model (empty when the config is missing or unreadable)."""
    try:
        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return EXPECTED_ALERTS.get(str(cfg.get("model")), {}) if isinstance(cfg, dict) else {}


def cmd_monitor(a) -> int:
    alerts, notes = replay_run(a.run_dir)
    for n in notes:
        print(f"monitor: note: {n}", file=sys.stderr)
    expected = expected_alerts(a.run_dir)
    if a.json:
        print(json.dumps([{**x.to_dict(), **({"expected": expected[x.monitor]} if x.monitor in expected else {})}
                          for x in alerts], indent=2))
    elif not alerts:
        print(f"monitor: {a.run_dir}: no alert ({len(MONITORS)} monitors)")
    else:
        for x in alerts:
            state = "active at the last step" if x.active else f"recovered by step {x.last_step}"
            print(x.line() + f" [{state}]" + (f" [{expected[x.monitor]}]" if x.monitor in expected else ""))
    return ALERT_EXIT_CODE if any(x.monitor not in expected for x in alerts) else 0


def add_cli(sub) -> None:
    m = sub.add_parser("monitor", help="reward-hacking / collapse verdicts of a run directory (exit 3 if any alert)")
    m.add_argument("run_dir")
    m.add_argument("--json", action="store_true", help="the alerts as a JSON list")
    m.set_defaults(func=cmd_monitor)

