"""The SFT baseline's optimizer step on this CPU: fp32 vs bf16 autocast, SDPA vs eager attention, side by side.

``medrlvr sft`` trains SmolLM2-135M on the direct prompt (question, lettered options, ``Answer:``) with the
loss on the answer letter only. This script runs the real training loop (:func:`medrlvr.sft.train_one`) from
the same initial weights on the same MedQA questions under each setting, in one process, and prints:

* seconds per optimizer step (median of steps 2..N of every round; step 1 warms up; with ``--rounds 2`` the
  settings run in order, then in reverse, so a host that drifts weighs on each alike) and each speed-up over
  ``fp32 + sdpa`` (what ``medrlvr sft`` ran before ``autocast_bf16: auto`` and the RL trainer's eager
  attention came to SFT);
* the step-1 loss of each setting (same batch, same weights: bf16 rounding is the only difference);
* each setting's fraction of this machine's limit (:mod:`medrlvr.roofline`, GEMM rates measured in this run
  at the batch's row counts and the setting's dtype): forward + backward = 3 forwards over the real tokens
  (padding is not counted), the LM head on the answer tokens only, as :func:`medrlvr.train.forward.response_logprobs`
  runs it.

    python bench/sft_step.py [--steps 4] [--rounds 2] [--batch-size 16]
                             [--settings fp32/sdpa,fp32/eager,bf16/sdpa,bf16/eager]

Needs the MedQA 4-option dev file (``../shared/data`` or ``$MEDRLVR_DATA_ROOT``) and the embedded model.
The last line is ``auto=<setting medrlvr sft picks here> speedup_auto_vs_fp32_sdpa=<ratio>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import default_data_root  # noqa: E402  (puts src/ on the path)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _limit(shape, mach, batches, nbytes):
    """Roofline limit of the optimizer steps whose micro-batches are ``batches``: lists of (prompt, answer) ids."""
    from medrlvr import roofline

    total = roofline.Limit()
    for mb in batches:
        lens = [len(p) + len(a) for p, a in mb]
        rows = sum(lens)
        ctx = sum(t * (t + 1) / 2 for t in lens) / max(rows, 1)
        head = sum(len(a) for _, a in mb)
        total = total + roofline.forward_limit(shape, mach, rows, attn_context=ctx, dtype_bytes=nbytes,
                                               head_rows=head).scaled(3)
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="passes over the settings, alternating their order")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--settings", default="fp32/sdpa,fp32/eager,bf16/sdpa,bf16/eager")
    ap.add_argument("--data-root", default=None)
    a = ap.parse_args()
    if a.steps < 2:
        ap.error("--steps must be >= 2 (step 1 is the warm-up)")
    if a.rounds < 1:
        ap.error("--rounds must be >= 1")
    settings = [s.strip() for s in a.settings.split(",") if s.strip()]
    for s in settings:
        if s.count("/") != 1 or s.split("/")[0] not in ("fp32", "bf16") or s.split("/")[1] not in ("sdpa", "eager"):
            ap.error(f"--settings: {s!r} is not DTYPE/ATTN with DTYPE fp32|bf16 and ATTN sdpa|eager")

    import torch

    from medrlvr import roofline
    from medrlvr.data import load_benchmark
    from medrlvr.hardware import train_attn_implementation, use_autocast
    from medrlvr.models import load_policy
    from medrlvr.sft import SFTConfig, _Log, example_ids, train_one
    from medrlvr.train.stream import PromptStream

    # what `medrlvr sft` picks here (MEDRLVR_BF16 / MEDRLVR_TRAIN_ATTN included), before the loop sets the attention
    auto = f"{'bf16' if use_autocast('auto', 'cpu') else 'fp32'}/{train_attn_implementation('cpu')}"
    root = a.data_root or default_data_root()
    try:
        recs = load_benchmark("medqa-4opt:dev", data_root=root).records
    except (OSError, ValueError) as e:   # DataError is a ValueError
        ap.error(f"{e} (the MedQA 4-option dev file: --data-root or $MEDRLVR_DATA_ROOT)")
    if len(recs) < a.batch_size * a.steps + 2:
        ap.error(f"{root}: medqa-4opt:dev has {len(recs)} questions, fewer than --batch-size x --steps + 2")
    train = list(recs[: a.batch_size * a.steps])
    dev = list(recs[-2:])
    print(roofline.cpu_summary())
    results = {}
    shape = mbs = None
    order = [s for i in range(a.rounds) for s in (settings if i % 2 == 0 else settings[::-1])]
    for s in order:
        dt, attn = s.split("/")
        os.environ["MEDRLVR_TRAIN_ATTN"] = attn
        cfg = SFTConfig(model="smollm2-135m", train_data=train, dev_data=dev, batch_size=a.batch_size,
                        micro_batch_size=a.micro_batch_size, max_steps=a.steps, lr=1e-5, warmup_ratio=0.0,
                        lr_schedule="constant", autocast_bf16=(dt == "bf16"), eval_every_epoch=False, seed=0)
        model, tok = load_policy(cfg.model, cfg.dtype, seed=cfg.seed)
        if mbs is None:   # the micro-batches every setting runs (the same seeded stream), for the limit
            shape = roofline.ModelShape.from_config(model.config)
            stream = PromptStream(train, cfg.seed, cfg.shuffle_options)
            mbs = []
            for _ in range(a.steps):
                ex = [example_ids(r, tok) for r in stream.take(cfg.batch_size)]
                mbs.append([ex[i:i + a.micro_batch_size] for i in range(0, len(ex), a.micro_batch_size)])
        log = _Log(None)
        train_one(cfg, cfg.lr, train, dev, log, model, tok, quiet=True)
        steps = [r for r in log.history if "step_s" in r]
        r = results.setdefault(s, {"times": [], "loss1": steps[0]["loss"]})
        r["times"] += [x["step_s"] for x in steps[1:]]
        del model
    for r in results.values():
        r["step_s"] = statistics.median(r["times"])
    timed = [mb for st in mbs[1:] for mb in st]   # steps 2..N
    rows_ms = sorted({sum(len(p) + len(q) for p, q in mb) for st in mbs for mb in st})
    heads = sorted({sum(len(q) for _, q in mb) for st in mbs for mb in st})
    Ms = [rows_ms[len(rows_ms) // 2], heads[len(heads) // 2]]
    machs = {dt: roofline.measure(shape, Ms, dt) for dt in sorted({s.split("/")[0] for s in settings})}
    for dt, m in machs.items():
        print(roofline.describe_machine(m, shape))
    base = results.get("fp32/sdpa", {}).get("step_s")
    tokens = sum(len(p) + len(q) for mb in timed for p, q in mb)
    print(f"SFT optimizer step, batch {a.batch_size} (micro {a.micro_batch_size}), MedQA 4-option dev, "
          f"{tokens / (a.steps - 1):.0f} tokens a step; median of steps 2..{a.steps} over {a.rounds} round(s)")
    for s, r in results.items():
        dt = s.split("/")[0]
        lim = _limit(shape, machs[dt], timed, 2 if dt == "bf16" else 4)
        lim_step = lim.seconds / (a.steps - 1)
        sp = f", {base / r['step_s']:.2f}x fp32/sdpa" if base else ""
        spread = f" (steps {min(r['times']):.2f}-{max(r['times']):.2f})"
        print(f"{s:<11} {r['step_s']:.3f} s/step{spread}{sp}; step-1 loss {r['loss1']:.4f}; limit {lim_step:.3f} s/step "
              f"({lim.bound}-bound) fraction_of_limit={lim_step / r['step_s']:.3f}")
    if auto in results and base:
        print(f"auto={auto} speedup_auto_vs_fp32_sdpa={base / results[auto]['step_s']:.3f}")
    else:
        print(f"auto={auto} (not among --settings, or fp32/sdpa missing: no ratio)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
