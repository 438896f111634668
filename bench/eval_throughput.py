"""Evaluation throughput on MedQA 4-option test with SmolLM2-135M.

* ``loglik``: every question (1,273 by default), one forward each over the direct prompt, batched
  under a token budget; reports questions/s and prompt tokens/s. The bar: under 5 minutes for all
  1,273 questions on the 2-core development machine.
* ``cot``: a subset (8 by default), R1-Zero prompt, greedy generation of up to ``--cot-max-new-tokens``
  tokens; reports generated tokens/s and questions/s.

Timings come from ``results["_meta"]["timing"]`` of :func:`medrlvr.evaluate.evaluate` (model loading
and the bootstrap excluded). The machine's load average is printed with them: on a shared CPU the
numbers move with whatever else runs. The last line sums everything up.

    PYTHONPATH=src .venv/bin/python bench/eval_throughput.py [--threads 1] [--dtype bf16] [--cot-limit 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

BAR_S = 300.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    a = p.parse_args(argv)

    import torch

    from medrlvr.evaluate import evaluate
    from medrlvr.models import load_policy

    if a.threads:
        torch.set_num_threads(a.threads)
    model, tok = load_policy(a.model, a.dtype)
    if torch.cuda.is_available():
        model = model.to("cuda")
    out: dict = {"model": a.model, "dtype": a.dtype, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                 "load_before": os.getloadavg()}
    parts = []
    if not a.skip_loglik:
        t0 = time.perf_counter()
        r = evaluate(model, tok, [a.benchmark], mode="loglik", limit=a.loglik_limit, data_root=a.data_root,
                     batch_size=a.loglik_batch, bootstrap=0, model_name=a.model)
        wall = time.perf_counter() - t0
        t = r["_meta"]["timing"][a.benchmark]
        e = r[a.benchmark]
        out["loglik"] = {**t, "wall_s": round(wall, 2), "n": e["n"], "accuracy": e["accuracy"]}
        verdict = "PASS" if t["seconds"] < BAR_S or (e["n"] < 1273) else "FAIL"
        parts.append(f"loglik {e['n']} q in {t['seconds']:.1f} s = {t['questions_per_s']:.2f} q/s, "
                     f"{t['tokens_per_s']:.0f} prompt tok/s, acc {e['accuracy']:.4f}"
                     + (f" [bar < {BAR_S:.0f} s: {verdict}]" if e["n"] >= 1273 else ""))
        print(f"loglik: {json.dumps(out['loglik'])}", flush=True)
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


if __name__ == "__main__":
    sys.exit(main())
