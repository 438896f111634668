"""lm-evaluation-harness task directories over local JSONL (``medrlvr data export SOURCE --format lm-eval``).

EleutherAI's lm-evaluation-harness (``lm_eval``) scores a multiple-choice task by the log-likelihood of each choice
after a context. :func:`write_task_dir` writes a directory that ``lm_eval --include_path DIR --tasks TASK`` (or
``simple_evaluate(..., task_manager=TaskManager(include_path=DIR))``) runs with no Hub access:

- ``<task>.jsonl``: one row per question: ``id``, ``question``, ``options`` (texts, in letter order), ``choices``
  (the letters), ``gold_index``, ``gold``, ``prompt`` (our ``direct`` prompt, :func:`medrlvr.prompts.direct`:
  the header, the question, lettered options, ``Answer:``) and ``lmeval_prompt`` (lm-eval's own ``medqa_4options``
  prompt, :func:`lm_eval_medqa_prompt`);
- ``<task>.yaml``: ``output_type: multiple_choice`` over ``prompt``, the choices the option letters, each scored as
  ``" " + letter`` (lm-eval's default ``target_delimiter``): the question ``medrlvr eval --mode loglik`` asks,
  the next-token log-probability of ``" A"``, ``" B"``, ... after the same prompt;
- ``<task>_lmeval_prompt.yaml``: the same questions and choices with lm-eval's ``medqa_4options`` prompt
  (``Question: ...`` then ``A. ...`` lines and ``Answer:``, no header), for comparing the two prompts;
- ``medrlvr_lmeval_data.py``: the ``custom_dataset`` loader both YAML files name (``!function``): it reads the
  JSONL beside it, so the directory can be moved or copied as a whole.

Metrics: ``acc`` (the argmax over the choices' log-likelihoods; lm-eval breaks a tie by the first choice, as
``medrlvr eval`` does) and ``acc_norm`` (per-character normalised; every choice is one letter, so it equals ``acc``
up to the leading space).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from medrlvr.records import MCQ
from medrlvr.prompts import direct

LOADER = "medrlvr_lmeval_data"
LOADER_CODE = '''"""Loads the JSONL beside this file as the task's test split (written by medrlvr data export --format lm-eval)."""
import json
from pathlib import Path

import datasets


def load(**kwargs):
    """``custom_dataset`` of the task YAMLs here: ``{"test": Dataset}`` from ``kwargs["data_file"]``, a file name
    relative to this directory."""
    path = Path(__file__).resolve().parent / kwargs["data_file"]
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
'''


def task_name(source: str) -> str:
    """A task name for ``source`` (``medqa-4opt:test`` -> ``medrlvr_medqa_4opt_test``): letters, digits, ``_``."""
    return "medrlvr_" + (re.sub(r"[^A-Za-z0-9]+", "_", Path(source).stem if "/" in source else source).strip("_")
                         or "data").lower()


def lm_eval_medqa_prompt(rec: MCQ) -> str:
    """lm-eval's ``medqa_4options`` prompt (``lm_eval/tasks/medqa/preprocess_medqa.py``, ``doc_to_text``) for a
    record: ``Question: <question>`` then one ``"L. text"`` line per option and ``Answer:``."""
    answers = "".join(f"{k}. {v}\n" for k, v in rec.options.items())
    return f"Question: {rec.question}\n{answers}Answer:"


def task_row(rec: MCQ) -> dict:
    """One JSONL row of the task (see the module doc)."""
    letters = list(rec.options)
    return {"id": str(rec.id), "question": rec.question, "options": [rec.options[k] for k in letters],
            "choices": letters, "gold_index": letters.index(rec.gold), "gold": rec.gold,
            "prompt": direct(rec), "lmeval_prompt": lm_eval_medqa_prompt(rec)}


def _yaml(task: str, data_file: str, text_field: str, about: str) -> str:
    return (f"# {about}\n"
            f"task: {task}\n"
            f"custom_dataset: !function {LOADER}.load\n"
            f"dataset_kwargs:\n  data_file: {data_file}\n"
            "output_type: multiple_choice\n"
            "test_split: test\n"
            f"doc_to_text: {text_field}\n"
            "doc_to_choice: choices\n"
            "doc_to_target: gold_index\n"
            "target_delimiter: \" \"\n"
            "metric_list:\n"
            "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
            "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
            "metadata:\n  version: 1.0\n")


def write_task_dir(records: list[MCQ], out: str | Path, source: str) -> list[Path]:
    """Write the task directory for ``records`` (from ``source``) into ``out``; returns the two YAML paths (ours,
    then lm-eval's medqa prompt). ``ValueError`` when there is no record."""
    if not records:
        raise ValueError(f"{source}: no record to export")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task = task_name(source)
    data = out / f"{task}.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(task_row(r), ensure_ascii=False) + "\n")
    (out / f"{LOADER}.py").write_text(LOADER_CODE, encoding="utf-8")
    ours = out / f"{task}.yaml"
    ours.write_text(_yaml(task, data.name, "prompt", f"{source}: medrlvr's direct prompt (medrlvr eval --mode "
                                                     "loglik), scored as ' A', ' B', ..."), encoding="utf-8")
    theirs = out / f"{task}_lmeval_prompt.yaml"
    theirs.write_text(_yaml(f"{task}_lmeval_prompt", data.name, "lmeval_prompt",
                            f"{source}: lm-eval's medqa_4options prompt over the same questions"), encoding="utf-8")
    return [ours, theirs]
