"""Where the fast engine's rollout time goes: torch.profiler over one ``generate`` call.

SmolLM2-135M, MedQA 4-option test questions (R1-Zero prompt), ``--prompts`` x ``--n`` samples of
``--max-new-tokens`` tokens (``ignore_eos``), the fast engine in ``--dtype``
(bf16 by default). After a warm-up call, one profiled call; prints the top operators by self CPU time,
then the time grouped into linear (oneDNN matmuls of the projections and LM head), attention products,
copies/indexing, other element-wise ops, and Python/engine overhead (wall time not inside any op).

    python bench/profile_rollout.py [--prompts 8] [--n 4] [--max-new-tokens 64] [--dtype bf16] [--top 25]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch
from torch.profiler import ProfilerActivity, profile

import medrlvr.rollout.fast  # noqa: F401
from medrlvr.data import load_benchmark
from medrlvr.models import load_policy
from medrlvr.prompts import render
from medrlvr.rollout import SamplingParams, make_engine

GROUPS = (
    ("linear", ("mkldnn", "linear", "addmm", "aten::mm")),
    ("attention bmm/matmul", ("bmm", "matmul", "baddbmm", "scaled_dot_product")),
    ("copy/index/cat", ("copy_", "index", "cat", "gather", "scatter", "clone", "contiguous", "to", "_to_copy",
                        "expand", "repeat", "masked_fill", "fill_", "zero_", "empty", "select", "slice", "view")),
    ("softmax/sampling", ("softmax", "sort", "cumsum", "searchsorted", "logsumexp", "topk", "argmax", "rand")),
    ("element-wise", ("mul", "add", "sub", "div", "rsqrt", "pow", "mean", "silu", "neg", "exp", "where", "max",
                      "sum", "clamp", "lt", "le", "gt", "ge", "eq", "arange")),
)


def group_of(name: str) -> str:
    n = name.lower()
    for g, keys in GROUPS:
        if any(k in n for k in keys):
            return g
    return "other ops"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--data-root", default=str(ROOT / ".." / "shared" / "data"))
    args = ap.parse_args()
    model, tok = load_policy("smollm2-135m")
    model.eval()
    recs = load_benchmark("medqa-4opt:test", data_root=args.data_root).records[: args.prompts]
    prompts = [render(r, "r1-zero") for r in recs]
    eng = make_engine("fast", model, tok, dtype=args.dtype, batch_size=args.batch_size)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0, stop=(), ignore_eos=True, seed=0)
    eng.generate(prompts[:1], args.n, SamplingParams(max_new_tokens=4, stop=(), ignore_eos=True, seed=0))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        out = eng.generate(prompts, args.n, params)
        wall = time.perf_counter() - t0
    ntok = sum(len(c.token_ids) for g in out for c in g)
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


if __name__ == "__main__":
    main()
