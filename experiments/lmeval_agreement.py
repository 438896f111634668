"""lm-evaluation-harness against ``medrlvr eval --mode loglik`` on the same questions, and our MedQA prompt against
lm-eval's own ``medqa_4options`` prompt.

Run in the lm-eval venv (``make test-lmeval`` builds it)::

    .venv-lmeval/bin/python experiments/lmeval_agreement.py --model smollm2-135m --n 100 --out /tmp/lmeval-agree

It exports the first N questions of SOURCE (``medrlvr data export SOURCE --format lm-eval``), runs lm-eval's
``simple_evaluate`` (HFLM, fp32, CPU) on both exported tasks (our ``direct`` prompt; lm-eval's medqa_4options
prompt), runs ``medrlvr eval --mode loglik --scoring-dtype fp32`` and prints one Markdown table: accuracy with its
95% bootstrap interval per prompt and scorer, the questions where the choices agree, the largest per-option
log-likelihood difference, and the most frequent predicted letter; ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"


def lm_eval_run(model_dir: Path, task_dir: Path, tasks: list[str], batch_size: int) -> dict:
    """Per task: ``{id: (pred letter, {letter: loglik}, gold)}`` from lm-eval's simple_evaluate."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(model_dir), dtype="float32", batch_size=batch_size, device="cpu")
    res = simple_evaluate(model=lm, tasks=tasks, task_manager=TaskManager(include_path=str(task_dir)),
                          log_samples=True)
    out = {}
    for t in tasks:
        rows = {}
        for s in res["samples"][t]:
            lls = [float(x[0]) for x in s["filtered_resps"]]
            letters = s["doc"]["choices"]
            best = max(range(len(lls)), key=lambda i: (lls[i], -i))
            rows[s["doc"]["id"]] = (letters[best], dict(zip(letters, lls)), s["doc"]["gold"])
        out[t] = rows
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="smollm2-135m or a local model directory")
    ap.add_argument("--source", default="medqa-4opt:test")
    ap.add_argument("--n", type=int, default=100, help="the first N questions")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", required=True, help="working directory (task dir, medrlvr eval output)")
    ap.add_argument("--json", default=None, help="write every figure to this JSON file")
    a = ap.parse_args(argv)
    if a.n < 1 or a.batch_size < 1:
        print("lmeval_agreement: --n and --batch-size must be >= 1", file=sys.stderr)
        return 2
    from medrlvr.cli import main as medrlvr
    from medrlvr.eval.stats import bootstrap_ci
    from medrlvr.integrations.lmeval import task_name
    from medrlvr.models import ensure_embedded

    out = Path(a.out)
    model_dir = ensure_embedded() if a.model == "smollm2-135m" else Path(a.model)
    task_dir = out / "task"
    assert medrlvr(["data", "export", a.source, "--format", "lm-eval", "--out", str(task_dir), "--limit", str(a.n)]) == 0
    ours_task, theirs_task = task_name(a.source), task_name(a.source) + "_lmeval_prompt"
    t0 = time.perf_counter()
    lm = lm_eval_run(model_dir, task_dir, [ours_task, theirs_task], a.batch_size)
    t_lm = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev = out / "medrlvr_eval"
    assert medrlvr(["eval", "--model", str(model_dir), "--benchmarks", a.source, "--mode", "loglik", "--limit",
                    str(a.n), "--scoring-dtype", "fp32", "--bootstrap", "0", "--output", str(ev), "--quiet",
                    "--overwrite"]) == 0
    t_ours = time.perf_counter() - t0
    comp = next(ev.glob("*.completions.jsonl"))
    ours = {}
    for line in comp.read_text().splitlines():
        r = json.loads(line)
        ours[r["id"]] = (r["samples"][0]["pred"], r["samples"][0]["logprobs"], r["gold"])

    def figures(rows: dict) -> dict:
        hits = [float(p == g) for p, _, g in rows.values()]
        preds = Counter(p for p, _, _ in rows.values())
        top, k = preds.most_common(1)[0]
        return {"n": len(hits), "accuracy": sum(hits) / len(hits), "ci95": bootstrap_ci(hits),
                "top_letter": top, "top_share": k / len(hits), "preds": dict(sorted(preds.items()))}

    def agree(x: dict, y: dict) -> dict:
        same = sum(x[q][0] == y[q][0] for q in x)
        d = max(abs(x[q][1][k] - y[q][1][k]) for q in x for k in x[q][1])
        return {"same_choice": same, "of": len(x), "max_abs_loglik_diff": d}

    res = {"model": str(a.model), "source": a.source, "n": a.n,
           "medrlvr_direct": figures(ours), "lm_eval_direct": figures(lm[ours_task]),
           "lm_eval_medqa_prompt": figures(lm[theirs_task]),
           "medrlvr_vs_lm_eval_direct": agree(ours, lm[ours_task]),
           "direct_vs_medqa_prompt_choices": sum(lm[ours_task][q][0] == lm[theirs_task][q][0] for q in ours),
           "seconds": {"lm_eval_both_tasks": round(t_lm, 1), "medrlvr_eval": round(t_ours, 1)}}

    def row(name, f):
        return (f"| {name} | {100 * f['accuracy']:.1f} [{100 * f['ci95'][0]:.1f}, {100 * f['ci95'][1]:.1f}] | "
                f"{f['top_letter']} {100 * f['top_share']:.0f}% | {' '.join(f'{k}:{v}' for k, v in f['preds'].items())} |")

    ag = res["medrlvr_vs_lm_eval_direct"]
    print(f"{a.model} on the first {a.n} questions of {a.source}, fp32, CPU\n")
    print("| scorer, prompt | accuracy % [95% CI] | top letter | predicted letters |\n|---|---|---|---|")
    print(row("medrlvr eval --mode loglik, direct prompt", res["medrlvr_direct"]))
    print(row("lm-eval, direct prompt (exported task)", res["lm_eval_direct"]))
    print(row("lm-eval, medqa_4options prompt", res["lm_eval_medqa_prompt"]))
    print(f"\nsame choice, medrlvr vs lm-eval (direct prompt): {ag['same_choice']}/{ag['of']}; largest per-option "
          f"log-likelihood difference {ag['max_abs_loglik_diff']:.2e}")
    print(f"same choice, direct vs medqa_4options prompt (lm-eval): {res['direct_vs_medqa_prompt_choices']}/{a.n}")
    print(f"seconds: {res['seconds']}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
