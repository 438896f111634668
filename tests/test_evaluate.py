"""Evaluation: scoring on fixtures with known answers (fake engines), statistics against references,
determinism, resume, loglik batching, output files and the CLI."""

import itertools
import json
import random
import re
import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch

from medrlvr.algos import unbiased_pass_at_k
from medrlvr.data import load_benchmark, make_mcq, shuffle_options
from medrlvr.eval.benchmark import encode, evaluate
from medrlvr.eval.results import results_markdown
from medrlvr.eval.stats import bootstrap_ci, majority_at_k, pass_at_k, random_baseline
from medrlvr.prompts import render
from medrlvr.rollout import Completion, make_engine


pytestmark = pytest.mark.usefixtures("one_thread")


TEXTS = ["Aspirin", "Heparin", "Warfarin", "Clopidogrel", "Alteplase"]


def _recs(n=12, n_opt=4):
    out = []
    for i in range(n):
        opts = TEXTS[:n_opt] if i % 3 else TEXTS[1:n_opt + 1]
        out.append(make_mcq(f"q{i}", f"Question {i}: which drug?", opts, "ABCD"[i % 4], meta={
            "subject": "pharm" if i % 2 else "cardio"}))
    return out


def _bench_only(res):
    return {k: v for k, v in res.items() if not k.startswith("_")}


class FakeEngine:
    """Answers with ``answer(index, options, sample)`` -> completion text; counts prompts."""

    def __init__(self, answer):
        self.answer, self.prompts = answer, []

    def generate(self, prompts, n, params):
        out = []
        for p in prompts:
            self.prompts.append(p)
            i = int(re.search(r"Question (\d+)", p).group(1))
            opts = dict(re.findall(r"^([A-E])\. (.+?)(?: Assistant:.*)?$", p, flags=re.M))
            out.append([Completion([1], [5] * (j + 1), self.answer(i, opts, j), "stop") for j in range(n)])
        return out


def _letter_of(opts, text):
    return next(k for k, v in opts.items() if v == text)


def test_cot_scores_completions_as_the_trainer_does(tiny):
    """A completion that re-opens <think> after the pre-filled one (the step-by-step exploit) is scored by
    ``medrlvr eval`` exactly as the trainer's held-out pass scores it (join_prefill, then the scheme)."""
    from medrlvr.reward import join_prefill, score

    model, tok = tiny
    recs = _recs(4)
    reopened = (" Step 1: the drug that blocks COX irreversibly is aspirin. <think>Aspirin acetylates COX-1.</think>"
                "<answer>{}</answer>")
    eng = FakeEngine(lambda i, opts, j: reopened.format(recs[i].gold))
    res = evaluate(model, tok, {"s": recs}, mode="cot", engine=eng, bootstrap=0, progress=False)
    want = [score(join_prefill(reopened.format(r.gold), "<think>"), r.gold, r.n_options, options=r.options)
            for r in recs]
    assert all(w.format_ok and "reasoning_before_think" in w.flags for w in want)
    naive = score("<think>" + reopened.format(recs[0].gold), recs[0].gold, recs[0].n_options, options=recs[0].options)
    assert not naive.format_ok   # plain concatenation would read two think blocks: a bad format
    assert res["s"]["accuracy"] == 1.0 and res["s"]["format_valid"] == 1.0


# ------------------------------------------------------------------------------------------ statistics
def test_bootstrap_ci_matches_numpy_reference():
    x = np.random.default_rng(5).random(57) > 0.4
    rng = np.random.default_rng(3)
    means = x[rng.integers(0, len(x), size=(1000, len(x)))].mean(axis=1)
    ref = np.percentile(means, [2.5, 97.5])
    assert bootstrap_ci(x.astype(float), 1000, seed=3) == pytest.approx(list(ref), abs=0)
    lo, hi = bootstrap_ci(x.astype(float), 1000, seed=3)
    assert lo <= x.mean() <= hi
    assert bootstrap_ci([], 1000) == [None, None] and bootstrap_ci([1.0], 0) == [None, None]
    assert bootstrap_ci([1.0, 1.0, 1.0]) == [1.0, 1.0]


def test_random_baseline():
    rb = random_baseline([4] * 100 + [10] * 50, 1000, seed=0)
    assert rb["accuracy"] == pytest.approx((100 / 4 + 50 / 10) / 150)
    lo, hi = rb["ci95"]
    assert lo < rb["accuracy"] < hi and hi - lo < 0.2
    assert random_baseline([4] * 150, 1000, seed=0) == random_baseline([4] * 150, 1000, seed=0)


@pytest.mark.parametrize("n,c,k", [(5, 2, 1), (5, 2, 3), (6, 0, 2), (6, 6, 4), (7, 3, 5), (4, 1, 4)])
def test_pass_at_k_bruteforce(n, c, k):
    labels = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(labels[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k([c], n, k) == pytest.approx(brute)
    assert unbiased_pass_at_k(n, c, k) == pytest.approx(brute)


def _maj_brute(answers, gold, k):
    tot = Fraction(0)
    subsets = list(itertools.combinations(range(len(answers)), k))
    for s in subsets:
        votes = [answers[i] for i in s if answers[i] is not None]
        if not votes:
            continue
        cnt = {a: votes.count(a) for a in set(votes)}
        top = max(cnt.values())
        winners = [a for a, v in cnt.items() if v == top]
        if gold in winners:
            tot += Fraction(1, len(winners))
    return float(tot / len(subsets))


def test_majority_at_k_bruteforce():
    rnd = random.Random(0)
    for _ in range(60):
        n = rnd.randint(1, 8)
        answers = [rnd.choice(["A", "B", "C", None]) for _ in range(n)]
        for k in range(1, n + 1):
            assert majority_at_k(answers, "A", k) == pytest.approx(_maj_brute(answers, "A", k)), (answers, k)
    assert majority_at_k(["A", "B", "A"], "A", 3) == 1.0
    assert majority_at_k(["A", "B"], "A", 2) == 0.5       # a tie counts half
    assert majority_at_k([None, None], "A", 2) == 0.0
    with pytest.raises(ValueError):
        majority_at_k(["A"], "A", 2)


# ------------------------------------------------------------------------------------------ scoring
def test_cot_scoring_with_fake_engine(tokenizer):
    recs = _recs(12)

    def answer(i, opts, j):
        gold = recs[i].gold
        if i % 4 == 0:
            return f" Reasoning about it. </think> <answer>{gold}</answer>"       # right
        if i % 4 == 1:
            wrong = "ABCD"[("ABCD".index(gold) + 1) % 4]
            return f" Thinking hard here. </think><answer>{wrong}</answer>"        # wrong
        if i % 4 == 2:
            return f" no tags at all, answer {gold}"                              # bad format
        return f" ok fine now </think><answer>{opts[gold]}</answer>"              # right, as option text

    eng = FakeEngine(answer)
    res = evaluate(None, tokenizer, {"fix": recs}, mode="cot", engine=eng, progress=False, model_name="fake")
    r = res["fix"]
    assert r["n"] == 12 and r["accuracy"] == pytest.approx(6 / 12)
    assert r["format_valid"] == pytest.approx(9 / 12)
    assert r["answer_rate"] == pytest.approx(9 / 12)
    assert r["accuracy_lenient"] == pytest.approx(6 / 12)
    assert r["ci95"][0] < 0.5 < r["ci95"][1]
    assert r["random_baseline"]["accuracy"] == pytest.approx(0.25)
    assert set(r["subsets"]) == {"cardio", "pharm"} and r["subsets"]["cardio"]["n"] == 6
    assert r["letter_distribution"]["gold"] == {"A": 3, "B": 3, "C": 3, "D": 3}
    assert sum(r["letter_distribution"]["pred"].values()) == 12 and r["letter_distribution"]["pred"]["none"] == 3
    assert res["_meta"]["model"] == "fake" and res["_meta"]["mode"] == "cot"
    assert len(eng.prompts) == 12 and all(p.endswith("Assistant: <think>") for p in eng.prompts)
    assert "pass_at_k" not in r


def test_pass_and_maj_from_samples(tokenizer):
    recs = _recs(8)
    pattern = {}  # per question: which of 4 samples are right

    def answer(i, opts, j):
        rnd = random.Random(i * 10 + j)
        letter = recs[i].gold if rnd.random() < 0.4 else rnd.choice("ABCD")
        pattern.setdefault(i, {})[j] = letter
        return f" thinking some more </think><answer>{letter}</answer>"

    res = evaluate(None, tokenizer, {"fix": recs}, mode="cot", n_samples=4, engine=FakeEngine(answer),
                   progress=False)
    r = res["fix"]
    assert res["_meta"]["temperature"] == 1.0
    ncor = [sum(pattern[i][j] == recs[i].gold for j in range(4)) for i in range(8)]
    assert r["accuracy"] == pytest.approx(np.mean(ncor) / 4)
    for k in (1, 2, 4):
        assert r["pass_at_k"][str(k)] == pytest.approx(np.mean([unbiased_pass_at_k(4, c, k) for c in ncor]))
        want = np.mean([_maj_brute([pattern[i][j] for j in range(4)], recs[i].gold, k) for i in range(8)])
        assert r["maj_at_k"][str(k)] == pytest.approx(want)
    assert r["pass_at_k"]["1"] == pytest.approx(r["accuracy"])


def test_direct_mode_and_shuffle_consistency(tokenizer):
    recs = _recs(12)
    # a model that knows the drug: always picks the gold option's TEXT, whatever its letter
    by_text = FakeEngine(lambda i, opts, j: " " + _letter_of(opts, recs[i].gold_text) + "\nmore")
    res = evaluate(None, tokenizer, {"fix": recs}, mode="direct", n_shuffles=3, engine=by_text, progress=False)
    r = res["fix"]
    assert r["accuracy"] == 1.0 and r["format_valid"] is None and r["answer_rate"] == 1.0
    assert r["consistency"]["rate"] == 1.0 and r["consistency"]["n_shuffles"] == 3
    assert r["accuracy_all_orders"] == 1.0
    assert len(by_text.prompts) == 12 * 4 and all(p.endswith("Answer:") for p in by_text.prompts)
    # a position-biased model: always "A"; consistent only where every shuffle keeps A's text first
    always_a = FakeEngine(lambda i, opts, j: " A")
    r = evaluate(None, tokenizer, {"fix": recs}, mode="direct", n_shuffles=3, engine=always_a, progress=False)["fix"]
    keep = [all(shuffle_options(x, 0 * 1000 + v).options["A"] == x.options["A"] for v in (1, 2, 3)) for x in recs]
    assert r["consistency"]["rate"] == pytest.approx(np.mean(keep))
    assert r["letter_distribution"]["pred"] == {"A": 12, "B": 0, "C": 0, "D": 0}
    assert r["accuracy"] == pytest.approx(np.mean([x.gold == "A" for x in recs]))


# ------------------------------------------------------------------------------------------ real models
@pytest.fixture(scope="module")
def tiny():
    from medrlvr.models import load_policy

    return load_policy("tiny", seed=1)


def test_loglik_batched_equals_one_by_one(tiny):
    model, tok = tiny
    recs = load_benchmark("starter:test").records[:10]
    res = evaluate(model, tok, {"s": recs}, mode="loglik", output_dir=None, progress=False, batch_size=4,
                   scoring_dtype="fp32")
    model.eval()
    want = []
    with torch.no_grad():
        for r in recs:
            ids = torch.tensor([encode(tok, render(r, "direct"))])
            lp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
            scores = {L: float(lp[tok.encode(" " + L, add_special_tokens=False)[0]]) for L in r.letters}
            want.append(max(scores, key=scores.get))
    assert res["s"]["accuracy"] == pytest.approx(np.mean([w == r.gold for w, r in zip(want, recs)]))
    pred = {L: want.count(L) for L in res["s"]["letter_distribution"]["pred"]}
    assert res["s"]["letter_distribution"]["pred"] == pred


def test_same_seed_same_results(tiny, tmp_path):
    model, tok = tiny
    recs = load_benchmark("starter:test").records[:4]
    kw = dict(mode="cot", n_samples=2, max_new_tokens=5, batch_size=2, progress=False, seed=7)
    a = evaluate(model, tok, {"s": recs}, output_dir=tmp_path / "a", **kw)
    b = evaluate(model, tok, {"s": recs}, output_dir=tmp_path / "b", **kw)
    assert _bench_only(a) == _bench_only(b)
    la = (tmp_path / "a" / "s.completions.jsonl").read_text()
    assert la == (tmp_path / "b" / "s.completions.jsonl").read_text()
    l1 = evaluate(model, tok, {"s": recs}, mode="loglik", progress=False)
    l2 = evaluate(model, tok, {"s": recs}, mode="loglik", progress=False)
    assert _bench_only(l1) == _bench_only(l2)


def test_resume_computes_only_the_rest(tiny, tmp_path):
    model, tok = tiny
    recs = load_benchmark("starter:test").records[:6]
    kw = dict(mode="direct", n_samples=2, temperature=1.0, max_new_tokens=3, batch_size=2, progress=False, seed=3)
    full = evaluate(model, tok, {"s": recs}, output_dir=tmp_path / "full", **kw)
    lines = (tmp_path / "full" / "s.completions.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == 6
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(tmp_path / "full" / "eval_config.json", part)
    # 3 whole lines (batch 1 and half of batch 2) and a torn 4th line, as if killed while writing
    (part / "s.completions.jsonl").write_text("".join(lines[:3]) + lines[3][:20])

    class Counting:
        def __init__(self):
            self.inner, self.n = make_engine("hf", model, tok), 0

        def generate(self, prompts, n, params):
            self.n += len(prompts)
            return self.inner.generate(prompts, n, params)

    eng = Counting()
    resumed = evaluate(model, tok, {"s": recs}, output_dir=part, engine=eng, **kw)
    assert eng.n == 4            # batch 2 is redone whole (same seed, same padding), batch 3 is new
    assert _bench_only(resumed) == _bench_only(full)
    rows = [json.loads(x) for x in (part / "s.completions.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(r.id for r in recs)
    assert json.loads((part / "results.json").read_text())["s"] == full["s"]
    # everything saved: nothing is generated again
    eng2 = Counting()
    again = evaluate(model, tok, {"s": recs}, output_dir=part, engine=eng2, **kw)
    assert eng2.n == 0 and _bench_only(again) == _bench_only(full)
    # other settings in the same directory are refused
    with pytest.raises(ValueError, match="other settings"):
        evaluate(model, tok, {"s": recs}, output_dir=part, **{**kw, "seed": 4})


def test_outputs_files_and_generic_loader(tiny, tmp_path):
    model, tok = tiny
    data = tmp_path / "my_qs.jsonl"
    with open(data, "w") as f:
        for i in range(5):
            f.write(json.dumps({"q": f"Question {i}?", "A": "x", "B": "y", "C": "z", "ans": "B", "id": f"m{i}"}) + "\n")
    res = evaluate(model, tok, ["starter:test", str(data)], mode="loglik", limit=4, output_dir=tmp_path / "o",
                   columns="question=q,options=A|B|C,gold=ans,id=id", progress=False, model_name="tiny")
    assert set(res) == {"starter:test", "my_qs", "_meta"}
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    for b in ("starter:test", "my_qs"):
        for k in ("accuracy", "ci95", "n", "format_valid", "random_baseline"):
            assert k in saved[b]
        assert saved[b]["n"] == 4 and saved[b]["format_valid"] is None
    assert saved["my_qs"]["random_baseline"]["accuracy"] == pytest.approx(1 / 3)
    assert saved["_meta"]["model"] == "tiny" and saved["_meta"]["mode"] == "loglik"
    assert (tmp_path / "o" / "starter_test.completions.jsonl").exists()
    assert (tmp_path / "o" / "my_qs.completions.jsonl").exists()
    md = (tmp_path / "o" / "results.md").read_text()
    assert "| starter:test |" in md and "| my_qs |" in md and md == results_markdown(res)
    with pytest.raises(ValueError, match="mode"):
        evaluate(model, tok, {"s": []}, mode="nope")


def test_cli_eval(tmp_path, capsys):
    from medrlvr.cli import main

    out = tmp_path / "cli"
    rc = main(["eval", "--model", "tiny", "--benchmarks", "starter:test", "--mode", "loglik", "--limit", "3",
               "--output", str(out), "--json", "--quiet", "--bootstrap", "100"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["starter:test"]["n"] == 3 and printed["_meta"]["model"] == "tiny"
    assert (out / "results.json").exists() and (out / "results.md").exists()


@pytest.mark.slow
def test_smollm2_loglik_8_medqa(data_root, tmp_path):
    from medrlvr.models import load_policy

    model, tok = load_policy("smollm2-135m")
    res = evaluate(model, tok, ["medqa-4opt"], mode="loglik", limit=8, data_root=data_root, output_dir=tmp_path,
                   progress=False, model_name="smollm2-135m")
    r = res["medqa-4opt"]
    assert r["n"] == 8 and r["distribution"] == "id" and r["random_baseline"]["accuracy"] == 0.25
    assert set(r["subsets"]) <= {"step1", "step2&3"} and 0 < r["option_mass"] <= 1
    rows = [json.loads(x) for x in (tmp_path / "medqa-4opt.completions.jsonl").read_text().splitlines()]
    for row in rows:
        lps = row["samples"][0]["logprobs"]
        assert set(lps) == {"A", "B", "C", "D"} and all(v < 0 for v in lps.values())
        assert row["samples"][0]["pred"] == max(lps, key=lps.get)


def test_loglik_multi_token_letters_fallback(tiny, monkeypatch, tmp_path):
    """Tokenizers that split " A" into several tokens: each option's continuation is scored (sum of
    log-probs), checked against a plain forward pass."""
    import medrlvr.eval.benchmark as ev

    model, tok = tiny
    real = ev.encode

    def split_letters(t, text):
        if len(text) == 2 and text[0] == " " and text[1].isupper():
            return real(t, " ") + real(t, text[1])
        return real(t, text)

    monkeypatch.setattr(ev, "encode", split_letters)
    recs = load_benchmark("starter:test").records[:3]
    res = evaluate(model, tok, {"s": recs}, mode="loglik", progress=False, bootstrap=0, output_dir=tmp_path,
                   scoring_dtype="fp32")
    saved = {json.loads(x)["id"]: json.loads(x)["samples"][0]["logprobs"]
             for x in (tmp_path / "s.completions.jsonl").read_text().splitlines()}
    model.eval()
    hits = 0
    with torch.no_grad():
        for r in recs:
            p = real(tok, render(r, "direct"))
            scores = {}
            for L in r.letters:
                cont = split_letters(tok, " " + L)
                lp = torch.log_softmax(model(input_ids=torch.tensor([p + cont])).logits[0].float(), -1)
                scores[L] = sum(float(lp[len(p) - 1 + k, c]) for k, c in enumerate(cont))
            hits += max(scores, key=scores.get) == r.gold
            assert saved[r.id] == pytest.approx(scores, abs=1e-4)
    assert res["s"]["accuracy"] == pytest.approx(hits / 3)


def test_engine_choice(tiny, capsys):
    model, tok = tiny
    recs = load_benchmark("starter:test").records[:2]
    r = evaluate(model, tok, {"s": recs}, mode="direct", engine="no-such-engine", progress=False, bootstrap=0)
    assert r["_meta"]["engine"] == "hf" and "using 'hf'" in capsys.readouterr().err
    from medrlvr.rollout import ENGINES, make_engine

    try:
        make_engine("fast", model, tok)
    except Exception:  # the fast engine is optional
        pytest.skip("fast engine not available")
    assert "fast" in ENGINES
    f = evaluate(model, tok, {"s": recs}, mode="direct", engine="fast", progress=False, bootstrap=0)
    assert f["_meta"]["engine"] == "fast" and f["s"]["n"] == 2


def test_loglik_bf16_scoring_where_native_and_the_opt_out(tiny, monkeypatch, tmp_path):
    """scoring_dtype="auto" runs the loglik forward under bf16 autocast where bf16 is native (forced here
    with MEDRLVR_BF16=1) and fp32 where it is not; "fp32" opts out. bf16 log-probs stay close to fp32's."""
    model, tok = tiny
    recs = load_benchmark("starter:test").records[:6]
    out = {}
    for env, sd in (("1", "auto"), ("0", "auto"), ("1", "fp32")):
        monkeypatch.setenv("MEDRLVR_BF16", env)
        d = tmp_path / f"{env}{sd}"
        r = evaluate(model, tok, {"s": recs}, mode="loglik", progress=False, bootstrap=0, output_dir=d,
                     scoring_dtype=sd)
        lps = {json.loads(x)["id"]: json.loads(x)["samples"][0]["logprobs"]
               for x in (d / "s.completions.jsonl").read_text().splitlines()}
        out[(env, sd)] = (r["_meta"]["scoring_dtype"], lps)
    assert out[("1", "auto")][0] == "bf16"
    assert out[("0", "auto")][0] == "float32" and out[("1", "fp32")][0] == "float32"
    a, b = out[("1", "auto")][1], out[("1", "fp32")][1]
    assert b == out[("0", "auto")][1]
    diffs = [abs(a[q][L] - b[q][L]) for q in b for L in b[q]]
    assert max(diffs) < 0.1            # bf16 rounding of a random tiny model, not a different computation
    assert max(diffs) > 0              # and it did run in bf16
    with pytest.raises(ValueError, match="scoring_dtype"):
        evaluate(model, tok, {"s": recs}, mode="loglik", progress=False, scoring_dtype="fp16")


def test_the_table_shows_the_share_of_answers_that_hit_the_token_limit():
    entry = {"accuracy": 0.25, "ci95": [0.1, 0.4], "n": 8, "answer_rate": 0.5, "format_valid": 0.25,
             "truncated": 0.75, "distribution": "id", "random_baseline": {"accuracy": 0.25, "ci95": [0.0, 0.5]}}
    md = results_markdown({"medqa": entry, "_meta": {"model": "m", "mode": "cot"}})
    head = next(ln for ln in md.splitlines() if ln.startswith("| benchmark"))
    row = next(ln for ln in md.splitlines() if ln.startswith("| medqa"))
    assert "hit token limit" in head and row.rstrip(" |").endswith("75.0")
    assert "hit token limit" not in results_markdown({"x": {**entry, "truncated": None}, "_meta": {}})
