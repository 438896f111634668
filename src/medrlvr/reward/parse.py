"""Reading a response: the four tags, :func:`parse` into before/think/between/answer/after parts, and what the
response is when the prompt pre-filled ``<think>`` (:func:`join_prefill`).

Tags are matched as exact, lowercase strings; whitespace around tags and inside blocks is free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

THINK_OPEN = "<think>"


THINK_CLOSE = "</think>"


ANSWER_OPEN = "<answer>"


ANSWER_CLOSE = "</answer>"


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


def content_text(content: Any) -> str:
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


def completion_text(completion: Any) -> str:
    """Plain string, or the last assistant message of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if completion is None:
        return ""
    if isinstance(completion, Mapping):
        return content_text(completion.get("content"))
    if isinstance(completion, Sequence):
        msgs = [m for m in completion if isinstance(m, Mapping)]
        for m in reversed(msgs):
            if m.get("role") == "assistant":
                return content_text(m.get("content"))
        return content_text(msgs[-1].get("content")) if msgs else ""
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
