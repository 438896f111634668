"""Prompt templates.

``r1-zero``
    The template of DeepSeek-R1-Zero, used by Med-RLVR for a *base* model: a system text that asks the
    assistant to reason inside ``<think> </think>`` and answer inside ``<answer> </answer>``, then
    ``User: ... Assistant:``. With ``prefill_think=True`` (the default) the prompt ends with
    ``<think>``, so the model starts inside its reasoning; the reward is then computed on
    ``"<think>" + completion`` (:func:`response_prefix` gives the text to prepend).
``chat``
    The same instructions through the tokenizer's chat template (system + user message), for instruct
    models; also pre-filled with ``<think>`` by default.
``direct``
    No reasoning: the question, the options and ``Answer:``; the model's next token is the letter.
    Used by the SFT baseline, the direct-answer baseline and log-likelihood scoring.
``direct-chat``
    The ``direct`` prompt as the user message of the tokenizer's chat template, followed by the assistant turn's
    opening, for instruct models (which put little probability on a bare letter after a plain ``Answer:``).

The user content is the question (after the PubMedQA abstract, when there is one), the instruction
"Answer with just one of the letters from the options below." and the lettered options, one per line.
The paper lists question, options and instruction without fixing their order; we put the instruction
before the options it refers to ("below").
"""

from __future__ import annotations

import re

from typing import Any

from medrlvr.records import MCQ

R1_ZERO_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>."
)
INSTRUCTION = "Answer with just one of the letters from the options below."
DIRECT_HEADER = "The following is a multiple-choice question about medicine. Answer with the letter of the correct option."
TEMPLATES = ("r1-zero", "chat", "direct", "direct-chat")
THINK_PREFILL = "<think>"


_OPTION_LINE = re.compile(r"^([A-Z])\. (.*)$", re.M)


def format_options(rec: MCQ) -> str:
    """The options as lines ``"A. text"``, in the record's order."""
    return "\n".join(f"{k}. {v}" for k, v in rec.options.items())


def parse_options(prompt: str) -> dict[str, str]:
    """The options of a rendered prompt (the inverse of :func:`format_options`): ``{letter: text}`` from its
    ``"A. text"`` lines, the first line of each letter kept; used when another engine's dump has only the text."""
    opts: dict[str, str] = {}
    for m in _OPTION_LINE.finditer(prompt or ""):
        opts.setdefault(m.group(1), m.group(2).strip())
    return opts


def user_content(rec: MCQ) -> str:
    """Context (if any), question, instruction and lettered options."""
    parts = []
    if rec.context:
        parts.append(f"Context: {rec.context}")
    parts.append(rec.question)
    parts.append(INSTRUCTION)
    parts.append(format_options(rec))
    return "\n".join(parts)


def r1_zero(rec: MCQ, prefill_think: bool = True) -> str:
    p = f"{R1_ZERO_SYSTEM} User: {user_content(rec)} Assistant:"
    return p + (f" {THINK_PREFILL}" if prefill_think else "")


def chat(rec: MCQ, tokenizer: Any, prefill_think: bool = True) -> str:
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the 'chat' template needs a tokenizer with a chat template; use 'r1-zero' for base models")
    msgs = [{"role": "system", "content": R1_ZERO_SYSTEM}, {"role": "user", "content": user_content(rec)}]
    p = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return p + (THINK_PREFILL if prefill_think else "")


def direct(rec: MCQ) -> str:
    parts = [DIRECT_HEADER, ""]
    if rec.context:
        parts.append(f"Context: {rec.context}")
    parts.append(f"Question: {rec.question}")
    parts.append(format_options(rec))
    parts.append("Answer:")
    return "\n".join(parts)


def direct_chat(rec: MCQ, tokenizer: Any) -> str:
    """:func:`direct` as one user message through the tokenizer's chat template, ready for the assistant's answer."""
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the 'direct-chat' template needs a tokenizer with a chat template; use 'direct' for base "
                         "models")
    return tokenizer.apply_chat_template([{"role": "user", "content": direct(rec)}], tokenize=False,
                                         add_generation_prompt=True)


def direct_target(rec: MCQ) -> str:
    """The completion the direct template expects: a space and the gold letter."""
    return f" {rec.gold}"


def render(rec: MCQ, template: str = "r1-zero", tokenizer: Any = None, prefill_think: bool = True) -> str:
    """Render the prompt for ``rec`` with one of :data:`TEMPLATES`."""
    if template == "r1-zero":
        return r1_zero(rec, prefill_think)
    if template == "chat":
        return chat(rec, tokenizer, prefill_think)
    if template == "direct":
        return direct(rec)
    if template == "direct-chat":
        return direct_chat(rec, tokenizer)
    raise ValueError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")


def response_prefix(template: str, prefill_think: bool = True) -> str:
    """Text the prompt already put in the assistant's mouth, to prepend to a completion before scoring."""
    return THINK_PREFILL if (template in ("r1-zero", "chat") and prefill_think) else ""
