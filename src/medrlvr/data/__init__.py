"""Data layer: one record type (:class:`MCQ`), loaders, named benchmarks, validation, shuffling,
contamination checks and the built-in starter questions."""

from .benchmarks import BENCHMARKS, MMLU_MEDICAL_SUBJECTS, load_any, load_benchmark, resolve_data_root
from .loaders import (load_generic, load_hub, load_medmcqa, load_medqa, load_mmlu_csv, load_mmlu_pro, load_pubmedqa,
                      parse_column_map)
from .records import LETTERS, DataError, MCQ, MCQSet, Skipped, make_mcq
from .starter import load_starter
from .transforms import contamination, normalize, shuffle_all, shuffle_options

__all__ = [
    "BENCHMARKS", "MMLU_MEDICAL_SUBJECTS", "load_any", "load_benchmark", "resolve_data_root", "load_generic",
    "load_hub", "load_medmcqa", "load_medqa", "load_mmlu_csv", "load_mmlu_pro", "load_pubmedqa", "parse_column_map",
    "LETTERS", "DataError", "MCQ", "MCQSet", "Skipped", "make_mcq", "load_starter", "contamination", "normalize",
    "shuffle_all", "shuffle_options",
]
