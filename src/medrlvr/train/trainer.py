"""The RL loop: rollouts -> verifiable rewards -> advantages -> PPO-style updates.

One step:
1. take ``prompts_per_step`` questions from this rank's shard (a seeded permutation per epoch; the
   cursor is part of the checkpoint), render them, sample ``samples_per_prompt`` completions each;
2. score ``prefix + completion`` with :func:`medrlvr.reward.score` (the paper's gated reward by default);
   with ``dynamic_sampling`` drop groups whose rewards are all equal and refill;
3. recompute log-probs of the responses under the current policy (``old_logp``), the reference
   (only when ``kl_coef > 0``) and, for PPO, the critic's values;
4. advantages: PPO = GAE over per-token rewards ``-beta*KL`` with the outcome on the last token (the
   paper); GRPO / Dr.GRPO / RLOO = group-relative outcome advantages (KL as a loss term if asked);
5. ``ppo_epochs`` passes over shuffled mini-batches with gradient accumulation over micro-batches,
   clipped surrogate (+ clipped value loss), gradient clipping, AdamW, LR schedule.
   A step whose loss or gradients are not finite is skipped and logged, never checkpointed.

Data parallelism (``torchrun``, DDP or FSDP2) is :mod:`medrlvr.train.distributed`: ``prompts_per_step`` is
the global batch, each rank samples and scores its contiguous share of it, then the update runs on
every rank's share of each global mini-batch with all-reduced gradients; every logged number is
global. Sampling is seeded per prompt (run seed, step, the prompt's index in the global batch), so a
run does not depend on the number of processes.

Simplifications (stated, as in nanochat): rollouts use the live policy weights (no separate
inference copy); old log-probs are recomputed with a training forward rather than taken from the
sampler, so the ratio starts at exactly 1.

Run directory: ``config.yaml``, ``seed``, ``metrics.jsonl`` (+ TensorBoard in ``tb/``),
``samples.jsonl``, ``checkpoints/step_N`` (Hugging Face format + trainer state), ``final/`` (the
trained policy in Hugging Face format).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from medrlvr import algos, fileio, rundir, tracking
from medrlvr.train import distributed, resume as resume_mod
from medrlvr.train.forward import pack, response_logprobs, response_values
from medrlvr.train.config import TrainConfig, save_config
from medrlvr.data import MCQ, load_any, shuffle_options
from medrlvr.hardware import adamw_kwargs, set_attn_implementation, train_attn_implementation, use_autocast
from medrlvr.models import apply_lora, is_lora, load_policy, make_critic, make_reference, reference_mode
from medrlvr.prompts import render
from medrlvr.rollout import SamplingParams, choose_engine, make_engine
from medrlvr.rundir import Sample, sample_line, write_alert
from medrlvr.eval.heldout import DETAIL_KEYS, evaluate_policy
from medrlvr.train.stream import score_completions, stream_for, uniform_groups


# --------------------------------------------------------------------------------------------- trainer
def _lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        frac = min(1.0, (step - cfg.warmup_steps) / span)
        return 1.0 - frac if cfg.lr_schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
    return f


def _engine_mismatch(lp: torch.Tensor, samples: list[Sample], mask: torch.Tensor) -> float | None:
    """Mean |training log-prob - rollout-engine log-prob| over response tokens (None without engine
    log-probs). A large value means the engine samples from another distribution than the one trained."""
    if any(x.engine_logprobs is None or len(x.engine_logprobs) != len(x.token_ids) for x in samples):
        return None
    eng = torch.zeros_like(lp)
    for j, x in enumerate(samples):
        if x.token_ids:
            eng[j, :len(x.token_ids)] = torch.tensor(x.engine_logprobs, dtype=lp.dtype)
    n = float(mask.sum())
    return float(((lp - eng).abs() * mask).sum() / n) if n else None


class Trainer:
    def __init__(self, cfg: TrainConfig, output_dir: str | Path, resume: bool = False, model=None, tokenizer=None,
                 quiet: bool = False, reward_fn=None, allow_change: tuple[str, ...] = ()):
        self.cfg, self.out, self.quiet, self.reward_fn = cfg, Path(output_dir), quiet, reward_fn
        tracking.check_installed(cfg.report_to)  # a tracker whose package is missing: refused before any loading
        self.device = distributed.default_device()  # cuda:LOCAL_RANK where CUDA is available, else the CPU
        distributed.init(cfg, self.device)  # torchrun's process group when WORLD_SIZE > 1; sets cfg.rank / world_size
        if resume:  # before any model loads: refuse config drift, find the checkpoint (see medrlvr.train.resume)
            self._changes = resume_mod.check_drift(self.out, cfg, allow_change)
            self._resume_dir = resume_mod.find_checkpoint(self.out)
        self.is_main = cfg.rank == 0
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        if model is None:
            model, tokenizer = load_policy(cfg.model, cfg.dtype, seed=cfg.seed)
        self.tok = tokenizer
        model = model.to(self.device)
        if cfg.lora and not is_lora(model):
            model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha)
        self.policy = model
        self.policy.train()
        dev = next(self.policy.parameters()).device
        set_attn_implementation(model, train_attn_implementation(dev))  # before the reference/critic copies
        self.use_autocast = use_autocast(cfg.autocast_bf16, dev)
        self.ref = make_reference(model) if cfg.kl_coef > 0 else None
        self.critic = make_critic(model, cfg.critic) if cfg.algo == "ppo" else None
        self.par = distributed.wrap(cfg, self.policy, self.critic, self.ref)  # DDP / FSDP2 / nothing
        params = [p for p in self.policy.parameters() if p.requires_grad]
        groups = [{"params": params, "lr": cfg.lr}]
        if self.critic is not None:
            own = {id(p) for p in params}
            cparams = [p for p in self.critic.parameters() if p.requires_grad and id(p) not in own]
            groups.append({"params": cparams, "lr": cfg.critic_lr})
        self.opt = torch.optim.AdamW(groups, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay,
                                     **adamw_kwargs(groups))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(cfg))
        train = load_any(cfg.train_data, cfg.data_root, cfg.columns, split=None)
        ev = load_any(cfg.eval_data, cfg.data_root, cfg.columns, split=None)
        self.eval_records = ev.records[: cfg.eval_limit] if cfg.eval_limit else ev.records
        self.stream = stream_for(cfg, train.records)  # global: one seed orders the data (and the curriculum)
        if self.stream.curriculum is not None and not quiet and cfg.rank == 0:
            print(f"[medrlvr] {self.stream.curriculum.summary}", flush=True)
        self.engine = make_engine(choose_engine(cfg.engine, dev, self.par.sharded), self.policy, self.tok)
        if self.par.sharded:
            self.engine.synced_gpus = True
        self.step = 0
        self.final_eval: dict | None = None   # the detailed evaluation at max_steps or the early stop (see train)
        self.stopped_early = False            # stop_answered was reached (see _stop_early)
        self._answered_streak = 0
        self.skipped_steps = 0
        self._resumed = resume
        if resume:
            self._resume()
        elif self.is_main:
            for f in (rundir.METRICS, rundir.SAMPLES, rundir.ALERTS):
                (self.out / f).unlink(missing_ok=True)
            shutil.rmtree(self.out / rundir.TENSORBOARD, ignore_errors=True)  # a fresh start: no stale TensorBoard steps
        if self.is_main:
            save_config(cfg, self.out / rundir.CONFIG)
            fileio.atomic_write_text(self.out / "seed", f"{cfg.seed}\n", label="seed")
            if resume:
                resume_mod.record_changes(self.out, self.step, self._changes)
        self.trackers = (tracking.open_trackers(cfg.report_to, self.out, project=cfg.tracker_project,
                                                resume_step=self.step if resume else None)
                         if self.is_main else tracking.Trackers())
        self.trackers.log_config(cfg.to_dict())
        from medrlvr.monitor import Monitor, MonitorConfig, resume_monitor

        mcfg = MonitorConfig.from_mapping(cfg.monitor)
        self.monitor = resume_monitor(self.out, mcfg) if resume and self.is_main else Monitor(mcfg)
        self._monitor_samples, self._alert_stop = [], []

    # ------------------------------------------------------------------------------------ logging
    def log(self, rec: dict) -> None:
        """Append one metrics row (strict JSON) to ``metrics.jsonl`` on the main rank, feed the monitors and
        send its numbers to the trackers (``report_to``)."""
        if not self.is_main:
            return
        line = fileio.strict_json(rec)  # strict JSON: a NaN is written null and its key listed in "nonfinite"
        fileio.fault("log.metrics")
        rundir.append_lines(self.out / rundir.METRICS, [line])
        self._monitor_step(json.loads(line))
        self.trackers.log_scalars(rec, rec["step"])

    def _write_samples(self, samples: list[Sample]) -> None:
        if not self.is_main or self.step % self.cfg.sample_every:
            return
        fileio.fault("log.samples")
        lines = [sample_line(s, self.step) for s in samples]
        rundir.append_lines(self.out / rundir.SAMPLES, lines)
        self._monitor_samples = [json.loads(x) for x in lines]  # the monitor sees what samples.jsonl holds (same verdicts offline)
        if self.step % self.cfg.log_samples_every == 0:
            self.trackers.log_samples(self._monitor_samples, self.step)

    def _monitor_step(self, rec: dict) -> None:
        """Feed the monitor this metrics row (as written) and the step's sample rows; print and record new
        alerts."""
        samples, self._monitor_samples = self._monitor_samples, []
        for a in self.monitor.update(rec, samples):
            print(a.line(), flush=True)
            write_alert(self.out, a)
            self.trackers.log_alert(a, rec["step"])
            if self.cfg.on_alert == "stop":
                self._alert_stop.append(a)

    # ------------------------------------------------------------------------------------ rollout
    def _rollout(self) -> tuple[list[Sample], dict]:
        cfg = self.cfg
        samples: list[Sample] = []
        n_groups = 0
        dropped = 0
        rounds = 0
        uniform = {"reward": 0, "correct": 0}
        drawn: list[MCQ] = []
        while True:
            need = cfg.prompts_per_step - (len(samples) // cfg.samples_per_prompt)
            lo, hi = distributed.shard_range(need, cfg.rank, cfg.world_size)  # this rank's share of the global batch
            recs = self.stream.take(need)[lo:hi]
            drawn += recs
            seeds = tuple(distributed.prompt_seed(cfg.seed, self.step, n_groups + lo + i, rounds)
                          for i in range(len(recs)))
            k, n = cfg.group_orders, cfg.samples_per_prompt
            if k > 1:  # k prompts per question, each its own option order; regrouped by question below
                recs = [shuffle_options(r, s * k + j) for r, s in zip(recs, seeds) for j in range(k)]
                seeds, n = tuple((s * k + j) % 2 ** 62 for s in seeds for j in range(k)), n // k
            params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                    stop=tuple(cfg.stop), prompt_seeds=seeds)
            prompts = [render(r, cfg.template, self.tok, cfg.prefill_think) for r in recs]
            groups = self._generate(prompts, n, params)
            new = score_completions(recs, prompts, groups, cfg, group_offset=n_groups + lo, reward_fn=self.reward_fn,
                                    group_size=k)
            n_groups += need
            if cfg.dynamic_sampling:
                for on in uniform:
                    uniform[on] += len(uniform_groups(new, on))
            if cfg.dynamic_sampling and rounds < cfg.max_refill_rounds:
                drop = uniform_groups(new, cfg.dynamic_sampling_on)
                dropped += len(drop)
                new = [s for s in new if s.group not in drop]
            samples.extend(new)
            rounds += 1
            if not cfg.dynamic_sampling or len(samples) >= cfg.rollout_batch or rounds > cfg.max_refill_rounds:
                break
        samples = samples[: cfg.rollout_batch]
        info = {"dropped_groups": dropped, "refill_rounds": rounds - 1}
        if cfg.dynamic_sampling:   # groups alike on each signal, before the drop: the format-only groups show here
            info |= {"uniform_reward_groups": uniform["reward"], "uniform_correct_groups": uniform["correct"]}
        if self.stream.curriculum is not None:   # the difficulty of the questions drawn this step
            rates = [self.stream.curriculum.rates[r.id] for r in drawn if r.id in self.stream.curriculum.rates]
            if rates:
                info |= {"drawn_pass_rate_mean": sum(rates) / len(rates), "drawn_pass_rate_min": min(rates),
                         "drawn_pass_rate_max": max(rates)}
        return samples, info

    def _generate(self, prompts, n, params):
        """The rollout engine; under FSDP2 inside the root module's forward (parameters gathered)."""
        if self.par.sharded:
            return self.par.fwd(lambda _m: self.engine.generate(prompts, n, params))
        return self.engine.generate(prompts, n, params)

    # ------------------------------------------------------------------------------------- update
    def _autocast(self):
        if self.use_autocast:
            dev = next(self.policy.parameters()).device.type
            return torch.autocast(device_type=dev, dtype=torch.bfloat16)
        return nullcontext()

    def _single_update(self) -> bool:
        """One optimizer step on the whole batch: the sampling policy is the current one, so old
        log-probs are the training forward's own (detached) values and their forward is skipped."""
        return self.cfg.ppo_epochs == 1 and (self.cfg.mini_batch_size or self.cfg.rollout_batch) >= self.cfg.rollout_batch

    @torch.no_grad()
    def _score_batch(self, samples: list[Sample]):
        """Old log-probs (unless :meth:`_single_update`), reference log-probs (when ``kl_coef > 0``) and
        critic values (PPO), each (N, T) over response tokens, plus the response mask."""
        cfg = self.cfg
        mb = cfg.micro_batch_size
        T = max(1, max(len(x.token_ids) for x in samples))
        mask = torch.zeros(len(samples), T)
        for i, x in enumerate(samples):
            mask[i, :len(x.token_ids)] = 1.0
        need_old = not self._single_update() or cfg.kl_coef > 0  # KL needs the sampling policy's log-probs
        old, ref, vals = [], [], []
        self.policy.eval()
        for s in range(0, len(samples), mb):
            chunk = samples[s:s + mb]
            if not (need_old or cfg.kl_coef > 0 or self.critic is not None):
                break
            b = pack([x.prompt_ids for x in chunk], [x.token_ids for x in chunk], self.tok.pad_token_id,
                     share_prompt=cfg.share_prompt).to(self.device)

            def run(m, b=b):
                o = r = v = None
                if need_old:
                    o = response_logprobs(m.policy, b, cfg.temperature)[0].float()
                if cfg.kl_coef > 0:
                    if m.ref is not None:
                        r = response_logprobs(m.ref, b, cfg.temperature)[0].float()
                    else:
                        with reference_mode(m.policy):
                            r = response_logprobs(m.policy, b, cfg.temperature)[0].float()
                if m.critic is not None:
                    v = response_values(m.critic, b).float()
                return o, r, v

            with self._autocast():
                o, r, v = self.par.fwd(run)
            for lst, t in ((old, o), (ref, r), (vals, v)):
                if t is not None:
                    lst.append(t.cpu())  # advantages and statistics are computed on the CPU
        self.policy.train()

        def cat(ts):
            return torch.cat([torch.nn.functional.pad(t, (0, T - t.shape[1])) for t in ts], 0) if ts else None

        return cat(old), cat(ref), cat(vals), mask

    def _advantages(self, samples, old_lp, ref_lp, values, mask):
        cfg = self.cfg
        scores = torch.tensor([s.reward for s in samples], dtype=torch.float32)
        gids = torch.tensor([s.group for s in samples])
        metrics = {}
        kl_tok = None
        if ref_lp is not None:
            kl_tok = algos.kl_estimate(old_lp, ref_lp, cfg.kl_estimator) * mask
            metrics["kl"] = distributed.global_masked_mean(kl_tok, mask)
        if cfg.algo == "ppo":
            if kl_tok is not None and cfg.kl_mode == "reward":
                rewards, _ = algos.token_rewards_with_kl(scores, old_lp, ref_lp, mask, cfg.kl_coef, cfg.kl_estimator)
            else:
                rewards, _ = algos.token_rewards_with_kl(scores, mask, mask, mask, 0.0)
            adv, ret = algos.gae_advantages(rewards, values, mask, gamma=cfg.gamma, lam=cfg.lam, whiten=False)
            adv = distributed.global_whiten(adv, mask)  # statistics over every rank's tokens
        else:
            kw = {"eps": cfg.grpo_eps} if cfg.algo == "grpo" else {}
            adv = algos.compute_advantages(cfg.algo, scores=scores, group_ids=gids, mask=mask, **kw)
            ret = None
        n_groups = len(set(gids.tolist()))  # groups never straddle ranks: a global fraction of groups
        zv = distributed.all_sum(torch.tensor([algos.zero_variance_fraction(scores, gids) * n_groups, n_groups],
                                              dtype=torch.float64))
        metrics["zero_var_frac"] = float(zv[0] / zv[1].clamp_min(1))
        return adv, ret, metrics

    def _update(self, samples, old_lp, ref_lp, values, mask, adv, ret) -> dict:
        """``ppo_epochs`` passes of mini-batch updates over the *global* batch (``samples`` and the tensors
        hold every rank's rows). Every rank draws the same permutation and computes its contiguous share of
        each mini-batch; each micro-batch's loss is weighted by its share of the mini-batch's tokens (or
        sequences, for the ``seq-mean-*`` aggregations), so the summed gradient is that of the global
        aggregation, whatever the world size or the micro-batch size (DDP's averaging is undone by
        :attr:`~medrlvr.train.distributed.Parallel.loss_scale`). Logged statistics are all-reduced sums/counts."""
        cfg = self.cfg
        N = len(samples)
        mb = cfg.mini_batch_size or N
        W = cfg.world_size
        micro = min(cfg.micro_batch_size, max(1, mb // W))
        agg_max_len = cfg.max_new_tokens
        stats = distributed.Sums()
        skipped = 0
        params = [p for g in self.opt.param_groups for p in g["params"]]
        gen = torch.Generator().manual_seed(cfg.seed * 31 + self.step)

        def train_fwd(m, b):
            lp, ent = response_logprobs(m.policy, b, cfg.temperature, with_entropy=True,
                                        entropy_grad=cfg.entropy_coef != 0)
            return lp.float(), ent, (response_values(m.critic, b).float() if m.critic is not None else None)

        for epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(N, generator=gen).tolist()
            for s in range(0, N, mb):
                idx = perm[s:s + mb]
                if cfg.share_prompt:  # whole groups per micro-batch: one prompt forward each (same gradient)
                    idx = sorted(idx, key=lambda i: samples[i].group)
                count = distributed.mini_batch_count(mask[idx], cfg.loss_agg)   # global normalisers
                tok_count = float(mask[idx].sum())
                lo, hi = distributed.shard_range(len(idx), cfg.rank, W)
                mine = idx[lo:hi]
                self.opt.zero_grad(set_to_none=True)
                finite = True
                for m in range(0, len(mine), micro):
                    sub = mine[m:m + micro]
                    b = pack([samples[i].prompt_ids for i in sub], [samples[i].token_ids for i in sub],
                             self.tok.pad_token_id, share_prompt=cfg.share_prompt).to(self.device)
                    T = b.response_mask.shape[1]
                    sl = torch.tensor(sub)
                    last = m + micro >= len(mine)
                    with self.par.no_sync(last):
                        with self._autocast():
                            lp, ent, vpred = self.par.fwd(train_fwd, b)
                        dv = self.device
                        mk = mask[sl, :T].to(dv)
                        ntok = float(mk.sum())
                        w = distributed.loss_weight(mk, count, cfg.loss_agg)
                        w_tok = ntok / max(tok_count, 1e-8)
                        if epoch == 0 and s == 0:   # no optimizer step yet: the policy is the sampling one
                            mm = _engine_mismatch(lp.detach(), [samples[i] for i in sub], mk)
                            if mm is not None:
                                stats.add("logprob_mismatch", mm * ntok, ntok)
                        old = old_lp[sl, :T].to(dv) if old_lp is not None else lp.detach()
                        ploss, pm = algos.compute_policy_loss(
                            "ppo", logp=lp, old_logp=old, advantages=adv[sl, :T].to(dv), mask=mk,
                            clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip,
                            agg=cfg.loss_agg, max_len=agg_max_len)
                        loss = ploss
                        if ref_lp is not None and cfg.kl_mode == "loss" and cfg.kl_coef > 0:
                            kl = algos.kl_loss(lp, ref_lp[sl, :T].to(dv), mk, kind=cfg.kl_estimator, agg=cfg.loss_agg)
                            loss = loss + cfg.kl_coef * kl
                        vloss = None
                        if vpred is not None:
                            vloss, vm = algos.value_loss(vpred, values[sl, :T].to(dv), ret[sl, :T].to(dv), mk,
                                                         clip=cfg.value_clip, agg=cfg.loss_agg)
                            loss = loss + cfg.vf_coef * vloss
                        loss = loss * w
                        ent_mean = algos.masked_mean(ent, mk)
                        if cfg.entropy_coef:
                            loss = loss - cfg.entropy_coef * w_tok * ent_mean
                        # every rank must take the same branch (a collective follows)
                        if not distributed.all_true(bool(torch.isfinite(loss))):
                            finite = False
                            break
                        (loss * self.par.loss_scale).backward()
                    cnt = w * count
                    stats.add("policy_loss", float(ploss.detach()) * cnt, cnt)
                    if vloss is not None:
                        stats.add("value_loss", float(vloss.detach()) * cnt, cnt)
                        stats.add("vf_clip_frac", float(vm["vf_clip_frac"]) * ntok, ntok)
                    stats.add("clip_frac", float(pm["clip_frac"]) * ntok, ntok)
                    stats.add("approx_kl_old", float(pm["approx_kl"]) * ntok, ntok)
                    stats.add("entropy", float(ent_mean.detach()) * ntok, ntok)
                gnorm = (distributed.grad_norm_value(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
                         if finite else float("nan"))
                if not finite or not math.isfinite(gnorm):
                    self.opt.zero_grad(set_to_none=True)
                    skipped += 1
                    continue
                self.opt.step()
                stats.add("grad_norm", gnorm, 1.0)
        self.sched.step()
        out = stats.means()
        out["skipped_updates"] = skipped
        return out

    # ---------------------------------------------------------------------------------------- step
    def train_step(self) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        samples, rinfo = self._rollout()
        t1 = time.perf_counter()
        fileio.fault("step.update")  # mid-step: between the rollout and the update (tests interrupt here)
        old_lp, ref_lp, values, mask = self._score_batch(samples)
        adv, ret, ametrics = self._advantages(samples, old_lp, ref_lp, values, mask)
        if cfg.world_size > 1:  # every rank gets the global batch (rank order = global prompt order)
            samples, old_lp, ref_lp, values, mask, adv, ret = self._gather_batch(samples, old_lp, ref_lp, values,
                                                                                 mask, adv, ret)
        umetrics = self._update(samples, old_lp, ref_lp, values, mask, adv, ret)
        self._check_finite_weights()
        t2 = time.perf_counter()
        ntok = sum(len(s.token_ids) for s in samples)
        n = len(samples)
        rec = {"step": self.step + 1,
               "reward_mean": sum(s.reward for s in samples) / n,
               "accuracy": sum(s.result.correct for s in samples) / n,
               "format_valid": sum(s.result.format_ok for s in samples) / n,
               "answered": sum(bool(s.result.format_ok and s.result.pred) for s in samples) / n,
               "response_chars": sum(len(s.completion) for s in samples) / n,
               "response_tokens": ntok / n,
               "truncated_frac": sum(s.finish_reason == "length" for s in samples) / n,
               **ametrics, **umetrics, **rinfo,
               "rollout_s": t1 - t0, "update_s": t2 - t1, "tokens_per_s": ntok / max(t1 - t0, 1e-9),
               "lr": self.sched.get_last_lr()[0]}
        rec["skipped"] = umetrics.get("skipped_updates", 0) > 0
        if rec["skipped"]:
            self.skipped_steps += 1
        self.step += 1
        self._write_samples(samples)
        if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
            rec.update(self.evaluate())
        return rec

    def _check_finite_weights(self) -> None:
        """Stop (never checkpoint) when an update left a non-finite weight; the last checkpoint stays good.
        One sum per tensor first (a NaN or inf anywhere makes the total non-finite; far cheaper than an
        element-wise test, evidence: docs/decisions/update-step.md); only then the exact test, which names
        the weight (and clears a finite total that overflowed)."""
        mods = [self.policy] + ([self.critic] if self.critic is not None else [])
        local = [(name, p.to_local() if hasattr(p, "to_local") else p)                    # FSDP2: this rank's shard
                 for m in mods for name, p in m.named_parameters() if p.requires_grad]
        bad = None
        with torch.no_grad():
            if local and not bool(torch.isfinite(torch.stack([p.float().sum() for _, p in local]).sum())):
                bad = next((name for name, p in local if not bool(torch.isfinite(p).all())), None)
        if not distributed.all_true(bad is None):  # every rank stops together
            raise FloatingPointError(
                f"step {self.step + 1}: weight {bad or '(a shard on another rank)'} is not finite after the update "
                f"(lr={self.cfg.lr}, max_grad_norm={self.cfg.max_grad_norm}); not checkpointed, resume from the last "
                f"checkpoint in {self.out / 'checkpoints'} with a smaller lr")

    @staticmethod
    def _gather_batch(samples, *tensors):
        """Every rank's samples and per-token tensors, concatenated in rank order (small: token ids and
        (N, T) floats), so the update can draw mini-batches over the global batch."""
        width = int(distributed.all_max(float(max(t.shape[1] for t in tensors if t is not None))))
        allsamples = [x for part in distributed.gather_objects(samples) for x in part]
        return (allsamples, *(distributed.gather_rows(t, width) for t in tensors))

    def evaluate(self, details: bool = False, samples: int | None = None, temperature: float | None = None) -> dict:
        """Held-out evaluation as configured (``eval_samples``, ``eval_temperature``; ``samples`` /
        ``temperature`` override them, e.g. ``samples=1, temperature=0`` for greedy), the questions sharded
        over ranks and the results gathered (every rank gets the global figures)."""
        kw = {"samples": samples, "temperature": temperature}
        if self.cfg.world_size == 1:
            return evaluate_policy(self.engine, self.eval_records, self.cfg, self.tok, details=details, **kw)
        return distributed.sharded_eval(
            lambda recs: evaluate_policy(_EngineCall(self._generate), recs, self.cfg, self.tok, details=True, **kw),
            self.eval_records, details)

    def _stop_early(self, rec: dict) -> bool:
        """``stop_answered``: True once ``stop_patience`` steps in a row reached it (every rank sees the same
        gathered samples, so every rank decides alike)."""
        c = self.cfg
        if not c.stop_answered:
            return False
        self._answered_streak = self._answered_streak + 1 if rec["answered"] >= c.stop_answered else 0
        self.stopped_early = self._answered_streak >= c.stop_patience
        return self.stopped_early

    def _finished_early(self) -> bool:
        """A resumed run whose checkpoint is the step where ``stop_answered`` ended it (its streak already at
        ``stop_patience`` under the current config) is finished, as one at ``max_steps`` is: resuming it trains no
        further step. ``stop_answered=0`` or a larger ``stop_patience`` (``--allow-change``) trains on."""
        c = self.cfg
        if not (c.stop_answered and self._answered_streak >= c.stop_patience):
            return False
        self.stopped_early = True
        if not self.quiet and self.is_main:
            print(f"[train] nothing to resume: the run stopped early at step {self.step} (stop_answered "
                  f"{c.stop_answered:g} for {c.stop_patience} steps in a row); to train on, resume with "
                  f"stop_answered=0 --allow-change stop_answered, or a larger stop_patience --allow-change "
                  f"stop_patience", flush=True)
        return True

    def train(self, max_steps: int | None = None) -> list[dict]:
        cfg = self.cfg
        end = min(max_steps or cfg.max_steps, cfg.max_steps)
        if self._finished_early():
            end = self.step                   # resumed from the checkpoint of an early stop: nothing to train
        history = []
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=end, initial=self.step, desc="train", disable=self.quiet or not self.is_main,
                       dynamic_ncols=True)
        except ImportError:  # pragma: no cover
            bar = None
        self._interrupt, self._saved_step = None, (self.step if self._resumed else None)
        handlers = self._catch_signals()
        try:
            self._loop(end, bar, history)
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
            if bar is not None:   # also on an error: the message then starts its own line
                bar.close()
        if (self.step == cfg.max_steps or self.stopped_early) and (history or not (self.out / rundir.FINAL).is_dir()):
            self.save_final()
        self.trackers.close()
        return history

    # ------------------------------------------------------------------------------------ interrupts
    def _catch_signals(self) -> dict:
        """SIGINT/SIGTERM set a flag that the loop reads at each step boundary (:meth:`_interrupted`); a second
        SIGINT falls back to the previous handler (``KeyboardInterrupt``: the step is abandoned). Only in the main
        thread (where Python delivers signals); returns the replaced handlers."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, _frame):
            self._interrupt = signum
            if signum == signal.SIGINT:
                signal.signal(signal.SIGINT, old[signal.SIGINT])
            if self.is_main:
                print(f"\n[train] {signal.Signals(signum).name}: finishing step {self.step + 1}, then writing a "
                      "checkpoint (Ctrl-C again abandons the step)", file=sys.stderr, flush=True)

        for s in old:
            signal.signal(s, handler)
        return old

    def _interrupted(self) -> bool:
        """True on every rank once any rank received SIGINT/SIGTERM (a collective under torchrun)."""
        return not distributed.all_true(self._interrupt is None)

    def _stop_interrupted(self, bar) -> None:
        """Checkpoint the finished steps (unless the newest checkpoint is this step) and raise
        :class:`TrainingInterrupted`."""
        ckpt = None
        if self.step > 0 and self._saved_step != self.step:
            ckpt = self.save_checkpoint()
        elif self.step > 0:
            ckpt = resume_mod.find_checkpoint(self.out) if self.is_main else None
        if bar is not None:
            bar.close()
        self.trackers.close()
        raise TrainingInterrupted(self.step, self.cfg.max_steps, self.out, ckpt, self.is_main)

    def _loop(self, end: int, bar, history: list) -> None:
        cfg = self.cfg
        ckpt = None
        while self.step < end:
            if self._interrupted():                # between steps: the last step is done (and maybe saved)
                self._stop_interrupted(bar)
            rec = self.train_step()
            early = self._stop_early(rec)
            if early:
                rec["stopped_early"] = True
            if self.step == cfg.max_steps or early:   # detailed, kept for callers (the demo reports it)
                self.final_eval = self.evaluate(details=True)
                rec.update({k: v for k, v in self.final_eval.items() if k not in DETAIL_KEYS})
            self.log(rec)
            history.append(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{rec['reward_mean']:.2f}", fmt=f"{rec['format_valid']:.2f}",
                                acc=f"{rec['accuracy']:.2f}")
            stop = cfg.on_alert == "stop" and not distributed.all_true(not self._alert_stop)  # rank 0 decides
            interrupted = self._interrupted()
            if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == end or stop or early:
                ckpt = self.save_checkpoint()
                self._saved_step = self.step
            if interrupted and not (self.step == end or early):
                self._stop_interrupted(bar)
            if stop:  # on_alert: stop -- checkpointed above (every rank); the CLI exits with ALERT_EXIT_CODE
                from medrlvr.monitor import MonitorStop

                if bar is not None:
                    bar.close()
                self.trackers.close()
                raise MonitorStop(self._alert_stop, str(ckpt) if ckpt else None)
            if early:
                if not self.quiet and self.is_main:
                    print(f"[train] stopped early at step {self.step} of {cfg.max_steps}: at least "
                          f"{cfg.stop_answered:.0%} of the samples well-formed with an option letter for "
                          f"{cfg.stop_patience} steps in a row (stop_answered)", flush=True)
                break

    # ---------------------------------------------------------------------------------- checkpoints
    def _state(self, optimizer=None, rng_ranks=None) -> dict:
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        return {"step": self.step, "skipped_steps": self.skipped_steps, "answered_streak": self._answered_streak,
                "stream": self.stream.state(),
                "optimizer": self.opt.state_dict() if optimizer is None else optimizer,
                "scheduler": self.sched.state_dict(), "rng": rng, "rng_ranks": rng_ranks or [rng],
                "world_size": self.cfg.world_size, "sharded_optimizer": self.par.sharded}

    def save_checkpoint(self) -> Path | None:
        # collectives first (every rank): full weights and optimizer state under FSDP2, every rank's RNG state
        psd = self.par.full_state_dict(self.policy) if self.par.sharded else None
        csd = self.par.full_state_dict(self.critic) if self.par.sharded and self.critic is not None else None
        optim = self.par.optim_state(self.opt)
        rng_ranks = distributed.gather_objects({"torch": torch.get_rng_state(), "python": random.getstate()})
        if not self.is_main:
            return None
        final = self.out / rundir.CHECKPOINTS / f"step_{self.step}"

        def write(d: Path):
            self.policy.save_pretrained(d / "policy", safe_serialization=True, **({"state_dict": psd} if psd else {}))
            fileio.fault("ckpt.policy")
            self.tok.save_pretrained(d / "policy")
            fileio.fault("ckpt.tokenizer")
            if self.critic is not None:
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in (csd or self.critic.state_dict()).items()},
                          str(d / "critic.safetensors"))
                fileio.fault("ckpt.critic")
            torch.save(self._state(optim, rng_ranks), d / "trainer_state.pt")
            fileio.fault("ckpt.state")
            (d / "step").write_text(str(self.step))  # last: marks the checkpoint complete (medrlvr.train.resume)

        ckdir = self.out / rundir.CHECKPOINTS
        resume_mod.clean_leftovers(ckdir)
        fileio.atomic_write_dir(final, write, label="ckpt")
        fileio.atomic_write_text(ckdir / "latest", final.name, label="ckpt.latest")  # never empty, even if killed
        ckpts = resume_mod.complete_checkpoints(ckdir)
        for old in ckpts[:-self.cfg.keep_checkpoints] if self.cfg.keep_checkpoints else []:
            if old != final:
                fileio.fault("ckpt.prune")
                shutil.rmtree(old)
        return final

    def save_final(self) -> Path:
        """``final/`` in Hugging Face format, written by rank 0 (the full weights gathered under FSDP2)."""
        final = self.out / rundir.FINAL
        psd = self.par.full_state_dict(self.policy) if self.par.sharded else None  # a collective
        if not self.is_main:
            return final
        if is_lora(self.policy):  # a merged copy: the trainer keeps its adapter
            import copy

            model = copy.deepcopy(self.policy).merge_and_unload()
        else:
            model = self.policy

        def write(d: Path):
            model.save_pretrained(d, safe_serialization=True, **({"state_dict": psd} if psd else {}))
            self.tok.save_pretrained(d)

        fileio.atomic_write_dir(final, write, label="final")
        self._write_card()
        return final

    def _write_card(self) -> None:
        """``eval/results.json`` from the last step's held-out evaluation and ``final/README.md``, the model card
        (:mod:`medrlvr.card`); a card that cannot be written is a warning, never a lost run."""
        from medrlvr import card

        try:
            if self.final_eval is not None:
                card.write_heldout_results(self.out, self.final_eval, self.cfg)
            card.write_card(self.out)
        except Exception as e:  # the weights are saved; `medrlvr card RUN_DIR` writes the card again
            print(f"[train] warning: model card not written: {type(e).__name__}: {e}", flush=True)

    def _resume(self) -> None:
        d = self._resume_dir  # the pointer's checkpoint, or the newest complete one (medrlvr.train.resume)
        from safetensors.torch import load_file

        pdir = d / "policy"
        if is_lora(self.policy):
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.policy, load_file(str(pdir / "adapter_model.safetensors")))
        elif self.par.sharded:
            self.par.load_full_state_dict(self.policy, load_file(str(pdir / "model.safetensors")))
        else:
            sd = load_file(str(pdir / "model.safetensors"))
            missing, unexpected = self.policy.load_state_dict(sd, strict=False)
            missing = [k for k in missing if "lm_head" not in k]  # tied embeddings are stored once
            if missing or unexpected:
                raise RuntimeError(f"checkpoint {pdir} does not match the model: missing={missing[:5]} "
                                   f"unexpected={unexpected[:5]}")
        if self.critic is not None:
            if not (d / "critic.safetensors").is_file():
                raise FileNotFoundError(f"--resume: {d} has no critic.safetensors (not a ppo checkpoint)")
            csd = load_file(str(d / "critic.safetensors"))
            if self.par.sharded:
                self.par.load_full_state_dict(self.critic, csd)
            else:
                self.critic.load_state_dict(csd)
        st = torch.load(d / "trainer_state.pt", weights_only=True)  # tensors and plain containers only
        if bool(st.get("sharded_optimizer", False)) != self.par.sharded:
            raise ValueError(f"--resume: {d} holds the optimizer state of a "
                             f"{'parallel=fsdp2' if st.get('sharded_optimizer') else 'DDP or 1-process'} run "
                             f"(world_size {st.get('world_size', 1)}); resume it with the same parallel mode "
                             f"(fsdp2 with more than one process, or not)")
        self.par.load_optim_state(self.opt, st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.stream.load_state(st["stream"])
        self.step, self.skipped_steps = int(st["step"]), int(st.get("skipped_steps", 0))
        self._answered_streak = int(st.get("answered_streak", 0))   # stop_answered: a streak goes on after a resume
        # each rank its own RNG state; another world size: ranks without one take rank 0's (sampling is
        # seeded per prompt and the update's permutation per step, so no run-level RNG state is consumed)
        ranks = st.get("rng_ranks") or [st["rng"]]
        rng = ranks[self.cfg.rank] if self.cfg.rank < len(ranks) else ranks[0]
        torch.set_rng_state(rng["torch"])
        py = rng["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        if "lr" in self._changes or "critic_lr" in self._changes:  # an accepted change beats the restored state
            lrs = [self.cfg.lr, self.cfg.critic_lr][:len(self.opt.param_groups)]
            self.sched.base_lrs = lrs
            for g, lr in zip(self.opt.param_groups, lrs):
                g["initial_lr"], g["lr"] = lr, lr * self.sched.lr_lambdas[0](self.sched.last_epoch)
            self.sched._last_lr = [g["lr"] for g in self.opt.param_groups]
        for g in self.opt.param_groups:  # restored groups keep the saved values; accepted changes apply
            g["weight_decay"], g["betas"] = self.cfg.weight_decay, tuple(self.cfg.adam_betas)
        if self.is_main:
            resume_mod.clean_leftovers(self.out / rundir.CHECKPOINTS)
        # lines written after the checkpoint by the interrupted run are dropped (temp file + rename)
        if self.is_main:
            resume_mod.truncate_logs(self.out, self.step)
        if self.is_main and not self.quiet:
            done = self.step >= self.cfg.max_steps
            print(f"[train] resuming from step {self.step} of {self.cfg.max_steps} ({d.name})"
                  + ("; the run already reached max_steps: nothing to train (raise it with --max-steps)"
                     if done else ""), file=sys.stderr, flush=True)


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training at a step boundary: ``step`` steps are done and checkpointed in ``ckpt``
    (None when no step finished: nothing was saved). :meth:`line` is the one line a user sees."""

    def __init__(self, step: int, max_steps: int, out: Path, ckpt: Path | None, is_main: bool = True):
        super().__init__(f"interrupted at step {step} of {max_steps}")
        self.step, self.max_steps, self.out, self.ckpt, self.is_main = step, max_steps, Path(out), ckpt, is_main

    def line(self, again: str | None = None) -> str:
        if self.step == 0:
            return ("interrupted before the first step finished; nothing saved; start again without --resume"
                    + (f": {again}" if again else ""))
        return (f"interrupted at step {self.step} of {self.max_steps}; checkpoint written; continue with: "
                f"medrlvr train --resume --output {self.out}")


class _EngineCall:
    """An engine whose ``generate`` is the trainer's (inside the FSDP2 root forward when sharded)."""

    def __init__(self, fn):
        self.generate = fn


def claim_run_dir(output_dir: str | Path, overwrite: bool = False, quiet: bool = False) -> None:
    """A new run's directory: refused (``FileExistsError``) when it exists and is not empty, unless ``overwrite``,
    which removes the old run first and says so. Runs are never trained over or mixed silently."""
    out = Path(output_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"--output {out} exists and is not a directory")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"run directory {out} is not empty: continue it with --resume, replace it with "
                              "--overwrite, or choose another --output")
    shutil.rmtree(out)
    if not quiet:
        print(f"[train] --overwrite: removed the old run in {out}", file=sys.stderr, flush=True)


def train(cfg: TrainConfig, output_dir: str | Path, resume: bool = False, max_steps: int | None = None,
          quiet: bool = False, allow_change: tuple[str, ...] = (), overwrite: bool = False) -> Trainer:
    """Train ``cfg`` into ``output_dir`` (a new run: see :func:`claim_run_dir`; ``resume``: continue it)."""
    if not resume and distributed.env_world()[0] == 0:
        claim_run_dir(output_dir, overwrite, quiet)
    t = Trainer(cfg, output_dir, resume=resume, quiet=quiet, allow_change=allow_change)
    t.train(max_steps)
    return t
