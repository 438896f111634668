"""Benchmark evaluation: accuracy with bootstrap confidence intervals, for the paper's comparisons.

Three modes (``mode=``):

``cot``
    The R1-Zero (or chat) prompt, generation through a rollout engine, and the reward parser of
    :mod:`medrlvr.reward` on ``response_prefix + completion``. A sample is correct when it is well
    formed and its letter is the gold one (the paper's gated accuracy); ``accuracy_lenient`` ignores
    the format.
``direct``
    The direct prompt (question, options, ``Answer:``), a few generated tokens, and
    :func:`medrlvr.reward.extract_letter` on them. The direct-answer baseline, and how a SFT model
    is used.
``loglik``
    No generation: one forward pass per question over the direct prompt; the prediction is the
    option letter whose token (``" A"``, ``" B"``, ...) has the highest next-token log-probability.
    Questions are sorted by length and batched under a token budget; only the last prompt position
    goes through the LM head (computed in float32 whatever the model's dtype).

Per benchmark, :func:`evaluate` reports the accuracy with a 95% percentile bootstrap CI over
questions, ``n``, the format-valid rate (``cot``), the answer rate (a letter could be read),
pass@k / maj@k when ``n_samples > 1`` (unbiased estimators over the K samples), a per-subset
breakdown where the data has one, the predicted- vs gold-letter distribution (position bias),
the option-permutation consistency when ``n_shuffles > 0`` and a random-guess baseline.

Resumable output directory
--------------------------
``<bench>.completions.jsonl`` gets one line per (question, option order) as soon as its batch is
done; ``eval_config.json`` records the settings that change results, and a rerun with other settings
into the same directory is refused (``resume=False`` starts afresh). A rerun skips what is saved. Work
is cut into fixed batches over the whole (length-sorted) question list, with one seed per batch, so
a batch that was only partly saved is recomputed whole and the result equals an uninterrupted run's.
Metrics are always computed from the saved lines, in the order of the question list.
``results.json`` holds one object per benchmark and ``"_meta"``; ``results.md`` is a Markdown table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medrlvr.argtypes import nonneg_float, nonneg_int, positive_int
from medrlvr.data import BENCHMARKS, MCQ, MCQSet, shuffle_options
from medrlvr.eval.results import results_markdown, write_results
from medrlvr.eval.stats import (bootstrap_ci, doubling_ks, guessing_majority_at_k, guessing_pass_at_k, majority_at_k,
                                pass_at_k, random_baseline)
from medrlvr.records import LETTERS

MODES = ("cot", "direct", "loglik")
SUBSET_KEYS = ("meta_info", "subject_name", "subject", "src", "topic")  # MedQA, MedMCQA, MMLU, MMLU-Pro, starter
DEFAULT_MAX_NEW_TOKENS = {"cot": 512, "direct": 5, "loglik": 0}
DEFAULT_BATCH_SIZE = {"cot": 16, "direct": 32, "loglik": 32}
DEFAULT_MAX_BATCH_TOKENS = 8192
CONFIG_FILE = "eval_config.json"
# settings that change the saved completions; a resumed run must use the same
_RESUME_KEYS = ("model", "mode", "template", "prefill_think", "n_samples", "temperature", "max_new_tokens", "seed",
                "scheme", "question_seeds")


# ------------------------------------------------------------------------------------------ statistics
def subset_of(rec: MCQ) -> str | None:
    """The record's subset label: MedQA ``meta_info`` (step1 / step2&3), MedMCQA ``subject_name``,
    MMLU ``subject``, MMLU-Pro ``src``, starter ``topic``; ``None`` when it has none."""
    for k in SUBSET_KEYS:
        v = rec.meta.get(k)
        if v not in (None, ""):
            return str(v)
    return None


# ------------------------------------------------------------------------------------------ helpers
def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (as the rollout engines and the trainer do)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "bench"


def _bench_key(spec: str) -> str:
    base = spec.split(":")[0]
    if base in BENCHMARKS or spec.startswith("hub:"):
        return spec
    if not Path(spec).exists() and ":" in spec:         # FILE.json:KEY, a set of a nested JSON file
        file, _, sel = spec.rpartition(":")
        return f"{Path(file).stem}-{_slug(sel.replace('*', 'all'))}"
    return Path(spec).stem


def distribution_of(name: str) -> str | None:
    """``"id"`` / ``"ood"`` for a registered benchmark name (``NAME[:SPLIT]``), else ``None``."""
    b = BENCHMARKS.get(name.split(":")[0])
    return b.distribution if b is not None else None


def _seed_of(*parts: Any) -> int:
    return zlib.crc32(":".join(map(str, parts)).encode()) & 0x7FFFFFFF


@dataclass
class _Item:
    rec: MCQ          # as shown (options possibly shuffled)
    base: MCQ         # original record
    variant: int      # 0 = original order, 1..K = seeded shuffles
    prompt: str
    ids: list[int]

    @property
    def key(self) -> tuple[str, int]:
        return (self.base.id, self.variant)


def length_batches(items: list[_Item], max_items: int, max_tokens: int | None) -> list[list[_Item]]:
    """Fixed batches over the whole list: at most ``max_items`` and (when given) a padded size of at
    most ``max_tokens`` tokens (a single longer item gets its own batch)."""
    out: list[list[_Item]] = []
    cur: list[_Item] = []
    longest = 0
    for it in items:
        L = max(longest, len(it.ids) + 1)
        if cur and (len(cur) >= max_items or (max_tokens and L * (len(cur) + 1) > max_tokens)):
            out.append(cur)
            cur, L = [], len(it.ids) + 1
        cur.append(it)
        longest = L
    if cur:
        out.append(cur)
    return out


def read_rows(path: Path) -> dict[tuple[str, int], dict]:
    """Saved rows keyed by (id, variant). A torn last line (no newline: an interrupted write, possibly cut
    inside a UTF-8 character) is dropped from the file, with a note, and recomputed. Any other bad line
    (not UTF-8, not JSON, no ``id``/``variant``/``samples``) is refused: ValueError naming file and line."""
    rows: dict[tuple[str, int], dict] = {}
    if not path.exists():
        return rows
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    for i, b in enumerate(lines, 1):
        if not b.strip():
            continue
        try:
            r = json.loads(b.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} line {i}: not UTF-8 ({e.reason} at byte {e.start}); "
                             "delete the file or use --overwrite") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {i}: not JSON ({e.msg}); delete the file or use --overwrite") from None
        if not isinstance(r, dict):
            raise ValueError(f"{path} line {i}: not a JSON object")
        for key in ("id", "variant", "samples"):
            if key not in r:
                raise ValueError(f"{path} line {i}: no '{key}' field")
        if not isinstance(r["samples"], list) or not all(isinstance(x, dict) for x in r["samples"]):
            raise ValueError(f"{path} line {i}: 'samples' is not a list of objects")
        if any("correct" not in x for x in r["samples"]):
            raise ValueError(f"{path} line {i}: a sample has no 'correct' field")
        try:
            rows[(str(r["id"]), int(r["variant"]))] = r
        except (TypeError, ValueError):
            raise ValueError(f"{path} line {i}: 'variant' is not an integer: {r['variant']!r}") from None
    if torn:
        from medrlvr.fileio import atomic_write_text

        print(f"[medrlvr] {path}: dropped a torn last line ({len(torn)} bytes, an interrupted write); "
              "its questions are recomputed", file=sys.stderr)
        atomic_write_text(path, raw[: len(raw) - len(torn)].decode("utf-8", errors="strict"), label="eval.rows")
    return rows


# ------------------------------------------------------------------------------------------ scoring
def _loglik_batch(model, tokenizer, items: list[_Item]) -> list[dict[str, float]]:
    """Next-token log-probs of the option letters after each direct prompt (one forward per batch)."""
    import torch
    import torch.nn.functional as F

    from medrlvr.train.forward import split_lm, pack, response_hidden, response_logprobs

    n_max = max(it.rec.n_options for it in items)
    letter_ids = [encode(tokenizer, " " + L) for L in LETTERS[:n_max]]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if all(len(t) == 1 for t in letter_ids):
        b = pack([it.ids for it in items], [[letter_ids[0][0]] for _ in items], pad).to(device)
        h = response_hidden(model, b)[:, 0]                       # (B, H) at the last prompt position
        _, head = split_lm(model)
        with torch.autocast(h.device.type, enabled=False):   # the head in fp32, also under bf16 autocast
            if isinstance(head, torch.nn.Linear):
                w = head.weight.float()
                logits = F.linear(h.float(), w, head.bias.float() if head.bias is not None else None)
            else:
                logits = head(h.float() if head.weight.dtype == torch.float32 else h).float()
        lp = torch.log_softmax(logits, dim=-1)[:, [t[0] for t in letter_ids]].cpu()
        return [{L: float(lp[i, j]) for j, L in enumerate(it.rec.letters)} for i, it in enumerate(items)]
    # tokenizers that split " A" in several tokens: score each option's continuation (sum of log-probs)
    prompts, resps, owner = [], [], []
    for i, it in enumerate(items):
        for j, L in enumerate(it.rec.letters):
            prompts.append(it.ids)
            resps.append(letter_ids[j])
            owner.append((i, L))
    b = pack(prompts, resps, pad).to(device)
    lp, _ = response_logprobs(model, b)
    sums = lp.float().sum(dim=1).cpu()
    out: list[dict[str, float]] = [{} for _ in items]
    for (i, L), v in zip(owner, sums.tolist()):
        out[i][L] = float(v)
    return out


def _scoring_autocast(model, scoring_dtype: str):
    """bf16 autocast for the loglik forward of an fp32 model (see :func:`evaluate`), else a no-op."""
    import contextlib

    import torch

    from medrlvr.hardware import fast_bf16

    try:
        p = next(model.parameters())
    except (StopIteration, AttributeError, TypeError):
        return contextlib.nullcontext()
    on = scoring_dtype == "bf16" or (scoring_dtype == "auto" and fast_bf16(p.device))
    if not on or p.dtype != torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(p.device.type, dtype=torch.bfloat16)


def _row_from_loglik(it: _Item, lps: dict[str, float]) -> dict:
    pred = max(lps, key=lambda L: (lps[L], -LETTERS.index(L)))
    return _row(it, [{"pred": pred, "pred_text": it.rec.options[pred], "correct": pred == it.rec.gold,
                      "logprobs": {k: round(v, 6) for k, v in lps.items()}}])


def _row(it: _Item, samples: list[dict]) -> dict:
    return {"id": it.base.id, "variant": it.variant, "gold": it.rec.gold, "gold_text": it.rec.gold_text,
            "n_options": it.rec.n_options, "subset": subset_of(it.base), "prompt_tokens": len(it.ids),
            "samples": samples}


def _score_generation(it: _Item, comps, mode: str, prefix: str, scheme: str) -> dict:
    from medrlvr.reward import extract_letter, score

    samples = []
    for c in comps:
        if mode == "cot":   # the response as the trainer scores it (join_prefill: a re-opened <think> counts)
            r = score(c.text, it.rec.gold, it.rec.n_options, scheme=scheme, options=it.rec.options,
                      prefill=prefix)
            pred, fmt, correct, flags = r.pred, r.format_ok, r.correct, list(r.flags)
        else:
            # the answer is the first non-empty line (engines cut at the "\n" stop; a fake one may not)
            first = next((ln for ln in c.text.splitlines() if ln.strip()), "")
            pred = extract_letter(first, it.rec.n_options, it.rec.options)
            fmt, correct, flags = None, pred == it.rec.gold, []
        samples.append({"text": c.text, "pred": pred, "pred_text": it.rec.options.get(pred) if pred else None,
                        "format_ok": fmt, "correct": bool(correct), "flags": flags,
                        "finish_reason": c.finish_reason, "tokens": len(c.token_ids)})
    return _row(it, samples)


# ------------------------------------------------------------------------------------------ metrics
def _answer(sample: dict, mode: str) -> str | None:
    """The letter a sample votes for: its prediction, when (cot) the format is valid."""
    if mode == "cot" and not sample.get("format_ok"):
        return None
    return sample.get("pred")


def _accuracy_block(scores: list[float], n_resamples: int, seed: int) -> dict:
    return {"accuracy": float(np.mean(scores)) if scores else None, "ci95": bootstrap_ci(scores, n_resamples, seed),
            "n": len(scores)}


def k_curves(n_correct: Sequence[int], answers: Sequence[Sequence[str | None]], gold: Sequence[str],
             n_options: Sequence[int], K: int) -> dict[str, list]:
    """pass@k and maj@k for every k = 1..K (the unbiased estimators over the K samples of each question) beside
    what a uniform random guesser reaches (:func:`~medrlvr.eval.stats.guessing_pass_at_k`,
    :func:`~medrlvr.eval.stats.guessing_majority_at_k`): ``{"k", "pass", "pass_guess", "maj", "maj_guess"}``,
    lists of equal length, as ``results.json`` carries them under ``curves``."""
    ks = list(range(1, K + 1))
    return {"k": ks, "pass": [pass_at_k(n_correct, K, k) for k in ks],
            "pass_guess": [guessing_pass_at_k(n_options, k) for k in ks],
            "maj": [float(np.mean([majority_at_k(a, g, k) for a, g in zip(answers, gold)])) for k in ks],
            "maj_guess": [guessing_majority_at_k(n_options, k) for k in ks]}


def benchmark_metrics(records: Sequence[MCQ], rows: Mapping[tuple[str, int], dict], mode: str, n_shuffles: int = 0,
                      n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """All metrics of one benchmark from its saved rows (keyed by (id, variant))."""
    main = [rows[(r.id, 0)] for r in records]
    scores = [float(np.mean([s["correct"] for s in row["samples"]])) for row in main]
    out = _accuracy_block(scores, n_resamples, seed)
    all_samples = [s for row in main for s in row["samples"]]
    K = len(main[0]["samples"]) if main else 0
    out["format_valid"] = (float(np.mean([bool(s["format_ok"]) for s in all_samples])) if mode == "cot"
                           and all_samples else None)
    out["answer_rate"] = float(np.mean([s.get("pred") is not None for s in all_samples])) if all_samples else None
    if mode == "cot" and all_samples:
        out["accuracy_lenient"] = float(np.mean([np.mean([s.get("pred") == row["gold"] for s in row["samples"]])
                                                 for row in main]))
        out["mean_response_tokens"] = float(np.mean([s.get("tokens", 0) for s in all_samples]))
        out["truncated"] = float(np.mean([s.get("finish_reason") == "length" for s in all_samples]))
        from medrlvr.reward import FLAGS

        fc = Counter(f for s in all_samples for f in s.get("flags", []))
        out["flag_rates"] = {f: fc.get(f, 0) / len(all_samples) for f in FLAGS}
    if mode == "loglik" and all_samples and "logprobs" in all_samples[0]:
        # share of the next-token probability on the option letters: low means the letters are scored,
        # but the model would rather say something else after "Answer:" (an instruct model without chat)
        out["option_mass"] = float(np.mean([sum(math.exp(v) for v in s["logprobs"].values()) for s in all_samples]))
    out["n_samples"] = K
    out["random_baseline"] = random_baseline([r.n_options for r in records], n_resamples, seed)
    ro = out["random_baseline"]["accuracy"]
    out["above_random"] = (out["ci95"][0] > ro) if (out["ci95"][0] is not None and ro is not None) else None
    if K > 1:
        ncor = [sum(bool(s["correct"]) for s in row["samples"]) for row in main]
        out["pass_at_k"] = {str(k): pass_at_k(ncor, K, k) for k in doubling_ks(K)}
        out["maj_at_k"] = {str(k): float(np.mean([majority_at_k([_answer(s, mode) for s in row["samples"]],
                                                                row["gold"], k) for row in main]))
                           for k in doubling_ks(K)}
        out["curves"] = k_curves(ncor, [[_answer(s, mode) for s in row["samples"]] for row in main],
                                 [row["gold"] for row in main], [r.n_options for r in records], K)
    # subsets
    groups: dict[str, list[float]] = {}
    for row, sc in zip(main, scores):
        if row.get("subset") is not None:
            groups.setdefault(row["subset"], []).append(sc)
    if len(groups) > 1:
        out["subsets"] = {k: _accuracy_block(v, n_resamples, seed) for k, v in sorted(groups.items())}
    # position bias: predicted vs gold letters (every sample of the original order)
    pc = Counter(s.get("pred") or "none" for s in all_samples)
    gc = Counter(row["gold"] for row in main)
    letters = sorted(set(gc) | {k for k in pc if k != "none"}, key=LETTERS.index)
    out["letter_distribution"] = {"pred": {L: pc.get(L, 0) for L in letters} | ({"none": pc["none"]} if pc.get("none")
                                                                                 else {}),
                                  "gold": {L: gc.get(L, 0) for L in letters}}
    # option-permutation consistency
    if n_shuffles > 0:
        same, acc_all = [], []
        for r in records:
            texts = []
            for v in range(n_shuffles + 1):
                row = rows[(r.id, v)]
                votes = [s.get("pred_text") if _answer(s, mode) else None for s in row["samples"]]
                votes = [t for t in votes if t is not None]
                texts.append(Counter(votes).most_common(1)[0][0] if votes else None)
                acc_all.append(float(np.mean([s["correct"] for s in row["samples"]])))
            same.append(float(texts[0] is not None and all(t == texts[0] for t in texts)))
        out["consistency"] = {"n_shuffles": n_shuffles, **_accuracy_block(same, n_resamples, seed)}
        out["consistency"]["rate"] = out["consistency"].pop("accuracy")
        out["accuracy_all_orders"] = float(np.mean(acc_all)) if acc_all else None
    return out



def score_records(model, tokenizer, bench: str, records: Sequence[MCQ], rows: dict, engine_state: dict, *,
                  mode: str, template: str, prefill_think: bool, n_samples: int, temperature: float,
                  max_new_tokens: int, seed: int, scheme: str, batch_size: int, max_batch_tokens: int | None,
                  scoring_dtype: str = "auto", n_shuffles: int = 0, progress: bool = True, write=None,
                  desc: str | None = None, question_seeds: bool = False) -> tuple[int, int]:
    """Answer every (question, option order) of ``records`` not yet in ``rows`` and add its row to ``rows``.

    The machinery of :func:`evaluate`, shared with ``medrlvr data difficulty``: fixed length-sorted batches
    over the whole list with one sampling seed per batch (so a partly saved batch is recomputed whole and the
    result equals an uninterrupted run's), a rollout engine (``engine_state["engine"]``: a name or an object;
    the engine made is cached in ``engine_state["eng"]``, its name in ``engine_state["name"]``) or the loglik
    forward, and, under torchrun, batches ``rank::world`` per rank gathered on every rank at the end.
    ``write(list of (key, row))`` is called on rank 0 after each batch with its new rows, and once more with
    the other ranks' rows after the gather; a tqdm bar (with its ETA) on stderr when ``progress``.
    With ``question_seeds`` each question's samples come from a seed of its own (the seed, the benchmark, the
    question id and option order), so they do not depend on the batch the question falls in.
    Returns ``(questions computed, tokens: prompt tokens for loglik, generated tokens otherwise)``."""
    import torch

    from medrlvr.prompts import render, response_prefix
    from medrlvr.train.distributed import gather_objects, rank_world

    rank, world = rank_world()
    prefix = response_prefix(template, prefill_think) if mode == "cot" else ""
    items: list[_Item] = []
    for r in records:
        for v in range(n_shuffles + 1):
            shown = r if v == 0 else shuffle_options(r, seed * 1000 + v)
            prompt = render(shown, template, tokenizer, prefill_think)
            items.append(_Item(shown, r, v, prompt, []))
    for it in items:
        it.ids = encode(tokenizer, it.prompt)
    # fixed batches over the full list, longest first (deterministic given the questions)
    order = sorted(range(len(items)), key=lambda i: (-len(items[i].ids), i))
    items = [items[i] for i in order]
    if mode == "loglik":
        chunks = length_batches(items, batch_size, max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS)
    else:
        chunks = length_batches(items, batch_size, None)
    todo = [c for c in chunks if any(it.key not in rows for it in c)]
    n_todo = sum(1 for c in todo for it in c if it.key not in rows)
    n_tok = 0
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), initial=len(items) - n_todo, desc=desc or f"eval {bench} ({mode})",
                   unit="q", dynamic_ncols=True, file=sys.stderr)
    computed: list = []
    try:
        for chunk in todo[rank::world]:
            if mode == "loglik":
                with torch.inference_mode(), _scoring_autocast(model, scoring_dtype):
                    lps = _loglik_batch(model, tokenizer, chunk)
                new = [_row_from_loglik(it, lp) for it, lp in zip(chunk, lps)]
                n_tok += sum(len(it.ids) for it in chunk)
            else:
                if engine_state.get("eng") is None:
                    engine_state["eng"], engine_state["name"] = _make_engine(engine_state["engine"], model, tokenizer)
                from medrlvr.rollout import SamplingParams

                stop = ("</answer>",) if mode == "cot" else ("\n",)
                qseeds = (tuple(_seed_of(seed, bench, it.base.id, it.variant) for it in chunk)
                          if question_seeds and temperature > 0 else None)
                params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, stop=stop,
                                        seed=_seed_of(seed, bench, chunk[0].base.id, chunk[0].variant),
                                        prompt_seeds=qseeds)
                groups = engine_state["eng"].generate([it.prompt for it in chunk], n_samples, params)
                new = [_score_generation(it, comps, mode, prefix, scheme) for it, comps in zip(chunk, groups)]
                n_tok += sum(len(c.token_ids) for g in groups for c in g)
            fresh = []
            for it, row in zip(chunk, new):
                if it.key in rows:     # saved by an interrupted run: keep it
                    continue
                rows[it.key] = row
                computed.append((it.key, row))
                fresh.append((it.key, row))
            if write is not None and rank == 0 and fresh:
                write(fresh)
            if bar is not None:
                bar.update(len(fresh))
    finally:
        if bar is not None:
            bar.close()
    if world > 1:  # every rank's rows to every rank; rank 0 writes the others'
        others = []
        for part in gather_objects(computed):
            for key, row in part:
                if tuple(key) not in rows:
                    rows[tuple(key)] = row
                    others.append((tuple(key), row))
        if write is not None and rank == 0 and others:
            write(others)
    return n_todo, n_tok


# ------------------------------------------------------------------------------------------ main API
def resolve_benchmarks(benchmarks, data_root, columns, skip_invalid: bool = False,
                        skipped: dict[str, int] | None = None) -> dict[str, list[MCQ]]:
    """Load each benchmark / file with its own column map (``columns``: one map, or ``FILE=map;...``, see
    :func:`medrlvr.data.sources.columns_for_sources`); with ``skip_invalid`` the skipped records are reported
    on stderr as ``data validate`` lists them (and counted per benchmark into ``skipped``, when given), and a
    source left empty is refused."""
    if isinstance(benchmarks, str):
        benchmarks = [b for b in benchmarks.split(",") if b.strip()]
    out: dict[str, list[MCQ]] = {}
    if isinstance(benchmarks, Mapping):
        for k, v in benchmarks.items():
            out[str(k)] = list(v.records if isinstance(v, MCQSet) else v)
        return out
    from medrlvr.data.sources import load_sources

    specs = [b.strip() for b in benchmarks]
    for spec in specs:
        if specs.count(spec) > 1:
            raise ValueError(f"benchmark {_bench_key(spec)!r} given twice")
    for spec, s in load_sources(specs, data_root, columns, skip_invalid=skip_invalid).items():
        key = _bench_key(spec)
        if key in out:
            raise ValueError(f"benchmark {key!r} given twice")
        out[key] = list(s.records)
        if skipped is not None:
            skipped[key] = len(s.skipped)
    return out


def _make_engine(engine, model, tokenizer):
    if not isinstance(engine, str):
        return engine, getattr(engine, "name", type(engine).__name__)
    from medrlvr.rollout import choose_engine, make_engine

    engine = choose_engine(engine, next(model.parameters()).device)
    try:
        return make_engine(engine, model, tokenizer), engine
    except ValueError as e:   # unknown engine, or one that does not support this model
        if engine == "hf":
            raise
        print(f"[medrlvr] engine {engine!r} is not usable here ({e}); using 'hf'", file=sys.stderr)
        return make_engine("hf", model, tokenizer), "hf"


@dataclass
class EvalConfig:
    """Every setting of a benchmark evaluation (:func:`evaluate`, ``medrlvr eval``), validated on creation.

    What is evaluated:
        mode: ``"cot"``, ``"direct"`` or ``"loglik"`` (see the module doc).
        limit: keep the first N questions of each benchmark (None: all).
        n_shuffles: K extra seeded option orders per question (accuracy stays that of the original order;
            the orders give the permutation-consistency rate).
        data_root, columns, skip_invalid: how named benchmarks and files are loaded
            (:func:`medrlvr.data.load_any`; ``columns``: one column map, or one per file,
            ``"a.csv=question=q;b.jsonl=options=choices"``; ``skip_invalid`` evaluates the valid records and
            counts the others as ``skipped_invalid``).

    How answers are drawn:
        template, prefill_think: the prompt (``cot``: ``r1-zero`` or ``chat``); ``direct`` and ``loglik`` use the
            direct prompt, through the chat template when ``template`` is ``direct-chat``.
        n_samples: answers per question (``loglik`` is deterministic: 1).
        temperature: None: 0 (greedy) for one sample, 1.0 for more; ``loglik``: 0.
        max_new_tokens: None: 512 (``cot``), 5 (``direct``).
        seed: the sampling seed (one per batch, from the seed, the benchmark and the batch's first question).
        question_seeds: sample each question's answers from a seed of its own (from the seed, the benchmark, the
            question's id and option order), so a question's answers do not depend on which questions share its
            batch: two models evaluated on the same questions draw each question's answers from the same seed
            (paired comparisons). False keeps the per-batch seeds (and earlier results); greedy decoding is the
            same either way.
        scheme: the reward scheme ``cot`` answers are scored with.

    How it runs:
        engine: a name in :data:`medrlvr.rollout.ENGINES` (an unknown name falls back to ``"hf"``) or an object
            with ``generate``.
        batch_size, max_batch_tokens: None: the mode's default (``loglik`` batches under a token budget).
        scoring_dtype: ``loglik``: ``"auto"`` runs an fp32 model's forward under bf16 autocast where bf16 is
            native (:func:`medrlvr.hardware.fast_bf16`; the letter log-softmax stays fp32), ``"fp32"`` opts out,
            ``"bf16"`` forces it.
        progress: a progress bar on stderr.

    Results:
        output_dir: save and resume there (see the module doc); resume: False discards what it holds.
        bootstrap: resamples of the 95% interval (0: none).
        model_name: the model's name in the results (default: the model's ``name_or_path``).
    """

    mode: str = "cot"
    limit: int | None = None
    n_shuffles: int = 0
    data_root: str | os.PathLike | None = None
    columns: str | None = None
    skip_invalid: bool = False
    template: str = "r1-zero"
    prefill_think: bool = True
    n_samples: int = 1
    temperature: float | None = None
    max_new_tokens: int | None = None
    seed: int = 0
    question_seeds: bool = False
    scheme: str = "paper"
    engine: Any = "hf"
    batch_size: int | None = None
    max_batch_tokens: int | None = None
    scoring_dtype: str = "auto"
    progress: bool = True
    output_dir: str | os.PathLike | None = None
    resume: bool = True
    bootstrap: int = 1000
    model_name: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.scoring_dtype not in ("auto", "bf16", "fp32"):
            raise ValueError(f"scoring_dtype must be auto, bf16 or fp32, got {self.scoring_dtype!r}")
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        if self.mode == "loglik" and self.n_samples != 1:
            raise ValueError("loglik mode is deterministic: n_samples must be 1")
        if self.n_shuffles < 0:
            raise ValueError(f"n_shuffles must be >= 0, got {self.n_shuffles}")


def evaluate(model, tokenizer, benchmarks: Mapping[str, Any] | Sequence[str] | str,
             config: EvalConfig | None = None, *, skipped_invalid: Mapping[str, int] | None = None,
             **settings: Any) -> dict[str, Any]:
    """Evaluate ``model`` on ``benchmarks`` and return ``{bench: metrics, ..., "_meta": {...}}``.

    ``benchmarks``: names / file paths (loaded with ``config.columns``), a comma-separated string of them, or a
    dict ``name -> MCQSet | list[MCQ]`` (then ``skipped_invalid``, ``name -> count``, carries what the caller's
    loading skipped). ``config`` holds the settings (:class:`EvalConfig`); keyword ``settings`` override its
    fields (``evaluate(model, tok, "medqa", mode="loglik", limit=100)``), and an unknown one is a ``TypeError``.
    """
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"evaluate: unknown setting(s) {', '.join(unknown)}; the EvalConfig fields are "
                        f"{', '.join(sorted(known))}")
    c = dataclasses.replace(config, **settings) if config is not None else EvalConfig(**settings)
    mode, n_samples, limit, output_dir, data_root = c.mode, c.n_samples, c.limit, c.output_dir, c.data_root
    template, batch_size, max_new_tokens, temperature, seed = (c.template, c.batch_size, c.max_new_tokens,
                                                                c.temperature, c.seed)
    n_shuffles, engine, bootstrap, columns, skip_invalid = c.n_shuffles, c.engine, c.bootstrap, c.columns, c.skip_invalid
    prefill_think, scheme, max_batch_tokens, model_name = c.prefill_think, c.scheme, c.max_batch_tokens, c.model_name
    resume, progress, scoring_dtype = c.resume, c.progress, c.scoring_dtype
    if temperature is None:
        temperature = 0.0 if n_samples == 1 else 1.0
    if mode == "loglik":
        temperature = 0.0
    max_new_tokens = max_new_tokens or DEFAULT_MAX_NEW_TOKENS[mode]
    batch_size = batch_size or DEFAULT_BATCH_SIZE[mode]
    if mode != "cot":
        template = "direct-chat" if template == "direct-chat" else "direct"
    elif template not in ("r1-zero", "chat"):
        raise ValueError(f"cot mode: template must be r1-zero or chat, got {template!r}")
    model_name = model_name or str(getattr(getattr(model, "config", None), "_name_or_path", "") or
                                   type(model).__name__)
    n_skipped: dict[str, int] = dict(skipped_invalid or {})  # records loaded by the caller: their skipped counts
    sets = resolve_benchmarks(benchmarks, data_root, columns, skip_invalid, n_skipped)
    if limit is not None:
        sets = {k: v[:limit] for k, v in sets.items()}

    cfg = {"model": model_name, "mode": mode, "template": template,
           "prefill_think": prefill_think if mode == "cot" else None, "n_samples": n_samples,
           "temperature": temperature, "max_new_tokens": max_new_tokens if mode != "loglik" else None,
           "seed": seed, "scheme": scheme if mode == "cot" else None}
    if c.question_seeds:  # recorded (and compared on resume) only when on: earlier directories stay resumable
        cfg["question_seeds"] = True
    out_dir = Path(output_dir) if output_dir is not None else None
    from medrlvr.train.distributed import barrier, rank_world

    rank, _world = rank_world()  # under torchrun: rank r generates batches r, r + world, ...; rank 0 writes
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        cpath = out_dir / CONFIG_FILE
        if cpath.exists() and resume:
            old = json.loads(cpath.read_text(encoding="utf-8"))
            diff = {k: (old.get(k), cfg.get(k)) for k in _RESUME_KEYS if old.get(k) != cfg.get(k)}
            if diff:
                raise ValueError(f"{out_dir} holds an evaluation with other settings {diff} (saved, now); "
                                 "use another output directory or resume=False (--overwrite)")
        if not resume and rank == 0:
            for p in out_dir.glob("*.completions.jsonl"):
                p.unlink()
        if rank == 0:
            cpath.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        barrier()

    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    engine_state: dict[str, Any] = {"engine": engine, "eng": None,
                                     "name": engine if isinstance(engine, str) else None}
    t_start = time.perf_counter()
    timing: dict[str, dict] = {}
    results: dict[str, Any] = {}
    try:
        import torch

        for bench, records in sets.items():
            ids = [r.id for r in records]
            if len(set(ids)) != len(ids):
                raise ValueError(f"{bench}: duplicate question ids")
            cpath = out_dir / f"{_slug(bench)}.completions.jsonl" if out_dir is not None else None
            rows = read_rows(cpath) if cpath is not None else {}
            fh = open(cpath, "a", encoding="utf-8") if cpath is not None and rank == 0 else None

            def sink(new_rows, fh=fh):
                for _key, row in new_rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()

            t0 = time.perf_counter()
            try:
                n_todo, n_tok = score_records(model, tokenizer, bench, records, rows, engine_state, mode=mode,
                                              template=template, prefill_think=prefill_think, n_samples=n_samples,
                                              temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                                              scheme=scheme, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                              scoring_dtype=scoring_dtype, n_shuffles=n_shuffles, progress=progress,
                                              write=sink if fh is not None else None,
                                              question_seeds=c.question_seeds)
            finally:
                if fh is not None:
                    fh.close()
            dt = time.perf_counter() - t0
            timing[bench] = {"computed": n_todo, "seconds": round(dt, 3),
                             "questions_per_s": round(n_todo / dt, 4) if n_todo and dt > 0 else None,
                             ("prompt_tokens" if mode == "loglik" else "generated_tokens"): n_tok,
                             "tokens_per_s": round(n_tok / dt, 2) if n_tok and dt > 0 else None}
            m = benchmark_metrics(records, rows, mode, n_shuffles, bootstrap, seed)
            m["distribution"] = distribution_of(bench)
            if bench in n_skipped:
                m["skipped_invalid"] = n_skipped[bench]  # records of the file left out (--skip-invalid)
            results[bench] = m
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    try:
        p = next(model.parameters())
        dtype = str(p.dtype).removeprefix("torch.")
    except (StopIteration, AttributeError, TypeError):
        dtype = None
    from medrlvr import __version__

    results["_meta"] = {**cfg, "n_shuffles": n_shuffles, "limit": limit, "bootstrap": bootstrap,
                        "engine": engine_state["name"] if mode != "loglik" else None, "dtype": dtype,
                        "scoring_dtype": (("bf16" if isinstance(_scoring_autocast(model, scoring_dtype), torch.autocast)
                                           else dtype) if mode == "loglik" else None),
                        "benchmarks": list(sets), "medrlvr_version": __version__,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "elapsed_s": round(time.perf_counter() - t_start, 3), "timing": timing}
    if out_dir is not None and rank == 0:
        write_results(results, out_dir)
    return results


# ------------------------------------------------------------------------------------------ output
# ------------------------------------------------------------------------------------------ CLI
def resolve_model_dir(name: str) -> str:
    """A run directory (RL or SFT) stands for its ``final/`` model."""
    p = Path(name)
    if p.is_dir() and not (p / "config.json").exists() and (p / "final" / "config.json").exists():
        return str(p / "final")
    return name


def cmd_eval(a) -> int:
    import torch

    from medrlvr.models import load_policy

    from medrlvr.train.distributed import init_eval

    if a.threads:
        torch.set_num_threads(a.threads)
    rank, _world = init_eval()  # torchrun --nproc-per-node N -m medrlvr eval ...: questions sharded over ranks
    # the data first: a bad file is reported before minutes of model loading (skipped records: rank 0 reports)
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()) if rank else contextlib.nullcontext():
        n_skipped: dict[str, int] = {}
        sets = resolve_benchmarks([b for b in a.benchmarks.split(",") if b.strip()], a.data_root, a.columns,
                                   a.skip_invalid, n_skipped)
    model_path = resolve_model_dir(a.model)
    if a.quiet:   # also transformers' weight-loading bar
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    model, tok = load_policy(model_path, a.dtype, seed=a.seed)
    if torch.cuda.is_available():
        model = model.to("cuda")
    out = a.output or f"runs/eval/{_slug(Path(a.model).name if os.path.exists(a.model) else a.model)}-{a.mode}"
    res = evaluate(model, tok, sets, mode=a.mode,
                   n_samples=a.n_samples, limit=a.limit, output_dir=out, data_root=a.data_root, template=a.template,
                   batch_size=a.batch_size, max_new_tokens=a.max_new_tokens, temperature=a.temperature, seed=a.seed,
                   n_shuffles=a.shuffles, engine=a.engine, bootstrap=a.bootstrap, prefill_think=not a.no_prefill,
                   model_name=a.model, resume=not a.overwrite, progress=not a.quiet, scoring_dtype=a.scoring_dtype,
                   skipped_invalid=n_skipped)
    if rank:
        return 0
    if a.json:
        print(json.dumps(res, indent=2, ensure_ascii=False))
    else:
        print(results_markdown(res))
        print(f"results: {Path(out) / 'results.json'}")
    return 0


def add_cli(subparsers):
    """Register ``eval`` on an argparse ``subparsers`` object; returns the sub-parser."""
    e = subparsers.add_parser("eval", help="evaluate a model on benchmarks (accuracy, 95%% CI, random baseline)",
                              description=__doc__.split("\n\n")[0])
    e.add_argument("--model", required=True, help="smollm2-135m, tiny, a Hugging Face dir (or a run dir with final/)")
    e.add_argument("--benchmarks", required=True,
                   help="comma-separated benchmark names[:split] (" + ", ".join(BENCHMARKS) + ") or data files")
    e.add_argument("--data-root", default=None,
                   help="folder with medqa/, mmlu_pro/, ... (default: $MEDRLVR_DATA_ROOT, else ../shared/data)")
    e.add_argument("--columns", default=None,
                   help="column map for data files, e.g. question=q,options=A|B|C|D,gold=ans; one per file: "
                        "'a.csv=question=q,gold=k;b.jsonl=options=choices,gold=label,gold_type=index0'")
    e.add_argument("--skip-invalid", action="store_true",
                   help="evaluate the valid records; list the skipped ones (as `data validate` does) on stderr")
    e.add_argument("--mode", default="cot", choices=MODES,
                   help="cot: sampled reasoning + answer; direct: a letter; loglik: option log-likelihoods")
    e.add_argument("--n-samples", type=positive_int, default=1, help="samples per question (K); K > 1 adds pass@k, maj@k")
    e.add_argument("--limit", type=positive_int, default=None, help="first N questions of each benchmark")
    e.add_argument("--output", default=None, help="output dir (default runs/eval/<model>-<mode>); resumable")
    e.add_argument("--json", action="store_true", help="print results.json to stdout")
    e.add_argument("--template", default="r1-zero", choices=["r1-zero", "chat", "direct-chat"],
                   help="prompt template: r1-zero or chat (cot); direct-chat: the direct/loglik prompt through the "
                        "model's chat template")
    e.add_argument("--no-prefill", action="store_true", help="cot: do not end the prompt with <think>")
    e.add_argument("--engine", default="auto",
                   help="rollout engine for cot/direct: auto (fast on the CPU, hf on CUDA), fast (falls back to hf "
                        "for unsupported models) or hf")
    e.add_argument("--shuffles", type=nonneg_int, default=0, help="K seeded option orders per question (consistency)")
    e.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="model weights' dtype")
    e.add_argument("--scoring-dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="loglik forward: auto = bf16 autocast where bf16 is native (fp32 opts out)")
    e.add_argument("--seed", type=nonneg_int, default=0, help="sampling seed")
    e.add_argument("--batch-size", type=positive_int, default=None, help="questions per forward (default: the engine's)")
    e.add_argument("--max-new-tokens", type=positive_int, default=None, help="token limit per answer (default: the mode's)")
    e.add_argument("--temperature", type=nonneg_float, default=None, help="default 0 for one sample, 1.0 for more")
    e.add_argument("--bootstrap", type=nonneg_int, default=1000, help="bootstrap resamples for the CIs (0: none)")
    e.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (on a busy shared CPU, 1 is often faster than several)")
    e.add_argument("--overwrite", action="store_true", help="discard completions saved in --output (no resume)")
    e.add_argument("--quiet", action="store_true", help="no progress bars (the weight-loading bar included)")
    e.set_defaults(func=cmd_eval)
    return e
