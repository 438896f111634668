"""Training-step benchmarks: the time (and memory) of one optimizer step on this machine, the compared settings
measured side by side in one run, against the machine's limit (:mod:`medrlvr.roofline`) where the work has one.

    python bench/step.py vs-trl [...]    our GRPO step vs TRL's GRPOTrainer (ratio=<ours / TRL>)
    python bench/step.py memory [...]    peak RSS and time of a cpu-demo step, before vs after the fast path
    python bench/step.py scaling [...]   data-parallel steps/s with 1 and 2 processes; DDP vs FSDP2 memory
    python bench/step.py sft [...]       the SFT baseline's step: fp32 vs bf16 autocast, SDPA vs eager attention

``python bench/step.py COMMAND --help`` describes each one, its options and the fields it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (puts src/ on the path)
from harness import ChildFailed, peak_rss_mb  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ========================================================================================= vs-trl
def add_vs_trl(p) -> None:
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--engine", default="fast", help="our rollout engine (fast or hf)")
    p.add_argument("--dtype-mode", default="auto", choices=["auto", "bf16-autocast", "fp32"],
                   help="mixed precision for both: our bf16 autocast / TRL's bf16=True; or fp32 for both; "
                        "auto = bf16-autocast where bf16 is native on this CPU/GPU, else fp32")
    p.add_argument("--reward", default="paper", help="reward scheme for both (medrlvr.reward.SCHEMES)")
    p.add_argument("--lr", type=float, default=1e-6, help="learning rate for both")
    p.add_argument("--max-new-tokens", type=int, default=128, help="most new tokens per sample, for both")


def check_vs_trl(args, p) -> None:
    from medrlvr.reward import SCHEMES

    if args.reward not in SCHEMES:
        p.error(f"--reward must be one of {', '.join(SCHEMES)}")
    if args.steps < 2:
        p.error("--steps must be >= 2 (the first step is warm-up)")
    from medrlvr.rollout import ENGINES

    if args.engine not in ENGINES:
        p.error(f"--engine must be one of {', '.join(ENGINES)}, got {args.engine!r}")
    if args.max_new_tokens < 1:
        p.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")


def run_ours(args, workdir) -> tuple[list[float], list[float]]:
    from medrlvr.train.config import build_config
    from medrlvr.train.trainer import Trainer

    ov = {"model": "smollm2-135m", "algo": "grpo", "prompts_per_step": 2,
          "samples_per_prompt": 4, "max_new_tokens": args.max_new_tokens, "temperature": 1.0, "stop": [],
          "kl_coef": 0.0, "lr": args.lr, "reward_scheme": args.reward,
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
    from medrlvr.integrations.trl import make_trl_reward_func

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
                      max_completion_length=args.max_new_tokens, temperature=1.0, beta=0.0, learning_rate=args.lr,
                      lr_scheduler_type="constant",
                      max_steps=args.steps, logging_steps=1, report_to="none", save_strategy="no", seed=0,
                      use_cpu=not torch.cuda.is_available(), bf16=args.dtype_mode == "bf16-autocast",
                      shuffle_dataset=False, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=make_trl_reward_func(args.reward), args=conf,
                          train_dataset=ds, callbacks=[Timer()])
    trainer.train()
    return times, rewards


def vs_trl(args, p) -> int:
    """Our GRPO step vs TRL's GRPOTrainer, side by side in one run, on SmolLM2-135M.

    Same setting for both: 2 prompts x 4 generations per step (starter train questions, R1-Zero prompt
    pre-filled with <think>), at most ``--max-new-tokens`` (128) new tokens, temperature 1.0, no stop string
    (both stop at EOS), beta 0 (no reference model), one optimizer step per rollout, a constant lr of 1e-6
    (``--lr``; TRL's default linear decay is set to constant, as ours), the paper's reward (``--reward``; TRL
    gets the same scheme through `medrlvr.integrations.trl.make_trl_reward_func`). Seconds per step exclude the first
    (warm-up) step.

        python bench/step.py vs-trl [--steps 4] [--engine fast] [--dtype-mode auto|bf16-autocast|fp32]
                                    [--reward paper|shaped|...] [--lr 1e-6] [--max-new-tokens 128]

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
    dt = "bf16" if args.dtype_mode == "bf16-autocast" else "fp32"
    nb = harness.dtype_bytes(dt)
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
        ro_lim = ro_lim + harness.rollout_limit(shape, mach, [p for p, _ in smp[::cfg.samples_per_prompt]],
                                                cfg.samples_per_prompt, gen, rows, dt)
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


# ========================================================================================= memory
CONFIGS = {
    "before": {"engine": "hf", "share_prompt": False},
    "after": {},
}


def add_memory(p) -> None:
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for both configurations (e.g. max_new_tokens=128)")
    p.add_argument("--child", help=argparse.SUPPRESS)


def check_memory(a, p) -> None:
    if a.steps < 1:
        p.error("--steps must be >= 1")
    a.extra = {}
    for kv in a.set:
        if "=" not in kv:
            p.error(f"--set expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        a.extra[k] = v
    if a.extra and not a.child:
        from medrlvr.train.config import build_config

        for ov in CONFIGS.values():
            try:
                build_config("cpu-demo", {**a.extra, **ov})
            except ValueError as e:
                p.error(f"--set: {e}")


def memory_child(spec: dict) -> dict:
    """In the fresh process: build the trainer, run the steps, read the peak RSS."""
    from medrlvr.train.config import build_config
    from medrlvr.train.trainer import Trainer

    steps = spec["steps"]
    cfg = build_config("cpu-demo", {**spec["overrides"], "max_steps": steps, "eval_every": 0, "save_every": 0})
    t = Trainer(cfg, spec["out"], quiet=True)
    out = {"rss_after_init_mb": peak_rss_mb(), "step_s": []}
    for _ in range(steps):
        t0 = time.perf_counter()
        t.train_step()
        out["step_s"].append(time.perf_counter() - t0)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def memory(a, p) -> int:
    """Peak memory (RSS) and time of a ``cpu-demo`` training step: before vs after the fast path.

    Each configuration runs in its own fresh process (peak RSS is a per-process high-water mark), side by
    side in one invocation:

    * ``before``: the transformers ``generate`` rollout (``engine=hf``) and a training forward over every
      full prompt+response row (``share_prompt=false``), as the trainer ran before the fast-rollout work;
    * ``after``: the ``cpu-demo`` preset as shipped (``engine=fast``, ``share_prompt=true``).

    Both use the ``cpu-demo`` batch (4 prompts x 8 samples, <= 80 new tokens) on SmolLM2-135M, ``--steps``
    steps (default 2; the first includes warm-up). Per configuration: RSS after building the trainer
    (model, optimizer state not yet allocated), peak RSS after the steps, the growth, and seconds per step.
    The last line: ``peak_rss_mb_before=<..> peak_rss_mb_after=<..> ratio=<after / before>``.

        python bench/step.py memory [--steps 2] [--set key=value ...]
    """
    if a.child:
        harness.emit_result(memory_child(json.loads(a.child)))
        return 0
    extra = a.extra
    res = {}
    with tempfile.TemporaryDirectory() as d:
        for name, ov in CONFIGS.items():
            spec = {"overrides": {**extra, **ov}, "steps": a.steps, "out": os.path.join(d, name)}
            try:
                r, _ = harness.child_result([sys.executable, __file__, "memory", "--child", json.dumps(spec)])
            except ChildFailed as e:
                sys.stderr.write(e.stderr[-4000:])
                raise SystemExit(f"{name}: the training process failed ({e})") from None
            res[name] = r
            print(f"{name:6s} {json.dumps({**extra, **ov}) if ov or extra else '(cpu-demo as shipped)'}: "
                  f"RSS after init {r['rss_after_init_mb']:.0f} MB, peak {r['peak_rss_mb']:.0f} MB "
                  f"(+{r['peak_rss_mb'] - r['rss_after_init_mb']:.0f} MB in the steps), "
                  f"s/step {[round(x, 1) for x in r['step_s']]}", flush=True)
    b, f = res["before"]["peak_rss_mb"], res["after"]["peak_rss_mb"]
    print(f"peak_rss_mb_before={b:.0f} peak_rss_mb_after={f:.0f} ratio={f / b:.2f}")
    return 0


# ======================================================================================== scaling
def add_scaling(ap) -> None:
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up step)")
    ap.add_argument("--skip-memory", action="store_true", help="only the 1- vs 2-process steps/s")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--engine", default="fast", help=argparse.SUPPRESS)
    ap.add_argument("--parallel", default="ddp", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)


def check_scaling(a, ap) -> None:
    if min(a.prompts, a.samples, a.tokens, a.steps) < 1:
        ap.error("--prompts, --samples, --tokens and --steps must be >= 1")
    if a.prompts % 2:
        ap.error(f"--prompts must be even (the 2-process runs split the prompts over the ranks), got {a.prompts}")


def scaling_worker(a) -> None:
    """One rank of a torchrun launch: the steps, a barrier after each; rank 0 writes the result file."""
    import torch

    torch.set_num_threads(1)
    from medrlvr.rollout import SamplingParams
    from medrlvr.train import distributed
    from medrlvr.train.config import build_config
    from medrlvr.train.trainer import Trainer

    cfg = build_config("cpu-demo", [f"prompts_per_step={a.prompts}", f"samples_per_prompt={a.samples}",
                                    f"max_new_tokens={a.tokens}", f"max_steps={a.steps + 1}", f"engine={a.engine}",
                                    f"parallel={a.parallel}", "dynamic_sampling=false", "eval_limit=0", "save_every=0",
                                    "eval_every=0"])
    t = Trainer(cfg, a.out, quiet=True)
    gen = t.engine.generate

    def fixed(prompts, n, params):   # fixed lengths: no EOS, no stop string
        return gen(prompts, n, SamplingParams(**{**params.__dict__, "ignore_eos": True, "stop": ()}))

    t.engine.generate = fixed
    times, recs = [], []
    for i in range(a.steps + 1):
        t0 = time.perf_counter()
        rec = t.train_step()
        distributed.all_true(True)   # a barrier: the step ends when the slowest rank is done
        times.append(time.perf_counter() - t0)
        recs.append(rec)
    peaks = distributed.gather_objects(peak_rss_mb())
    if t.is_main:
        timed = times[1:]
        Path(a.result).write_text(json.dumps({
            "world_size": cfg.world_size, "engine": a.engine, "parallel": a.parallel,
            "step_s": timed, "steps_per_s": len(timed) / sum(timed),
            "rollout_s": [r["rollout_s"] for r in recs[1:]], "update_s": [r["update_s"] for r in recs[1:]],
            "response_tokens": recs[-1]["response_tokens"], "peak_rss_mib_per_rank": peaks}))


def run_world(nproc: int, engine: str, parallel: str, a, tmp: Path) -> dict:
    """One torchrun launch of ``nproc`` one-thread processes; its result (printed as one line)."""
    res = tmp / f"r_{nproc}_{engine}_{parallel}.json"
    env = harness.child_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", __file__,
           "scaling", "--worker", "--engine", engine, "--parallel", parallel, "--prompts", str(a.prompts),
           "--samples", str(a.samples), "--tokens", str(a.tokens), "--steps", str(a.steps),
           "--out", str(tmp / res.stem), "--result", str(res)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"run {nproc} x {engine}/{parallel} failed:\n{p.stderr[-3000:]}")
    r = json.loads(res.read_text())
    r["wall_s"] = time.perf_counter() - t0
    print(f"  {nproc} proc  {engine:<4} {parallel:<5}  {r['steps_per_s']:.4f} steps/s  (steps {', '.join(f'{x:.1f}' for x in r['step_s'])} s; "
          f"rollout {sum(r['rollout_s']) / len(r['rollout_s']):.1f} s, update {sum(r['update_s']) / len(r['update_s']):.1f} s)  "
          f"peak RSS/rank {', '.join(f'{x:.0f}' for x in r['peak_rss_mib_per_rank'])} MiB", flush=True)
    return r


def scaling(a, ap) -> int:
    """Data-parallel scaling on this CPU: steps/s of cpu-demo-shaped GRPO steps with 1 and 2 processes
    (torchrun, gloo, one thread each) and the ratio; peak memory per rank with DDP against FSDP2.

    Work per step (the same global batch for every world size): SmolLM2-135M (the cpu-demo model, fp32
    weights, bf16 autocast where native), ``--prompts`` prompts x ``--samples`` samples, exactly
    ``--tokens`` new tokens per sample (``ignore_eos``, no stop string: fixed lengths, so the work does not
    depend on what is sampled), the cpu-demo micro-batch of 8, ``reward_scheme: shaped``, ``kl_coef: 0``,
    ``dynamic_sampling`` off (its refills would change the work per step, and it does not run on several
    processes). ``--prompts`` must be even (the 2-process runs split them over the ranks). The first step is a warm-up (kernel build, allocator) and is not timed.

    Runs, one after another in this one invocation so the ratio is measured side by side:
      1. 1 process,  engine fast (the cpu-demo engine), DDP;   2. 2 processes, the same;
      3. 2 processes, engine hf, DDP;                            4. 2 processes, engine hf, FSDP2
    (FSDP2 needs the hf engine). Peak memory is each rank's maximum RSS (``ru_maxrss``).

        python bench/step.py scaling                      # defaults: 4 x 8 samples, 48 tokens, 2 timed steps
        python bench/step.py scaling --steps 3 --tokens 80

    On a shared machine the absolute figures move with the other jobs' load: read the ratio.
    """
    if a.worker:
        scaling_worker(a)
        return 0
    from medrlvr.hardware import cpu_model

    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at start")
    print(f"work per step: SmolLM2-135M GRPO, {a.prompts} prompts x {a.samples} samples x {a.tokens} new tokens "
          f"(fixed), micro-batch 8, one thread per process")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        r1 = run_world(1, "fast", "ddp", a, tmp)
        r2 = run_world(2, "fast", "ddp", a, tmp)
        print(f"steps/s 2 processes / 1 process: {r2['steps_per_s'] / r1['steps_per_s']:.2f} "
              f"(ideal 2.00 on 2 idle cores)")
        if not a.skip_memory:
            rd = run_world(2, "hf", "ddp", a, tmp)
            rf = run_world(2, "hf", "fsdp2", a, tmp)
            print(f"peak RSS per rank, 2 processes, hf engine: DDP {max(rd['peak_rss_mib_per_rank']):.0f} MiB, "
                  f"FSDP2 {max(rf['peak_rss_mib_per_rank']):.0f} MiB "
                  f"(ratio {max(rf['peak_rss_mib_per_rank']) / max(rd['peak_rss_mib_per_rank']):.2f}); "
                  f"steps/s FSDP2 / DDP {rf['steps_per_s'] / rd['steps_per_s']:.2f}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end (a shared machine: other jobs inflate the times)")
    return 0


# ============================================================================================ sft
def add_sft(ap) -> None:
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="passes over the settings, alternating their order")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--settings", default="fp32/sdpa,fp32/eager,bf16/sdpa,bf16/eager")
    ap.add_argument("--data-root", default=None)


def check_sft(a, ap) -> None:
    if a.steps < 2:
        ap.error("--steps must be >= 2 (step 1 is the warm-up)")
    if a.rounds < 1:
        ap.error("--rounds must be >= 1")
    if a.batch_size < 1 or a.micro_batch_size < 1:
        ap.error("--batch-size and --micro-batch-size must be >= 1")
    a.settings = [s.strip() for s in a.settings.split(",") if s.strip()]
    if not a.settings:
        ap.error("--settings: no setting given")
    for s in a.settings:
        if s.count("/") != 1 or s.split("/")[0] not in ("fp32", "bf16") or s.split("/")[1] not in ("sdpa", "eager"):
            ap.error(f"--settings: {s!r} is not DTYPE/ATTN with DTYPE fp32|bf16 and ATTN sdpa|eager")


def _sft_limit(shape, mach, batches, dtype):
    """Roofline limit of the optimizer steps whose micro-batches are ``batches``: lists of (prompt, answer) ids;
    forward + backward = 3 forwards, the LM head on the answer tokens only."""
    from medrlvr import roofline

    total = roofline.Limit()
    for mb in batches:
        lens = [len(p) + len(a) for p, a in mb]
        head = sum(len(a) for _, a in mb)
        total = total + harness.packed_forward_limit(shape, mach, lens, dtype, head_rows=head).scaled(3)
    return total


def sft(a, ap) -> int:
    """The SFT baseline's optimizer step on this CPU: fp32 vs bf16 autocast, SDPA vs eager attention, side by side.

    ``medrlvr sft`` trains SmolLM2-135M on the direct prompt (question, lettered options, ``Answer:``) with the
    loss on the answer letter only. This benchmark runs the real training loop (:func:`medrlvr.sft.train_one`)
    from the same initial weights on the same MedQA questions under each setting, in one process, and prints:

    * seconds per optimizer step (median of steps 2..N of every round; step 1 warms up; with ``--rounds 2`` the
      settings run in order, then in reverse, so a host that drifts weighs on each alike) and each speed-up over
      ``fp32 + sdpa`` (what ``medrlvr sft`` ran before ``autocast_bf16: auto`` and the RL trainer's eager
      attention came to SFT);
    * the step-1 loss of each setting (same batch, same weights: bf16 rounding is the only difference);
    * each setting's fraction of this machine's limit (:mod:`medrlvr.roofline`, GEMM rates measured in this run
      at the batch's row counts and the setting's dtype): forward + backward = 3 forwards over the real tokens
      (padding is not counted), the LM head on the answer tokens only, as
      :func:`medrlvr.train.forward.response_logprobs` runs it.

        python bench/step.py sft [--steps 4] [--rounds 2] [--batch-size 16]
                                 [--settings fp32/sdpa,fp32/eager,bf16/sdpa,bf16/eager]

    Needs the MedQA 4-option dev file (``../shared/data`` or ``$MEDRLVR_DATA_ROOT``) and the embedded model.
    The last line is ``auto=<setting medrlvr sft picks here> speedup_auto_vs_fp32_sdpa=<ratio>``.
    """
    from medrlvr import roofline
    from medrlvr.data import load_benchmark
    from medrlvr.hardware import train_attn_implementation, use_autocast
    from medrlvr.models import load_policy
    from medrlvr.sft import SFTConfig, MetricsLog, example_ids, train_one
    from medrlvr.train.stream import PromptStream

    settings = a.settings
    # what `medrlvr sft` picks here (MEDRLVR_BF16 / MEDRLVR_TRAIN_ATTN included), before the loop sets the attention
    auto = f"{'bf16' if use_autocast('auto', 'cpu') else 'fp32'}/{train_attn_implementation('cpu')}"
    root = a.data_root or harness.default_data_root()
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
        log = MetricsLog(None)
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
        lim = _sft_limit(shape, machs[dt], timed, dt)
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


# =========================================================================================== main
COMMANDS = {
    "vs-trl": (add_vs_trl, check_vs_trl, vs_trl),
    "memory": (add_memory, check_memory, memory),
    "scaling": (add_scaling, check_scaling, scaling),
    "sft": (add_sft, check_sft, sft),
}


if __name__ == "__main__":
    sys.exit(harness.run_command(__doc__, COMMANDS))
