"""The fast engine now vs the fast engine of an earlier git revision, side by side in one process.

A change to ``src/medrlvr/fast_rollout.py`` is worth a few percent at most per step, and on a shared VM the
speed of consecutive runs drifts by more than that. So both engines run in the same process over the same
prompts, alternating (base, new, new, base, ...), and what is reported is the ratio of each adjacent pair and
its median, next to each engine's median and best tokens/s. The base engine's source is read with
``git show REV:src/medrlvr/fast_rollout.py`` and imported as a module of the package (it never replaces
the registered ``fast`` engine).

SmolLM2-135M (fp32 policy), the first ``--prompts`` MedQA 4-option test questions (R1-Zero prompt), ``--n``
samples each, ``--max-new-tokens`` tokens with ``ignore_eos`` (the same work for both), engine dtype
``--dtype`` (auto: bf16 where native). Prints the CPU, each pair, and last
``ratio_median=<new / base> new_tokens_per_s=<median> base_tokens_per_s=<median>``.

    python bench/engine_ab.py --base REV [--prompts 8] [--n 4] [--max-new-tokens 128] [--pairs 6] [--dtype auto]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from benchlib import default_data_root, fixed_params, medqa_prompts, run

import medrlvr
import medrlvr.rollout.fast as new_mod
from medrlvr import roofline
from medrlvr.models import load_policy
from medrlvr.rollout import ENGINES


def load_base(rev: str):
    """The fast engine module of git revision ``rev``, imported as ``medrlvr._fast_rollout_base``."""
    try:
        src = subprocess.run(["git", "show", f"{rev}:src/medrlvr/fast_rollout.py"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as e:
        raise ValueError(e.stderr.strip().splitlines()[-1] if e.stderr.strip() else "git show failed") from None
    name = "medrlvr._fast_rollout_base"
    spec = importlib.util.spec_from_loader(name, loader=None, origin=f"{rev}:src/medrlvr/fast_rollout.py")
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "medrlvr"
    keep = ENGINES.get("fast")
    exec(compile(src, spec.origin, "exec"), mod.__dict__)
    if keep is not None:
        ENGINES["fast"] = keep          # the base registered itself as "fast": restore the current engine
    sys.modules[name] = mod
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="git revision of the base engine (e.g. HEAD~3, a commit id)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=6, help="timed (base, new) pairs")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"], help="auto: bf16 where native")
    ap.add_argument("--data-root", default=default_data_root())
    args = ap.parse_args()
    if args.pairs < 1 or args.prompts < 1 or args.n < 1 or args.max_new_tokens < 1:
        ap.error("--pairs, --prompts, --n and --max-new-tokens must be >= 1")
    try:
        base_mod = load_base(args.base)
    except ValueError as e:
        ap.error(f"--base {args.base}: {e}")
    print(roofline.cpu_summary(), flush=True)
    model, tok = load_policy("smollm2-135m")
    prompts, lens = medqa_prompts(tok, args.prompts, args.data_root)
    rows = args.prompts * args.n
    engines = {"base": base_mod.FastEngine(model, tok, dtype=args.dtype, batch_size=rows),
               "new": new_mod.FastEngine(model, tok, dtype=args.dtype, batch_size=rows)}
    print(f"{args.prompts} prompts x {args.n} samples x {args.max_new_tokens} tokens ({rows} rows), prompt tokens "
          f"{min(lens)}-{max(lens)}, engine dtype {engines['new'].dtype}, base = {args.base}", flush=True)
    for e in engines.values():                       # warm-up: weight buffers, packing, thread tuning
        run(e, prompts[:2], args.n, fixed_params(8))
    params = fixed_params(args.max_new_tokens)
    rate = {"base": [], "new": []}
    ratios = []
    for i in range(args.pairs):
        order = ("base", "new") if i % 2 == 0 else ("new", "base")
        for k in order:
            dt, ntok = run(engines[k], prompts, args.n, params)
            rate[k].append(ntok / dt)
        ratios.append(rate["new"][-1] / rate["base"][-1])
        print(f"pair {i + 1} ({order[0]} first): base {rate['base'][-1]:.1f}, new {rate['new'][-1]:.1f} tokens/s, "
              f"new/base {ratios[-1]:.3f}", flush=True)
    print(f"base: median {statistics.median(rate['base']):.1f}, best {max(rate['base']):.1f} tokens/s; "
          f"new: median {statistics.median(rate['new']):.1f}, best {max(rate['new']):.1f} tokens/s")
    print(f"ratio_median={statistics.median(ratios):.3f} new_tokens_per_s={statistics.median(rate['new']):.1f} "
          f"base_tokens_per_s={statistics.median(rate['base']):.1f}")


if __name__ == "__main__":
    main()
