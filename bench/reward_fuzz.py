"""Reward fuzzing: generated responses x every reward scheme; exceptions, non-finite or out-of-range
rewards, letters out of range, the slowest call per family and length, calls/s, and how scoring time
grows from 32k to 256k characters (measured side by side in this run).

    python bench/reward_fuzz.py                 # 100,000 generated strings x every scheme
    python bench/reward_fuzz.py --n 20000

Families:
* ``random``: random fragments (tags, near-tags, letters, cue words, unicode, control characters);
* ``completion``: completion-sized responses (~0.3-4 KB) in the shapes a policy writes (well formed,
  answer in think, text before/after, multiple blocks, missing tags);
* adversarial, at 1k, 4k, 32k and 256k characters: whitespace / newline / tab runs after cue words
  (in the answer and in think), separators inside the run, repeated cues, letter soup, bracket soup,
  tag soup, unclosed tags, fullwidth (NFKC) text, long option text.
Every call also goes through the TRL and verl adapters for the adversarial strings.

Per-call times are the CPU time of the scoring thread (``time.thread_time``): on a shared machine the
wall time of one call also counts the moments other processes held the core. Wall-clock figures are
printed beside them (calls/s and the completion-sized p99).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (puts src/ on the path)
from medrlvr.hardware import cpu_model  # noqa: E402
from medrlvr.integrations.trl import make_trl_reward_func  # noqa: E402
from medrlvr.integrations.verl import compute_score as verl_compute_score  # noqa: E402
from medrlvr.reward import LETTERS, SCHEMES, score  # noqa: E402

FRAGMENTS = [
    "<think>", "</think>", "<answer>", "</answer>", "<THINK>", "< think >", "<answer >", "</ANSWER>", "<", ">",
    "/", "A", "B", "C", "I", "a", "c", "(C)", "C.", "C)", "[B]", "**D**", "E. coli", "\\boxed{C}",
    "The answer is ", "answer: ", "Answer", "option ", "choice", " would be ", "I think ", " or ", ", ",
    "Aspirin", "heparin", "Ｃ", "é", "发烧", "🤒", "\u200b", "\x00", " ", "  ", "\n", "\t", "\r\n",
    "reasoning about the case. ",
]
WORDS = ("the patient presents with fever and a productive cough so the likely organism is streptococcus "
         "pneumoniae which responds to beta lactam antibiotics first line therapy is amoxicillin").split()


def random_text(rng: random.Random) -> str:
    k = rng.randint(0, 40)
    parts = []
    for _ in range(k):
        if rng.random() < 0.85:
            parts.append(rng.choice(FRAGMENTS))
        else:
            parts.append("".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(1, 6))))
    return "".join(parts)


def completion_text(rng: random.Random, n_opt: int) -> str:
    think = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 600)))
    letter = rng.choice(LETTERS[:n_opt])
    answer = rng.choice([letter, f"The answer is {letter}", f"({letter})", f"{letter}. amoxicillin", "amoxicillin",
                         f"Answer: {letter.lower()}", "answer here", f"{letter} or {rng.choice(LETTERS[:n_opt])}"])
    shape = rng.randrange(6)
    if shape == 0:
        return f"<think>{think}</think><answer>{answer}</answer>"
    if shape == 1:
        return f"<think>{think} so the answer is {letter}.</think>\n<answer>{answer}</answer>"
    if shape == 2:
        return f"Let me think step by step. {think}<think>ok</think><answer>{answer}</answer> done"
    if shape == 3:
        return f"<think>{think}</think><answer>{answer}</answer><think>more</think><answer>{letter}</answer>"
    if shape == 4:
        return f"<think>{think}</think> {answer}"
    return f"<think>{think}"


def adversarial(n: int) -> dict[str, str]:
    """Families of about ``n`` characters each (gold C, options A..D)."""
    return {
        "spaces after 'answer' (answer)": "<think>r</think><answer>answer" + " " * n + "1</answer>",
        "newlines after 'Answer' (think)": "<think>Answer" + "\n" * n + "1</think><answer>C</answer>",
        "tabs after 'Answer is' (think)": "<think>Answer is" + "\t" * n + "1</think><answer>C</answer>",
        "separator inside the run": "<think>r</think><answer>option" + " " * (n // 2) + "-" + " " * (n // 2) + "!</answer>",
        "'would' + spaces": "<think>r</think><answer>answer would" + " " * n + "x</answer>",
        "repeated cues": "<think>r</think><answer>" + "answer is " * (n // 10) + "</answer>",
        "repeated cues with runs": "<think>" + ("Answer" + " " * 60 + "\n") * (n // 67) + "</think><answer>C</answer>",
        "letter soup": "<think>" + "A. B) (C) D " * (n // 12) + "</think><answer>" + "A B. (C) " * (n // 9) + "</answer>",
        "bracket soup": "<think>r</think><answer>" + "( [ { " * (n // 6) + "C</answer>",
        "tag soup": "<think><answer></think></answer>" * (n // 32),
        "unclosed tags": "<think>" + "x " * (n // 2) + "<answer>" + " " * n,
        "fullwidth (NFKC)": "<think>ｒ</think><answer>" + "ＡＮＳＷＥＲ　" * (n // 7) + "Ｃ</answer>",
        "long option text": "<think>r</think><answer>" + "amoxicillin " * (n // 12) + "</answer>",
    }


OPTIONS = {"A": "amoxicillin", "B": "azithromycin", "C": "amoxicillin " * 20, "D": "doxycycline"}


def check(res, n_opt: int, bad: dict, where: str) -> None:
    r = res.reward
    if not isinstance(r, float) or not math.isfinite(r):
        bad["non_finite"].append(where)
    elif not -1.0 <= r <= 1.0:
        bad["out_of_range"].append(where)
    if res.pred is not None and res.pred not in LETTERS[:n_opt]:
        bad["letter_out_of_range"].append(where)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="generated strings (random + completion families)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lengths", type=harness.ints, default="1024,4096,32768,262144",
                    help="adversarial text lengths in characters (comma-separated)")
    ap.add_argument("--repeats", type=int, default=3, help="adversarial: best of R timings per call")
    a = ap.parse_args()
    if a.n < 1 or a.repeats < 1 or not a.lengths or min(a.lengths) < 1:
        ap.error("--n and --repeats must be >= 1, and --lengths one or more lengths >= 1")
    rng = random.Random(a.seed)
    schemes = sorted(SCHEMES)
    bad = {"exceptions": [], "non_finite": [], "out_of_range": [], "letter_out_of_range": []}
    n_calls = 0

    # ---- bulk: random + completion-sized strings, every scheme
    comp_times: list[float] = []
    comp_wall: list[float] = []
    w_bulk = 0.0
    slow_bulk = {"random": (0.0, 0), "completion": (0.0, 0)}
    t_bulk = 0.0
    for i in range(a.n):
        fam = "completion" if i % 5 == 0 else "random"
        n_opt = rng.randint(2, 26) if fam == "random" else rng.choice((4, 5))
        text = completion_text(rng, n_opt) if fam == "completion" else random_text(rng)
        gold = rng.choice(LETTERS[:n_opt])
        opts = {L: rng.choice(WORDS) for L in LETTERS[:n_opt]} if rng.random() < 0.5 else None
        for sch in schemes:
            w0, t0 = time.perf_counter(), time.thread_time()
            try:
                res = score(text, gold, n_opt, scheme=sch, options=opts)
            except Exception as e:  # noqa: BLE001 - the count is the point
                bad["exceptions"].append(f"{fam}#{i}/{sch}: {type(e).__name__}: {e}")
                continue
            dt, dw = time.thread_time() - t0, time.perf_counter() - w0
            t_bulk += dt
            w_bulk += dw
            n_calls += 1
            check(res, n_opt, bad, f"{fam}#{i}/{sch}")
            if fam == "completion":
                comp_times.append(dt)
                comp_wall.append(dw)
            if dt > slow_bulk[fam][0]:
                slow_bulk[fam] = (dt, len(text))

    # ---- adversarial families x lengths x schemes (+ adapters), best of R, side by side per family
    lengths = a.lengths
    trl = {s: make_trl_reward_func(s) for s in schemes}
    worst: dict[tuple[str, int], float] = {}
    for n in lengths:
        for fam, text in adversarial(n).items():
            best_slowest = 0.0
            for sch in schemes:
                best = float("inf")
                for _ in range(a.repeats):
                    t0 = time.thread_time()
                    try:
                        res = score(text, "C", 4, scheme=sch, options=OPTIONS)
                    except Exception as e:  # noqa: BLE001
                        bad["exceptions"].append(f"{fam}@{n}/{sch}: {type(e).__name__}: {e}")
                        break
                    best = min(best, time.thread_time() - t0)
                    n_calls += 1
                    check(res, 4, bad, f"{fam}@{n}/{sch}")
                best_slowest = max(best_slowest, best)
                try:  # adapters: text of any length (the pre-fill is joined by them)
                    body = text[len("<think>"):] if text.startswith("<think>") else text
                    out = trl[sch](prompts=None, completions=[body], gold="C", n_options=4)
                    v = verl_compute_score("fuzz", body, "C", {"n_options": 4, "scheme": sch})
                    n_calls += 2
                    if not all(math.isfinite(x) and -1 <= x <= 1 for x in out + [v["score"]]):
                        bad["out_of_range"].append(f"{fam}@{n}/{sch} (adapter)")
                except Exception as e:  # noqa: BLE001
                    bad["exceptions"].append(f"{fam}@{n}/{sch} adapter: {type(e).__name__}: {e}")
            worst[(fam, n)] = best_slowest

    # ---- report
    cpu = f"{cpu_model()} ({os.cpu_count()} cores)"
    print(f"reward_fuzz: {a.n:,} generated strings x {len(schemes)} schemes ({', '.join(schemes)}) + "
          f"{len(adversarial(8))} adversarial families x {len(lengths)} lengths; {n_calls:,} calls; CPU: {cpu}")
    for k, v in bad.items():
        print(f"  {k}: {len(v)}" + (f"  e.g. {v[:3]}" if v else ""))
    nb = a.n * len(schemes)
    print(f"  bulk: {nb / t_bulk:,.0f} calls/s CPU time, {nb / w_bulk:,.0f} calls/s wall "
          f"(random + completion strings, scoring only)")
    if comp_times:
        q = statistics.quantiles(comp_times, n=100)
        sizes = "0.3-4 KB"
        qw = statistics.quantiles(comp_wall, n=100)
        print(f"  completion-sized text ({sizes}, {len(comp_times):,} calls): CPU p50 {q[49] * 1e3:.3f} ms, "
              f"p99 {q[98] * 1e3:.3f} ms, max {max(comp_times) * 1e3:.3f} ms; wall p99 {qw[98] * 1e3:.3f} ms")
    for fam, (dt, ln) in slow_bulk.items():
        print(f"  slowest {fam} call: {dt * 1e3:.3f} ms CPU ({ln} chars)")
    head = "  slowest call per family and length (CPU ms; best of %d runs, max over schemes):" % a.repeats
    print(head)
    print("    " + f"{'family':<34}" + "".join(f"{n:>10}" for n in lengths) + ("   256k/32k" if {32768, 262144} <= set(lengths) else ""))
    ratios = []
    for fam in adversarial(8):
        row = "".join(f"{worst[(fam, n)] * 1e3:>10.2f}" for n in lengths)
        if {32768, 262144} <= set(lengths):
            r = worst[(fam, 262144)] / max(worst[(fam, 32768)], 1e-9)
            ratios.append(r)
            row += f"   {r:>8.1f}x"
        print(f"    {fam:<34}{row}")
    if ratios:
        top = max(worst[(f, max(lengths))] for f in adversarial(8))
        print(f"  256k vs 32k (8x the text): ratio max {max(ratios):.1f}x, median {statistics.median(ratios):.1f}x; "
              f"slowest 256k call {top * 1e3:.0f} ms")
    failures = sum(len(v) for v in bad.values())
    print(f"  result: {'OK' if failures == 0 else 'FAILURES'} ({failures} bad calls)")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
