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

Only the standard library is used; importing this package never imports torch.
Scoring takes time linear in the response length for any string (no pattern backtracks over a
whitespace run; ``bench/reward_fuzz.py`` measures adversarial families up to 256k characters).

What is scored
--------------
What is scored is the assistant's **whole** text, *including* any pre-filled ``"<think>"``. The default
prompt pre-fills the assistant turn with ``"<think>"`` and the model generates only the continuation, so
:func:`score` joins its ``prefill`` argument (default ``"<think>"``) to the response with :func:`join_prefill`,
which leaves a response that already opens ``<think>`` unchanged: a completion and its whole response score
alike. Pass ``prefill=None`` for a prompt without a pre-fill (``prefill_think=False``, chat or direct
templates). The TRL, verl and OpenRLHF adapters in :mod:`medrlvr.integrations` join their configured pre-fill.

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

Modules
-------
:mod:`~medrlvr.reward.parse` (tags, :func:`parse`, :func:`join_prefill`), :mod:`~medrlvr.reward.letters`
(:func:`extract_letter`), :mod:`~medrlvr.reward.config` (:data:`FLAGS`, :class:`RewardConfig`),
:mod:`~medrlvr.reward.flags` (:func:`detect_flags`, :func:`is_template_echo`), :mod:`~medrlvr.reward.schemes`
(:data:`SCHEMES`, :func:`register_scheme`, :func:`score`).

Example
-------
>>> r = score("<think>Aspirin inhibits COX-1 irreversibly.</think><answer>C</answer>",
...           gold="C", n_options=4)
>>> (r.reward, r.format_ok, r.pred, r.flags)
(1.0, True, 'C', [])
"""

from medrlvr.records import LETTERS
from medrlvr.reward.config import (DEFAULT_PENALIZED_FLAGS, FLAGS, SHAPED_NO_LETTER, TEMPLATE_PLACEHOLDERS,
                                   TEMPLATE_TEXTS, RewardConfig)
from medrlvr.reward.flags import detect_flags, is_template_echo
from medrlvr.reward.letters import check_n_options, extract_letter, normalize_options
from medrlvr.reward.parse import (ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, Parsed, completion_text,
                                  join_prefill, parse)
from medrlvr.reward.schemes import SCHEMES, RewardResult, SchemeFn, format_progress, register_scheme, score

__all__ = [
    "LETTERS", "THINK_OPEN", "THINK_CLOSE", "ANSWER_OPEN", "ANSWER_CLOSE", "FLAGS", "DEFAULT_PENALIZED_FLAGS",
    "SHAPED_NO_LETTER", "TEMPLATE_TEXTS", "TEMPLATE_PLACEHOLDERS", "Parsed", "RewardConfig", "RewardResult",
    "SchemeFn", "SCHEMES", "register_scheme", "parse", "extract_letter", "normalize_options", "check_n_options",
    "detect_flags", "is_template_echo", "score", "format_progress", "join_prefill", "completion_text",
]
