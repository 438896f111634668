"""Core RL algorithms for medrlvr: advantage estimators, losses, KL estimators, token statistics.

Everything here is a pure function of tensors (no model, no optimizer, no distributed state), in the
style of verl's ``core_algos.py``, so each piece can be unit-tested on CPU against hand-computed values.

Shape conventions
-----------------
* Per-token quantities over the *response* tokens have shape ``(B, T)``.
* ``mask`` is ``(B, T)`` (bool or float), 1 for real response tokens and 0 for padding. Values at
  padded positions are never read (they may be garbage, ``inf`` or ``nan``).
* ``scores`` is ``(B,)``: one outcome reward per sample (Med-RLVR uses -1 / 0 / +1).
* ``group_ids`` is ``(B,)``: samples drawn for the same prompt share an id (int tensor; a list or
  array of any hashable ids is accepted too).

References
----------
* PPO: Schulman et al. 2017, "Proximal Policy Optimization Algorithms".
* GAE: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation".
* GRPO: Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open LMs".
* Dr.GRPO: Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective".
* RLOO: Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning
  from Human Feedback in LLMs".
* DAPO: Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale"
  (clip-higher, dynamic sampling, token-level loss).
* Dual-clip PPO: Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL".
* KL estimators k1/k2/k3: J. Schulman, "Approximating KL Divergence" (blog post, 2020).
* pass@k: Chen et al. 2021, "Evaluating Large Language Models Trained on Code" (Codex).
* Med-RLVR: Zhang et al. 2025, "Med-RLVR: Emerging Medical Reasoning from a 3B Base Model via RL".
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "masked",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "ADVANTAGES",
    "POLICY_LOSSES",
    "register_policy_loss",
    "compute_policy_loss",
    "KL_KINDS",
    "kl_estimate",
    "token_rewards_with_kl",
    "ADVANTAGES",
    "register_advantage",
    "compute_advantages",
    "gae_advantages",
    "grpo_advantages",
    "dr_grpo_advantages",
    "rloo_advantages",
    "reinforce_baseline_advantages",
    "AGG_MODES",
    "aggregate_loss",
    "policy_loss",
    "value_loss",
    "kl_loss",
    "entropy_from_logits",
    "entropy_from_logits_chunked",
    "logprobs_from_logits",
    "filter_zero_variance_groups",
    "zero_variance_fraction",
    "unbiased_pass_at_k",
]

_TensorLike = torch.Tensor | Sequence[Any]


# ----------------------------------------------------------------------------------------------
# Masked statistics
# ----------------------------------------------------------------------------------------------


def masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x * mask`` where padded entries are exactly 0 even if ``x`` holds inf/nan there."""
    mask = mask.to(x.dtype) if x.is_floating_point() else mask.float()
    return torch.where(mask != 0, x * mask, torch.zeros((), dtype=mask.dtype, device=x.device))


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Masked sum ``sum_i m_i x_i`` (over all elements, or along ``dim``).

    Padded entries contribute exactly 0 even when they hold ``inf``/``nan``.
    """
    xm = masked(x, mask)
    return xm.sum() if dim is None else xm.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Masked mean ``sum_i m_i x_i / sum_i m_i`` (over all elements, or along ``dim``).

    An empty selection (``sum m = 0``) yields 0 instead of ``nan``.
    """
    num = masked_sum(x, mask, dim)
    m = mask.to(num.dtype)
    den = m.sum() if dim is None else m.sum(dim=dim)
    return num / den.clamp_min(1e-8)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Masked variance over all selected elements, ``sum m (x - mean)^2 / (N - 1)``.

    With ``unbiased=True`` (default, as verl/TRL) Bessel's correction uses N-1, N = ``sum m``.
    Returns 0 when fewer than two (resp. one) elements are selected.
    """
    mean = masked_mean(x, mask)
    sq = masked_sum((x - mean) ** 2, mask)
    n = mask.to(sq.dtype).sum()
    den = n - 1 if unbiased else n
    return torch.where(den > 0, sq / den.clamp_min(1e-8), torch.zeros_like(sq))


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Whiten ``x`` with statistics over the masked entries only.

    ``y = (x - mean) / sqrt(var + eps)`` (var unbiased, see :func:`masked_var`); with
    ``shift_mean=False`` the mean is added back, ``y = (x - mean) / sqrt(var + eps) + mean``.
    Padded entries of the result are set to 0. Standard advantage normalisation in PPO
    (Schulman et al. 2017 implementations; verl / TRL ``masked_whiten``).
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    y = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        y = y + mean
    return masked(y, mask)


# ----------------------------------------------------------------------------------------------
# KL estimators and KL-in-reward
# ----------------------------------------------------------------------------------------------

KL_KINDS = ("k1", "k2", "k3", "low_var_kl", "abs")
_KL_ALIASES = {"kl": "k1", "mse": "k2"}


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman, "Approximating KL Divergence").

    With ``log r = ref_logp - logp`` (log ratio ref / policy at the sampled token):

    * ``"k1"``: ``-log r = logp - ref_logp`` (unbiased, high variance, can be negative).
    * ``"k2"``: ``0.5 * (log r)^2`` (biased, low variance, >= 0).
    * ``"k3"``: ``r - log r - 1 = exp(ref_logp - logp) - (ref_logp - logp) - 1`` (unbiased, >= 0).
    * ``"low_var_kl"``: k3 clamped to ``[-10, 10]`` (verl's name for the GRPO kl loss).
    * ``"abs"``: ``|logp - ref_logp|``.

    Aliases: ``"kl"`` = k1, ``"mse"`` = k2. Returns a tensor shaped like ``logp``.
    """
    kind = _KL_ALIASES.get(kind, kind)
    if kind == "k1":
        return logp - ref_logp
    if kind == "k2":
        return 0.5 * (logp - ref_logp).square()
    if kind in ("k3", "low_var_kl"):
        log_r = ref_logp - logp
        k3 = torch.exp(log_r) - log_r - 1.0
        return k3.clamp(min=-10.0, max=10.0) if kind == "low_var_kl" else k3
    if kind == "abs":
        return (logp - ref_logp).abs()
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_KINDS} (or aliases {_KL_ALIASES})")


def _last_token_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the last nonzero mask entry per row, and whether the row has any."""
    m = mask != 0
    T = m.shape[-1]
    # argmax returns the first maximal index, so flip to find the last 1.
    last = (T - 1) - m.flip(-1).to(torch.uint8).argmax(dim=-1)
    return last, m.any(dim=-1)


def token_rewards_with_kl(
    scores: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    kind: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense per-token reward with the KL penalty folded into the reward (PPO-RLHF style).

    ``r_t = -beta * kl_t`` on every response token, and the outcome score is added on the last real
    token: ``r_{T_i} += score_i`` (Ouyang et al. 2022 / Med-RLVR, as in OpenRLHF and TinyZero PPO).
    ``kl_t = kl_estimate(logp, ref_logp, kind)``.

    Returns ``(token_rewards, kl)``, both ``(B, T)``, 0 on padding, detached from the graph. Rows
    with no response token receive nothing.
    """
    if scores.dim() != 1 or scores.shape[0] != logp.shape[0]:
        raise ValueError(f"scores must be (B,), got {tuple(scores.shape)} for logp {tuple(logp.shape)}")
    kl = masked(kl_estimate(logp.detach(), ref_logp.detach(), kind), mask)
    rewards = -beta * kl
    last, has_any = _last_token_index(mask)
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    add = torch.where(has_any, scores.to(device=rewards.device, dtype=rewards.dtype), zero)
    rewards = rewards.scatter_add(-1, last.unsqueeze(-1), add.unsqueeze(-1))
    return rewards, kl


# ----------------------------------------------------------------------------------------------
# Advantage estimators + registry
# ----------------------------------------------------------------------------------------------

ADVANTAGES: dict[str, Callable[..., Any]] = {}
"""Advantage estimators by name (``"gae"``, ``"grpo"``, ``"dr_grpo"``, ``"rloo"``, ...)."""

POLICY_LOSSES: dict[str, Callable[..., Any]] = {}
"""Policy losses by name (``"ppo"``): ``fn(logp, old_logp, advantages, mask, **settings) -> (loss, metrics)``."""


def _registrar(table: dict[str, Callable[..., Any]], kind: str, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in table and table[name] is not fn:
            raise ValueError(f"{kind} {name!r} is already registered")
        table[name] = fn
        return fn

    return deco


def _dispatch(table: dict[str, Callable[..., Any]], kind: str, name: str, kwargs: dict[str, Any]) -> Any:
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; registered: {sorted(table)}")
    fn = table[name]
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return fn(**kwargs)


def register_advantage(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering an advantage estimator under ``name`` in :data:`ADVANTAGES`.

    Raises ``ValueError`` if the name is already taken.
    """
    return _registrar(ADVANTAGES, "advantage estimator", name)


def compute_advantages(name: str, **kwargs: Any) -> Any:
    """Dispatch to the advantage estimator registered as ``name``.

    Keyword arguments the estimator does not accept are dropped, so a trainer may pass a superset
    (e.g. ``token_rewards=..., values=..., scores=..., group_ids=..., mask=...``) and switch
    estimators by name only; missing required arguments still raise ``TypeError``.
    The return value is the estimator's: ``(advantages, returns)`` for ``"gae"``, an advantage
    tensor ``(B, T)`` for the critic-free ones (``"grpo"``, ``"dr_grpo"``, ``"rloo"``, ...).

    Raises ``ValueError`` listing the registered names when ``name`` is unknown.
    """
    return _dispatch(ADVANTAGES, "advantage estimator", name, kwargs)


def register_policy_loss(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a policy loss under ``name`` in :data:`POLICY_LOSSES` (``ValueError`` if taken)."""
    return _registrar(POLICY_LOSSES, "policy loss", name)


def compute_policy_loss(name: str, **kwargs: Any) -> tuple[torch.Tensor, dict[str, float]]:
    """Dispatch to the policy loss registered as ``name``; keyword arguments it does not accept are dropped (as
    :func:`compute_advantages`). Returns ``(loss, metrics)``; ``ValueError`` for an unknown name."""
    return _dispatch(POLICY_LOSSES, "policy loss", name, kwargs)


@register_advantage("gae")
def gae_advantages(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
    whiten: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016), backward recursion over the mask.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, where
    ``t+1`` is the next *real* token of the row; the value (and advantage) after the last real token
    is 0 (terminal). Padded positions are skipped (their rewards/values are ignored) and get 0.

    ``returns = A (before whitening) + V`` (the critic's regression target). If ``whiten`` the
    advantages are then whitened over the mask (:func:`masked_whiten`, as in PPO implementations).
    With ``gamma = lam = 1`` and ``V = 0``, ``A_t`` is the reward-to-go ``sum_{s >= t} r_s``.

    Returns ``(advantages, returns)``, both ``(B, T)``, 0 on padding, no gradient.
    """
    with torch.no_grad():
        m = (mask != 0).to(values.dtype)
        r = masked(token_rewards.to(values.dtype), m)
        v = masked(values, m)
        B, T = v.shape
        next_value = torch.zeros(B, dtype=v.dtype, device=v.device)
        next_adv = torch.zeros(B, dtype=v.dtype, device=v.device)
        adv = torch.zeros_like(v)
        for t in reversed(range(T)):
            mt = m[:, t]
            delta = r[:, t] + gamma * next_value - v[:, t]
            a = delta + gamma * lam * next_adv
            # On padding keep carrying the next real token's value/advantage unchanged.
            next_adv = mt * a + (1 - mt) * next_adv
            next_value = mt * v[:, t] + (1 - mt) * next_value
            adv[:, t] = mt * a
        returns = adv + v
        if whiten:
            adv = masked_whiten(adv, m)
    return adv, returns


def _group_index(group_ids: _TensorLike, device: torch.device) -> tuple[torch.Tensor, int]:
    """Map arbitrary group ids to contiguous ``0..G-1``; returns (inverse index (B,), G)."""
    if isinstance(group_ids, torch.Tensor):
        _, inv = torch.unique(group_ids.to(device), return_inverse=True)
    else:
        seen: dict[Any, int] = {}
        keys = [g.item() if hasattr(g, "item") else g for g in group_ids]
        inv = torch.tensor([seen.setdefault(k, len(seen)) for k in keys], dtype=torch.long, device=device)
    n_groups = int(inv.max().item()) + 1 if inv.numel() else 0
    return inv.reshape(-1), n_groups


def _group_stats(scores: torch.Tensor, group_ids: _TensorLike):
    """Per-sample group size, group mean and unbiased group std (float64)."""
    s = scores.detach().to(torch.float64).reshape(-1)
    inv, G = _group_index(group_ids, s.device)
    if inv.shape[0] != s.shape[0]:
        raise ValueError(f"group_ids has {inv.shape[0]} entries, scores has {s.shape[0]}")
    count = torch.zeros(G, dtype=s.dtype, device=s.device).index_add_(0, inv, torch.ones_like(s))
    mean = torch.zeros(G, dtype=s.dtype, device=s.device).index_add_(0, inv, s) / count
    dev = s - mean[inv]
    ss = torch.zeros(G, dtype=s.dtype, device=s.device).index_add_(0, inv, dev * dev)
    std = torch.sqrt(ss / (count - 1).clamp_min(1))
    return s, count[inv], mean[inv], std[inv]


def _broadcast(adv: torch.Tensor, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    out_dtype = like.dtype if like.is_floating_point() else torch.float32
    return masked(adv.to(out_dtype).unsqueeze(-1).expand(mask.shape), mask)


@register_advantage("grpo")
def grpo_advantages(
    scores: torch.Tensor,
    group_ids: _TensorLike,
    mask: torch.Tensor,
    eps: float = 1e-6,
    norm_by_std: bool = True,
) -> torch.Tensor:
    """GRPO outcome advantage (Shao et al. 2024, DeepSeekMath), broadcast over response tokens.

    ``A_i = (r_i - mean(r_group)) / (std(r_group) + eps)`` for every response token of sample i.
    The std is the *unbiased* (N-1) sample std, like verl (``torch.std``) and TRL; DeepSeekMath
    does not specify. With ``norm_by_std=False`` this is Dr.GRPO (``A_i = r_i - mean``).
    Groups of size 1 get advantage 0 (no baseline is available). Groups whose rewards are all
    equal get 0. Returns ``(B, T)`` float, 0 on padding, no gradient.
    """
    s, count, mean, std = _group_stats(scores, group_ids)
    adv = s - mean
    if norm_by_std:
        adv = adv / (std + eps)
    adv = torch.where(count > 1, adv, torch.zeros_like(adv))
    return _broadcast(adv, mask, scores)


@register_advantage("dr_grpo")
def dr_grpo_advantages(scores: torch.Tensor, group_ids: _TensorLike, mask: torch.Tensor) -> torch.Tensor:
    """Dr.GRPO advantage (Liu et al. 2025, "Understanding R1-Zero-Like Training").

    ``A_i = r_i - mean(r_group)`` broadcast over the response tokens of sample i.

    GRPO without the std division (which up-weights too-easy / too-hard prompts). Pair it with
    the ``"seq-mean-token-sum-norm"`` loss aggregation to also remove the length bias.
    Groups of size 1 get 0. Returns ``(B, T)``, 0 on padding.
    """
    return grpo_advantages(scores, group_ids, mask, norm_by_std=False)


@register_advantage("rloo")
def rloo_advantages(scores: torch.Tensor, group_ids: _TensorLike, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE Leave-One-Out advantage (Ahmadian et al. 2024).

    ``A_i = r_i - (1 / (G - 1)) * sum_{j != i} r_j = G / (G - 1) * (r_i - mean(r_group))`` with G
    the group size. Groups of size 1 get 0. Returns ``(B, T)``, 0 on padding.
    """
    s, count, mean, _ = _group_stats(scores, group_ids)
    adv = torch.where(count > 1, (s - mean) * count / (count - 1).clamp_min(1), torch.zeros_like(s))
    return _broadcast(adv, mask, scores)


@register_advantage("reinforce_baseline")
def reinforce_baseline_advantages(
    scores: torch.Tensor, group_ids: _TensorLike, mask: torch.Tensor, whiten: bool = True
) -> torch.Tensor:
    """REINFORCE with a group-mean baseline, normalised over the whole batch (REINFORCE++-baseline,
    Hu et al. 2025, as in OpenRLHF).

    ``A_i = r_i - mean(r_group)`` broadcast over tokens, then (``whiten=True``) whitened over all
    masked tokens of the batch (:func:`masked_whiten`) instead of per group. Groups of size 1 get 0
    before whitening. Returns ``(B, T)``, 0 on padding.
    """
    adv = dr_grpo_advantages(scores, group_ids, mask)
    return masked_whiten(adv, mask) if whiten else adv


# ----------------------------------------------------------------------------------------------
# Loss aggregation and losses
# ----------------------------------------------------------------------------------------------

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def aggregate_loss(
    loss_mat: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean", max_len: int | float | None = None
) -> torch.Tensor:
    """Reduce a ``(B, T)`` per-token loss to a scalar.

    With ``m`` the mask, ``n_i = sum_t m_it``, and sequence means taken over non-empty rows
    (``n_i > 0``, ``S`` of them):

    * ``"token-mean"``: ``sum_{i,t} m l / sum_{i,t} m`` — every token weighs the same (DAPO,
      Yu et al. 2025, token-level policy-gradient loss).
    * ``"seq-mean-token-mean"``: ``(1/S) sum_i (sum_t m l) / n_i`` — original GRPO (Shao et al. 2024).
    * ``"seq-mean-token-sum"``: ``(1/S) sum_i sum_t m l``.
    * ``"seq-mean-token-sum-norm"``: ``(1/S) sum_i (sum_t m l) / max_len`` with a constant
      ``max_len`` (default ``T = mask.shape[-1]``) — Dr.GRPO (Liu et al. 2025), no length bias.
      (verl's variant of this mode divides the total by ``T`` without averaging over sequences.)

    Raises ``ValueError`` on an unknown mode.
    """
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; expected one of {AGG_MODES}")
    seq_mask = (mask != 0).any(dim=-1)
    if mode == "seq-mean-token-mean":
        seq = masked_mean(loss_mat, mask, dim=-1)
    elif mode == "seq-mean-token-sum":
        seq = masked_sum(loss_mat, mask, dim=-1)
    else:
        L = mask.shape[-1] if max_len is None else max_len
        if L <= 0:
            raise ValueError(f"max_len must be positive, got {L}")
        seq = masked_sum(loss_mat, mask, dim=-1) / L
    return masked_mean(seq, seq_mask)


@register_policy_loss("ppo")
def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    max_len: int | float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate loss (Schulman et al. 2017) with clip-higher and optional dual clip.

    ``rho_t = exp(logp - old_logp)`` and per token

        ``l_t = max(-A_t * rho_t, -A_t * clip(rho_t, 1 - clip_low, 1 + clip_high))``

    (decoupled ``clip_low`` / ``clip_high``: DAPO's clip-higher, Yu et al. 2025). With
    ``dual_clip = c > 1`` (Ye et al. 2020) tokens with ``A_t < 0`` use ``min(l_t, -c * A_t)``, which
    bounds the loss when ``rho`` explodes on a negative-advantage token. The log-ratio is clamped
    to ``[-20, 20]`` before ``exp`` for numerical safety. The loss is reduced with
    :func:`aggregate_loss` (``agg``, ``max_len``).

    Metrics (python floats, masked over real tokens):
    ``clip_frac`` = fraction of tokens where the clipped term is the active (larger) one;
    ``dual_clip_frac`` = fraction where the dual clip is active;
    ``approx_kl`` = k1 estimate of KL(old || new) = mean(old_logp - logp);
    ``ratio_mean`` = mean of rho.
    """
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip constant must be > 1, got {dual_clip}")
    log_ratio = (logp - old_logp).clamp(min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss_mat = torch.maximum(loss_unclipped, loss_clipped)
    clip_active = loss_clipped > loss_unclipped
    if dual_clip is not None:
        cap = -advantages * dual_clip
        dual_active = (advantages < 0) & (loss_mat > cap)
        loss_mat = torch.where(advantages < 0, torch.minimum(loss_mat, cap), loss_mat)
    else:
        dual_active = torch.zeros_like(clip_active)
    loss = aggregate_loss(loss_mat, mask, agg, max_len=max_len)
    with torch.no_grad():
        metrics = {
            "clip_frac": masked_mean(clip_active.float(), mask).item(),
            "dual_clip_frac": masked_mean(dual_active.float(), mask).item(),
            "approx_kl": masked_mean((old_logp - logp).float(), mask).item(),
            "ratio_mean": masked_mean(ratio.float(), mask).item(),
        }
    return loss, metrics


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = 0.2,
    agg: str = "token-mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value (critic) loss of PPO implementations (Schulman et al. 2017; OpenAI baselines).

    ``v_clip = old_v + clip(v - old_v, -clip, clip)`` and
    ``l_t = 0.5 * max((v - R)^2, (v_clip - R)^2)``; ``clip=None`` gives ``0.5 * (v - R)^2``.
    Reduced with :func:`aggregate_loss`. Metrics: ``vf_clip_frac`` = fraction of real tokens where the
    clipped term is the larger one.
    """
    err = (values - returns).square()
    if clip is None:
        loss_mat = 0.5 * err
        active = torch.zeros_like(err, dtype=torch.bool)
    else:
        v_clip = old_values + (values - old_values).clamp(-clip, clip)
        err_clip = (v_clip - returns).square()
        loss_mat = 0.5 * torch.maximum(err, err_clip)
        active = err_clip > err
    loss = aggregate_loss(loss_mat, mask, agg)
    with torch.no_grad():
        metrics = {"vf_clip_frac": masked_mean(active.float(), mask).item()}
    return loss, metrics


def kl_loss(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, kind: str = "k3", agg: str = "token-mean"
) -> torch.Tensor:
    """KL penalty as a loss term (GRPO, Shao et al. 2024) instead of KL-in-reward.

    ``L_KL = agg_t(kl_estimate(logp, ref_logp, kind))``; GRPO uses the k3 estimator
    ``exp(ref - logp) - (ref - logp) - 1`` (Schulman's blog), added to the policy loss as
    ``policy_loss + beta * L_KL``. Gradients flow through ``logp`` only.
    """
    return aggregate_loss(kl_estimate(logp, ref_logp.detach(), kind), mask, agg)


# ----------------------------------------------------------------------------------------------
# Token statistics from logits (memory-lean)
# ----------------------------------------------------------------------------------------------


def _row_chunks(lead_shape: torch.Size, chunk: int):
    """Yield index tuples selecting ``<= chunk`` rows of a ``(N, V)`` or ``(B, T, V)`` tensor as views."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if len(lead_shape) == 1:
        for s in range(0, lead_shape[0], chunk):
            yield (slice(s, s + chunk),)
    else:
        B, T = lead_shape
        for b in range(B):
            for s in range(0, T, chunk):
                yield (b, slice(s, s + chunk))


def _as_2d_or_3d(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    lead = logits.shape[:-1]
    if logits.dim() in (2, 3):
        return logits, lead
    if logits.dim() < 2:
        raise ValueError(f"logits must have a vocabulary dimension, got shape {tuple(logits.shape)}")
    return logits.reshape(-1, logits.shape[-2], logits.shape[-1]), lead


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax distribution at every position: ``(..., V) -> (...)``.

    ``H = -sum_v p_v log p_v = logsumexp(z) - sum_v softmax(z)_v z_v`` — stable (no log of small
    probabilities); ``-inf`` logits are allowed. Computed in float32 (float64 input stays float64);
    half-precision input materialises a float32 copy of ``logits`` — see
    :func:`entropy_from_logits_chunked` for large vocabularies.
    """
    z = logits if logits.dtype == torch.float64 else logits.float()
    p = torch.softmax(z, dim=-1)
    pz = torch.where(p > 0, p * z, torch.zeros((), dtype=z.dtype, device=z.device))
    return torch.logsumexp(z, dim=-1) - pz.sum(dim=-1)


def _entropy_rows(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (n, V) -> (entropy (n,), logsumexp (n,))."""
    lse = torch.logsumexp(z, dim=-1)
    p = torch.exp(z - lse.unsqueeze(-1))
    pz = torch.where(p > 0, p * z, torch.zeros((), dtype=z.dtype, device=z.device))
    return lse - pz.sum(dim=-1), lse


class _ChunkedEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, chunk: int) -> torch.Tensor:  # type: ignore[override]
        lead = logits.shape[:-1]
        out = torch.empty(lead, dtype=torch.float32, device=logits.device)
        lse = torch.empty(lead, dtype=torch.float32, device=logits.device)
        for idx in _row_chunks(lead, chunk):
            out[idx], lse[idx] = _entropy_rows(logits[idx].float())
        ctx.save_for_backward(logits, lse, out)
        ctx.chunk = chunk
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        logits, lse, ent = ctx.saved_tensors
        grad = torch.empty_like(logits)
        # dH/dz_v = -p_v (log p_v + H)
        for idx in _row_chunks(logits.shape[:-1], ctx.chunk):
            logp = logits[idx].float() - lse[idx].unsqueeze(-1)
            p = torch.exp(logp)
            g = torch.where(p > 0, -p * (logp + ent[idx].unsqueeze(-1)), torch.zeros((), device=p.device))
            grad[idx] = (g * grad_out[idx].unsqueeze(-1)).to(grad.dtype)
        return grad, None


def entropy_from_logits_chunked(logits: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Same value as :func:`entropy_from_logits` (``(..., V) -> (...)``, float32), computed ``chunk``
    positions at a time so at most a ``(chunk, V)`` float32 copy of the logits exists at once.

    ``(B, T, V)`` inputs are processed row by row (so ``logits[:, :-1]`` slices are not copied).
    Differentiable: the backward pass recomputes the softmax per chunk, using
    ``dH/dz_v = -p_v (log p_v + H)``, and saves no float32 copy.
    """
    x, lead = _as_2d_or_3d(logits)
    return _ChunkedEntropy.apply(x, chunk).reshape(lead)


class _ChunkedLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, logits: torch.Tensor, labels: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        lead = logits.shape[:-1]
        out = torch.empty(lead, dtype=torch.float32, device=logits.device)
        lse = torch.empty(lead, dtype=torch.float32, device=logits.device)
        for idx in _row_chunks(lead, chunk):
            z = logits[idx].float()
            lse[idx] = torch.logsumexp(z, dim=-1)
            out[idx] = z.gather(-1, labels[idx].unsqueeze(-1)).squeeze(-1) - lse[idx]
        ctx.save_for_backward(logits, labels, lse)
        ctx.chunk = chunk
        ctx.mark_non_differentiable(labels)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        logits, labels, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        # d log p_y / dz_v = 1[v = y] - p_v
        for idx in _row_chunks(logits.shape[:-1], ctx.chunk):
            g_out = grad_out[idx].float().unsqueeze(-1)
            g = torch.exp(logits[idx].float() - lse[idx].unsqueeze(-1)).mul_(-g_out)
            g.scatter_add_(-1, labels[idx].unsqueeze(-1), g_out)
            grad[idx] = g.to(grad.dtype)
        return grad, None, None


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Log-probability of ``labels`` under ``softmax(logits)``: ``(..., V), (...) -> (...)`` float32.

    ``log p(y) = z_y - logsumexp(z)``, i.e. ``log_softmax(z).gather(y)`` without materialising the
    full log-softmax: each chunk of ``chunk`` positions is upcast to float32 (bf16/fp16 logits are
    fine), so at most a ``(chunk, V)`` float32 copy exists at once; ``(B, T, V)`` inputs are walked
    row by row, so slices like ``logits[:, :-1]`` are not copied. Differentiable w.r.t. ``logits``
    (custom backward, ``d log p_y / dz = onehot(y) - softmax(z)`` per chunk; gradient in the
    logits' dtype). ``labels`` must be valid vocabulary indices (no ignore index).
    """
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} != logits shape[:-1] {tuple(logits.shape[:-1])}"
        )
    x, lead = _as_2d_or_3d(logits)
    return _ChunkedLogProbs.apply(x, labels.reshape(x.shape[:-1]).long(), chunk).reshape(lead)


# ----------------------------------------------------------------------------------------------
# DAPO dynamic sampling helpers
# ----------------------------------------------------------------------------------------------


def _group_minmax(scores: torch.Tensor, group_ids: _TensorLike):
    s = scores.detach().reshape(-1).to(torch.float64)
    inv, G = _group_index(group_ids, s.device)
    if inv.shape[0] != s.shape[0]:
        raise ValueError(f"group_ids has {inv.shape[0]} entries, scores has {s.shape[0]}")
    gmax = torch.full((G,), -math.inf, dtype=s.dtype, device=s.device).scatter_reduce(0, inv, s, "amax")
    gmin = torch.full((G,), math.inf, dtype=s.dtype, device=s.device).scatter_reduce(0, inv, s, "amin")
    return inv, gmax, gmin


def filter_zero_variance_groups(scores: torch.Tensor, group_ids: _TensorLike) -> torch.Tensor:
    """Keep-mask ``(B,)`` bool of samples whose group has non-identical rewards (DAPO dynamic
    sampling, Yu et al. 2025): groups where every sample got the same reward have zero GRPO/RLOO
    advantage and contribute no policy gradient. Singleton groups are dropped as well.
    """
    inv, gmax, gmin = _group_minmax(scores, group_ids)
    return (gmax > gmin)[inv]


def zero_variance_fraction(scores: torch.Tensor, group_ids: _TensorLike) -> float:
    """Fraction of *groups* (prompts) whose rewards are all equal (0.0 for an empty batch)."""
    _, gmax, gmin = _group_minmax(scores, group_ids)
    if gmax.numel() == 0:
        return 0.0
    return (gmax == gmin).double().mean().item()


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def unbiased_pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al. 2021, Codex) from ``n`` samples of which ``c`` are correct.

    ``pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)`` (the numerically
    stable product form); equals 1 when ``n - c < k``. Requires ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    n, c, k = int(n), int(c), int(k)
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod
