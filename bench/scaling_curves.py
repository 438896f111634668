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
not contaminate one another. After that (so its buffers
do not count in the RSS) the machine's own limit is measured in the same child (:mod:`medrlvr.roofline`:
GEMM rate at the model's linear shapes for the point's rows and mean prompt length, in the engine's dtype,
and the read bandwidth) and ``fraction_of_limit`` = limit seconds / measured seconds, as in
``bench/rollout_throughput.py``. The limit of the work is the same roofline for both engines (prompt KV
shared per group), in the engine's own dtype: the fast engine's ``auto`` (bf16 where native, else fp32) and
the policy's fp32 for ``generate``.

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
when it is quiet, 25-35 given the guesswork. Basis: points timed with ``--threads 1`` on the busy machine (load 3-5),
in CPU seconds of the timed call: fast 135m 32 rows x 128 tokens 19.8 s, x 512 tokens 84.9 s; generate 135m
32 x 128 96.8 s; the other points scaled from those by tokens and FLOPs (generate prefills every row's
prompt: 32 x ~400 tokens); the 1.7B generate point (~57 TFLOP in fp32) is the largest single one (~6-12
min). Altogether ~50 single-thread CPU minutes including ~15-25 s per child for loading and the limit
measurement, over ~1.7x for two threads. ``--hf-max-tokens 4096`` drops the generate points at 64 rows and
256 tokens (~5 min less); ``--max-minutes`` bounds the whole run. Memory: the 1.7B points need ~16 GB
(fast: fp32 policy + bf16 weights twice, its buffers and oneDNN's packed copy) and up to ~19 GB
(generate: fp32 policy + fp32 KV cache of 32 rows x ~530 positions); with other jobs holding memory they
are skipped by the guard (a 1.7B fast child, run before the guard counted the packed copy, was OOM-killed
here at 13.8 GB while two demo runs held ~12 GB).

``--quick``: rows 4, 8; lengths 8, 16; models 135m, 360m (base: rows 8, 16 tokens, 135m): a smoke check of
every code path (about 7 minutes on the busy 2-core machine under ``nice``). ``--dry-run`` lists the points.

    PYTHONPATH=src .venv/bin/python bench/scaling_curves.py [--out docs/perf] [--quick] [--resume]
        [--rows 8,16,32,64,128,256] [--lengths 64,128,256,512,1024] [--models 135m,360m,1.7b]
        [--base-rows 32] [--base-length 128] [--base-model 135m] [--samples 4] [--dtype auto|bf16|fp32]
        [--engines fast,hf] [--hf-max-tokens 8192] [--hf-max-rows 0] [--threads N] [--max-minutes 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

EST_NOTE = "about 30 minutes on a quiet 2-core AMD EPYC (estimated; see the docstring), ~16-19 GB RAM for 1.7B"

# SmolLM2 shapes (config.json numbers); "135m" is the embedded model itself, the others random weights
MODELS = {
    "135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 intermediate_size=1536),
    "360m": dict(hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
                 intermediate_size=2560),
    "1.7b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                 intermediate_size=8192),
}
VOCAB = 49152
ENGINE_LABEL = {"fast": "fast", "hf": "generate"}
AXES = (("rows", "rows (decode batch)"), ("length", "response length (new tokens)"), ("model", "model size"))
RESULT = "RESULT "


# ---------------------------------------------------------------------------------------------- plan
def model_shape(name: str):
    from medrlvr.roofline import ModelShape

    return ModelShape.from_config(SimpleNamespace(vocab_size=VOCAB, **MODELS[name]))


def est_memory_gb(p: dict, plen: int = 350) -> float:
    """Rough peak of a point's process (for the memory guard, not the table), 1 GB base plus: the fp32
    policy; the fast engine's weights twice in its dtype (its buffers and oneDNN's pre-packed copy) and its
    KV cache; ``generate``'s fp32 KV cache (every row holds its left-padded prompt) counted twice (the
    per-step concatenation; the 135m base point peaked at 3.05 GB against 2.9 estimated). ``plen``: a
    prompt's tokens (MedQA: ~300 mean for the first 8). The 1.7B points need ~16 GB (fast) and ~19 GB."""
    s = model_shape(p["model"])
    params = s.linear_params()
    if p["engine"] == "fast":
        db = 2 if p["dtype"] == "bf16" else 4
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


# --------------------------------------------------------------------------------------- one point
def load_model(name: str):
    """(model, tokenizer): the embedded SmolLM2-135M, or a random-weight Llama of another SmolLM2 shape."""
    import torch

    from medrlvr.models import load_policy, load_tokenizer, resolve_model_path

    if name == "135m":
        return load_policy("smollm2-135m")
    from transformers import AutoConfig, LlamaForCausalLM

    tok = load_tokenizer("smollm2-135m")
    cfg = AutoConfig.from_pretrained(resolve_model_path("smollm2-135m"))
    for k, v in MODELS[name].items():
        setattr(cfg, k, v)
    cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


def run_point(p: dict, data_root: str | None, threads: int) -> dict:
    """Time one point in this (fresh) process; the dict the parent records."""
    import torch
    from benchlib import engine_dtype, fixed_params, medqa_prompts, peak_rss_mb, run

    import medrlvr.rollout.fast  # noqa: F401  (registers "fast")
    from medrlvr import roofline
    from medrlvr.rollout import make_engine

    if threads:
        torch.set_num_threads(threads)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    model, tok = load_model(p["model"])
    model.eval()
    load_s, rss_load = time.perf_counter() - t0, peak_rss_mb()
    n = p["samples"]
    prompts, plens = medqa_prompts(tok, p["rows"] // n, data_root)
    kw = {"dtype": p["dtype"]} if p["engine"] == "fast" else {}
    eng = make_engine(p["engine"], model, tok, batch_size=p["rows"], **kw)
    edt = engine_dtype(eng)
    run(eng, prompts[:1], n, fixed_params(4))
    cpu0 = time.process_time()
    dt, ntok = run(eng, prompts, n, fixed_params(p["length"]))
    cpu_s, rss = time.process_time() - cpu0, peak_rss_mb()
    if ntok != p["rows"] * p["length"]:
        raise RuntimeError(f"{ntok} tokens returned, expected {p['rows']} x {p['length']}")
    shape = roofline.ModelShape.from_config(model.config)
    mach = roofline.measure(shape, [p["rows"], round(sum(plens) / len(plens))], edt)
    lim = roofline.rollout_limit(shape, mach, plens, n, p["length"], p["rows"], dtype_bytes=2 if edt == "bf16" else 4)
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
    cmd = [sys.executable, __file__, "--point", json.dumps(spec), "--threads", str(a.threads)]
    if a.data_root:
        cmd += ["--data-root", a.data_root]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.point_timeout or None)
    except subprocess.TimeoutExpired:
        return {"skip": f"failed: timeout after {a.point_timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode or not lines:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        why = f"exit {proc.returncode}" + (f": {err[-1].strip()[:160]}" if err else "")
        return {"skip": f"failed: {why}"}
    lim = [ln for ln in proc.stderr.splitlines() if ln.startswith("roofline [")]
    out = json.loads(lines[-1][len(RESULT):])
    if lim:
        out["roofline"] = lim[-1]
    return out


# ------------------------------------------------------------------------------------------ outputs
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
    lines = ["# How rollout cost grows (`bench/scaling_curves.py`)", "",
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
    for name, writer in (("scaling_curves.json", lambda f: f.write_text(json.dumps({"meta": meta, "points": points},
                                                                                      indent=1) + "\n")),
                         ("scaling_curves.md", lambda f: write_markdown(f, meta, points)),
                         ("scaling_curves.png", lambda f: write_plot(f, meta, points))):
        tmp = out / f".{name}.tmp{Path(name).suffix}"
        writer(tmp)
        os.replace(tmp, out / name)


# --------------------------------------------------------------------------------------------- main
def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=f"Full default run: {EST_NOTE}")
    ap.add_argument("--out", default=str(ROOT / "docs" / "perf"))
    ap.add_argument("--quick", action="store_true", help="smoke check: tiny sweeps and few tokens")
    ap.add_argument("--rows", type=_ints, default=[8, 16, 32, 64, 128, 256])
    ap.add_argument("--lengths", type=_ints, default=[64, 128, 256, 512, 1024])
    ap.add_argument("--models", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                    default=["135m", "360m", "1.7b"])
    ap.add_argument("--base-rows", type=int, default=32)
    ap.add_argument("--base-length", type=int, default=128)
    ap.add_argument("--base-model", default="135m")
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt (rows / samples prompts)")
    ap.add_argument("--dtype", default="auto", help="fast engine dtype: auto (bf16 where native), bf16 or fp32")
    ap.add_argument("--engines", type=lambda s: [x.strip() for x in s.split(",") if x.strip()], default=["fast", "hf"])
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
    a = ap.parse_args(argv)
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
    if any(r % a.samples for r in a.rows + [a.base_rows]):
        ap.error(f"every row count must be a multiple of --samples {a.samples}")
    return a


def main(argv=None) -> None:
    a = parse(argv)
    if a.point:
        print(RESULT + json.dumps(run_point(json.loads(a.point), a.data_root, a.threads)), flush=True)
        return
    import torch

    from medrlvr import roofline

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.dry_run:
        for p in plan(a):
            print(point_line(p))
        return
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
    done: dict[tuple, dict] = {}
    if a.resume and (out / "scaling_curves.json").is_file():
        for p in json.loads((out / "scaling_curves.json").read_text())["points"]:
            if not p.get("skip"):
                done.setdefault(key(p), p)      # the first axis that ran it
        print(f"resume: {len(done)} measured points re-used from {out / 'scaling_curves.json'}", flush=True)
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
    print(f"wrote {out}/scaling_curves.{{png,md,json}} ({meta['wall_min']:.1f} min)", flush=True)


if __name__ == "__main__":
    main()
