"""Data layer: one record type (:class:`MCQ`), loaders, named benchmarks, validation, shuffling,
contamination checks and the built-in starter questions."""

from medrlvr.data.benchmarks import BENCHMARKS, MMLU_MEDICAL_SUBJECTS, load_benchmark, resolve_data_root
from medrlvr.data.sources import columns_for_sources, load_any, load_hub, load_sources
from medrlvr.data.loaders import (load_generic, load_medmcqa, load_medqa, load_mmlu_csv, load_mmlu_pro, load_pubmedqa,
                      parse_column_map)
from medrlvr.records import LETTERS, DataError, MCQ, MCQSet, Skipped, make_mcq
from medrlvr.data.starter import load_starter
from medrlvr.data.transforms import contamination, normalize, shuffle_all, shuffle_options

__all__ = [
    "BENCHMARKS", "MMLU_MEDICAL_SUBJECTS", "load_any", "load_sources", "columns_for_sources", "load_benchmark", "resolve_data_root", "load_generic",
    "load_hub", "load_medmcqa", "load_medqa", "load_mmlu_csv", "load_mmlu_pro", "load_pubmedqa", "parse_column_map",
    "LETTERS", "DataError", "MCQ", "MCQSet", "Skipped", "make_mcq", "load_starter", "contamination", "normalize",
    "shuffle_all", "shuffle_options",
]
