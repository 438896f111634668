"""Reward schemes (``paper``, ``strict``, ``composite``, ``shaped``, and any registered by name) and
:func:`score`, which parses a response, reads its letter, raises its flags and applies a scheme.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from medrlvr.records import LETTERS
from medrlvr.reward.config import RewardConfig
from medrlvr.reward.flags import detect_flags
from medrlvr.reward.letters import check_n_options, extract_letter
from medrlvr.reward.parse import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, Parsed, join_prefill, parse

@dataclass
class RewardResult:
    """Outcome of :func:`score`.

    Attributes:
        reward: the scalar reward under the chosen scheme.
        format_ok: whether the response met the scheme's format requirement.
        pred: the letter read from the first answer block (``None`` if there is no
            closed answer block or no single in-range letter could be read).  It is
            filled even when the format is bad, for diagnostics.
        correct: ``format_ok and pred == gold``.
        flags: names of the raised hacking flags, in :data:`FLAGS` order.
        parsed: the structural parse.
    """

    reward: float
    format_ok: bool
    pred: str | None
    correct: bool
    flags: list[str]
    parsed: Parsed


SchemeFn = Callable[..., tuple[float, bool]]
"""A scheme is called with keyword arguments ``parsed`` (:class:`Parsed`),
``pred`` (``str | None``), ``gold`` (``str``), ``flags`` (``list[str]``) and
``config`` (:class:`RewardConfig`) and returns ``(reward, format_ok)``.  Accept
``**kwargs`` to stay compatible if more arguments are added."""


SCHEMES: dict[str, SchemeFn] = {}
"""Registered reward schemes by name; see :func:`register_scheme`."""


def register_scheme(name: str, *, overwrite: bool = False) -> Callable[[SchemeFn], SchemeFn]:
    """Decorator registering a reward scheme under ``name`` in :data:`SCHEMES`.

    Example::

        @register_scheme("binary")
        def binary(*, parsed, pred, gold, flags, config, **kwargs):
            ok = parsed.tags_in_order
            return (1.0 if ok and pred == gold else 0.0), ok

        score(response, "C", 4, scheme="binary")

    Raises:
        ValueError: if ``name`` is already registered and ``overwrite`` is False.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"scheme name must be a non-empty string, got {name!r}")

    def deco(fn: SchemeFn) -> SchemeFn:
        if name in SCHEMES and not overwrite:
            raise ValueError(f"reward scheme {name!r} is already registered (pass overwrite=True)")
        SCHEMES[name] = fn
        return fn

    return deco


def _paper_format_ok(parsed: Parsed) -> bool:
    return parsed.tags_in_order and parsed.answer is not None and bool(parsed.answer.strip())


@register_scheme("paper")
def _scheme_paper(*, parsed: Parsed, pred: str | None, gold: str, **_: Any) -> tuple[float, bool]:
    """Med-RLVR reward: -1 bad format, +1 right letter, 0 otherwise."""
    if not _paper_format_ok(parsed):
        return -1.0, False
    return (1.0 if pred == gold else 0.0), True


@register_scheme("strict")
def _scheme_strict(*, parsed: Parsed, pred: str | None, gold: str, **_: Any) -> tuple[float, bool]:
    """Like ``paper``, but only whitespace may surround the think/answer blocks."""
    ok = _paper_format_ok(parsed) and not parsed.before_think.strip() and not parsed.after_answer.strip()
    if not ok:
        return -1.0, False
    return (1.0 if pred == gold else 0.0), True


@register_scheme("composite")
def _scheme_composite(
    *, parsed: Parsed, pred: str | None, gold: str, flags: list[str], config: RewardConfig, **_: Any
) -> tuple[float, bool]:
    """``paper`` reward minus ``config.penalty`` per penalised flag, floored at -1; a
    ``template_echo`` is a bad format (-1)."""
    if "template_echo" in flags:
        return -1.0, False
    base, ok = _scheme_paper(parsed=parsed, pred=pred, gold=gold)
    n_pen = sum(1 for f in flags if f in config.penalized_flags)
    return max(-1.0, base - config.penalty * n_pen), ok


def format_progress(parsed: Parsed) -> int:
    """How far a response got through ``<think> ... </think> <answer> ... </answer>``, in order: 0..4
    (an opened think, its close, an answer opening after it, the answer's close)."""
    t = parsed.text
    pos, done = 0, 0
    for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE):
        i = t.find(tag, pos)
        if i < 0:
            break
        pos, done = i + len(tag), done + 1
    return done


@register_scheme("shaped")
def _scheme_shaped(
    *, parsed: Parsed, pred: str | None, gold: str, flags: Sequence[str] = (), config: RewardConfig | None = None,
    **_: Any,
) -> tuple[float, bool]:
    """``paper`` reward, with partial credit inside the bad-format band: -1 + 0.25 per format tag reached
    in order after ``<think>`` (so -1, -0.75, -0.5, -0.25; ``config.format_step_reward`` sets the step).
    Every valid response still beats every invalid one; valid rewards are the paper's (0 / +1), except an answer with no option letter in it
    (:data:`SHAPED_NO_LETTER`, -0.1): under the paper's reward it ties with a wrong letter. For models
    that never produce the full format at the start (a gated -1 for every sample gives GRPO zero
    advantage, nothing to learn); the format reward of many R1-Zero reproductions (e.g. TinyZero's
    format score) serves the same purpose. A ``template_echo`` is a bad format scored
    ``config.echo_reward`` (-1); ``config.no_letter_reward`` replaces -0.1."""
    cfg = config or RewardConfig()
    if "template_echo" in flags:
        return cfg.echo_reward, False
    base, ok = _scheme_paper(parsed=parsed, pred=pred, gold=gold)
    if ok:
        return (cfg.no_letter_reward if pred is None else base), True
    return -1.0 + cfg.format_step_reward * max(0, min(3, format_progress(parsed) - 1)), False


def _check_gold(gold: Any, n: int) -> str:
    g = gold.strip().upper() if isinstance(gold, str) else None
    if not g or len(g) != 1 or g not in LETTERS[:n]:
        raise ValueError(f"gold must be one letter in A..{LETTERS[n - 1]} for n_options={n}, got {gold!r}")
    return g


def get_scheme(scheme: str) -> SchemeFn:
    try:
        return SCHEMES[scheme]
    except (KeyError, TypeError):
        raise ValueError(f"unknown reward scheme {scheme!r}; known schemes: {sorted(SCHEMES)}") from None


def score(
    response: str,
    gold: str,
    n_options: int,
    scheme: str = "paper",
    options: dict[str, str] | None = None,
    config: RewardConfig | None = None,
    prefill: str | None = THINK_OPEN,
) -> RewardResult:
    """Score one response.

    Args:
        response: a completion of the default prompt (which ends with the pre-filled ``"<think>"``), or the
            assistant's whole text with the pre-fill included: both score alike, since the pre-fill is joined
            with :func:`~medrlvr.reward.join_prefill` (which leaves a response that already opens ``<think>``
            unchanged).
        gold: the gold letter (case-insensitive, surrounding spaces ignored).
        n_options: number of options, 2..26 (MedQA 4-5, MMLU-Pro up to 10).
        scheme: a name in :data:`SCHEMES` (``"paper"``, ``"strict"``, ``"composite"``, ...).
        options: optional ``{letter: option text}``; enables matching answers
            given as option text and option-text detection in ``answer_in_think``.
        config: thresholds and penalties (default :class:`RewardConfig()`).
        prefill: what the prompt pre-filled (default ``"<think>"``, as the default R1-Zero prompt does);
            ``None`` or ``""`` for a prompt without a pre-fill (``prefill_think=False``, the chat or direct
            templates), or when ``response`` is already joined.

    Returns:
        A :class:`RewardResult`.  Deterministic; never raises for any ``str`` response.

    Raises:
        ValueError: unknown scheme, ``n_options`` outside 2..26, or ``gold`` not a
            letter within ``n_options``.
        TypeError: if ``response`` is not a ``str``.
    """
    fn = get_scheme(scheme)
    n = check_n_options(n_options)
    g = _check_gold(gold, n)
    cfg = config or RewardConfig()
    if prefill and isinstance(response, str):
        response = join_prefill(response, prefill)
    parsed = parse(response)
    pred = extract_letter(parsed.answer, n, options) if parsed.answer is not None else None
    flags = detect_flags(parsed, pred, g, options, cfg)
    reward, format_ok = fn(parsed=parsed, pred=pred, gold=g, flags=flags, config=cfg)
    return RewardResult(
        reward=float(reward),
        format_ok=bool(format_ok),
        pred=pred,
        correct=bool(format_ok) and pred == g,
        flags=flags,
        parsed=parsed,
    )
