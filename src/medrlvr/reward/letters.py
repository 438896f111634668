"""Which option letter a free-text answer names: the one letter extractor (the reward and the stage analysis
both read letters through :func:`extract_letter`).

An answer names a letter when it starts with one ("C", "(c)", "C. aspirin"), cues one ("the answer is C"), or
gives exactly one option's text; an answer naming two letters, or none, has no letter. Every pattern runs in
time linear in the text.
"""

from __future__ import annotations

import json
import operator
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from medrlvr.records import LETTERS

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


def mentioned_letters(s: str) -> set[str]:
    """Letters stated as a choice anywhere in free text (used on the think block)."""
    s = _clean(s)
    out = _strong_letters(s)
    _collect(_DOT_AFTER_RE, s, out)
    bare = _bare_letter(s)
    if bare:
        out.add(bare)
    return out


def norm_text(s: str) -> str:
    """Case-, space- and punctuation-insensitive form used for option-text matching."""
    return " ".join(_WORD_RUN_RE.findall(unicodedata.normalize("NFKC", s).casefold()))


def normalize_options(options: Any) -> dict[str, str]:
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
    ans = norm_text(answer)
    if not ans:
        return set()
    normed = {k: norm_text(v) for k, v in opts.items()}
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


def check_n_options(n_options: Any) -> int:
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
    n = check_n_options(n_options)
    if not isinstance(answer_text, str):
        return None
    s = _clean(answer_text)
    if not s:
        return None
    bare = _bare_letter(s)
    if bare is not None:
        return _decide({bare}, n)
    opts = normalize_options(options)
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


# Explicit choices of a letter inside reasoning (the stage analysis: where a think block settles on a letter).
_CHOICE_MARKUP_RE = re.compile(r"[*_`~$]+|\\(?:boxed|text|textbf|mathbf|mathrm)\s*")
_IS_CORRECT_RE = re.compile(
    r"(?<![A-Za-z0-9'\u2019\-])([A-Z])\)?\s+(?i:is\s+(?:the\s+)?(?:correct|right|best|answer))\b"
)
_CHOICE_BRACKET_RE = re.compile(r"[(\[]\s*([A-Z])\s*[)\]]")
_CHOICE_START_RE = re.compile(r"\A\s*[(\[]?([A-Z])(?!\.[ \t]*[a-z])\s*[.):\]](?=\s|\Z)")  # not "E. coli"
_CHOICE_BARE_RE = re.compile(r"\A[\s(\[{<*]*([A-Za-z])[\s)\]}>.:,;!*]*\Z")
_END_LETTER_RE = re.compile(r"(?<![A-Za-z0-9'\u2019\-.])([A-Z])[.!]?\s*\Z")


def text_before_first_choice(text: str, targets: set[str] | frozenset[str]) -> str | None:
    """The text before the first explicit choice of a letter of ``targets`` in ``text`` (a cue such as "the
    answer is C", "C is correct", "(C)", a letter opening or ending the text, or the text being a bare letter),
    after NFKC normalisation and with markup (``*_`~$``, ``\\boxed`` and the like) removed; None when there is
    none. The stage analysis measures how far into the reasoning the answer is revealed."""
    t = _CHOICE_MARKUP_RE.sub("", unicodedata.normalize("NFKC", text))
    best: int | None = None
    for rx in (_CUE_RE, _IS_CORRECT_RE, _CHOICE_BRACKET_RE, _CHOICE_START_RE, _CHOICE_BARE_RE, _END_LETTER_RE):
        for m in rx.finditer(t):
            letter = next((g for g in m.groups() if g), None)
            if letter is None or letter.upper() not in targets:
                continue
            best = m.start() if best is None else min(best, m.start())
            break
    return None if best is None else t[:best]

