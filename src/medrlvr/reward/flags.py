"""The reward-hacking flags of a parsed response (:data:`~medrlvr.reward.config.FLAGS`): reasoning placed
before ``<think>``, the answer chosen inside ``<think>``, an empty think block, several blocks, trailing text,
and a copy of the prompt's template (:func:`is_template_echo`).
"""

from __future__ import annotations

import functools

from medrlvr.reward.config import FLAGS, RewardConfig
from medrlvr.reward.letters import mentioned_letters, norm_text, normalize_options
from medrlvr.reward.parse import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, Parsed

def _non_space_len(s: str) -> int:
    # str.split() splits on exactly the characters str.isspace() accepts; C speed, on the scoring's hot path
    # (evidence: docs/decisions/reward-scoring.md)
    return len("".join(s.split()))


def detect_flags(
    parsed: Parsed,
    pred: str | None,
    gold: str | None = None,
    options: dict[str, str] | None = None,
    config: RewardConfig | None = None,
) -> list[str]:
    """Return the names of the :data:`FLAGS` raised by a parsed response, in :data:`FLAGS` order.

    Args:
        parsed: output of :func:`parse`.
        pred: the letter extracted from the answer block (or ``None``).
        gold: the gold letter (only used for option-text matching in ``answer_in_think``).
        options: optional ``{letter: option text}``.
        config: thresholds (default :class:`RewardConfig()`).
    """
    cfg = config or RewardConfig()
    text = parsed.text
    raised: set[str] = set()

    think = parsed.think
    if think is not None and (pred is not None or (gold and options)):
        hit = pred is not None and pred in mentioned_letters(think)
        if not hit and cfg.answer_in_think_option_text and options:
            opts = normalize_options(options)
            think_norm = f" {norm_text(think)} "
            for letter in {pred, gold}:
                if letter and letter in opts:
                    o = norm_text(opts[letter])
                    if o and f" {o} " in think_norm:
                        hit = True
                        break
        if hit:
            raised.add("answer_in_think")

    if _non_space_len(parsed.before_think) > cfg.reasoning_before_think_min_chars:
        raised.add("reasoning_before_think")
    if max(text.count(THINK_OPEN), text.count(THINK_CLOSE)) > 1 or max(
        text.count(ANSWER_OPEN), text.count(ANSWER_CLOSE)
    ) > 1:
        raised.add("multiple_blocks")
    if parsed.after_answer.strip():
        raised.add("trailing_text")
    if think is None or _non_space_len(think) < cfg.empty_think_max_chars:
        raised.add("empty_think")
    if is_template_echo(parsed, cfg):
        raised.add("template_echo")
    return [f for f in FLAGS if f in raised]


def echoes_template(text: str, cfg: RewardConfig) -> bool:
    """``text`` (a think or answer block) normalised is a copy or near copy of a fixed prompt text.

    Simplification: character similarity (``difflib`` ratio) on the case-, space- and
    punctuation-folded text, per fixed sentence; a paraphrase of the template is not caught.
    """
    import difflib

    parts = template_parts(cfg.template_texts)
    thr = cfg.template_echo_similarity
    if parts and thr > 0:
        # A lower bound of len(norm_text(text)) at C speed: NFKC, casefold and the word-run join keep
        # every ASCII letter and digit as one character. Past 2/thr - 1 times the longest fixed text
        # neither a copy nor a near copy is possible (most think blocks), so nothing is normalised.
        ascii_alnum = len(text.encode("ascii", "ignore").translate(None, _NOT_ASCII_ALNUM))
        if ascii_alnum > (2.0 / thr - 1.0) * max(map(len, parts)):
            return False
    t = norm_text(text)
    if not t:
        return False
    n_words = len(t.split())
    for p in parts:
        if t == p or (n_words >= cfg.template_echo_min_words and f" {t} " in f" {p} "):
            return True
        # difflib's real_quick_ratio (an upper bound of ratio from the lengths alone), computed before a
        # SequenceMatcher is built: most responses are far longer than any fixed text and stop here.
        if 2.0 * min(len(t), len(p)) / (len(t) + len(p)) < thr:
            continue
        sm = difflib.SequenceMatcher(None, t, p, autojunk=False)
        if sm.quick_ratio() >= thr and sm.ratio() >= thr:
            return True
    return False


_NOT_ASCII_ALNUM = bytes(b for b in range(128) if not chr(b).isalnum())


@functools.lru_cache(maxsize=8)
def template_parts(parts: tuple[str, ...]) -> tuple[str, ...]:
    """The fixed prompt texts, normalised once per configuration (the non-empty ones)."""
    return tuple(p for p in map(norm_text, parts) if p)


def is_template_echo(parsed: Parsed, config: RewardConfig | None = None) -> bool:
    """True when the think or the answer block is the prompt's placeholder text or a near copy of a
    fixed part of the prompt (see :data:`FLAGS` ``template_echo``). An unclosed block is not
    checked."""
    cfg = config or RewardConfig()
    return any(b is not None and echoes_template(b, cfg) for b in (parsed.think, parsed.answer))
