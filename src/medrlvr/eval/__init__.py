"""Evaluation: the held-out pass used during training, benchmark evaluation with intervals, comparisons.

- :mod:`medrlvr.eval.stats`: the one bootstrap interval, chance level, pass@k and maj@k;
- :mod:`medrlvr.eval.heldout`: the held-out chain-of-thought pass in the training format (trainer, demo);
- :mod:`medrlvr.eval.benchmark`: ``medrlvr eval``: benchmarks in ``cot``, ``direct`` and ``loglik`` modes;
- :mod:`medrlvr.eval.compare`: ``medrlvr compare``: results side by side (table and figure).

This package's ``__init__`` imports nothing (see :mod:`medrlvr.train`).
"""
