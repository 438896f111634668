"""Rollout benchmarks: how fast the rollout engines generate on this machine, each against the machine's limit
(:mod:`medrlvr.roofline`) where the work has one, the compared sides measured in the same run.

    python bench/rollout.py throughput [...]   the fast engine vs transformers generate (speed-up, greedy check,
                                              --rows, --kernel-ab)
    python bench/rollout.py sweep [...]        tokens/s and peak RSS against rows, response length and model size
                                              (writes docs/perf/scaling_curves.{png,md,json})
    python bench/rollout.py ab --base REV      the fast engine now vs the one of an earlier git revision
    python bench/rollout.py profile [...]      where the fast engine's time goes (torch.profiler)
    python bench/rollout.py bf16 [...]         bf16 vs fp32 matmul at SmolLM2-135M shapes

``python bench/rollout.py COMMAND --help`` describes each one, its options and the fields it prints.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (puts src/ on the path)
from harness import (ROOT, ChildFailed, MODELS, alternated, default_data_root, engine_dtype,  # noqa: E402
                     fixed_params, medqa_prompts, peak_rss_mb, timed_generate)



# ===================================================================================== throughput
def add_throughput(ap) -> None:
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
    ap.add_argument("--rows", type=harness.ints, default="",
                    help="comma-separated row counts: time the fast engine at each")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per setting in --rows")
    ap.add_argument("--kernel-ab", type=int, default=0, metavar="PAIRS",
                    help="time the fused decode-attention kernel against the PyTorch path, PAIRS alternated pairs")
    ap.add_argument("--attn-kernel", choices=("auto", "on", "off"), default="auto",
                    help="fused decode-attention kernel of the timed fast engine (auto: on for bf16)")


def check_throughput(a, ap) -> None:
    if a.kernel_ab < 0:
        ap.error(f"--kernel-ab must be >= 0, got {a.kernel_ab}")
    if min([a.prompts, a.n, a.max_new_tokens, a.batch_size, a.repeats] + a.rows) < 1:
        ap.error("--prompts, --n, --max-new-tokens, --batch-size, --repeats and every --rows count must be >= 1")
    if a.greedy_check < 0 or a.greedy_tokens < 1 or a.hf_max_new_tokens < 0:
        ap.error("--greedy-check and --hf-max-new-tokens must be >= 0, --greedy-tokens >= 1")


def greedy_check(model, tok, args) -> None:
    """Greedy fp32 decoding, fast engine vs transformers generate, on starter questions of mixed lengths."""
    from medrlvr.data import load_starter
    from medrlvr.prompts import render
    from medrlvr.rollout import SamplingParams, make_engine

    recs = load_starter("all").records[: args.greedy_check]
    prompts = [render(r, "r1-zero") for r in recs]
    p = SamplingParams(max_new_tokens=args.greedy_tokens, temperature=0.0, stop=(), seed=0)
    ref = [g[0].token_ids for g in make_engine("hf", model, tok).generate(prompts, 1, p)]
    got = [g[0].token_ids for g in make_engine("fast", model, tok, dtype="fp32").generate(prompts, 1, p)]
    same = sum(a == b for a, b in zip(ref, got))
    print(f"greedy check (fp32, {len(prompts)} prompts x {args.greedy_tokens} tokens): fast == generate on "
          f"{same}/{len(prompts)}", flush=True)


def throughput(args, ap) -> int:
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

        python bench/rollout.py throughput [--prompts 8] [--n 4] [--max-new-tokens 256] [--dtype auto|bf16|fp32]
                                           [--threads N] [--skip-hf] [--hf-max-new-tokens K]
                                           [--rows 8,32,128] [--kernel-ab 4] [--attn-kernel auto|on|off]
    """
    import torch

    import medrlvr.rollout.fast  # noqa: F401  (registers "fast")
    from medrlvr import roofline
    from medrlvr.rollout import make_engine

    kern = {"auto": None, "on": True, "off": False}[args.attn_kernel]
    harness.set_threads(args.threads)
    model, tok = harness.load_model("135m")
    shape = roofline.ModelShape.from_config(model.config)
    rows_list = args.rows
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
    mach = harness.measure_rollout(shape, decode_rows, all_plens, edt)
    print(f"{roofline.describe_machine(mach, shape)} (took {time.perf_counter() - t0:.1f} s)", flush=True)

    def time_engine(eng, ps, tag: str, batch_rows: int) -> tuple[float, float]:
        dt, ntok = timed_generate(eng, ps, args.n, params)
        st = eng.last_stats
        print(f"fast ({eng.dtype}) [{tag}]: {ntok} tokens in {dt:.2f} s = "
              f"{ntok / dt:.1f} tokens/s; prefilled {st['prefill_tokens']} prompt tokens, "
              f"{st['decode_steps']} decode steps, threads {st.get('threads', '-')}; "
              f"peak RSS so far {peak_rss_mb():.0f} MB", flush=True)
        lim = harness.rollout_limit(shape, mach, all_plens[:len(ps)], args.n, args.max_new_tokens, batch_rows, edt)
        print("  " + roofline.report(f"{tag}, {len(ps) * args.n} rows", lim, dt,
                                     f"{len(ps)} prompts x {args.n} x {args.max_new_tokens} tokens"), flush=True)
        return ntok / dt, lim.seconds / dt

    if rows_list:
        timed_generate(fast, prompts[:1], args.n, warm)
        summary = []
        for r in rows_list:
            eng = make_engine("fast", model, tok, dtype=args.dtype, batch_size=r, attn_kernel=kern)
            timed_generate(eng, prompts[:1], args.n, warm)
            ps = all_prompts[:max(1, r // args.n)]
            got = [time_engine(eng, ps, f"{r} rows, run {i + 1}", r) for i in range(args.repeats)]
            tps = sum(g[0] for g in got) / len(got)
            frac = sum(g[1] for g in got) / len(got)
            summary.append(f"rows={r} tokens_per_s={tps:.1f} fraction_of_limit={frac:.3f}")
        print("; ".join(summary))
        return 0
    timed_generate(fast, prompts[:1], args.n, warm)
    br = min(args.batch_size, len(prompts) * args.n)
    if args.kernel_ab:
        kernel_ab(model, tok, args, prompts, br, time_engine)
        return 0
    if args.greedy_check:
        greedy_check(model, tok, args)
    tps = [time_engine(fast, prompts, "run 1", br)]
    if args.skip_hf:
        print(f"tokens_per_s={tps[0][0]:.1f} speedup=nan fraction_of_limit={tps[0][1]:.3f}")
        return 0
    hf = make_engine("hf", model, tok, batch_size=args.batch_size)
    timed_generate(hf, prompts[:1], args.n, warm)
    hp = fixed_params(args.hf_max_new_tokens) if args.hf_max_new_tokens else params
    dt, ntok = timed_generate(hf, prompts, args.n, hp)
    hf_tps = ntok / dt
    note = f" (on {hp.max_new_tokens} new tokens)" if args.hf_max_new_tokens else ""
    print(f"hf (transformers generate, fp32): {ntok} tokens in {dt:.2f} s = {hf_tps:.1f} tokens/s{note}; "
          f"peak RSS so far {peak_rss_mb():.0f} MB", flush=True)
    # the machine may be shared: time the fast engine again after hf and use the mean of both runs
    tps.append(time_engine(fast, prompts, "run 2, after hf", br))
    fast_tps = sum(x[0] for x in tps) / len(tps)
    frac = sum(x[1] for x in tps) / len(tps)
    print(f"tokens_per_s={fast_tps:.1f} speedup={fast_tps / hf_tps:.1f} fraction_of_limit={frac:.3f}")
    return 0


def kernel_ab(model, tok, args, prompts, br, time_engine) -> None:
    """The fused decode-attention kernel against the PyTorch path, alternated in this process."""
    from medrlvr.rollout import SamplingParams, make_engine

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
        timed_generate(eng, prompts[:1], args.n, fixed_params(4))
    ratios, fracs = [], {True: [], False: []}
    for i, order in alternated(args.kernel_ab, True, False):
        got = {on: time_engine(engines[on], prompts, f"{'kernel' if on else 'pytorch'}, pair {i + 1}", br)
               for on in order}
        ratios.append(got[True][0] / got[False][0])
        for on in (True, False):
            fracs[on].append(got[on][1])
        print(f"pair {i + 1}: kernel / pytorch = {ratios[-1]:.3f}", flush=True)
    print(f"kernel_vs_pytorch median={statistics.median(ratios):.3f} (pairs {min(ratios):.3f}-{max(ratios):.3f}); "
          f"fraction_of_limit kernel={statistics.mean(fracs[True]):.3f} "
          f"pytorch={statistics.mean(fracs[False]):.3f}")


# ========================================================================================== sweep
EST_NOTE = "about 30 minutes on a quiet 2-core AMD EPYC (estimated; see the docstring), ~16-19 GB RAM for 1.7B"
ENGINE_LABEL = {"fast": "fast", "hf": "generate"}
AXES = (("rows", "rows (decode batch)"), ("length", "response length (new tokens)"), ("model", "model size"))
SWEEP_FILES = "scaling_curves"


def add_sweep(ap) -> None:
    ap.add_argument("--out", default=str(ROOT / "docs" / "perf"))
    ap.add_argument("--quick", action="store_true", help="smoke check: tiny sweeps and few tokens")
    ap.add_argument("--rows", type=harness.ints, default=[8, 16, 32, 64, 128, 256])
    ap.add_argument("--lengths", type=harness.ints, default=[64, 128, 256, 512, 1024])
    ap.add_argument("--models", type=harness.names, default=["135m", "360m", "1.7b"])
    ap.add_argument("--base-rows", type=int, default=32)
    ap.add_argument("--base-length", type=int, default=128)
    ap.add_argument("--base-model", default="135m")
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt (rows / samples prompts)")
    ap.add_argument("--dtype", default="auto", help="fast engine dtype: auto (bf16 where native), bf16 or fp32")
    ap.add_argument("--engines", type=harness.names, default=["fast", "hf"])
    ap.add_argument("--skip-hf", action="store_true", help="only the fast engine (generate points are not listed)")
    ap.add_argument("--hf-max-tokens", type=int, default=8192,
                    help="skip generate points above this many completion tokens (rows x length; 0 = no cap)")
    ap.add_argument("--hf-max-rows", type=int, default=0, help="skip generate points above this many rows (0 = no cap)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each point (0 = torch's default)")
    ap.add_argument("--data-root", default=None, help="default: $MEDRLVR_DATA_ROOT, else ../shared/data")
    ap.add_argument("--point-timeout", type=int, default=1800, help="seconds per point before it is failed (0 = none)")
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="after this many minutes the remaining points are skipped (0 = no limit)")
    ap.add_argument("--resume", action="store_true", help="re-use the measured points of --out's JSON")
    ap.add_argument("--dry-run", action="store_true", help="print the points (and what is skipped), run nothing")
    ap.add_argument("--point", help=argparse.SUPPRESS)


def check_sweep(a, ap) -> None:
    if a.quick:
        a.rows, a.lengths, a.models, a.base_rows, a.base_length = [4, 8], [8, 16], ["135m", "360m"], 8, 16
    if a.skip_hf:
        a.engines = [e for e in a.engines if e != "hf"]
    a.fast_dtype = a.dtype
    if a.dtype == "auto":
        from medrlvr.hardware import fast_bf16   # imports torch

        a.fast_dtype = "bf16" if fast_bf16("cpu") else "fp32"
    bad = [m for m in a.models + [a.base_model] if m not in MODELS] + [e for e in a.engines if e not in ENGINE_LABEL]
    if bad:
        ap.error(f"unknown model / engine {bad}: models {', '.join(MODELS)}, engines {', '.join(ENGINE_LABEL)}")
    if min([a.samples, a.base_rows, a.base_length] + a.rows + a.lengths) < 1:
        ap.error("--samples, --base-rows, --base-length and every --rows and --lengths value must be >= 1")
    if any(r % a.samples for r in a.rows + [a.base_rows]):
        ap.error(f"every row count must be a multiple of --samples {a.samples}")


def est_memory_gb(p: dict, plen: int = 350) -> float:
    """Rough peak of a point's process (for the memory guard, not the table), 1 GB base plus: the fp32
    policy; the fast engine's weights twice in its dtype (its buffers and oneDNN's pre-packed copy) and its
    KV cache; ``generate``'s fp32 KV cache (every row holds its left-padded prompt) counted twice (the
    per-step concatenation; the 135m base point peaked at 3.05 GB against 2.9 estimated). ``plen``: a
    prompt's tokens (MedQA: ~300 mean for the first 8). The 1.7B points need ~16 GB (fast) and ~19 GB."""
    s = harness.model_shape(p["model"])
    params = s.linear_params()
    if p["engine"] == "fast":
        db = harness.dtype_bytes(p["dtype"])
        kv = s.kv_bytes(p["rows"] * p["length"] + p["rows"] // p["samples"] * plen, db)
        extra = 2 * params * db
    else:
        kv, extra = 2 * s.kv_bytes(p["rows"] * (plen + p["length"]), 4), 0
    return (params * 4 + extra + kv) / 1e9 + 1.0


def available_gb() -> float:
    try:
        for ln in Path("/proc/meminfo").read_text().splitlines():
            if ln.startswith("MemAvailable:"):
                return int(ln.split()[1]) / 2 ** 20
    except OSError:
        pass
    return float("inf")


def plan(a) -> list[dict]:
    """Every (axis, value, engine) point, in run order; ``skip`` set where the caps rule it out."""
    sweeps = {"rows": a.rows, "length": a.lengths, "model": a.models}
    out = []
    for axis, _ in AXES:
        for v in sweeps[axis]:
            cfg = {"rows": a.base_rows, "length": a.base_length, "model": a.base_model, axis: v}
            for eng in a.engines:
                p = dict(axis=axis, value=v, engine=eng, samples=a.samples,
                         dtype=a.fast_dtype if eng == "fast" else "fp32", **cfg)
                tok = p["rows"] * p["length"]
                if eng == "hf" and a.hf_max_tokens and tok > a.hf_max_tokens:
                    p["skip"] = f"skipped: {p['rows']} rows x {p['length']} tokens = {tok} > --hf-max-tokens {a.hf_max_tokens}"
                elif eng == "hf" and a.hf_max_rows and p["rows"] > a.hf_max_rows:
                    p["skip"] = f"skipped: {p['rows']} rows > --hf-max-rows {a.hf_max_rows}"
                out.append(p)
    return out


def key(p: dict) -> tuple:
    return (p["model"], p["rows"], p["length"], p["engine"], p["dtype"], p["samples"])


def run_point(p: dict, data_root: str | None, threads: int) -> dict:
    """Time one point in this (fresh) process; the dict the parent records."""
    import torch

    import medrlvr.rollout.fast  # noqa: F401  (registers "fast")
    from medrlvr import roofline
    from medrlvr.rollout import make_engine

    harness.set_threads(threads)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    model, tok = harness.load_model(p["model"])
    load_s, rss_load = time.perf_counter() - t0, peak_rss_mb()
    n = p["samples"]
    prompts, plens = medqa_prompts(tok, p["rows"] // n, data_root)
    kw = {"dtype": p["dtype"]} if p["engine"] == "fast" else {}
    eng = make_engine(p["engine"], model, tok, batch_size=p["rows"], **kw)
    edt = engine_dtype(eng)
    timed_generate(eng, prompts[:1], n, fixed_params(4))
    cpu0 = time.process_time()
    dt, ntok = timed_generate(eng, prompts, n, fixed_params(p["length"]))
    cpu_s, rss = time.process_time() - cpu0, peak_rss_mb()
    if ntok != p["rows"] * p["length"]:
        raise RuntimeError(f"{ntok} tokens returned, expected {p['rows']} x {p['length']}")
    shape = roofline.ModelShape.from_config(model.config)
    mach = harness.measure_rollout(shape, [p["rows"]], plens, edt)
    lim = harness.rollout_limit(shape, mach, plens, n, p["length"], p["rows"], edt)
    print(roofline.report(f"{p['engine']} {edt}, {p['model']}, {p['rows']} rows", lim, dt,
                          f"{len(prompts)} prompts x {n} x {p['length']} tokens"), file=sys.stderr, flush=True)
    st = getattr(eng, "last_stats", {}) or {}
    return dict(tokens=ntok, seconds=dt, tokens_per_s=ntok / dt, peak_rss_mb=rss, fraction_of_limit=lim.seconds / dt,
                cpu_s=cpu_s, peak_rss_after_load_mb=rss_load,
                limit_s=lim.seconds, bound=lim.bound, engine_dtype=edt, prompt_tokens_mean=sum(plens) / len(plens),
                threads=st.get("threads", torch.get_num_threads()), load_s=load_s,
                load_avg=[load0, os.getloadavg()[0]], params_m=(shape.linear_params()) / 1e6,
                gemm_gflops=[min(mach.rates.values()) / 1e9, max(mach.rates.values()) / 1e9],
                bandwidth_gbs=mach.bandwidth / 1e9)


def spawn(p: dict, a) -> dict:
    """Run one point in a fresh process; its result, or ``{"skip": "failed: ..."}``."""
    spec = {k: p[k] for k in ("model", "rows", "length", "engine", "dtype", "samples")}
    cmd = [sys.executable, __file__, "sweep", "--point", json.dumps(spec), "--threads", str(a.threads)]
    if a.data_root:
        cmd += ["--data-root", a.data_root]
    try:
        out, err = harness.child_result(cmd, timeout=a.point_timeout or None)
    except ChildFailed as e:
        return {"skip": f"failed: {e}"}
    lim = [ln for ln in err.splitlines() if ln.startswith("roofline [")]
    if lim:
        out["roofline"] = lim[-1]
    return out


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def point_line(p: dict) -> str:
    """The one-line summary of a point (printed as it finishes)."""
    head = (f"[{p['axis']}={p['value']}] {ENGINE_LABEL[p['engine']]} ({p.get('engine_dtype') or p['dtype']}), "
            f"{p['model']}, {p['rows']} rows x {p['length']} tokens: ")
    if p.get("skip") or "tokens" not in p:
        return head + (p.get("skip") or f"planned, ~{est_memory_gb(p):.1f} GB")
    return head + (f"{p['tokens']} tokens in {p['seconds']:.2f} s = {p['tokens_per_s']:.1f} tokens/s, "
                   f"peak RSS {p['peak_rss_mb']:.0f} MB, fraction_of_limit={p['fraction_of_limit']:.3f}")


def write_markdown(path: Path, meta: dict, points: list[dict]) -> None:
    lines = ["# How rollout cost grows (`bench/rollout.py sweep`)", "",
             f"Command: `{meta['command']}`", "",
             f"- {meta['cpu']}",
             f"- torch {meta['torch']}, torch threads {meta['threads']}; started {meta['started']}, "
             f"load average {meta['load_avg_start']:.2f} at the start",
             f"- base point: {meta['base']}; each axis varies one of them",
             f"- dtypes: {meta['dtypes']}",
             f"- {meta['memory_note']}",
             f"- {meta['limit_note']}",
             "- threads: torch threads of the timed call (the fast engine in bf16 picks all or 1 by measured speed)",
             *([f"- {meta['resumed']}"] if meta.get("resumed") else []),
             "",
             "| axis | value | engine | dtype | model | rows | new tokens | tokens | seconds | tokens/s | "
             "peak RSS MB | fraction_of_limit | threads | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        lines.append("| " + " | ".join([
            p["axis"], str(p["value"]), ENGINE_LABEL[p["engine"]], p.get("engine_dtype") or p["dtype"], p["model"],
            str(p["rows"]), str(p["length"]), _fmt(p.get("tokens"), "d"), _fmt(p.get("seconds"), ".2f"),
            _fmt(p.get("tokens_per_s"), ".1f"), _fmt(p.get("peak_rss_mb"), ".0f"),
            _fmt(p.get("fraction_of_limit"), ".3f"), _fmt(p.get("threads"), "d"),
            p.get("skip") or p.get("note") or ""]) + " |")
    if meta.get("finished"):
        lines += ["", f"Finished {meta['finished']} ({meta['wall_min']:.1f} min in all)."]
    path.write_text("\n".join(lines) + "\n")


def write_plot(path: Path, meta: dict, points: list[dict]) -> None:
    """One column per axis: tokens/s (top, log y) and peak RSS (bottom), fast vs generate."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(15, 8.5))
    FigureCanvasAgg(fig)
    axs = fig.subplots(2, len(AXES), squeeze=False)
    style = {"fast": dict(marker="o", ls="-", color="tab:blue"), "hf": dict(marker="s", ls="--", color="tab:orange")}
    for j, (axis, label) in enumerate(AXES):
        pts = [p for p in points if p["axis"] == axis]
        values = list(dict.fromkeys(p["value"] for p in pts))
        categorical = axis == "model"
        xpos = {v: (i if categorical else v) for i, v in enumerate(values)}
        top, bot = axs[0][j], axs[1][j]
        skipped = []
        for eng in ("fast", "hf"):
            ok = [p for p in pts if p["engine"] == eng and not p.get("skip")]
            skipped += [f"{ENGINE_LABEL[eng]} {p['value']}" for p in pts if p["engine"] == eng and p.get("skip")]
            if not ok:
                continue
            dts = sorted({p.get("engine_dtype") or p["dtype"] for p in ok})
            lab = f"{ENGINE_LABEL[eng]} ({'/'.join(dts)})"
            xs = [xpos[p["value"]] for p in ok]
            top.plot(xs, [p["tokens_per_s"] for p in ok], label=lab, **style[eng])
            bot.plot(xs, [p["peak_rss_mb"] for p in ok], label=lab, **style[eng])
            for p, x in zip(ok, xs):
                if p.get("fraction_of_limit") is not None:
                    top.annotate(f"{p['fraction_of_limit']:.2f}", (x, p["tokens_per_s"]), fontsize=7,
                                 textcoords="offset points", xytext=(3, 4), color=style[eng]["color"])
        for ax in (top, bot):
            ax.grid(True, which="both", alpha=0.3)
            ax.margins(x=0.1)
            if categorical:
                ax.set_xticks(range(len(values)), [f"{v}\n({'real' if v == '135m' else 'random'} weights)"
                                                   for v in values])
            elif len(values) > 1:
                ax.set_xscale("log", base=2)
                ax.set_xticks(values, [str(v) for v in values])
            ax.set_xlabel(label)
        if any(not p.get("skip") for p in pts):
            top.set_yscale("log")
            top.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
            top.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}" if f"{y:e}"[0] in "25" else ""))
            bot.set_ylim(bottom=0)
        top.set_title(f"tokens/s vs {label}" + (f"\nnot run (see the table): {', '.join(skipped)}" if skipped else ""),
                      fontsize=9)
        bot.set_title(f"peak RSS (MB) vs {label}", fontsize=9)
        top.set_ylabel("completion tokens/s (labels: fraction_of_limit)")
        bot.set_ylabel("peak RSS of the point's process, MB")
        if top.get_legend_handles_labels()[0]:
            top.legend(fontsize=8)
    fig.suptitle(f"Rollout cost, base: {meta['base']}\n{meta['cpu']}; torch {meta['torch']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_all(out: Path, meta: dict, points: list[dict]) -> None:
    """scaling_curves.json, .md and .png in ``out`` (each written whole, then renamed into place)."""
    out.mkdir(parents=True, exist_ok=True)
    for ext, writer in (("json", lambda f: f.write_text(json.dumps({"meta": meta, "points": points}, indent=1) + "\n")),
                        ("md", lambda f: write_markdown(f, meta, points)),
                        ("png", lambda f: write_plot(f, meta, points))):
        name = f"{SWEEP_FILES}.{ext}"
        tmp = out / f".{name}.tmp.{ext}"
        writer(tmp)
        os.replace(tmp, out / name)


def sweep(a, ap) -> int:
    """How rollout cost grows: tokens/s and peak memory against rows, response length and model size, for the
    fast engine and transformers ``generate`` (the ``hf`` engine). Writes ``scaling_curves.png``,
    ``scaling_curves.md`` and ``scaling_curves.json`` to ``docs/perf/`` (``--out DIR``).

    Three axes, each sweeping one variable with the other two at the base point (rows 32 = 8 prompts x 4
    samples, 128 new tokens, SmolLM2-135M):

    * rows (decode batch): 8, 16, 32, 64, 128, 256 (``rows / 4`` prompts x 4 samples; batch size = rows, so all
      rows decode together);
    * response length (new tokens per completion): 64, 128, 256, 512, 1024;
    * model size: SmolLM2-135M (the embedded model, real weights), and Llama configs of SmolLM2-360M's shape
      (hidden 960, 32 layers, 15 heads, 5 KV heads, intermediate 2560) and SmolLM2-1.7B's (hidden 2048, 24
      layers, 32 heads, 32 KV heads, intermediate 8192), vocab 49152, tied embeddings, with RANDOM weights
      (``LlamaForCausalLM(config)``, seed 0) and the embedded model's tokenizer: timing only, the text they
      sample is noise. Every other config field is the embedded model's.

    Every point is timed for both engines, each in a FRESH subprocess (the script re-invoked with ``--point``):
    load the model, one warm-up call (1 prompt x 4 samples x 4 tokens), one timed ``generate`` call, then the
    child's ``ru_maxrss`` is read: peak RSS of the whole process, i.e. Python + torch + the fp32 policy module +
    the engine's buffers (the fast engine: its bf16 weights, held twice as its buffers and oneDNN's pre-packed
    copy, and its static KV cache; ``generate``: its growing KV cache) + activations and the tokenizer; points do
    not contaminate one another. After that (so its buffers do not count in the RSS) the machine's own limit is
    measured in the same child (:mod:`medrlvr.roofline`: GEMM rate at the model's linear shapes for the point's
    rows and mean prompt length, in the engine's dtype, and the read bandwidth) and ``fraction_of_limit`` = limit
    seconds / measured seconds, as in ``bench/rollout.py throughput``. The limit of the work is the same roofline
    for both engines (prompt KV shared per group), in the engine's own dtype: the fast engine's ``auto`` (bf16
    where native, else fp32) and the policy's fp32 for ``generate``.

    Simplifications, stated: prompts are the first MedQA (4-option, test) questions with the R1-Zero template;
    ``ignore_eos`` and no stop string, so every completion has exactly the point's length (the work does not
    depend on what is sampled); temperature 1; one timed call per point (no repeats: the whole run is a sweep,
    re-run it for spread); times include everything ``generate`` does (weight snapshot, prefill, decode,
    detokenisation), not the model load. The base point is run once and shown on each axis. On a shared machine
    tokens/s move with the others' load; ``fraction_of_limit`` is measured under the same load.

    ``generate`` is slow: its points above ``--hf-max-tokens`` completion tokens (rows x length, default 8192)
    or ``--hf-max-rows`` rows are not run and appear in the table as ``skipped: <reason>``; so does any point
    whose estimated memory exceeds what ``/proc/meminfo`` says is available, and every point after
    ``--max-minutes`` (0 = no limit). A child that fails or passes ``--point-timeout`` is recorded as
    ``failed: <reason>``. Results are rewritten after every point (an interrupted run keeps what it measured;
    ``--resume`` re-uses the measured points of an earlier JSON in ``--out``).

    Duration of the full default run (20 child processes: 12 settings x 2 engines, the 4 capped ``generate``
    points not run), ESTIMATED, not measured: about 30 minutes on the 2-core AMD EPYC (Zen 4, AVX512-BF16)
    when it is quiet, 25-35 given the guesswork. Basis: points timed with ``--threads 1`` on a busy machine
    (load 3-5), in CPU seconds of the timed call: fast 135m 32 rows x 128 tokens 19.8 s, x 512 tokens 84.9 s;
    generate 135m 32 x 128 96.8 s; the other points scaled from those by tokens and FLOPs (generate prefills
    every row's prompt: 32 x ~400 tokens); the 1.7B generate point (~57 TFLOP in fp32) is the largest single
    one (~6-12 min). Altogether ~50 single-thread CPU minutes including ~15-25 s per child for loading and the
    limit measurement, over ~1.7x for two threads. ``--hf-max-tokens 4096`` drops the generate points at 64
    rows and 256 tokens (~5 min less); ``--max-minutes`` bounds the whole run. Memory: the 1.7B points need
    ~16 GB (fast: fp32 policy + bf16 weights twice, its buffers and oneDNN's packed copy) and up to ~19 GB
    (generate: fp32 policy + fp32 KV cache of 32 rows x ~530 positions); with other jobs holding memory they
    are skipped by the guard.

    ``--quick``: rows 4, 8; lengths 8, 16; models 135m, 360m (base: rows 8, 16 tokens, 135m): a smoke check of
    every code path (about 7 minutes on a busy 2-core machine under ``nice``). ``--dry-run`` lists the points.

        python bench/rollout.py sweep [--out docs/perf] [--quick] [--resume]
            [--rows 8,16,32,64,128,256] [--lengths 64,128,256,512,1024] [--models 135m,360m,1.7b]
            [--base-rows 32] [--base-length 128] [--base-model 135m] [--samples 4] [--dtype auto|bf16|fp32]
            [--engines fast,hf] [--hf-max-tokens 8192] [--hf-max-rows 0] [--threads N] [--max-minutes 0]
    """
    if a.point:
        harness.emit_result(run_point(json.loads(a.point), a.data_root, a.threads))
        return 0
    import torch

    from medrlvr import roofline

    harness.set_threads(a.threads)
    if a.dry_run:
        for p in plan(a):
            print(point_line(p))
        return 0
    out = Path(a.out)
    meta = dict(
        command=" ".join(shlex.quote(x) for x in [Path(sys.executable).name, *sys.argv]),
        cpu=roofline.cpu_summary(), torch=torch.__version__, threads=torch.get_num_threads(),
        started=time.strftime("%Y-%m-%d %H:%M:%S %Z"), load_avg_start=os.getloadavg()[0],
        base=f"{a.base_rows} rows ({a.base_rows // a.samples} prompts x {a.samples} samples), {a.base_length} new "
             f"tokens, {a.base_model}",
        dtypes=f"fast engine {a.fast_dtype} (--dtype {a.dtype}; auto = bf16 where native); generate fp32 (the policy "
               f"module is fp32, as in training); 360m / 1.7b: random weights, timing only",
        memory_note="peak RSS: ru_maxrss of the point's own fresh process (Python, torch, fp32 policy, engine "
                    "buffers, KV cache, activations), read before the limit measurement",
        limit_note="fraction_of_limit: roofline limit (GEMM rate and read bandwidth measured in the point's "
                   "process, engine dtype) / measured seconds",
    )
    print(meta["cpu"], flush=True)
    print(f"torch {meta['torch']}, threads {meta['threads']}; base point {meta['base']}; out {out}", flush=True)
    prev_json = out / f"{SWEEP_FILES}.json"
    done: dict[tuple, dict] = {}
    if a.resume and prev_json.is_file():
        for p in json.loads(prev_json.read_text())["points"]:
            if not p.get("skip"):
                done.setdefault(key(p), p)      # the first axis that ran it
        print(f"resume: {len(done)} measured points re-used from {prev_json}", flush=True)
        meta["resumed"] = f"{len(done)} measured settings re-used from the earlier run's JSON (--resume)"
    t_start = time.time()
    points: list[dict] = []
    for p in plan(a):
        k = key(p)
        if not p.get("skip") and k in done:
            prev = done[k]
            p.update({f: v for f, v in prev.items() if f not in ("axis", "value", "note")})
            if prev.get("axis") != p["axis"] or prev.get("value") != p["value"]:
                p["note"] = f"same run as {prev['axis']}={prev['value']}"
        elif not p.get("skip"):
            need, avail = est_memory_gb(p), available_gb()
            if a.max_minutes and time.time() - t_start > 60 * a.max_minutes:
                p["skip"] = f"skipped: past --max-minutes {a.max_minutes:g}"
            elif need > 0.9 * avail:
                p["skip"] = f"skipped: needs ~{need:.1f} GB, {avail:.1f} GB available"
            else:
                p.update(spawn(p, a))
                if not p.get("skip"):
                    done[k] = p
        points.append(p)
        print(point_line(p), flush=True)
        meta["wall_min"] = (time.time() - t_start) / 60
        write_all(out, meta, points)
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    meta["wall_min"] = (time.time() - t_start) / 60
    write_all(out, meta, points)
    print(f"wrote {out}/{SWEEP_FILES}.{{png,md,json}} ({meta['wall_min']:.1f} min)", flush=True)
    return 0


sweep.epilog = f"Full default run: {EST_NOTE}"


# ============================================================================================= ab
# where the fast engine's source lives, newest layout first, and the package it is imported into
BASE_SOURCES = (("src/medrlvr/rollout/fast.py", "medrlvr.rollout"), ("src/medrlvr/fast_rollout.py", "medrlvr"))


def add_ab(ap) -> None:
    ap.add_argument("--base", required=True, help="git revision of the base engine (e.g. HEAD~3, a commit id)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=6, help="timed (base, new) pairs")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"], help="auto: bf16 where native")
    ap.add_argument("--data-root", default=default_data_root())


def check_ab(a, ap) -> None:
    if a.pairs < 1 or a.prompts < 1 or a.n < 1 or a.max_new_tokens < 1:
        ap.error("--pairs, --prompts, --n and --max-new-tokens must be >= 1")


def _git(*args: str) -> str:
    """``git ARGS`` in the repository: its stdout; ``ValueError`` with git's last error line when it fails."""
    try:
        return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as e:
        raise ValueError(e.stderr.strip().splitlines()[-1] if e.stderr.strip() else "git failed") from None
    except OSError as e:
        raise ValueError(f"git: {e}") from None


def load_base(rev: str):
    """The fast engine module of git revision ``rev``, imported beside the current one (as
    ``medrlvr.rollout._fast_base``, or ``medrlvr._fast_rollout_base`` from a revision before the package
    layout): ``src/medrlvr/rollout/fast.py`` is tried first, then ``src/medrlvr/fast_rollout.py``. The files it
    reads beside itself (a ``csrc/`` kernel source) are taken from ``rev`` too. Raises ``ValueError`` (one
    line) when neither file is at ``rev`` or the old source does not import with this checkout."""
    import atexit
    import shutil
    import tempfile

    from medrlvr.rollout import ENGINES

    errors = []
    for path, pkg in BASE_SOURCES:
        try:
            src = _git("show", f"{rev}:{path}")
            break
        except ValueError as e:
            errors.append(str(e))
    else:
        raise ValueError("; ".join(dict.fromkeys(errors)))
    here = Path(tempfile.mkdtemp(prefix="fast_base_"))
    atexit.register(shutil.rmtree, here, True)
    (here / Path(path).name).write_text(src)
    csrc = f"{Path(path).parent.as_posix()}/csrc"
    for f in _git("ls-tree", "-r", "--name-only", rev, "--", csrc).split():
        dest = here / Path(f).relative_to(Path(path).parent)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(_git("show", f"{rev}:{f}"))
    name = f"{pkg}._fast_base" if pkg != "medrlvr" else "medrlvr._fast_rollout_base"
    spec = importlib.util.spec_from_loader(name, loader=None, origin=f"{rev}:{path}")
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = pkg
    mod.__file__ = str(here / Path(path).name)
    keep = ENGINES.get("fast")
    try:
        exec(compile(src, spec.origin, "exec"), mod.__dict__)
    except Exception as e:  # noqa: BLE001 - an old revision may import what this checkout no longer has
        raise ValueError(f"{path} does not import with this checkout: {type(e).__name__}: {e}") from None
    finally:
        if keep is not None:
            ENGINES["fast"] = keep          # the base registered itself as "fast": restore the current engine
    if not hasattr(mod, "FastEngine"):
        raise ValueError(f"{path} has no FastEngine")
    sys.modules[name] = mod
    return mod


def ab(args, ap) -> int:
    """The fast engine now vs the fast engine of an earlier git revision, side by side in one process.

    A change to the fast engine (``src/medrlvr/rollout/fast.py``) is worth a few percent at most per step, and on
    a shared VM the speed of consecutive runs drifts by more than that. So both engines run in the same process
    over the same prompts, alternating (base, new, new, base, ...), and what is reported is the ratio of each
    adjacent pair and its median, next to each engine's median and best tokens/s. The base engine's source is
    read with ``git show REV:src/medrlvr/rollout/fast.py`` (for a revision before the package layout,
    ``REV:src/medrlvr/fast_rollout.py``), with the kernel source beside it at REV (``csrc/``), and imported as a
    module of the package (it never replaces the registered ``fast`` engine). A revision whose engine imports
    what this checkout no longer has is refused with one line (exit 2).

    SmolLM2-135M (fp32 policy), the first ``--prompts`` MedQA 4-option test questions (R1-Zero prompt), ``--n``
    samples each, ``--max-new-tokens`` tokens with ``ignore_eos`` (the same work for both), engine dtype
    ``--dtype`` (auto: bf16 where native). Prints the CPU, each pair, and last
    ``ratio_median=<new / base> new_tokens_per_s=<median> base_tokens_per_s=<median>``.

        python bench/rollout.py ab --base REV [--prompts 8] [--n 4] [--max-new-tokens 128] [--pairs 6] [--dtype auto]
    """
    import medrlvr.rollout.fast as new_mod
    from medrlvr import roofline

    try:
        base_mod = load_base(args.base)
    except ValueError as e:
        ap.error(f"--base {args.base}: {e}")
    print(roofline.cpu_summary(), flush=True)
    model, tok = harness.load_model("135m")
    prompts, lens = medqa_prompts(tok, args.prompts, args.data_root)
    rows = args.prompts * args.n
    engines = {"base": base_mod.FastEngine(model, tok, dtype=args.dtype, batch_size=rows),
               "new": new_mod.FastEngine(model, tok, dtype=args.dtype, batch_size=rows)}
    print(f"{args.prompts} prompts x {args.n} samples x {args.max_new_tokens} tokens ({rows} rows), prompt tokens "
          f"{min(lens)}-{max(lens)}, engine dtype {engines['new'].dtype}, base = {args.base}", flush=True)
    for e in engines.values():                       # warm-up: weight buffers, packing, thread tuning
        timed_generate(e, prompts[:2], args.n, fixed_params(8))
    params = fixed_params(args.max_new_tokens)
    rate = {"base": [], "new": []}
    ratios = []
    for i, order in alternated(args.pairs, "base", "new"):
        for k in order:
            dt, ntok = timed_generate(engines[k], prompts, args.n, params)
            rate[k].append(ntok / dt)
        ratios.append(rate["new"][-1] / rate["base"][-1])
        print(f"pair {i + 1} ({order[0]} first): base {rate['base'][-1]:.1f}, new {rate['new'][-1]:.1f} tokens/s, "
              f"new/base {ratios[-1]:.3f}", flush=True)
    print(f"base: median {statistics.median(rate['base']):.1f}, best {max(rate['base']):.1f} tokens/s; "
          f"new: median {statistics.median(rate['new']):.1f}, best {max(rate['new']):.1f} tokens/s")
    print(f"ratio_median={statistics.median(ratios):.3f} new_tokens_per_s={statistics.median(rate['new']):.1f} "
          f"base_tokens_per_s={statistics.median(rate['base']):.1f}")
    return 0


# ======================================================================================== profile
GROUPS = (
    ("linear", ("mkldnn", "linear", "addmm", "aten::mm")),
    ("attention bmm/matmul", ("bmm", "matmul", "baddbmm", "scaled_dot_product")),
    ("copy/index/cat", ("copy_", "index", "cat", "gather", "scatter", "clone", "contiguous", "to", "_to_copy",
                        "expand", "repeat", "masked_fill", "fill_", "zero_", "empty", "select", "slice", "view")),
    ("softmax/sampling", ("softmax", "sort", "cumsum", "searchsorted", "logsumexp", "topk", "argmax", "rand")),
    ("element-wise", ("mul", "add", "sub", "div", "rsqrt", "pow", "mean", "silu", "neg", "exp", "where", "max",
                      "sum", "clamp", "lt", "le", "gt", "ge", "eq", "arange")),
)


def add_profile(ap) -> None:
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--data-root", default=default_data_root())


def check_profile(a, ap) -> None:
    if min(a.prompts, a.n, a.max_new_tokens, a.batch_size, a.top) < 1:
        ap.error("--prompts, --n, --max-new-tokens, --batch-size and --top must be >= 1")


def group_of(name: str) -> str:
    n = name.lower()
    for g, keys in GROUPS:
        if any(k in n for k in keys):
            return g
    return "other ops"


def profile(args, ap) -> int:
    """Where the fast engine's rollout time goes: torch.profiler over one ``generate`` call.

    SmolLM2-135M, MedQA 4-option test questions (R1-Zero prompt), ``--prompts`` x ``--n`` samples of
    ``--max-new-tokens`` tokens (``ignore_eos``), the fast engine in ``--dtype``
    (bf16 by default). After a warm-up call, one profiled call; prints the top operators by self CPU time,
    then the time grouped into linear (oneDNN matmuls of the projections and LM head), attention products,
    copies/indexing, other element-wise ops, and Python/engine overhead (wall time not inside any op).

        python bench/rollout.py profile [--prompts 8] [--n 4] [--max-new-tokens 64] [--dtype bf16] [--top 25]
    """
    from collections import defaultdict

    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    import medrlvr.rollout.fast  # noqa: F401
    from medrlvr.rollout import make_engine

    model, tok = harness.load_model("135m")
    prompts, _ = medqa_prompts(tok, args.prompts, args.data_root)
    eng = make_engine("fast", model, tok, dtype=args.dtype, batch_size=args.batch_size)
    timed_generate(eng, prompts[:1], args.n, fixed_params(4))
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        wall, ntok = timed_generate(eng, prompts, args.n, fixed_params(args.max_new_tokens))
    print(f"profiled: {args.prompts} prompts x {args.n} x {args.max_new_tokens} tokens ({args.dtype}, PyTorch path, "
          f"{torch.get_num_threads()} threads): {ntok} tokens in {wall:.2f} s = {ntok / wall:.1f} tokens/s "
          f"(under the profiler)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    groups: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for ev in prof.key_averages():
        groups[group_of(ev.key)] += ev.self_cpu_time_total / 1e6
        calls[group_of(ev.key)] += ev.count
    inside = sum(groups.values())
    groups["outside ops (Python, engine loop)"] = max(0.0, wall - inside)
    for g, s in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {g:36s} {s:7.2f} s  {100 * s / wall:5.1f}%  {calls.get(g, 0)} calls")
    return 0


# =========================================================================================== bf16
# (rows, in, out): decode-step projections at batch 32, the MLP on a training micro-batch, the LM head
SHAPES = ((32, 576, 1536), (1024, 576, 1536), (32, 576, 49152))


def add_bf16(ap) -> None:
    ap.add_argument("--repeats", type=int, default=5)


def check_bf16(a, ap) -> None:
    if a.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {a.repeats}")


def bf16(a, ap) -> int:
    """bf16 vs fp32 matmul on this machine, side by side, at SmolLM2-135M shapes.

    Why: bf16 is only fast where the hardware has it (AVX512-BF16 / AMX on x86, CUDA sm80+). On an AVX2-only
    CPU PyTorch emulates it and bf16 is many times slower than fp32; ``medrlvr.hardware.fast_bf16`` decides
    the ``auto`` dtypes from the CPU flags, and this benchmark shows whether that decision is right here.

        python bench/rollout.py bf16 [--repeats 5]

    Prints one line per shape with milliseconds for each dtype, then
    ``bf16_speedup=<fp32 time / bf16 time, geometric mean> native_bf16=<yes|no>``.
    """
    import torch
    import torch.nn.functional as F

    from medrlvr.hardware import describe, fast_bf16

    def mean_s(x, w):
        F.linear(x, w)
        t0 = time.perf_counter()
        for _ in range(a.repeats):
            F.linear(x, w)
        return (time.perf_counter() - t0) / a.repeats

    print(describe(), f"threads {torch.get_num_threads()}")
    ratios = []
    for m, k, n in SHAPES:
        x, w = torch.randn(m, k), torch.randn(n, k)
        t32 = mean_s(x, w)
        t16 = mean_s(x.bfloat16(), w.bfloat16())
        ratios.append(t32 / t16)
        print(f"({m}x{k}) @ ({k}x{n}): fp32 {t32 * 1e3:.1f} ms, bf16 {t16 * 1e3:.1f} ms, bf16 speed-up {t32 / t16:.3f}x")
    gm = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"bf16_speedup={gm:.3f} native_bf16={'yes' if fast_bf16('cpu') else 'no'}")
    return 0


# =========================================================================================== main
COMMANDS = {
    "throughput": (add_throughput, check_throughput, throughput),
    "sweep": (add_sweep, check_sweep, sweep),
    "ab": (add_ab, check_ab, ab),
    "profile": (add_profile, check_profile, profile),
    "bf16": (add_bf16, check_bf16, bf16),
}


def parse(argv=None) -> argparse.Namespace:
    """The command's arguments, checked (``a.run(a, a.parser)`` runs it)."""
    return harness.parse_command(__doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(harness.run_command(__doc__, COMMANDS))
