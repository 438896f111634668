"""Rule-based verifiable reward for medical multiple-choice QA (Med-RLVR).

This module implements the reward of Med-RLVR (Zhang et al. 2025): a response
must have the shape ``<think>…</think><answer>…</answer>`` and the letter chosen
inside ``<answer>`` is compared with the gold letter::

    -1  bad format
     0  well formed, but the letter is wrong (or cannot be read)
    +1  well formed and the letter is right

It also detects the *reward-hacking* patterns reported in the paper and exposes
them as named flags (:data:`FLAGS`), so that they can be monitored and, with the
``"composite"`` scheme, penalised.

Only the standard library is used; importing this module never imports torch.
Scoring takes time linear in the response length for any string (no pattern backtracks over a
whitespace run; ``bench/reward_fuzz.py`` measures adversarial families up to 256k characters).

What is scored
--------------
The ``response`` passed to :func:`score` is the assistant's **whole** text,
*including* any pre-filled ``"<think>"``.  Training setups that pre-fill the
assistant turn with ``"<think>"`` generate only the continuation; callers must
prepend the pre-fill before scoring (the TRL and verl adapters below do this
for you).

Tag matching
------------
Tags are matched as exact, lowercase strings: ``<think>``, ``</think>``,
``<answer>``, ``</answer>``.  ``<THINK>``, ``<Think>``, ``< think >`` or
``<think >`` are *not* tags (they are plain text), so a response using them is
badly formatted.  Whitespace *around* tags and inside blocks is free.

Schemes
-------
``"paper"``
    ``format_ok`` iff the tags are in order (exactly one think block followed by
    exactly one answer block) and the answer block is non-empty.  Text before
    ``<think>`` and after ``</answer>`` is tolerated -- this is exactly what made
    the paper's "step-by-step exploit" rewardable -- but it is flagged.
``"strict"``
    Like ``"paper"``, and additionally nothing but whitespace may appear before
    ``<think>`` or after ``</answer>``.
``"composite"``
    The ``"paper"`` reward minus ``config.penalty`` for every raised flag listed
    in ``config.penalized_flags``, floored at -1; a ``template_echo`` (the
    prompt's placeholder text copied back) is a bad format, -1.
``"shaped"``
    The ``"paper"`` reward, with partial credit for a bad format: -1 + 0.25 per
    tag reached in order after ``<think>`` (``</think>``, ``<answer>``,
    ``</answer>``), so -1 .. -0.25; valid responses keep 0 / +1, but -0.1
    when the answer holds no option letter; a ``template_echo`` is a bad format
    scored -1. Gives a gradient to a model that never produces the full format
    at first, and a reason to name a letter.

More schemes can be added with :func:`register_scheme`.

Example
-------
>>> r = score("<think>Aspirin inhibits COX-1 irreversibly.</think><answer>C</answer>",
...           gold="C", n_options=4)
>>> (r.reward, r.format_ok, r.pred, r.flags)
(1.0, True, 'C', [])
"""

from __future__ import annotations

import functools
import json
import operator
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LETTERS",
    "THINK_OPEN",
    "THINK_CLOSE",
    "ANSWER_OPEN",
    "ANSWER_CLOSE",
    "FLAGS",
    "DEFAULT_PENALIZED_FLAGS",
    "VERL_DEFAULT_N_OPTIONS",
    "Parsed",
    "RewardConfig",
    "RewardResult",
    "SchemeFn",
    "SCHEMES",
    "register_scheme",
    "parse",
    "extract_letter",
    "detect_flags",
    "is_template_echo",
    "TEMPLATE_TEXTS",
    "TEMPLATE_PLACEHOLDERS",
    "score",
    "format_progress",
    "trl_reward_func",
    "make_trl_reward_func",
    "verl_compute_score",
]

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
"""Option letters, in order; a question with ``n`` options uses ``LETTERS[:n]``."""

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"

FLAGS: dict[str, str] = {
    "answer_in_think": (
        "the predicted letter appears inside <think> as an explicit choice ('answer is C', "
        "'(C)', 'C.', 'C)', 'option C', or <think> is just the letter), or, when options "
        "are given, the gold or predicted option text appears inside <think> "
        "(the paper's 'direct-answer hacker')"
    ),
    "reasoning_before_think": (
        "more than RewardConfig.reasoning_before_think_min_chars non-space characters "
        "before the first <think> (the paper's 'step-by-step exploit')"
    ),
    "multiple_blocks": "more than one <think>/</think> or more than one <answer>/</answer> tag",
    "trailing_text": "non-whitespace text after the first </answer>",
    "empty_think": (
        "<think> block missing/unclosed, or with fewer than "
        "RewardConfig.empty_think_max_chars non-space characters"
    ),
    "template_echo": (
        "the think or answer text is, once normalised (case, spacing, punctuation), the prompt's "
        "placeholder text ('reasoning process here', 'answer here') or a near copy of a fixed part "
        "of the prompt (RewardConfig.template_texts): the model copies the template instead of "
        "answering; 'shaped' and 'composite' score it as a bad format"
    ),
}
"""Hacking-pattern flag names mapped to a one-line description, in reporting order."""

DEFAULT_PENALIZED_FLAGS: tuple[str, ...] = (
    "answer_in_think",
    "reasoning_before_think",
    "multiple_blocks",
    "trailing_text",
)
"""Flags penalised by the ``"composite"`` scheme unless configured otherwise."""

VERL_DEFAULT_N_OPTIONS = 5
"""Number of options :func:`verl_compute_score` assumes when ``extra_info`` gives none."""

TEMPLATE_PLACEHOLDERS: tuple[str, ...] = ("reasoning process here", "answer here")
"""The placeholder texts of the R1-Zero prompt's example ``<think> reasoning process here </think>
<answer> answer here </answer>``."""

TEMPLATE_TEXTS: tuple[str, ...] = TEMPLATE_PLACEHOLDERS + (
    "A conversation between User and Assistant.",
    "The user asks a question, and the Assistant solves it.",
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the answer.",
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively",
    "Answer with just one of the letters from the options below.",
    "The following is a multiple-choice question about medicine.",
    "Answer with the letter of the correct option.",
)
"""Fixed texts of the prompts of :mod:`medrlvr.prompts` (copied here so that this file stays
importable on its own, e.g. as a verl ``custom_reward_function``; a test checks they match), sentence
by sentence: a think or answer that is a near copy of one of them is a ``template_echo``."""


# --------------------------------------------------------------------------- #
# Data classes
# --------------------------------------------------------------------------- #


@dataclass
class Parsed:
    """Structural parse of one response (see :func:`parse`).

    Attributes:
        text: the response that was parsed.
        before_think: text before the first ``<think>`` (``""`` if there is none).
        think: content of the first ``<think>…</think>`` block, or ``None`` when
            ``<think>`` is absent or not closed after it.
        answer: content of the first ``<answer>…</answer>`` block, or ``None``
            when ``<answer>`` is absent or not closed after it.
        after_answer: text after the ``</answer>`` closing the first answer block
            (``""`` when that block is absent or unclosed).
        n_think_blocks: number of ``<think>`` openings.
        n_answer_blocks: number of ``<answer>`` openings.
        tags_in_order: exactly one of each of the four tags, ordered
            ``<think>`` < ``</think>`` < ``<answer>`` < ``</answer>``.
    """

    text: str
    before_think: str
    think: str | None
    answer: str | None
    after_answer: str
    n_think_blocks: int
    n_answer_blocks: int
    tags_in_order: bool


@dataclass
class RewardConfig:
    """Tunable thresholds for the flags and the ``"composite"`` scheme.

    Attributes:
        reasoning_before_think_min_chars: ``reasoning_before_think`` is raised
            when the text before ``<think>`` has *more* than this many non-space
            characters (default 20).
        empty_think_max_chars: ``empty_think`` is raised when the think block is
            missing or has *fewer* than this many non-space characters (default 10).
        penalty: amount subtracted per penalised flag by ``"composite"`` (default 0.5).
        penalized_flags: flag names penalised by ``"composite"`` (default
            :data:`DEFAULT_PENALIZED_FLAGS`; ``empty_think`` is not penalised by default).
        answer_in_think_option_text: when options are given, also raise
            ``answer_in_think`` if the gold or predicted option *text* appears in
            ``<think>`` (default True).  Honest reasoning often names the right
            option, so this part of the flag is noisy; set False to only look for
            explicit letter choices.
        template_texts: the fixed texts of the prompt a ``template_echo`` is compared with
            (default :data:`TEMPLATE_TEXTS`: the R1-Zero instructions, sentence by sentence,
            and their placeholders).
        template_echo_similarity: a think/answer text whose character similarity
            (:class:`difflib.SequenceMatcher` ratio, on normalised text) to one of
            ``template_texts`` is at least this is a near copy (default 0.8).
        template_echo_min_words: a normalised think/answer text is also an echo when it has at
            least this many words and appears word for word inside one of ``template_texts``
            ("answer here", "the reasoning process"; default 2, so a one-word answer never is).
        no_letter_reward: ``"shaped"``: the reward of a well-formed answer without an option
            letter (default :data:`SHAPED_NO_LETTER`, -0.1).
        echo_reward: ``"shaped"``: the reward of a ``template_echo`` response, scored as a bad
            format (default -1.0, the bottom of the band: copying the template earns no
            format credit).
        format_step_reward: ``"shaped"``: the credit per format tag reached in order inside the
            bad-format band (default 0.25: -1, -0.75, -0.5, -0.25). A smaller step leaves room
            for a lower ``no_letter_reward`` while every valid answer still beats every invalid one.
    """

    reasoning_before_think_min_chars: int = 20
    empty_think_max_chars: int = 10
    penalty: float = 0.5
    penalized_flags: tuple[str, ...] = DEFAULT_PENALIZED_FLAGS
    answer_in_think_option_text: bool = True
    template_texts: tuple[str, ...] = ()
    template_echo_similarity: float = 0.8
    template_echo_min_words: int = 2
    no_letter_reward: float = -0.1
    echo_reward: float = -1.0
    format_step_reward: float = 0.25

    def __post_init__(self) -> None:
        self.penalized_flags = tuple(self.penalized_flags)
        self.template_texts = tuple(self.template_texts) or TEMPLATE_TEXTS
        unknown = [f for f in self.penalized_flags if f not in FLAGS]
        if unknown:
            raise ValueError(f"unknown flag(s) in penalized_flags: {unknown}; known flags: {list(FLAGS)}")


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


# --------------------------------------------------------------------------- #
# Parsing
# --------------------------------------------------------------------------- #


def parse(response: str) -> Parsed:
    """Split a response into its ``<think>``/``<answer>`` parts.

    Tags are exact lowercase strings (no attributes, no inner whitespace, no
    other casing).  The first ``<think>`` opening and the first ``</think>``
    after it delimit ``think``; likewise for ``answer``.  Never raises on a
    string, whatever it contains.

    Args:
        response: the assistant's whole text, including any pre-filled ``<think>``.

    Raises:
        TypeError: if ``response`` is not a ``str``.
    """
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    text = response
    ot = text.find(THINK_OPEN)
    before_think = text[:ot] if ot >= 0 else ""
    think: str | None = None
    if ot >= 0:
        ct = text.find(THINK_CLOSE, ot + len(THINK_OPEN))
        if ct >= 0:
            think = text[ot + len(THINK_OPEN) : ct]
    oa = text.find(ANSWER_OPEN)
    answer: str | None = None
    after_answer = ""
    if oa >= 0:
        ca = text.find(ANSWER_CLOSE, oa + len(ANSWER_OPEN))
        if ca >= 0:
            answer = text[oa + len(ANSWER_OPEN) : ca]
            after_answer = text[ca + len(ANSWER_CLOSE) :]
    n_to, n_tc = text.count(THINK_OPEN), text.count(THINK_CLOSE)
    n_ao, n_ac = text.count(ANSWER_OPEN), text.count(ANSWER_CLOSE)
    in_order = False
    if n_to == n_tc == n_ao == n_ac == 1:
        p = [text.find(t) for t in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)]
        in_order = p[0] < p[1] < p[2] < p[3]
    return Parsed(
        text=text,
        before_think=before_think,
        think=think,
        answer=answer,
        after_answer=after_answer,
        n_think_blocks=n_to,
        n_answer_blocks=n_ao,
        tags_in_order=in_order,
    )


# --------------------------------------------------------------------------- #
# Letter extraction
# --------------------------------------------------------------------------- #

# Words that, right after a capital letter, show the letter is used as an option
# letter ("A or C", "B is correct", "C. because ..."), as opposed to the article
# "A bacterial ...", the pronoun "I think ..." or a genus abbreviation "E. coli".
_LETTER_CONTEXT_I = frozenset(
    "or and nor vs versus is seems appears looks fits matches remains corresponds because since has".split()
)
_LETTER_CONTEXT_ANY = _LETTER_CONTEXT_I | frozenset(
    "was would should could might may must will also only then as but which being".split()
)
_DOT_WORD_RE = re.compile(r"\.[ \t]*([a-z]+)")
_SPACE_WORD_RE = re.compile(r"\s+([a-z]+)")

_END = r"(?![A-Za-z0-9'’\-])"
# Linear time: the separator is ``\s*(?:[:=\-]\s*)?``, not ``\s*[:=\-]?\s*``. Both read the same text
# (spaces, at most one ``:``/``=``/``-``, spaces), but the latter lets the two ``\s*`` split a long
# whitespace run in every possible way when no letter follows it: "answer" + N spaces cost O(N^2)
# (4 s at N = 16k). Here each run is split one way only.
_CUE = (
    r"(?i:\b(?:answer|option|choice)\b"
    r"(?:\s+(?:is|would\s+be|should\s+be|will\s+be|must\s+be))?)\s*(?:[:=\-]\s*)?"
)
# group 1: bracketed letter (either case); 2: uppercase letter; 3: lowercase letter at the end
_CUE_RE = re.compile(_CUE + r"(?:[(\[{]\s*([A-Za-z])\s*[)\]}]|([A-Z])" + _END + r"|([a-z])(?=[\s.!)\]}]*$))")
_BRACKET_RE = re.compile(r"[(\[{]\s*([A-Z])\s*[)\]}]")
_PAREN_AFTER_RE = re.compile(r"(?<![A-Za-z0-9(\[{'’\-])([A-Z])\)")
_DOT_AFTER_RE = re.compile(r"(?<![A-Za-z0-9.'’\-])([A-Z])\.(?![A-Za-z0-9])")
# Start-of-answer forms: "(c)", "c)", "C)", "C:", "C.", "C -", "C\n..."
_START_RE = re.compile(
    r"\A\s*(?:[(\[]\s*([A-Za-z])\s*[)\]]|([a-z])\)|([A-Z])\s*[:)\]]|([A-Z])\s*\.|([A-Z])\s+[-–—]\s|([A-Z])[ \t]*(?:\n|\Z))"
)
_BARE_RE = re.compile(r"[\s(\[{<]*([A-Za-z])[\s)\]}>.:,;!]*")
_TOKEN_RE = re.compile(r"(?<![A-Za-z0-9'’\-.])([A-Z])(?![A-Za-z0-9'’\-])(?!\.[A-Za-z])")
_LATEX_RE = re.compile(r"\\(?:boxed|text|textbf|mathbf|mathrm)\s*")
_MARKUP_RE = re.compile(r"[*_`~$]+")
_NONWORD_RE = re.compile(r"[\W_]+")
_WORD_RUN_RE = re.compile(r"[^\W_]+")  # the runs _NONWORD_RE separates (one pass, no intermediate string)


def _clean(s: str) -> str:
    s = unicodedata.normalize("NFKC", s)
    s = _LATEX_RE.sub("", s)
    s = _MARKUP_RE.sub("", s)
    return s.strip()


def _is_word_use(letter: str, tail: str) -> bool:
    """True if an uppercase ``letter`` followed by ``tail`` reads as a word, not a choice.

    Only the first few dozen characters of ``tail`` matter; pass a short slice.
    """
    m = _DOT_WORD_RE.match(tail)
    if m:  # "E. coli", "C. difficile" -- but "C. because ..." is a letter
        return m.group(1) not in _LETTER_CONTEXT_ANY
    if letter in "AI":
        m = _SPACE_WORD_RE.match(tail)
        if m:  # "A bacterial", "I think" -- but "A or C", "I is correct" are letters
            ctx = _LETTER_CONTEXT_I if letter == "I" else _LETTER_CONTEXT_ANY
            return m.group(1) not in ctx
    return False


def _collect(regex: re.Pattern[str], s: str, out: set[str]) -> None:
    for m in regex.finditer(s):
        for g in range(1, (regex.groups or 0) + 1):
            letter = m.group(g)
            if letter is None:
                continue
            end = m.end(g)
            if letter.isupper() and _is_word_use(letter, s[end : end + 64]):
                continue
            out.add(letter.upper())


def _bare_letter(s: str) -> str | None:
    m = _BARE_RE.fullmatch(s)
    return m.group(1).upper() if m else None


def _strong_letters(s: str) -> set[str]:
    """Letters given in an explicit choice form inside an answer block."""
    out: set[str] = set()
    _collect(_CUE_RE, s, out)
    _collect(_BRACKET_RE, s, out)
    _collect(_PAREN_AFTER_RE, s, out)
    _collect(_START_RE, s, out)
    return out


def _mentioned_letters(s: str) -> set[str]:
    """Letters stated as a choice anywhere in free text (used on the think block)."""
    s = _clean(s)
    out = _strong_letters(s)
    _collect(_DOT_AFTER_RE, s, out)
    bare = _bare_letter(s)
    if bare:
        out.add(bare)
    return out


def _norm_text(s: str) -> str:
    """Case-, space- and punctuation-insensitive form used for option-text matching."""
    return " ".join(_WORD_RUN_RE.findall(unicodedata.normalize("NFKC", s).casefold()))


def _normalize_options(options: Any) -> dict[str, str]:
    """Accept ``{"A": text, ...}`` (any key case), a sequence of texts, or either as JSON text (how
    ``medrlvr data export --format verl`` stores them in ``extra_info``); drop unusable entries."""
    if options is None:
        return {}
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except ValueError:
            return {}
    items: list[tuple[Any, Any]]
    if isinstance(options, Mapping):
        items = list(options.items())
    elif isinstance(options, Sequence) and not isinstance(options, (str, bytes)):
        items = list(zip(LETTERS, options))
    else:
        return {}
    out: dict[str, str] = {}
    for k, v in items:
        if not isinstance(k, str) or not isinstance(v, str):
            continue
        k = k.strip().upper()
        if len(k) == 1 and k in LETTERS:
            out[k] = v
    return out


def _option_letters(answer: str, opts: dict[str, str], exact: bool) -> set[str]:
    ans = _norm_text(answer)
    if not ans:
        return set()
    normed = {k: _norm_text(v) for k, v in opts.items()}
    normed = {k: v for k, v in normed.items() if v}
    if exact:
        return {k for k, v in normed.items() if v == ans}
    padded = f" {ans} "
    hits = {k: v for k, v in normed.items() if f" {v} " in padded}
    # keep the longest matches: "aspirin" is dropped when "aspirin and heparin" also matched
    return {
        k
        for k, v in hits.items()
        if not any(v != w and f" {v} " in f" {w} " for j, w in hits.items() if j != k)
    }


def _decide(cands: set[str], n_options: int) -> str | None:
    if len(cands) == 1:
        (letter,) = cands
        if letter in LETTERS[:n_options]:
            return letter
    return None


def _check_n_options(n_options: Any) -> int:
    try:
        if isinstance(n_options, bool):
            raise TypeError
        n = operator.index(n_options)
    except TypeError:
        raise ValueError(f"n_options must be an integer in 2..26, got {n_options!r}") from None
    if not 2 <= n <= len(LETTERS):
        raise ValueError(f"n_options must be in 2..26, got {n}")
    return n


def extract_letter(
    answer_text: str | None, n_options: int, options: dict[str, str] | None = None
) -> str | None:
    """Read the chosen option letter from the *inside* of an ``<answer>`` block.

    Tried in order; the first step that finds any candidate decides, and it
    decides ``None`` when its candidates are several *different* letters or a
    single letter outside ``A..LETTERS[n_options-1]``:

    1. the whole answer is one letter, possibly bracketed/punctuated/bold:
       ``"C"``, ``"(C)"``, ``"C."``, ``"**C**"``, ``"\\boxed{C}"``, ``"c"``;
    2. (with ``options``) the answer equals one option's text, ignoring case,
       spacing and punctuation: ``"Aspirin."`` for ``{"C": "aspirin"}``;
    3. explicit choice forms: ``"The answer is C"``, ``"Answer: (c)"``,
       ``"option C"``, ``"(C)"`` anywhere, ``"C)"`` anywhere, and at the start
       ``"C) Aspirin"``, ``"C: Aspirin"``, ``"C. Aspirin"``, ``"C - Aspirin"``,
       or ``"C"`` alone on the first line;
    4. (with ``options``) exactly one option's text is contained in the answer
       (a shorter option contained in a longer matched one is ignored);
    5. any standalone capital letter: ``"I think B"`` -> ``B``, ``"A or C"`` -> ``None``.

    An explicit letter (steps 1, 3) wins over option text (step 4); a repeated
    identical letter (``"C. C"``) is fine.

    Case policy: capitals are letters.  Lowercase letters count only where they
    cannot be words: the whole answer (``"a"``, ``"(c)"``), a bracketed letter
    after a cue (``"Answer: (c)"``), a cue letter ending the answer (``"the
    answer is c"``), or ``"(c)"``/``"c)"`` at the start.  So ``"a bacterial
    infection"`` yields nothing from the article.  The capital ``"A"``/``"I"``
    followed by an ordinary lowercase word is read as the article/pronoun
    (``"I think B"`` -> ``B``; a lone ``"I"`` with ``n_options >= 9`` -> ``I``),
    and a capital followed by ``". <lowercase word>"`` as an abbreviation
    (``"E. coli"``).  Unicode compatibility forms are folded (NFKC): ``"Ｃ"`` -> ``C``.

    Args:
        answer_text: content of the answer block (``None`` or ``""`` -> ``None``).
        n_options: number of options, 2..26.
        options: optional ``{letter: option text}`` (a list of texts in letter
            order is accepted too), enabling steps 2 and 4.

    Returns:
        An uppercase letter within range, or ``None``.

    Raises:
        ValueError: if ``n_options`` is not an integer in 2..26.
    """
    n = _check_n_options(n_options)
    if not isinstance(answer_text, str):
        return None
    s = _clean(answer_text)
    if not s:
        return None
    bare = _bare_letter(s)
    if bare is not None:
        return _decide({bare}, n)
    opts = _normalize_options(options)
    if opts:
        cands = _option_letters(s, opts, exact=True)
        if cands:
            return _decide(cands, n)
    cands = _strong_letters(s)
    if cands:
        return _decide(cands, n)
    if opts:
        cands = _option_letters(s, opts, exact=False)
        if cands:
            return _decide(cands, n)
    cands = set()
    _collect(_TOKEN_RE, s, cands)
    return _decide(cands, n) if cands else None


# --------------------------------------------------------------------------- #
# Flags
# --------------------------------------------------------------------------- #


def _non_space_len(s: str) -> int:
    # str.split() splits on exactly the characters str.isspace() accepts; C speed (a per-character
    # generator was two thirds of the scoring time of a 4 KB completion)
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
        hit = pred is not None and pred in _mentioned_letters(think)
        if not hit and cfg.answer_in_think_option_text and options:
            opts = _normalize_options(options)
            think_norm = f" {_norm_text(think)} "
            for letter in {pred, gold}:
                if letter and letter in opts:
                    o = _norm_text(opts[letter])
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


# --------------------------------------------------------------------------- #
# Template echo
# --------------------------------------------------------------------------- #


def _echo_of(text: str, cfg: RewardConfig) -> bool:
    """``text`` (a think or answer block) normalised is a copy or near copy of a fixed prompt text.

    Simplification: character similarity (``difflib`` ratio) on the case-, space- and
    punctuation-folded text, per fixed sentence; a paraphrase of the template is not caught.
    """
    import difflib

    parts = _norm_parts(cfg.template_texts)
    thr = cfg.template_echo_similarity
    if parts and thr > 0:
        # A lower bound of len(_norm_text(text)) at C speed: NFKC, casefold and the word-run join keep
        # every ASCII letter and digit as one character. Past 2/thr - 1 times the longest fixed text
        # neither a copy nor a near copy is possible (most think blocks), so nothing is normalised.
        ascii_alnum = len(text.encode("ascii", "ignore").translate(None, _NOT_ASCII_ALNUM))
        if ascii_alnum > (2.0 / thr - 1.0) * max(map(len, parts)):
            return False
    t = _norm_text(text)
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
def _norm_parts(parts: tuple[str, ...]) -> tuple[str, ...]:
    """The fixed prompt texts, normalised once per configuration (the non-empty ones)."""
    return tuple(p for p in map(_norm_text, parts) if p)


def is_template_echo(parsed: Parsed, config: RewardConfig | None = None) -> bool:
    """True when the think or the answer block is the prompt's placeholder text or a near copy of a
    fixed part of the prompt (see :data:`FLAGS` ``template_echo``). An unclosed block is not
    checked."""
    cfg = config or RewardConfig()
    return any(b is not None and _echo_of(b, cfg) for b in (parsed.think, parsed.answer))


# --------------------------------------------------------------------------- #
# Schemes
# --------------------------------------------------------------------------- #

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


SHAPED_NO_LETTER = -0.1
"""``shaped``: a well-formed response whose answer holds no option letter (e.g. the template's own
``<answer> answer here </answer>``, which SmolLM2 learned to copy in a demo run while such an answer scored
0 like a wrong letter, as under the paper's reward). Between the invalid band (<= -0.25) and a wrong
letter (0)."""


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


# --------------------------------------------------------------------------- #
# Scoring
# --------------------------------------------------------------------------- #


def _check_gold(gold: Any, n: int) -> str:
    g = gold.strip().upper() if isinstance(gold, str) else None
    if not g or len(g) != 1 or g not in LETTERS[:n]:
        raise ValueError(f"gold must be one letter in A..{LETTERS[n - 1]} for n_options={n}, got {gold!r}")
    return g


def _get_scheme(scheme: str) -> SchemeFn:
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
) -> RewardResult:
    """Score one response.

    Args:
        response: the assistant's whole text **including** any pre-filled
            ``"<think>"`` (prepend the pre-fill yourself if you generate after it).
        gold: the gold letter (case-insensitive, surrounding spaces ignored).
        n_options: number of options, 2..26 (MedQA 4-5, MMLU-Pro up to 10).
        scheme: a name in :data:`SCHEMES` (``"paper"``, ``"strict"``, ``"composite"``, ...).
        options: optional ``{letter: option text}``; enables matching answers
            given as option text and option-text detection in ``answer_in_think``.
        config: thresholds and penalties (default :class:`RewardConfig()`).

    Returns:
        A :class:`RewardResult`.  Deterministic; never raises for any ``str`` response.

    Raises:
        ValueError: unknown scheme, ``n_options`` outside 2..26, or ``gold`` not a
            letter within ``n_options``.
        TypeError: if ``response`` is not a ``str``.
    """
    fn = _get_scheme(scheme)
    n = _check_n_options(n_options)
    g = _check_gold(gold, n)
    cfg = config or RewardConfig()
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


# --------------------------------------------------------------------------- #
# Adapters
# --------------------------------------------------------------------------- #


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):  # multimodal parts: [{"type": "text", "text": ...}, ...]
        parts = []
        for p in content:
            if isinstance(p, str):
                parts.append(p)
            elif isinstance(p, Mapping) and isinstance(p.get("text"), str):
                parts.append(p["text"])
        return "".join(parts)
    return str(content)


def _completion_text(completion: Any) -> str:
    """Plain string, or the last assistant message of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if completion is None:
        return ""
    if isinstance(completion, Mapping):
        return _content_text(completion.get("content"))
    if isinstance(completion, Sequence):
        msgs = [m for m in completion if isinstance(m, Mapping)]
        for m in reversed(msgs):
            if m.get("role") == "assistant":
                return _content_text(m.get("content"))
        return _content_text(msgs[-1].get("content")) if msgs else ""
    return str(completion)


def join_prefill(completion: str, prefill: str | None = THINK_OPEN) -> str:
    """The full response to score when the prompt ended with ``prefill`` (``"<think>"``).

    Normally ``prefill + completion``. But when the completion opens its own ``<think>`` before any
    ``</think>``, the model has written text *outside* the pre-filled block and then started its
    reasoning again: the completion alone is the response, so that text counts as text before
    ``<think>``. This is how the paper's step-by-step exploit (reasoning placed before ``<think>``)
    shows up with a pre-filled prompt, and how the paper's lenient format check saw it: rewardable,
    and flagged ``reasoning_before_think``.
    """
    marker = (prefill or "").strip()
    if not marker:
        return completion
    if completion.lstrip().startswith(marker):
        return completion
    if marker == THINK_OPEN:
        i, j = completion.find(THINK_OPEN), completion.find(THINK_CLOSE)
        if i >= 0 and (j < 0 or i < j):
            return completion
    return prefill + completion  # type: ignore[operator]



def _per_item(value: Any, n: int, name: str) -> list[Any]:
    if value is None or isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        return [value] * n
    items = list(value)
    if len(items) != n:
        raise ValueError(f"column {name!r} has {len(items)} entries for {n} completions")
    return items


def make_trl_reward_func(
    scheme: str = "paper", prefill: str | None = "<think>", config: RewardConfig | None = None
) -> Callable[..., list[float]]:
    """Build a reward function for TRL's ``GRPOTrainer(reward_funcs=...)``.

    TRL calls it as ``f(prompts=..., completions=..., completion_ids=...,
    trainer_state=..., **dataset_columns)``; the dataset must provide the columns
    ``gold`` (letter) and ``n_options`` (int), and may provide ``options``
    (``{letter: text}`` or list of texts).  Each completion may be a string or a
    conversational list of ``{"role", "content"}`` messages (the last assistant
    message is scored).  ``prefill`` (default ``"<think>"``, as when the prompt
    ends with a pre-filled ``<think>``) is prepended to every completion that does
    not already start with it; pass ``None`` or ``""`` if you do not pre-fill.

    The returned callable's ``__name__`` is ``f"medrlvr_{scheme}_reward"``
    (TRL logs rewards under that name).

    Raises:
        ValueError: for an unknown ``scheme`` (at build time).
    """
    _get_scheme(scheme)
    cfg = config

    def reward_func(
        prompts: Any = None,
        completions: Sequence[Any] | None = None,
        gold: Any = None,
        n_options: Any = None,
        options: Any = None,
        **kwargs: Any,
    ) -> list[float]:
        comps = list(completions or [])
        n = len(comps)
        if gold is None or n_options is None:
            raise ValueError("the dataset must provide the columns 'gold' and 'n_options'")
        golds = _per_item(gold, n, "gold")
        ns = _per_item(n_options, n, "n_options")
        opts = _per_item(options, n, "options")
        return [
            score(join_prefill(_completion_text(c), prefill), g, k, scheme=scheme, options=o, config=cfg).reward
            for c, g, k, o in zip(comps, golds, ns, opts)
        ]

    reward_func.__name__ = reward_func.__qualname__ = f"medrlvr_{scheme}_reward"
    reward_func.__doc__ = f"medrlvr {scheme!r} reward for TRL (prefill={prefill!r})."
    return reward_func


_default_trl_reward = make_trl_reward_func()


def trl_reward_func(
    prompts: Any,
    completions: Sequence[Any],
    gold: Any,
    n_options: Any,
    options: Any = None,
    **kwargs: Any,
) -> list[float]:
    """TRL ``GRPOTrainer`` reward function: ``"paper"`` scheme, ``"<think>"`` pre-fill.

    Equivalent to ``make_trl_reward_func("paper", prefill="<think>")``; see
    :func:`make_trl_reward_func` for the arguments.  Returns one float per completion.
    """
    return _default_trl_reward(prompts, completions, gold, n_options, options, **kwargs)


def verl_compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """verl ``custom_reward_function`` entry point.

    Args:
        data_source: dataset name (unused).
        solution_str: the decoded response (without the prompt).
        ground_truth: the gold letter.
        extra_info: optional dict with ``n_options`` (int), ``options``
            (``{letter: text}`` or list), ``scheme`` (default ``"paper"``) and
            ``prefill_think`` (default True: prepend ``"<think>"`` when
            ``solution_str`` does not start with it, as for a pre-filled prompt).

    ``n_options`` is taken from ``extra_info["n_options"]``, else the number of
    ``extra_info["options"]``, else :data:`VERL_DEFAULT_N_OPTIONS` (5) -- widened
    to cover the gold letter when that lies further.  Provide ``n_options`` for
    exact out-of-range handling.

    Returns:
        ``{"score": float, "format_ok": bool, "pred": str ("" if none), "acc": bool,
        <flag name>: bool for every flag in FLAGS}`` -- fixed keys and types so
        that verl can batch them as extra reward info.
    """
    info: Mapping[str, Any] = extra_info if isinstance(extra_info, Mapping) else {}
    gold = str(ground_truth).strip().upper()
    options = _normalize_options(info.get("options")) or None
    n_raw = info.get("n_options")
    if n_raw is not None:
        n = _check_n_options(n_raw)
    elif options:
        n = max(2, len(options))
    else:
        n = VERL_DEFAULT_N_OPTIONS
        if len(gold) == 1 and gold in LETTERS:
            n = max(n, LETTERS.index(gold) + 1)
    scheme = info.get("scheme") or "paper"
    text = solution_str if isinstance(solution_str, str) else _completion_text(solution_str)
    if info.get("prefill_think", True):
        text = join_prefill(text, THINK_OPEN)
    res = score(text, gold, n, scheme=scheme, options=options)
    out: dict[str, Any] = {
        "score": res.reward,
        "format_ok": res.format_ok,
        "pred": res.pred or "",
        "acc": res.correct,
    }
    for f in FLAGS:
        out[f] = f in res.flags
    return out
