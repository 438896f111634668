"""Our GRPO step vs TRL's GRPOTrainer, side by side in one run, on SmolLM2-135M.

Same setting for both: 2 prompts x 4 generations per step (starter train questions, R1-Zero prompt
pre-filled with <think>), at most 128 new tokens, temperature 1.0, no stop string (both stop at EOS),
beta 0 (no reference model), one optimizer step per rollout, a constant lr of 1e-6 (``--lr``; TRL's
default linear decay is set to constant, as ours), the paper's reward (``--reward``; TRL gets the same
scheme through `medrlvr.reward.make_trl_reward_func`). Seconds per step exclude the first (warm-up)
step.

    python bench/step_vs_trl.py [--steps 4] [--engine fast] [--dtype-mode auto|bf16-autocast|fp32]
                                [--reward paper|shaped|...] [--lr 1e-6]

The paper's reward is -1 for every sample of this untrained model (no well-formed answer), so its
reward curves are flat for both; ``--reward shaped --lr 5e-5 --steps 10`` gives curves with signal to
compare (the reward mean per step of each, and their mean and spread over the steps).

Prints seconds per step for each, the reward per step for each, and last the line
`ratio=<ours / TRL>`. Our update (old/reference scoring + forward and backward, ``update_s`` of the step)
is also put against the machine's own limit (:mod:`medrlvr.roofline`, measured in this run at the
training shapes and dtype): the FLOPs of 3 forwards per epoch (+ scoring forwards) over the real
prompt + response tokens, and ``update_fraction_of_limit=`` (limit / measured seconds, steps 2..N);
the rollout's own fraction likewise (``rollout_fraction_of_limit=``; its limit assumes every sample
generated the step's mean response length).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_ours(args, workdir) -> tuple[list[float], list[float]]:
    from medrlvr.train.config import build_config
    from medrlvr.train.trainer import Trainer

    ov = {"model": getattr(args, "model", "smollm2-135m"), "algo": "grpo", "prompts_per_step": 2,
          "samples_per_prompt": 4, "max_new_tokens": getattr(args, "max_new_tokens", 128), "temperature": 1.0, "stop": [], "kl_coef": 0.0, "lr": args.lr,
          "reward_scheme": args.reward,
          "micro_batch_size": 8, "max_steps": args.steps, "eval_every": 0, "save_every": 0, "engine": args.engine,
          "autocast_bf16": args.dtype_mode == "bf16-autocast", "train_data": "starter:train", "eval_limit": 1,
          "shuffle_options": False, "loss_agg": "token-mean"}
    cfg = build_config(None, ov)
    t = Trainer(cfg, os.path.join(workdir, "ours"), quiet=True)
    times, rewards = [], []
    captured: list = []
    write = t._write_samples

    def keep(samples):
        captured.append([(len(x.prompt_ids), len(x.token_ids)) for x in samples])
        return write(samples)

    t._write_samples = keep
    args.ours_records, args.ours_samples, args.ours_trainer = [], captured, t
    for _ in range(args.steps):
        t0 = time.perf_counter()
        rec = t.train_step()
        args.ours_records.append(rec)
        times.append(time.perf_counter() - t0)
        rewards.append(rec["reward_mean"])
        print(f"  ours step {len(times)}: {times[-1]:.2f} s  reward {rec['reward_mean']:+.3f}  "
              f"tokens {rec['response_tokens']:.0f}/sample", flush=True)
    return times, rewards


def run_trl(args, workdir) -> tuple[list[float], list[float]]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from medrlvr.data import load_starter
    from medrlvr.models import load_policy
    from medrlvr.prompts import render
    from medrlvr.reward import make_trl_reward_func

    model, tok = load_policy("smollm2-135m", "fp32")
    recs = load_starter("train").records[: 2 * args.steps]
    ds = Dataset.from_list([{"prompt": render(r, "r1-zero"), "gold": r.gold, "n_options": r.n_options,
                             "options": r.options} for r in recs])
    times, rewards = [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                rewards.append(float(logs["reward"]))
                ln = logs.get("completions/mean_length")
                print(f"  TRL step {len(times)}: {times[-1]:.2f} s  reward {logs['reward']:+.3f}"
                      + (f"  tokens {float(ln):.0f}/sample" if ln is not None else ""), flush=True)

    conf = GRPOConfig(output_dir=os.path.join(workdir, "trl"), per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=128, temperature=1.0, beta=0.0, learning_rate=args.lr,
                      lr_scheduler_type="constant",
                      max_steps=args.steps, logging_steps=1, report_to="none", save_strategy="no", seed=0,
                      use_cpu=not torch.cuda.is_available(), bf16=args.dtype_mode == "bf16-autocast",
                      shuffle_dataset=False, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=make_trl_reward_func(args.reward), args=conf,
                          train_dataset=ds, callbacks=[Timer()])
    trainer.train()
    return times, rewards


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--engine", default="fast", help="our rollout engine (fast or hf)")
    p.add_argument("--dtype-mode", default="auto", choices=["auto", "bf16-autocast", "fp32"],
                   help="mixed precision for both: our bf16 autocast / TRL's bf16=True; or fp32 for both; "
                        "auto = bf16-autocast where bf16 is native on this CPU/GPU, else fp32")
    p.add_argument("--reward", default="paper", help="reward scheme for both (medrlvr.reward.SCHEMES)")
    p.add_argument("--lr", type=float, default=1e-6, help="learning rate for both")
    args = p.parse_args(argv)
    from medrlvr.reward import SCHEMES

    if args.reward not in SCHEMES:
        p.error(f"--reward must be one of {', '.join(SCHEMES)}")
    if args.steps < 2:
        p.error("--steps must be >= 2 (the first step is warm-up)")
    import torch

    if args.dtype_mode == "auto":
        from medrlvr.hardware import fast_bf16

        args.dtype_mode = "bf16-autocast" if fast_bf16("cuda" if torch.cuda.is_available() else "cpu") else "fp32"

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, steps {args.steps}, "
          f"engine {args.engine}, {args.dtype_mode}, reward {args.reward}, lr {args.lr:g}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        print("TRL GRPOTrainer:", flush=True)
        trl_t, trl_r = run_trl(args, d)
        print("medrlvr GRPO:", flush=True)
        our_t, our_r = run_ours(args, d)
    ours, theirs = statistics.mean(our_t[1:]), statistics.mean(trl_t[1:])
    print(f"seconds/step (mean of steps 2..{args.steps}): medrlvr {ours:.2f}  TRL {theirs:.2f}")
    print(f"reward per step: medrlvr {[round(x, 3) for x in our_r]}  TRL {[round(x, 3) for x in trl_r]}")
    sd = (lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0)
    print(f"mean reward: medrlvr {statistics.mean(our_r):+.3f} (sd {sd(our_r):.3f} over steps)  "
          f"TRL {statistics.mean(trl_r):+.3f} (sd {sd(trl_r):.3f})")
    print(limits_line(args))
    print(f"ratio={ours / theirs:.3f}")
    return 0


def limits_line(args) -> str:
    """The update's (and the rollout's) fraction of this machine's limit, measured now, steps 2..N."""
    from medrlvr import roofline

    t = args.ours_trainer
    cfg = t.cfg
    shape = roofline.ModelShape.from_config(t.policy.config)
    bf16 = args.dtype_mode == "bf16-autocast"
    dt, nb = ("bf16", 2) if bf16 else ("fp32", 4)
    steps = list(zip(args.ours_records, args.ours_samples))[1:]
    seq = [p + r for _, smp in steps for p, r in smp]
    mb_tokens = cfg.micro_batch_size * sum(seq) / max(len(seq), 1)
    rows = cfg.prompts_per_step * cfg.samples_per_prompt
    plens = [p for _, smp in steps[:1] for p, _ in smp[::cfg.samples_per_prompt]]
    mach = roofline.measure(shape, [rows, round(sum(plens) / max(len(plens), 1)), round(mb_tokens)], dt)
    print(roofline.cpu_summary())
    print(roofline.describe_machine(mach, shape))
    scoring = (0 if t._single_update() else 1) + (1 if cfg.kl_coef > 0 else 0)
    up_lim = ro_lim = roofline.Limit()
    up_s = ro_s = 0.0
    for rec, smp in steps:
        up_lim = up_lim + roofline.training_limit(shape, mach, [p + r for p, r in smp], cfg.micro_batch_size,
                                                  scoring_passes=scoring, epochs=cfg.ppo_epochs, dtype_bytes=nb,
                                                  prompt_lens=[p for p, _ in smp],
                                                  group_size=cfg.samples_per_prompt if cfg.share_prompt else 1)
        gen = max(1, round(sum(r for _, r in smp) / len(smp)))
        ro_lim = ro_lim + roofline.rollout_limit(shape, mach, [p for p, _ in smp[::cfg.samples_per_prompt]],
                                                 cfg.samples_per_prompt, gen, rows, dtype_bytes=nb)
        up_s += rec["update_s"]
        ro_s += rec["rollout_s"]
    spp = cfg.samples_per_prompt
    run_tok = sum(r for _, smp in steps for _, r in smp) + sum(p for _, smp in steps for p, _ in smp[::spp])
    share = f", prompts shared per group of {spp} ({run_tok} tokens run)" if cfg.share_prompt else ""
    print(roofline.report("update, steps 2..N", up_lim, up_s, f"{len(seq)} sequences, {sum(seq)} tokens{share}, "
                          f"{scoring} scoring + {cfg.ppo_epochs} fwd/bwd passes, {dt}"))
    print(roofline.report("rollout, steps 2..N", ro_lim, ro_s))
    return (f"update_fraction_of_limit={up_lim.seconds / max(up_s, 1e-9):.3f} "
            f"rollout_fraction_of_limit={ro_lim.seconds / max(ro_s, 1e-9):.3f}")


if __name__ == "__main__":
    sys.exit(main())
