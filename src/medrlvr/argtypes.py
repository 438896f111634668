"""Validated numeric types for command-line options (argparse ``type=``).

Every numeric option of every ``medrlvr`` command uses one of these, so a value that makes no sense
(``--limit -1``, ``--batch-size 0``) stops at parse time with one line naming the option, and exit code 2
(argparse's usage error), before any model or data loads:

- :func:`positive_int` (>= 1), :func:`nonneg_int` (>= 0, where 0 has a stated meaning such as "none" or "all");
- :func:`positive_float` (> 0, finite), :func:`nonneg_float` (>= 0, finite), :func:`unit_float` ([0, 1]) and
  :func:`open_unit_float` ((0, 1]).

Each carries ``min_value`` and ``zero_ok`` attributes, which the parser-walk test reads.
"""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type) -> int | float:
    try:
        v = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def _typed(name: str, kind: type, lo: float, lo_open: bool, hi: float | None = None):
    def conv(text: str):
        v = _number(text, kind)
        if v < lo or (lo_open and v == lo) or (hi is not None and v > hi):
            rng = f"{'>' if lo_open else '>='} {lo:g}" if hi is None else f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
            raise argparse.ArgumentTypeError(f"must be {rng}, got {text}")
        return v

    conv.__name__ = name
    conv.min_value = lo
    conv.zero_ok = not (lo_open and lo == 0) and lo <= 0
    conv.__doc__ = f"argparse type: {'an integer' if kind is int else 'a finite number'} " + (
        f"{'>' if lo_open else '>='} {lo:g}" if hi is None else f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]")
    return conv


def did_you_mean(word: str, choices) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` (difflib ratio >= 0.6), else ``""``: for a
    mistyped preset, config key or benchmark name."""
    import difflib

    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


positive_int = _typed("positive_int", int, 1, False)
nonneg_int = _typed("nonneg_int", int, 0, False)
positive_float = _typed("positive_float", float, 0.0, True)
nonneg_float = _typed("nonneg_float", float, 0.0, False)
unit_float = _typed("unit_float", float, 0.0, False, 1.0)
open_unit_float = _typed("open_unit_float", float, 0.0, True, 1.0)

NUMERIC_TYPES = (positive_int, nonneg_int, positive_float, nonneg_float, unit_float, open_unit_float)
"""The validated numeric types; an option with a plain ``int`` or ``float`` type is a gap (tests/test_cli.py)."""
