"""lm-evaluation-harness agrees with ``medrlvr eval --mode loglik``: the task directory that ``medrlvr data export
SOURCE --format lm-eval`` writes, run by lm-eval's own ``simple_evaluate`` (``HFLM`` on a local model directory),
picks the same option as ``medrlvr eval --mode loglik --scoring-dtype fp32`` for each of the first 50 MedQA
4-option test questions, with the tiny random model and with SmolLM2-135M-Instruct, and the per-option
log-likelihoods agree.

Tolerance: both compute log p(" A" | prompt) in fp32 on the CPU, but with other batch shapes and padding, so the
values may differ by float rounding (measured at most a few 1e-5). A choice may then differ only where our two
best options are closer than ``TIE`` (1e-3); every other question must pick the same letter, and there must be
no more such near-ties than 2 of the 50 (none were measured)."""

from __future__ import annotations

import json

import pytest

from medrlvr.cli import main
from medrlvr.integrations.lmeval import lm_eval_medqa_prompt, task_name

SOURCE, N = "medqa-4opt:test", 50
LL_TOL = 1e-3   # per-option log-likelihood
TIE = 1e-3      # a margin below which a choice may flip by rounding


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lmeval_task")
    assert main(["data", "export", SOURCE, "--format", "lm-eval", "--out", str(out), "--limit", str(N)]) == 0
    return out


def _ours(model_dir, tmp):
    """Per-question (pred, {letter: logprob}) of medrlvr eval --mode loglik (fp32 scoring, as lm-eval's)."""
    out = tmp / "ours"
    assert main(["eval", "--model", str(model_dir), "--benchmarks", SOURCE, "--mode", "loglik", "--limit", str(N),
                 "--scoring-dtype", "fp32", "--bootstrap", "0", "--output", str(out), "--quiet", "--threads", "1"]) == 0
    rows = [json.loads(x) for x in (out / "medqa-4opt_test.completions.jsonl").read_text().splitlines()]
    return {r["id"]: (r["samples"][0]["pred"], r["samples"][0]["logprobs"]) for r in rows}


def _theirs(model_dir, task_dir, task):
    """Per-question (pred, [loglik per choice]) of lm-eval's simple_evaluate on the exported task."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(model_dir), dtype="float32", batch_size=8, device="cpu")
    res = simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=str(task_dir)),
                          log_samples=True)
    out = {}
    for s in res["samples"][task]:
        lls = [float(x[0]) for x in s["filtered_resps"]]
        letters = s["doc"]["choices"]
        out[s["doc"]["id"]] = (letters[max(range(len(lls)), key=lambda i: (lls[i], -i))], dict(zip(letters, lls)))
    return out, res["results"][task]


def _agree(ours, theirs):
    assert sorted(ours) == sorted(theirs) and len(ours) == N
    diffs, ties = [], 0
    for qid, (pred, lp) in ours.items():
        tpred, tlp = theirs[qid]
        diffs += [abs(lp[k] - tlp[k]) for k in lp]
        top = sorted(lp.values(), reverse=True)
        if top[0] - top[1] < TIE:
            ties += 1
            continue
        assert pred == tpred, (qid, lp, tlp)
    assert max(diffs) < LL_TOL and ties <= 2, (max(diffs), ties)
    return max(diffs)


def _save_tiny(tmp):
    from medrlvr.models import load_policy

    model, tok = load_policy("tiny", seed=0)
    d = tmp / "tiny"
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d


def test_prompt_is_lm_evals_own_medqa_prompt():
    """The exported ``*_lmeval_prompt`` task's text is what lm-eval's medqa_4options task builds (its own
    preprocess_medqa.doc_to_text over the same question in its Hub layout)."""
    from lm_eval.tasks.medqa.preprocess_medqa import doc_to_text

    from medrlvr.data import load_any

    for r in load_any(SOURCE).records[:N]:
        doc = {"sent1": r.question, **{f"ending{i}": r.options[k] for i, k in enumerate("ABCD")}}
        assert lm_eval_medqa_prompt(r) == doc_to_text(doc)


def test_tiny_model_agrees(task_dir, tmp_path):
    d = _save_tiny(tmp_path)
    theirs, _ = _theirs(d, task_dir, task_name(SOURCE))
    _agree(_ours(d, tmp_path), theirs)


def test_smollm2_agrees(task_dir, tmp_path):
    from medrlvr.models import ensure_embedded

    d = ensure_embedded()
    theirs, summary = _theirs(d, task_dir, task_name(SOURCE))
    ours = _ours(d, tmp_path)
    _agree(ours, theirs)
    results = json.loads((tmp_path / "ours" / "results.json").read_text())
    assert summary["acc,none"] == pytest.approx(results[SOURCE]["accuracy"])
