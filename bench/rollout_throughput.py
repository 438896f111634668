"""Rollout throughput: transformers ``generate`` (the ``hf`` engine) vs the ``fast`` engine.

SmolLM2-135M (fp32 policy, as during training), 8 MedQA (4-option, test) questions rendered with the
R1-Zero template, 4 samples each, 256 new tokens with ``ignore_eos=True`` and no stop strings so every
completion has the same length. Both engines run in the same process after a short warm-up call each:
fast, hf, fast again (the machine may be shared, so the fast engine's rate is the mean of the runs
around the hf one). Times include everything ``generate`` does (weight snapshot, prefill, decode,
detokenisation). First, a greedy check: fp32 fast engine vs ``generate`` on 20 starter questions
(identical tokens expected). Prints new tokens per second for each run and, last,
``tokens_per_s=<fast> speedup=<fast / hf>``.

    python bench/rollout_throughput.py [--prompts 8] [--n 4] [--max-new-tokens 256] [--dtype auto|bf16|fp32]
                                       [--threads N] [--skip-hf] [--hf-max-new-tokens K]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch

import medrlvr.fast_rollout  # noqa: F401  (registers "fast")
from medrlvr.data import load_benchmark
from medrlvr.models import load_policy
from medrlvr.prompts import render
from medrlvr.rollout import SamplingParams, make_engine


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(engine, prompts, n, params) -> tuple[float, int]:
    t0 = time.perf_counter()
    groups = engine.generate(prompts, n, params)
    dt = time.perf_counter() - t0
    ntok = sum(len(c.token_ids) for g in groups for c in g)
    return dt, ntok


def greedy_check(model, tok, args) -> None:
    """Greedy fp32 decoding, fast engine vs transformers generate, on starter questions of mixed lengths."""
    from medrlvr.data import load_starter

    recs = load_starter("all").records[: args.greedy_check]
    prompts = [render(r, "r1-zero") for r in recs]
    p = SamplingParams(max_new_tokens=args.greedy_tokens, temperature=0.0, stop=(), seed=0)
    ref = [g[0].token_ids for g in make_engine("hf", model, tok).generate(prompts, 1, p)]
    got = [g[0].token_ids for g in make_engine("fast", model, tok, dtype="fp32").generate(prompts, 1, p)]
    same = sum(a == b for a, b in zip(ref, got))
    print(f"greedy check (fp32, {len(prompts)} prompts x {args.greedy_tokens} tokens): fast == generate on "
          f"{same}/{len(prompts)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--dtype", default="auto", help="fast engine dtype: auto (bf16 where native), bf16 or fp32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    ap.add_argument("--skip-hf", action="store_true", help="only time the fast engine (no speedup)")
    ap.add_argument("--hf-max-new-tokens", type=int, default=0,
                    help="time hf on fewer new tokens (quicker; its rate is then optimistic); 0 = same")
    ap.add_argument("--greedy-check", type=int, default=20, help="prompts for the greedy fp32 check (0 = skip)")
    ap.add_argument("--greedy-tokens", type=int, default=32)
    ap.add_argument("--data-root", default=str(ROOT / ".." / "shared" / "data"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = load_policy("smollm2-135m")
    model.eval()
    recs = load_benchmark("medqa-4opt:test", data_root=args.data_root).records[: args.prompts]
    prompts = [render(r, "r1-zero") for r in recs]
    plens = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    print(f"model smollm2-135m (fp32 policy), {len(prompts)} prompts x {args.n} samples, prompt tokens "
          f"min/mean/max {min(plens)}/{sum(plens) / len(plens):.0f}/{max(plens)}, {args.max_new_tokens} new tokens, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0, stop=(), ignore_eos=True, seed=0)
    warm = SamplingParams(max_new_tokens=4, temperature=1.0, stop=(), ignore_eos=True, seed=0)

    fast = make_engine("fast", model, tok, dtype=args.dtype, batch_size=args.batch_size)
    run(fast, prompts[:1], args.n, warm)

    def time_fast(tag: str) -> float:
        dt, ntok = run(fast, prompts, args.n, params)
        st = fast.last_stats
        print(f"fast ({fast.dtype}{', kernels' if st.get('kernels') else ''}) [{tag}]: {ntok} tokens in {dt:.2f} s = "
              f"{ntok / dt:.1f} tokens/s; prefilled {st['prefill_tokens']} prompt tokens "
              f"(+{st['shared_prefix_tokens']} reused), {st['decode_steps']} decode steps, kernel threads "
              f"{st.get('kernel_threads', '-')}; peak RSS so far {peak_rss_mb():.0f} MB", flush=True)
        return ntok / dt

    if args.greedy_check:
        greedy_check(model, tok, args)
    tps = [time_fast("run 1")]
    if args.skip_hf:
        print(f"tokens_per_s={tps[0]:.1f} speedup=nan")
        return
    hf = make_engine("hf", model, tok, batch_size=args.batch_size)
    run(hf, prompts[:1], args.n, warm)
    hp = params
    if args.hf_max_new_tokens:
        hp = SamplingParams(max_new_tokens=args.hf_max_new_tokens, temperature=1.0, stop=(), ignore_eos=True, seed=0)
    dt, ntok = run(hf, prompts, args.n, hp)
    hf_tps = ntok / dt
    note = f" (on {hp.max_new_tokens} new tokens)" if args.hf_max_new_tokens else ""
    print(f"hf (transformers generate, fp32): {ntok} tokens in {dt:.2f} s = {hf_tps:.1f} tokens/s{note}; "
          f"peak RSS so far {peak_rss_mb():.0f} MB", flush=True)
    # the machine may be shared: time the fast engine again after hf and use the mean of both runs
    tps.append(time_fast("run 2, after hf"))
    fast_tps = sum(tps) / len(tps)
    print(f"tokens_per_s={fast_tps:.1f} speedup={fast_tps / hf_tps:.1f}")


if __name__ == "__main__":
    main()
