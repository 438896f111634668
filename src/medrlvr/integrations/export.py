"""Export a question set in the layouts of other RL frameworks, so that our prompts and reward can be
used where users already run verl, TRL or OpenRLHF.

``verl``: parquet rows ``{data_source, prompt: [{"role": "user", "content": ...}], ability: "medical_mcqa",
reward_model: {style: "rule", ground_truth: gold}, extra_info: {id, split, index, n_options, options,
prefill_think, meta}}`` (``options`` and ``meta`` as JSON text, so that rows with different metadata keys share
one parquet schema); score them with ``medrlvr.integrations.verl.compute_score`` (verl's ``custom_reward_function``).
``trl``: JSONL rows ``{prompt, gold, n_options, options, id, meta}`` for ``GRPOTrainer`` with
``medrlvr.integrations.trl.make_trl_reward_func()`` (extra columns reach reward functions as keyword arguments).
``openrlhf``: JSONL rows ``{input, label, id, n_options, meta}`` (``--input_key input --label_key label``).
``lm-eval``: a task directory for EleutherAI's lm-evaluation-harness (``OUT`` is the directory): the questions as
JSONL and two multiple-choice task YAMLs over them, our ``direct`` prompt and lm-eval's ``medqa_4options`` prompt
(:mod:`medrlvr.integrations.lmeval`); ``template`` and ``prefill_think`` do not apply.

``meta`` is the record's metadata: the columns a file's column map names with ``meta=``, MedQA's
``meta_info``, MedMCQA's subject, ... . The prompt is the R1-Zero text (``template``) with ``<think>``
pre-fill unless disabled.
"""

from __future__ import annotations

import json
from pathlib import Path

from medrlvr.data import MCQ
from medrlvr.integrations.verl.mapping import verl_row
from medrlvr.prompts import render, user_content

FORMATS = ("verl", "trl", "openrlhf", "lm-eval")


def export(records: list[MCQ], fmt: str, out: str | Path, template: str = "r1-zero", prefill_think: bool = True,
           data_source: str | None = None) -> Path:
    out = Path(out)
    if fmt == "lm-eval":
        from medrlvr.integrations.lmeval import write_task_dir

        write_task_dir(records, out, data_source or out.name)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "verl":
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [verl_row(r, render(r, template, prefill_think=prefill_think) if template != "chat" else user_content(r),
                         i, prefill_think=prefill_think, data_source=data_source) for i, r in enumerate(records)]
        pq.write_table(pa.Table.from_pylist(rows), out)
    elif fmt in ("trl", "openrlhf"):
        with open(out, "w", encoding="utf-8") as f:
            for r in records:
                p = render(r, template, prefill_think=prefill_think) if template != "chat" else user_content(r)
                if fmt == "trl":
                    row = {"prompt": p, "gold": r.gold, "n_options": r.n_options, "options": r.options, "id": r.id,
                           "meta": r.meta}
                else:
                    row = {"input": p, "label": r.gold, "id": r.id, "n_options": r.n_options, "meta": r.meta}
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    else:
        raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    return out
