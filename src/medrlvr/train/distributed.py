"""Data-parallel training on PyTorch's own runtime: ``torchrun``, ``torch.distributed``, DDP and FSDP2.

Nothing here is a collective or a launcher of its own: processes are started by ``torchrun``
(``torch.distributed.run``; ``medrlvr train --nproc N`` calls it for one node), the process group is
``torch.distributed`` (NCCL when the trained models sit on CUDA, gloo on CPU), gradients are averaged
by ``DistributedDataParallel`` or sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``) and the
full weights are gathered with ``torch.distributed.checkpoint.state_dict``.

What makes a run independent of the number of processes (the trainer's side of it is in
:mod:`medrlvr.train.trainer`):

* data: every rank reads the same global prompt stream (one seed orders it) and keeps its contiguous
  slice of each step's ``prompts_per_step`` prompts, so GRPO groups never straddle ranks and the data
  cursor in a checkpoint is global;
* sampling: prompt ``i`` of step ``s`` is sampled from its own generator seeded with
  :func:`prompt_seed` ``(seed, s, i)``: whichever rank holds it draws the same completions;
* the update: after scoring, ranks exchange their samples and per-token tensors (:func:`gather_rows`),
  every rank draws the same mini-batch permutation over the *global* batch and computes its
  ``1/world_size`` share of each mini-batch, with the loss of each micro-batch weighted by its share of
  the global mini-batch's token (or sequence) count (:func:`loss_weight`): the summed gradient is the
  1-process gradient of a global token-mean whatever the world size and the micro-batch size;
* statistics: PPO advantage whitening (:func:`global_whiten`), KL, every logged metric are computed
  from all-reduced sums and counts (:class:`Sums`), never as a mean of per-rank means.

Failure handling, and which timeout applies:

* a rank that raises ends its process with a non-zero exit code; ``torchrun``'s elastic agent watches
  its workers, and as soon as one exits non-zero it sends SIGTERM to the others (SIGKILL after its
  30 s grace) and exits non-zero itself, printing the failed rank, its exit code and, through
  :func:`record`, the exception and its traceback ("Root Cause (first observed failure)"). No
  collective timeout is involved: peers blocked in a collective are killed by the agent (on gloo they
  also raise "Connection closed by peer" as soon as the failed process's sockets close). Measured in
  tests/test_distributed.py: the peer ended about 3 s after rank 1 raised.
* a rank that hangs without exiting (a deadlock, a stuck device) is caught by the process-group
  timeout, ``TrainConfig.dist_timeout_s`` (default 600 s) given to ``init_process_group``: the
  blocked collective on the other ranks raises after it and the job ends as above. (On NCCL the
  timeout is enforced by the watchdog with ``TORCH_NCCL_ASYNC_ERROR_HANDLING``, on by default.)

Simplifications, stated: one data-parallel dimension (no tensor or pipeline parallelism); FSDP2 runs
the ``hf`` rollout engine inside the root module's forward (each decoding step all-gathers the
layers: memory-lean, slow) with ``synced_gpus`` so ranks that finish early keep joining the
collectives; ``dynamic_sampling`` (a data-dependent number of refill rounds per rank) is refused with
more than one process.
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from medrlvr.models import unwrap_peft

PARALLEL_MODES = ("ddp", "fsdp2")


# ----------------------------------------------------------------------------------------------- setup
def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 without it)."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def default_device() -> torch.device:
    """Where the trainer puts its models: this process's GPU (``cuda:LOCAL_RANK``) when CUDA is available,
    else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", env_world()[2])
    return torch.device("cpu")


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA tensors, gloo for CPU ones."""
    return "nccl" if device.type == "cuda" else "gloo"


def check_config(cfg) -> None:
    """Refuse settings that cannot be split over ``cfg.world_size`` processes (a ``ValueError`` naming
    the key, which the CLI prints as one line with exit code 2)."""
    w = cfg.world_size
    if cfg.parallel not in PARALLEL_MODES:
        raise ValueError(f"config 'parallel': {cfg.parallel!r} is not one of {PARALLEL_MODES}")
    if w == 1:
        return
    if cfg.prompts_per_step % w:
        raise ValueError(f"config 'prompts_per_step': {cfg.prompts_per_step} prompts cannot be split over "
                         f"{w} processes (the global batch must be divisible by the world size)")
    mb = cfg.mini_batch_size or cfg.rollout_batch
    if mb % w:
        raise ValueError(f"config 'mini_batch_size': {mb} samples cannot be split over {w} processes")
    if cfg.dynamic_sampling:
        raise ValueError("config 'dynamic_sampling': not supported with more than one process (each rank would "
                         "refill a different number of rounds)")
    if cfg.parallel == "fsdp2" and cfg.engine not in ("hf", "auto"):
        raise ValueError(f"config 'engine': parallel=fsdp2 needs engine=hf (the {cfg.engine!r} engine reads whole "
                         "weight tensors, FSDP2 holds shards)")


def init(cfg, device: torch.device | None = None) -> None:
    """Join torchrun's process group (when ``WORLD_SIZE`` > 1) and set ``cfg.rank`` / ``cfg.world_size``
    from it (1 process without torchrun, whatever the config says).

    Idempotent. The backend follows ``device`` (the trained models' device): NCCL on CUDA (the
    process's GPU is ``LOCAL_RANK``), gloo on CPU. The process-group timeout is
    ``cfg.dist_timeout_s``."""
    rank, world, local = env_world()
    if world > 1 and not dist.is_initialized():
        device = device or torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend_for(device), timeout=timedelta(seconds=float(cfg.dist_timeout_s)))
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    cfg.rank, cfg.world_size = rank, world  # the launcher decides (a saved config.yaml's values are ignored)
    check_config(cfg)


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------------------------------ collectives
def all_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (a copy; ``x`` itself on one process)."""
    if not is_active():
        return x
    y = x.detach().to(_comm_device()).clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y.to(x.device)


def all_max(x: float) -> float:
    if not is_active():
        return x
    y = torch.tensor([x], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(y, op=dist.ReduceOp.MAX)
    return float(y.item())


def all_true(flag: bool) -> bool:
    """True when ``flag`` is true on every rank (one small all-reduce)."""
    if not is_active():
        return flag
    y = torch.tensor([0.0 if flag else 1.0], device=_comm_device())
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return float(y.item()) == 0.0


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (pickled by torch.distributed between this
    job's own processes only)."""
    if not is_active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_rows(t: torch.Tensor | None, width: int) -> torch.Tensor | None:
    """Concatenate every rank's ``(n_r, T_r)`` tensor along rows (rank order), right-padded with 0 to
    ``width`` columns. All ranks hold the same number of rows (the batch is split evenly)."""
    if t is None:
        return None
    t = torch.nn.functional.pad(t, (0, width - t.shape[1]))
    if not is_active():
        return t
    dev = _comm_device()
    parts = [torch.empty_like(t, device=dev) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.to(dev).contiguous())
    return torch.cat(parts, 0).to(t.device)


class Sums:
    """Named (sum, count) pairs, all-reduced once per step: ``mean = global sum / global count``."""

    def __init__(self):
        self.v: dict[str, list[float]] = {}

    def add(self, key: str, total: float, count: float = 1.0) -> None:
        s = self.v.setdefault(key, [0.0, 0.0])
        s[0] += float(total)
        s[1] += float(count)

    def means(self) -> dict[str, float]:
        keys = sorted(self.v)  # the same order on every rank
        if is_active():
            # every rank must reduce the same keys: exchange the key sets first (cheap, once per step)
            keys = sorted(set().union(*gather_objects(keys)))
        t = torch.tensor([self.v.get(k, [0.0, 0.0]) for k in keys], dtype=torch.float64).reshape(-1, 2)
        t = all_sum(t)
        return {k: float(t[i, 0] / t[i, 1]) for i, k in enumerate(keys) if t[i, 1] > 0}


def global_masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    t = all_sum(torch.stack([(x.double() * mask.double()).sum(), mask.double().sum()]))
    return float(t[0] / t[1].clamp_min(1e-8))


def global_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """:func:`medrlvr.algos.masked_whiten` with the mean and the (unbiased) variance over the masked
    entries of *all* ranks (two all-reduces: sum and count, then the squared deviations), in float64 so
    that the partial sums' order (the world size) does not show in the float32 result."""
    from medrlvr.algos import masked

    x64 = x.double()
    m = (mask != 0).to(torch.float64)
    t = all_sum(torch.stack([masked(x64, m).sum(), m.sum()]))
    mean = t[0] / t[1].clamp_min(1e-8)
    sq = all_sum(masked((x64 - mean) ** 2, m).sum())
    den = t[1] - 1
    var = torch.where(den > 0, sq / den.clamp_min(1e-8), torch.zeros_like(sq))
    return masked((x64 - mean) * torch.rsqrt(var + eps), m).to(x.dtype)


def prompt_seed(seed: int, step: int, index: int, round_: int = 0) -> int:
    """Seed of prompt ``index`` (its position in the step's global batch) at step ``step``: a fixed
    integer mix, independent of the rank that samples it."""
    h = (seed * 1_000_003 + step) * 1_000_033 + index
    h = h * 7919 + round_
    return h % (2 ** 62)


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous share ``[lo, hi)`` of ``n`` items for ``rank`` (sizes differ by at most one)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def loss_weight(mask_micro: torch.Tensor, global_count: float, agg: str) -> float:
    """Weight of a micro-batch's aggregated loss so that the weights over the global mini-batch sum to 1:
    its share of the mini-batch's real tokens (``token-mean``) or non-empty sequences (``seq-mean-*``)."""
    if agg == "token-mean":
        return float(mask_micro.sum()) / max(global_count, 1e-8)
    return float((mask_micro != 0).any(-1).sum()) / max(global_count, 1e-8)


def mini_batch_count(mask_rows: torch.Tensor, agg: str) -> float:
    """The normaliser of :func:`loss_weight` for one mini-batch (its rows of the global batch)."""
    if agg == "token-mean":
        return float(mask_rows.sum())
    return float((mask_rows != 0).any(-1).sum())


# ------------------------------------------------------------------------------------------ the models
class TrainModules(nn.Module):
    """Policy, critic and reference under one root module so that a single DDP (or FSDP2 root) forward
    covers everything one micro-batch computes: ``forward(fn, *args)`` runs ``fn(self, *args)``.
    (The trainer scores responses through the trunk and the LM head directly, not through
    ``policy.forward``; DDP's gradient hooks and FSDP2's unsharding need a forward of the wrapped module.)"""

    def __init__(self, policy: nn.Module, critic: nn.Module | None, ref: nn.Module | None):
        super().__init__()
        self.policy, self.critic, self.ref = policy, critic, ref

    def forward(self, fn: Callable, *args, **kw):
        return fn(self, *args, **kw)


class Parallel:
    """The trainer's handle on data parallelism: ``fwd(fn, ...)`` (the wrapped forward), ``no_sync(last)``
    for gradient accumulation, ``scale`` of the loss, ``full_state_dict(module)`` for rank-0 saving."""

    def __init__(self, mode: str, world: int, modules: TrainModules, wrapped: nn.Module):
        self.mode, self.world, self.modules, self.wrapped = mode, world, modules, wrapped

    def fwd(self, fn: Callable, *args, **kw):
        return self.wrapped(fn, *args, **kw)

    @property
    def loss_scale(self) -> float:
        """DDP averages gradients over ranks: the loss is multiplied by the world size so that the result
        is the sum of the ranks' weighted shares (= the 1-process gradient). FSDP2 is set to plain sums
        (no divide factor, sum-only collectives: see :func:`wrap`), so no factor there."""
        return float(self.world) if self.mode == "ddp" and self.world > 1 else 1.0

    def no_sync(self, last: bool):
        """DDP: skip the gradient all-reduce on all but the last micro-batch of a mini-batch."""
        if self.mode == "ddp" and self.world > 1 and not last:
            return self.wrapped.no_sync()
        return nullcontext()

    @property
    def sharded(self) -> bool:
        return self.mode == "fsdp2" and self.world > 1

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The full (unsharded) state dict on CPU; a collective under FSDP2 (every rank must call it)."""
        if not self.sharded:
            return module.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        tied = getattr(module, "_tied_weights_keys", None) or ()
        if getattr(getattr(module, "config", None), "tie_word_embeddings", False):
            for k in (tied.keys() if isinstance(tied, dict) else tied):  # stored once, as save_pretrained does
                sd.pop(k, None)
        return sd

    def load_full_state_dict(self, module: nn.Module, sd: dict[str, torch.Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(module, sd, options=StateDictOptions(full_state_dict=True, strict=False))

    def optim_state(self, opt) -> dict:
        """Optimizer state: the plain ``state_dict`` (replicated under DDP), or under FSDP2 the full
        state keyed by parameter name (gathered; a collective)."""
        if not self.sharded:
            return opt.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.modules, opt,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optim_state(self, opt, st: dict) -> None:
        if not self.sharded:
            opt.load_state_dict(st)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.modules, opt, st, options=StateDictOptions(full_state_dict=True))


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    base = unwrap_peft(model)
    trunk = getattr(base, "model", None) or getattr(base, "trunk", None) or base
    layers = getattr(trunk, "layers", None)
    return list(layers) if layers is not None else []


def wrap(cfg, policy: nn.Module, critic: nn.Module | None, ref: nn.Module | None) -> Parallel:
    """Put the models under DDP or FSDP2 (one process: no wrapper at all).

    DDP: the policy and critic are replicated, gradients averaged (``forward_sync_buffers=False``: the
    only buffers are rotary tables, identical everywhere); the reference is a plain local replica.
    FSDP2: every decoder layer of the policy, the critic's trunk and the reference is its own
    ``fully_shard`` unit and the root holds the embeddings / LM head (tied) / final norms / value head;
    parameters, gradients and AdamW state are sharded. Its gradient reduction is set to sum-only with
    divide factor 1 (``set_gradient_divide_factor(1.0)``, ``set_force_sum_reduction_for_comms(True)``):
    the trainer's loss weights already make the sum the global mean, and AVG reduce-scatter on gloo
    has silently summed instead of averaging (https://github.com/pytorch/pytorch/issues/162338)."""
    modules = TrainModules(policy, critic, ref)
    world = cfg.world_size
    if world == 1 or not is_active():
        return Parallel(cfg.parallel, 1, modules, modules)
    if cfg.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        dev = next(policy.parameters()).device
        ids = [dev.index] if dev.type == "cuda" else None
        wrapped = DDP(modules, device_ids=ids, forward_sync_buffers=False)
        return Parallel("ddp", world, modules, wrapped)
    from torch.distributed.fsdp import fully_shard

    seen: set[int] = set()
    for m in (policy, critic, ref):
        if m is None:
            continue
        for layer in _decoder_layers(m):
            if id(layer) not in seen:  # a shared critic reuses the policy's layers
                seen.add(id(layer))
                fully_shard(layer)
    root = fully_shard(modules)
    root.set_gradient_divide_factor(1.0)
    root.set_force_sum_reduction_for_comms(True)
    for m in modules.modules():
        if m is not root and hasattr(m, "set_gradient_divide_factor"):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    return Parallel("fsdp2", world, modules, root)


def grad_norm_value(g) -> float:
    """``clip_grad_norm_``'s result as a float (a DTensor under FSDP2)."""
    if hasattr(g, "full_tensor"):
        g = g.full_tensor()
    return float(g)


# ------------------------------------------------------------------------------------------- launching
def launch(nproc: int, argv: list[str], nnodes: int = 1) -> int:
    """``torchrun --nproc-per-node nproc -m medrlvr <argv>`` for one node (``torch.distributed.run``),
    in this process; returns its exit code (non-zero when any rank failed)."""
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args([f"--nproc-per-node={nproc}", f"--nnodes={nnodes}", "--standalone",
                                         "--module", "medrlvr", *argv])
    try:
        run(args)
    except Exception as e:  # ChildFailedError: torchrun has printed the failed rank and its error above
        print(f"medrlvr: error: distributed run failed: {type(e).__name__}", file=sys.stderr)
        return 1
    return 0


def record(fn):
    """torchrun's error recorder: a rank's exception (and traceback) is written where the elastic agent
    reports it as the root cause of the job's failure."""
    from torch.distributed.elastic.multiprocessing.errors import record as _record

    return _record(fn)


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ evaluation
def sharded_eval(fn: Callable, records: list, details: bool = False) -> dict:
    """Held-out evaluation sharded over ranks: rank r evaluates a contiguous ``ceil(n / world)`` slice
    (the last one padded with copies of the last question, dropped afterwards, so every rank makes the
    same generate calls: FSDP2 needs that), ``fn(records) -> evaluate_policy(..., details=True)``, whose
    ``eval_samples`` answers per question come question by question; the per-answer results are gathered
    in question order and the means computed over all of them."""
    rank, world = dist.get_rank(), dist.get_world_size()
    n = len(records)
    if n == 0:
        return fn(records)
    per = -(-n // world)
    mine = records[rank * per:(rank + 1) * per]
    real = len(mine)
    res = fn(mine + [records[-1]] * (per - real))
    per_question = int(res.get("eval_samples", 1))
    keep = real * per_question
    rows = [(c, f, len(x.completion), x.result.pred, x.rec.gold)
            for c, f, x in zip(res["correct"], res["format_ok"], res["samples"])][:keep]
    parts = gather_objects((rows, res["samples"][:keep] if details else None))
    allrows = [r for p, _ in parts for r in p]
    m = max(1, len(allrows))
    out = {"eval_accuracy": sum(r[0] for r in allrows) / m, "eval_format_valid": sum(r[1] for r in allrows) / m,
           "eval_response_chars": sum(r[2] for r in allrows) / m, "eval_n": len(allrows) // per_question,
           "eval_samples": per_question, "eval_temperature": res.get("eval_temperature")}
    from medrlvr.analysis.stages import heldout_letter_metrics

    out.update(heldout_letter_metrics((r[3], r[4]) for r in allrows))
    if details:
        out["correct"] = [r[0] for r in allrows]
        out["format_ok"] = [r[1] for r in allrows]
        out["samples"] = [x for _, s in parts for x in s]
    return out


def init_eval(timeout_s: float = 600.0) -> tuple[int, int]:
    """``medrlvr eval`` under torchrun: join the process group (NCCL when CUDA is available, as the eval
    then runs there, else gloo) and return (rank, world_size); (0, 1) without torchrun."""
    rank, world, local = env_world()
    if world > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return rank_world()


def rank_world() -> tuple[int, int]:
    if is_active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if is_active():
        dist.barrier()
