"""Rollout engines: prompts in, sampled completions out, behind one interface.

- :mod:`medrlvr.rollout.base`: the types (:class:`SamplingParams`, :class:`Completion`), the stop and EOS
  helpers and :class:`HFEngine` (transformers ``generate``, the reference).
- :mod:`medrlvr.rollout.fast`: :class:`FastEngine`, the CPU decode engine (same outputs, faster).

:data:`ENGINES` maps a name (``"hf"``, ``"fast"``) to an engine class; :func:`make_engine` builds one by
name and :func:`register_engine` adds one; :func:`choose_engine` resolves ``"auto"`` for a device.
"""

from __future__ import annotations

from typing import Callable

from medrlvr.rollout.base import (Completion, HFEngine, RolloutEngine, SamplingParams, eos_token_ids, finish,
                                  trim_tokens_to_text, truncate_at_stop)
from medrlvr.rollout.fast import FastEngine, UnsupportedModelError

ENGINES: dict[str, Callable[..., RolloutEngine]] = {"hf": HFEngine, "fast": FastEngine}
"""Engine classes by name: ``cls(model, tokenizer, **kwargs)`` returns an engine."""


def register_engine(name: str):
    """Class decorator: make an engine available to :func:`make_engine` (and ``engine: NAME`` in a config)."""
    def deco(cls):
        ENGINES[name] = cls
        return cls
    return deco


AUTO = "auto"


def choose_engine(name: str, device, sharded: bool = False) -> str:
    """The engine to build for ``name`` on ``device`` (a ``torch.device`` or its string): ``"auto"`` is ``"fast"``
    for a whole model on the CPU (the fused CPU decoder, same outputs as ``hf``, faster) and ``"hf"`` elsewhere
    (CUDA, or FSDP2-sharded weights, which the fast engine cannot read); any other name is returned as given (an
    explicit ``"fast"`` on CUDA is refused by the engine itself with a message naming ``hf``)."""
    if name != AUTO:
        return name
    dev = device.type if hasattr(device, "type") else str(device).split(":")[0]
    return "fast" if dev == "cpu" and not sharded else "hf"


def make_engine(name: str, model, tokenizer, **kw) -> RolloutEngine:
    """The engine ``name`` built on ``model`` and ``tokenizer``; ``kw`` go to its constructor.

    Raises ``ValueError`` for a name not in :data:`ENGINES`."""
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; known: {', '.join(ENGINES)}")
    return ENGINES[name](model, tokenizer, **kw)


__all__ = ["AUTO", "ENGINES", "choose_engine", "Completion", "FastEngine", "HFEngine", "RolloutEngine", "SamplingParams",
           "UnsupportedModelError", "eos_token_ids", "finish", "make_engine", "register_engine",
           "trim_tokens_to_text", "truncate_at_stop"]
