"""TRL adapter: medrlvr's reward as a reward function of TRL's ``GRPOTrainer`` (``reward_funcs=...``).

Rows exported by ``medrlvr data export --format trl`` carry the columns it reads (``gold``, ``n_options``,
``options``). TRL itself is not imported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from medrlvr.reward import RewardConfig, completion_text, score
from medrlvr.reward.schemes import get_scheme


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
    get_scheme(scheme)
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
            score(completion_text(c), g, k, scheme=scheme, options=o, config=cfg, prefill=prefill).reward
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
