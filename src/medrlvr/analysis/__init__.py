"""Analysis of training runs: stage classification of completions and HTML run reports.

- :mod:`medrlvr.analysis.stages`: features of a completion, the six Med-RLVR training stages
  (:func:`classify`), per-step stage distributions and reward-hacking rates.
- :mod:`medrlvr.analysis.report`: :func:`~medrlvr.analysis.report.build_report` writes a self-contained
  ``report.html`` for a run directory (import it from there: it needs matplotlib).
"""

from medrlvr.analysis.stages import (
    STAGE_DESCRIPTIONS,
    STAGES,
    StageConfig,
    classify,
    classify_sample,
    classify_samples,
    features,
    hacking_rates,
    letter_distribution,
    sample_features,
    sample_response,
    segments,
    stage_distribution,
)

__all__ = [
    "STAGES",
    "STAGE_DESCRIPTIONS",
    "StageConfig",
    "classify",
    "classify_sample",
    "classify_samples",
    "features",
    "hacking_rates",
    "letter_distribution",
    "sample_features",
    "sample_response",
    "segments",
    "stage_distribution",
]

