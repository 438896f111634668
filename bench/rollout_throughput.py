"""Rollout throughput: transformers ``generate`` (the ``hf`` engine) vs the ``fast`` engine.

SmolLM2-135M (fp32 policy, as during training), 8 MedQA (4-option, test) questions rendered with the
R1-Zero template, 4 samples each, 256 new tokens with ``ignore_eos=True`` and no stop strings so every
completion has the same length. Both engines run in the same process after a short warm-up call each:
fast, hf, fast again (the machine may be shared, so the fast engine's rate is the mean of the runs
around the hf one). Times include everything ``generate`` does (weight snapshot, prefill, decode,
detokenisation). First, a greedy check: fp32 fast engine vs ``generate`` on 20 starter questions
(identical tokens expected). Prints new tokens per second for each run and, last,
``tokens_per_s=<fast> speedup=<fast / hf>``.

Every fast-engine run is also put against the machine's own limit (:mod:`medrlvr.roofline`): before the
runs, in the same process, the GEMM rate at the model's linear shapes (decode rows and prompt length,
engine dtype) and the memory read bandwidth are measured, and each run prints its limit and
``fraction_of_limit=`` (limit seconds / measured seconds), next to the CPU model and flags. On a shared
machine both the work and the limit are slowed by the others' load, so the fraction stays comparable
where raw tokens/s do not.

``--rows 8,32,128``: instead, time the fast engine at each row count (``rows / n`` prompts, batch size =
rows) and print tokens/s and fraction_of_limit for each.

``--kernel-ab PAIRS``: instead, the keep-or-delete measurement of the fused decode-attention kernel
(``csrc/decode_attention.cpp``): the fast engine with the kernel and with the PyTorch path
(``attn_kernel=False``), alternated PAIRS times on the same prompts in this process; prints each pair's
speed ratio (kernel / PyTorch), their median, and each path's mean fraction_of_limit. With
``--dtype fp32`` it also compares greedy tokens of the two paths.
``--attn-kernel auto|on|off``: the kernel setting of the timed fast engine (auto: on for bf16).

    python bench/rollout_throughput.py [--prompts 8] [--n 4] [--max-new-tokens 256] [--dtype auto|bf16|fp32]
                                       [--threads N] [--skip-hf] [--hf-max-new-tokens K]
                                       [--rows 8,32,128] [--kernel-ab 4] [--attn-kernel auto|on|off]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch
from benchlib import default_data_root, engine_dtype, fixed_params, medqa_prompts, peak_rss_mb, run

import medrlvr.rollout.fast  # noqa: F401  (registers "fast")
from medrlvr import roofline
from medrlvr.models import load_policy
from medrlvr.prompts import render
from medrlvr.rollout import SamplingParams, make_engine


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
    ap.add_argument("--data-root", default=default_data_root())
    ap.add_argument("--rows", default="", help="comma-separated row counts: time the fast engine at each")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per setting in --rows")
    ap.add_argument("--kernel-ab", type=int, default=0, metavar="PAIRS",
                    help="time the fused decode-attention kernel against the PyTorch path, PAIRS alternated pairs")
    ap.add_argument("--attn-kernel", choices=("auto", "on", "off"), default="auto",
                    help="fused decode-attention kernel of the timed fast engine (auto: on for bf16)")
    args = ap.parse_args()
    if args.kernel_ab < 0:
        ap.error(f"--kernel-ab must be >= 0, got {args.kernel_ab}")
    kern = {"auto": None, "on": True, "off": False}[args.attn_kernel]
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = load_policy("smollm2-135m")
    model.eval()
    shape = roofline.ModelShape.from_config(model.config)
    rows_list = [int(x) for x in args.rows.split(",") if x.strip()]
    n_prompts = max([args.prompts] + [-(-r // args.n) for r in rows_list])
    all_prompts, all_plens = medqa_prompts(tok, n_prompts, args.data_root)
    prompts, plens = all_prompts[:args.prompts], all_plens[:args.prompts]
    print(roofline.cpu_summary(), flush=True)
    print(f"model smollm2-135m (fp32 policy), {len(prompts)} prompts x {args.n} samples, prompt tokens "
          f"min/mean/max {min(plens)}/{sum(plens) / len(plens):.0f}/{max(plens)}, {args.max_new_tokens} new tokens, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    params, warm = fixed_params(args.max_new_tokens), fixed_params(4)

    fast = make_engine("fast", model, tok, dtype=args.dtype, batch_size=args.batch_size, attn_kernel=kern)
    edt = engine_dtype(fast)
    print(f"fused decode-attention kernel: "
          f"{'in use' if fast._kern is not None else 'not used (' + fast.kernel_note + ')'}", flush=True)
    decode_rows = sorted({min(args.batch_size, len(prompts) * args.n)} | set(rows_list))
    t0 = time.perf_counter()
    mach = roofline.measure(shape, decode_rows + [round(sum(all_plens) / len(all_plens))], edt)
    print(f"{roofline.describe_machine(mach, shape)} (took {time.perf_counter() - t0:.1f} s)", flush=True)
    dbytes = 2 if edt == "bf16" else 4

    def limit_for(nprompts: int, batch_rows: int) -> roofline.Limit:
        return roofline.rollout_limit(shape, mach, all_plens[:nprompts], args.n, args.max_new_tokens, batch_rows,
                                      dtype_bytes=dbytes)

    def time_engine(eng, ps, tag: str, batch_rows: int) -> tuple[float, float]:
        dt, ntok = run(eng, ps, args.n, params)
        st = eng.last_stats
        print(f"fast ({eng.dtype}) [{tag}]: {ntok} tokens in {dt:.2f} s = "
              f"{ntok / dt:.1f} tokens/s; prefilled {st['prefill_tokens']} prompt tokens, "
              f"{st['decode_steps']} decode steps, threads {st.get('threads', '-')}; "
              f"peak RSS so far {peak_rss_mb():.0f} MB", flush=True)
        lim = limit_for(len(ps), batch_rows)
        print("  " + roofline.report(f"{tag}, {len(ps) * args.n} rows", lim, dt,
                                     f"{len(ps)} prompts x {args.n} x {args.max_new_tokens} tokens"), flush=True)
        return ntok / dt, lim.seconds / dt

    if rows_list:
        run(fast, prompts[:1], args.n, warm)
        summary = []
        for r in rows_list:
            eng = make_engine("fast", model, tok, dtype=args.dtype, batch_size=r, attn_kernel=kern)
            run(eng, prompts[:1], args.n, warm)
            ps = all_prompts[:max(1, r // args.n)]
            got = [time_engine(eng, ps, f"{r} rows, run {i + 1}", r) for i in range(args.repeats)]
            tps = sum(g[0] for g in got) / len(got)
            frac = sum(g[1] for g in got) / len(got)
            summary.append(f"rows={r} tokens_per_s={tps:.1f} fraction_of_limit={frac:.3f}")
        print("; ".join(summary))
        return
    run(fast, prompts[:1], args.n, warm)
    br = min(args.batch_size, len(prompts) * args.n)
    if args.kernel_ab:
        kernel_ab(model, tok, args, prompts, br, time_engine)
        return
    if args.greedy_check:
        greedy_check(model, tok, args)
    tps = [time_engine(fast, prompts, "run 1", br)]
    if args.skip_hf:
        print(f"tokens_per_s={tps[0][0]:.1f} speedup=nan fraction_of_limit={tps[0][1]:.3f}")
        return
    hf = make_engine("hf", model, tok, batch_size=args.batch_size)
    run(hf, prompts[:1], args.n, warm)
    hp = params
    if args.hf_max_new_tokens:
        hp = fixed_params(args.hf_max_new_tokens)
    dt, ntok = run(hf, prompts, args.n, hp)
    hf_tps = ntok / dt
    note = f" (on {hp.max_new_tokens} new tokens)" if args.hf_max_new_tokens else ""
    print(f"hf (transformers generate, fp32): {ntok} tokens in {dt:.2f} s = {hf_tps:.1f} tokens/s{note}; "
          f"peak RSS so far {peak_rss_mb():.0f} MB", flush=True)
    # the machine may be shared: time the fast engine again after hf and use the mean of both runs
    tps.append(time_engine(fast, prompts, "run 2, after hf", br))
    fast_tps = sum(x[0] for x in tps) / len(tps)
    frac = sum(x[1] for x in tps) / len(tps)
    print(f"tokens_per_s={fast_tps:.1f} speedup={fast_tps / hf_tps:.1f} fraction_of_limit={frac:.3f}")


def kernel_ab(model, tok, args, prompts, br, time_engine) -> None:
    """The fused decode-attention kernel against the PyTorch path, alternated in this process."""
    engines = {on: make_engine("fast", model, tok, dtype=args.dtype, batch_size=args.batch_size, attn_kernel=on)
               for on in (True, False)}
    if engines[True]._kern is None:
        print(f"kernel-ab: the kernel cannot run here ({engines[True].kernel_note}); nothing to compare")
        return
    if engine_dtype(engines[True]) == "fp32":
        p = SamplingParams(max_new_tokens=32, temperature=0.0, stop=(), seed=0)
        a, b = (engines[on].generate(prompts, 1, p) for on in (True, False))
        same = sum(x[0].token_ids == y[0].token_ids for x, y in zip(a, b))
        print(f"greedy fp32, kernel vs PyTorch path ({len(prompts)} prompts x 32 tokens): identical on "
              f"{same}/{len(prompts)}", flush=True)
    for eng in engines.values():
        run(eng, prompts[:1], args.n, fixed_params(4))
    ratios, fracs = [], {True: [], False: []}
    for i in range(args.kernel_ab):
        order = (True, False) if i % 2 == 0 else (False, True)
        got = {on: time_engine(engines[on], prompts, f"{'kernel' if on else 'pytorch'}, pair {i + 1}", br)
               for on in order}
        ratios.append(got[True][0] / got[False][0])
        for on in (True, False):
            fracs[on].append(got[on][1])
        print(f"pair {i + 1}: kernel / pytorch = {ratios[-1]:.3f}", flush=True)
    print(f"kernel_vs_pytorch median={statistics.median(ratios):.3f} (pairs {min(ratios):.3f}-{max(ratios):.3f}); "
          f"fraction_of_limit kernel={statistics.mean(fracs[True]):.3f} "
          f"pytorch={statistics.mean(fracs[False]):.3f}")


if __name__ == "__main__":
    main()
