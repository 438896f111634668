"""Evaluation throughput on MedQA 4-option test with SmolLM2-135M.

* ``loglik``: every question (1,273 by default), one forward each over the direct prompt, batched
  under a token budget; reports questions/s and prompt tokens/s. The bar: under 5 minutes for all
  1,273 questions on the 2-core development machine.
* ``cot``: a subset (8 by default), R1-Zero prompt, greedy generation of up to ``--cot-max-new-tokens``
  tokens; reports generated tokens/s and questions/s.

Timings come from ``results["_meta"]["timing"]`` of :func:`medrlvr.eval.benchmark.evaluate` (model loading
and the bootstrap excluded). The machine's load average is printed with them: on a shared CPU the
numbers move with whatever else runs. The last line sums everything up.

The loglik pass is also put against the machine's own limit (:mod:`medrlvr.roofline`), measured in the
same run at the model's linear shapes and the run's dtype (rows = a scoring batch's tokens, capped at
2,048 for the measurement: the rate has flattened by then) and the memory read bandwidth: the FLOPs of
the real (unpadded) prompt tokens of each batch, the way :func:`medrlvr.eval.benchmark.evaluate` batches them,
against the measured seconds: ``fraction_of_limit=``. Padding and the element-wise work count as the
engine's loss.

``--agreement``: loglik twice on the same questions in one run, the fp32 forward (``scoring_dtype=fp32``)
and bf16 autocast (``scoring_dtype=bf16``, what ``auto`` picks where bf16 is native), each with its own
limit; prints the share of questions with the same choice, the accuracy both ways and the speed ratio.

    python bench/eval.py [--threads 1] [--dtype bf16] [--cot-limit 8] [--loglik-limit N] [--skip-loglik | --skip-cot]
                         [--agreement --loglik-limit 300]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (puts src/ on the path)

BAR_S = 300.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--benchmark", default="medqa-4opt")
    p.add_argument("--data-root", default=None)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--loglik-limit", type=int, default=None, help="questions for loglik (default: all)")
    p.add_argument("--loglik-batch", type=int, default=None, help="max questions per forward (default 32)")
    p.add_argument("--cot-limit", type=int, default=8)
    p.add_argument("--cot-max-new-tokens", type=int, default=256)
    p.add_argument("--cot-batch", type=int, default=8)
    p.add_argument("--engine", default="fast")
    p.add_argument("--skip-loglik", action="store_true")
    p.add_argument("--skip-cot", action="store_true")
    p.add_argument("--json-out", default=None, help="also write the numbers to this JSON file")
    p.add_argument("--scoring-dtype", default="auto", choices=["auto", "bf16", "fp32"], help="loglik forward dtype")
    p.add_argument("--agreement", action="store_true", help="loglik in fp32 and in bf16: agreement and speed")
    a = p.parse_args(argv)
    if (a.loglik_limit is not None and a.loglik_limit < 1) or min(a.cot_limit, a.cot_max_new_tokens, a.cot_batch) < 1 \
            or (a.loglik_batch is not None and a.loglik_batch < 1):
        p.error("--loglik-limit, --loglik-batch, --cot-limit, --cot-max-new-tokens and --cot-batch must be >= 1")

    import torch

    from medrlvr.eval.benchmark import evaluate, resolve_benchmarks
    from medrlvr.models import load_policy

    try:   # the questions before the model: a bad --benchmark or --data-root is one line, not a traceback
        resolve_benchmarks([a.benchmark], a.data_root, None)
    except (OSError, ValueError) as e:   # DataError is a ValueError
        p.error(f"--benchmark {a.benchmark}: {e}")
    harness.set_threads(a.threads)
    model, tok = load_policy(a.model, a.dtype)
    if torch.cuda.is_available():
        model = model.to("cuda")
    out: dict = {"model": a.model, "dtype": a.dtype, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                 "load_before": os.getloadavg()}
    parts = []
    if a.agreement:
        return agreement(model, tok, a)
    if not a.skip_loglik:
        t0 = time.perf_counter()
        r = evaluate(model, tok, [a.benchmark], mode="loglik", limit=a.loglik_limit, data_root=a.data_root,
                     batch_size=a.loglik_batch, bootstrap=0, model_name=a.model, scoring_dtype=a.scoring_dtype,
                     progress=False)
        wall = time.perf_counter() - t0
        t = r["_meta"]["timing"][a.benchmark]
        e = r[a.benchmark]
        out["loglik"] = {**t, "wall_s": round(wall, 2), "n": e["n"], "accuracy": e["accuracy"]}
        verdict = "PASS" if t["seconds"] < BAR_S or (e["n"] < 1273) else "FAIL"
        parts.append(f"loglik {e['n']} q in {t['seconds']:.1f} s = {t['questions_per_s']:.2f} q/s, "
                     f"{t['tokens_per_s']:.0f} prompt tok/s, acc {e['accuracy']:.4f}"
                     + (f" [bar < {BAR_S:.0f} s: {verdict}]" if e["n"] >= 1273 else ""))
        print(f"loglik: {json.dumps(out['loglik'])}", flush=True)
        line, frac = loglik_roofline(model, tok, a, t["seconds"], r["_meta"]["scoring_dtype"])
        out["loglik"]["fraction_of_limit"] = round(frac, 4)
        print(line, flush=True)
        parts.append(f"loglik fraction_of_limit={frac:.3f}")
    if not a.skip_cot:
        r = evaluate(model, tok, [a.benchmark], mode="cot", limit=a.cot_limit, data_root=a.data_root,
                     batch_size=a.cot_batch, max_new_tokens=a.cot_max_new_tokens, bootstrap=0, engine=a.engine,
                     model_name=a.model)
        t = r["_meta"]["timing"][a.benchmark]
        e = r[a.benchmark]
        out["cot"] = {**t, "n": e["n"], "accuracy": e["accuracy"], "format_valid": e["format_valid"],
                      "mean_response_tokens": e["mean_response_tokens"], "engine": r["_meta"]["engine"],
                      "max_new_tokens": a.cot_max_new_tokens}
        parts.append(f"cot {e['n']} q in {t['seconds']:.1f} s = {t['questions_per_s']:.3f} q/s, "
                     f"{t['tokens_per_s']:.1f} gen tok/s ({r['_meta']['engine']}, <= {a.cot_max_new_tokens} tok)")
        print(f"cot: {json.dumps(out['cot'])}", flush=True)
    out["load_after"] = os.getloadavg()
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(out, indent=2) + "\n")
    load = f"load {out['load_before'][0]:.1f}->{out['load_after'][0]:.1f} on {out['cpus']} cpus"
    print(f"eval_throughput ({a.model}, {a.dtype}, {out['threads']} threads, {load}): " + "; ".join(parts))
    return 0


def agreement(model, tok, a) -> int:
    """loglik with the fp32 forward and with bf16 autocast on the same questions: same-choice share."""
    import tempfile

    from medrlvr.eval.benchmark import evaluate

    res = {}
    with tempfile.TemporaryDirectory() as d:
        for sd in ("fp32", "bf16"):
            out = Path(d) / sd
            r = evaluate(model, tok, [a.benchmark], mode="loglik", limit=a.loglik_limit, data_root=a.data_root,
                         batch_size=a.loglik_batch, bootstrap=0, model_name=a.model, scoring_dtype=sd,
                         output_dir=out, progress=False)
            t = r["_meta"]["timing"][a.benchmark]
            rows = [json.loads(x) for f in out.glob("*.completions.jsonl") for x in f.read_text().splitlines() if x]
            preds = {row["id"] if "id" in row else json.dumps(row.get("key")): row["samples"][0]["pred"] for row in rows}
            line, frac = loglik_roofline(model, tok, a, t["seconds"], r["_meta"]["scoring_dtype"])
            print(line, flush=True)
            res[sd] = {"acc": r[a.benchmark]["accuracy"], "n": r[a.benchmark]["n"], "preds": preds, "frac": frac,
                       "s": t["seconds"], "tps": t["tokens_per_s"]}
            print(f"loglik {sd}: {res[sd]['n']} q in {t['seconds']:.1f} s, {t['tokens_per_s']:.0f} prompt tok/s, "
                  f"acc {res[sd]['acc']:.4f}, fraction_of_limit={frac:.3f}", flush=True)
    p32, p16 = res["fp32"]["preds"], res["bf16"]["preds"]
    same = sum(p32[k] == p16.get(k) for k in p32)
    print(f"agreement ({a.model}, {a.benchmark}, {len(p32)} questions): same choice {same}/{len(p32)} = "
          f"{same / max(len(p32), 1):.4f}; accuracy fp32 {res['fp32']['acc']:.4f} bf16 {res['bf16']['acc']:.4f}; "
          f"bf16 speed {res['fp32']['s'] / res['bf16']['s']:.2f}x fp32; fraction_of_limit fp32 "
          f"{res['fp32']['frac']:.3f} bf16 {res['bf16']['frac']:.3f}")
    return 0


def loglik_roofline(model, tok, a, seconds: float, dtype: str | None = None) -> tuple[str, float]:
    """The loglik pass's limit on this machine (measured now) and the fraction reached."""
    from types import SimpleNamespace

    import torch

    from medrlvr import roofline
    from medrlvr.eval.benchmark import (DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_TOKENS, encode, length_batches,
                                       resolve_benchmarks)
    from medrlvr.prompts import render

    recs = resolve_benchmarks([a.benchmark], a.data_root, None)[a.benchmark]
    if a.loglik_limit is not None:
        recs = recs[:a.loglik_limit]
    lens = sorted((len(encode(tok, render(r, "direct", tok, False))) for r in recs), reverse=True)
    chunks = length_batches([SimpleNamespace(ids=range(n)) for n in lens],
                            a.loglik_batch or DEFAULT_BATCH_SIZE["loglik"], DEFAULT_MAX_BATCH_TOKENS)
    shape = roofline.ModelShape.from_config(model.config)
    bf16 = dtype in ("bf16", "bfloat16") or next(model.parameters()).dtype == torch.bfloat16
    dt = "bf16" if bf16 else "fp32"
    Ms = sorted({min(2048, sum(len(x.ids) for x in c)) for c in chunks})
    mach = roofline.measure(shape, [Ms[0], Ms[len(Ms) // 2], Ms[-1]], dt)
    lim = roofline.Limit()
    for c in chunks:   # one prompt's last position through the LM head
        lim = lim + harness.packed_forward_limit(shape, mach, [len(x.ids) for x in c], dt, head_rows=len(c))
    work = f"{len(lens)} prompts, {sum(lens)} prompt tokens in {len(chunks)} batches, {dt}"
    return (f"{roofline.cpu_summary()}\n{roofline.describe_machine(mach, shape)}\n"
            + roofline.report("loglik", lim, seconds, work)), lim.seconds / seconds


if __name__ == "__main__":
    sys.exit(main())
