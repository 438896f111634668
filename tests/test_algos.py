"""Unit tests for medrlvr.algos against values worked out by hand (arithmetic in the comments)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from medrlvr import algos
from medrlvr.algos import (
    ADVANTAGES,
    aggregate_loss,
    compute_advantages,
    dr_grpo_advantages,
    entropy_from_logits,
    entropy_from_logits_chunked,
    filter_zero_variance_groups,
    gae_advantages,
    grpo_advantages,
    kl_estimate,
    kl_loss,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_whiten,
    policy_loss,
    register_advantage,
    reinforce_baseline_advantages,
    rloo_advantages,
    token_rewards_with_kl,
    unbiased_pass_at_k,
    value_loss,
    zero_variance_fraction,
)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
        atol=atol,
        rtol=0,
    )


# ------------------------------------------------------------------ masked statistics


def test_masked_mean_sum_ignore_padding_even_inf():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, math.inf, math.nan]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # sum = 1+2+3+4 = 10 over 4 tokens; rows: 6/3 = 2 and 4/1 = 4
    close(masked_sum(x, m), 10.0)
    close(masked_mean(x, m), 2.5)
    close(masked_mean(x, m, dim=-1), [2.0, 4.0])
    close(masked_sum(x, m, dim=-1), [6.0, 4.0])
    # empty selection -> 0, not nan
    close(masked_mean(x, torch.zeros_like(m)), 0.0)


def test_masked_whiten():
    x = torch.tensor([[2.0, 4.0], [6.0, 100.0]])
    m = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # mean = 4, unbiased var = (4 + 0 + 4) / 2 = 4, std = 2 -> [-1, 0, 1], pad -> 0
    close(masked_whiten(x, m), [[-1.0, 0.0], [1.0, 0.0]], atol=1e-6)
    # shift_mean=False adds the mean (4) back -> [3, 4, 5]
    close(masked_whiten(x, m, shift_mean=False), [[3.0, 4.0], [5.0, 0.0]], atol=1e-6)


# ------------------------------------------------------------------ KL estimators


def test_kl_estimators_hand_values():
    logp = torch.tensor([0.0, -1.0])
    ref = torch.tensor([math.log(2.0), -1.0])
    ln2 = 0.6931471805599453
    # token 0: log r = ref - logp = ln 2, r = 2;   token 1: identical -> all estimators 0
    close(kl_estimate(logp, ref, "k1"), [-ln2, 0.0])  # logp - ref
    close(kl_estimate(logp, ref, "k2"), [0.5 * 0.4804530139182014, 0.0])  # 0.5 * ln2^2 = 0.2402265
    close(kl_estimate(logp, ref, "k3"), [2.0 - ln2 - 1.0, 0.0])  # r - log r - 1 = 0.3068528
    close(kl_estimate(logp, ref, "abs"), [ln2, 0.0])
    close(kl_estimate(logp, ref, "low_var_kl"), [2.0 - ln2 - 1.0, 0.0])
    # aliases
    close(kl_estimate(logp, ref, "kl"), [-ln2, 0.0])
    close(kl_estimate(logp, ref, "mse"), [0.2402265069591007, 0.0])
    # low_var_kl clamps: ref - logp = 20 -> k3 = e^20 - 21 ~ 4.85e8 -> 10
    big = kl_estimate(torch.tensor([0.0]), torch.tensor([20.0]), "low_var_kl")
    close(big, [10.0])
    assert kl_estimate(torch.tensor([0.0]), torch.tensor([20.0]), "k3").item() > 4e8
    with pytest.raises(ValueError, match="k3"):
        kl_estimate(logp, ref, "k4")


def test_kl_loss_k3_token_mean():
    logp = torch.tensor([[0.0, 0.0], [0.0, 5.0]], requires_grad=True)
    ref = torch.tensor([[math.log(2.0), 0.0], [0.0, -5.0]])
    m = torch.tensor([[1, 1], [1, 0]])
    # real tokens: k3 = 0.3068528, 0, 0 -> mean over 3 tokens = 0.1022843
    loss = kl_loss(logp, ref, m)
    close(loss, (2.0 - math.log(2.0) - 1.0) / 3)
    loss.backward()
    # d k3 / d logp = -r + 1 = -(2) + 1 = -1 at token (0,0), /3 for the mean; pad gets 0
    close(logp.grad, [[-1.0 / 3, 0.0], [0.0, 0.0]])


def test_token_rewards_with_kl_places_score_on_last_real_token():
    scores = torch.tensor([1.0, -1.0, 0.5])
    ref = torch.zeros(3, 4)
    logp = torch.tensor(
        [
            [0.1, 0.2, 0.3, 0.4],
            [0.4, 9.0, 9.0, 9.0],  # length 1
            [0.0, 0.2, 0.0, 9.0],  # length 3
        ]
    )
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]])
    rewards, kl = token_rewards_with_kl(scores, logp, ref, mask, beta=0.5, kind="k1")
    # k1 = logp - ref = logp on real tokens; r_t = -0.5 * kl_t, score added on the last real token
    # row0: [-0.05, -0.10, -0.15, -0.20 + 1.0 = 0.80]
    # row1: [-0.20 + (-1.0) = -1.20, 0, 0, 0]
    # row2: [0, -0.10, 0 + 0.5 = 0.5, 0]
    close(rewards, [[-0.05, -0.10, -0.15, 0.80], [-1.20, 0, 0, 0], [0, -0.10, 0.5, 0]])
    close(kl, [[0.1, 0.2, 0.3, 0.4], [0.4, 0, 0, 0], [0.0, 0.2, 0.0, 0]])
    # beta = 0: pure outcome reward on the last token
    r0, _ = token_rewards_with_kl(scores, logp, ref, mask, beta=0.0)
    close(r0.sum(-1), scores)
    close(r0[0, 3], 1.0)


# ------------------------------------------------------------------ GAE


def test_gae_1x3_hand():
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.4, 0.6]])
    m = torch.ones(1, 3)
    adv, ret = gae_advantages(r, v, m, gamma=0.9, lam=0.8, whiten=False)
    # gamma*lam = 0.72
    # t=2: delta = 1 + 0.9*0 - 0.6 = 0.4                    A2 = 0.4
    # t=1: delta = 0 + 0.9*0.6 - 0.4 = 0.14                 A1 = 0.14 + 0.72*0.4 = 0.428
    # t=0: delta = 0 + 0.9*0.4 - 0.5 = -0.14                A0 = -0.14 + 0.72*0.428 = 0.16816
    close(adv, [[0.16816, 0.428, 0.4]])
    # returns = A + V = [0.66816, 0.828, 1.0]
    close(ret, [[0.66816, 0.828, 1.0]])


def test_gae_2x4_masked_hand():
    r = torch.tensor([[0.1, 0.0, 0.0, 1.0], [0.0, -1.0, 9.0, 9.0]])
    v = torch.tensor([[0.2, 0.4, 0.6, 0.8], [0.5, -0.2, 7.0, 7.0]])  # 9s/7s are padding garbage
    m = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    adv, ret = gae_advantages(r, v, m, gamma=0.5, lam=0.5, whiten=False)
    # gamma*lam = 0.25
    # row0 t=3: d = 1 - 0.8 = 0.2                          A = 0.2
    #      t=2: d = 0 + 0.5*0.8 - 0.6 = -0.2               A = -0.2 + 0.25*0.2 = -0.15
    #      t=1: d = 0 + 0.5*0.6 - 0.4 = -0.1               A = -0.1 + 0.25*(-0.15) = -0.1375
    #      t=0: d = 0.1 + 0.5*0.4 - 0.2 = 0.1              A = 0.1 + 0.25*(-0.1375) = 0.065625
    # row1 (length 2, value after the last real token = 0):
    #      t=1: d = -1 + 0.5*0 - (-0.2) = -0.8             A = -0.8
    #      t=0: d = 0 + 0.5*(-0.2) - 0.5 = -0.6            A = -0.6 + 0.25*(-0.8) = -0.8
    close(adv, [[0.065625, -0.1375, -0.15, 0.2], [-0.8, -0.8, 0.0, 0.0]])
    # returns = A + V: row0 [0.265625, 0.2625, 0.45, 1.0]; row1 [-0.3, -1.0, 0, 0]
    close(ret, [[0.265625, 0.2625, 0.45, 1.0], [-0.3, -1.0, 0.0, 0.0]])


def test_gae_gamma_lam_one_zero_values_is_reward_to_go():
    r = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 123.0]])
    m = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae_advantages(r, torch.zeros(2, 3), m, gamma=1.0, lam=1.0, whiten=False)
    # reward-to-go: row0 [1+2+3, 2+3, 3] = [6, 5, 3]; row1 [4+5, 5, pad] = [9, 5, 0]
    close(adv, [[6.0, 5.0, 3.0], [9.0, 5.0, 0.0]])
    close(ret, [[6.0, 5.0, 3.0], [9.0, 5.0, 0.0]])


def test_gae_mask_hole_is_skipped():
    # a hole in the middle (e.g. an observation token) is skipped by the recursion
    r = torch.tensor([[0.0, 5.0, 1.0]])
    v = torch.tensor([[0.0, 3.0, 0.5]])
    m = torch.tensor([[1, 0, 1]])
    adv, _ = gae_advantages(r, v, m, gamma=0.5, lam=1.0, whiten=False)
    # t=2: d = 1 - 0.5 = 0.5, A = 0.5;  t=0: next real token is t=2: d = 0 + 0.5*0.5 - 0 = 0.25,
    # A = 0.25 + 0.5*1*0.5 = 0.5; the hole gets 0
    close(adv, [[0.5, 0.0, 0.5]])


def test_gae_whitened_by_default():
    r = torch.tensor([[0.1, 0.0, 0.0, 1.0], [0.0, -1.0, 9.0, 9.0]])
    v = torch.tensor([[0.2, 0.4, 0.6, 0.8], [0.5, -0.2, 7.0, 7.0]])
    m = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    adv, ret = gae_advantages(r, v, m, gamma=0.5, lam=0.5)
    raw, ret_raw = gae_advantages(r, v, m, gamma=0.5, lam=0.5, whiten=False)
    close(ret, ret_raw)  # returns come from the un-whitened advantages
    close(masked_mean(adv, m), 0.0)
    vals = adv[m.bool()]
    close(vals.std(unbiased=True), 1.0, atol=1e-5)
    close(adv[1, 2:], [0.0, 0.0])
    # whitening preserves order of raw advantages
    assert torch.equal(vals.argsort(), raw[m.bool()].argsort())


# ------------------------------------------------------------------ group advantages

# two groups of three, interleaved: group 7 -> rewards [1, 0, -1], group 3 -> [1, 1, -1]
SCORES = torch.tensor([1.0, 1.0, 0.0, 1.0, -1.0, -1.0])
GIDS = torch.tensor([7, 3, 7, 3, 7, 3])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1], [1, 0, 0]])


def _per_sample(adv, mask):
    """Check the advantage is constant over each row's real tokens and 0 on padding; return (B,)."""
    first = adv[:, 0]
    close(adv, first.unsqueeze(-1) * mask.float())
    return first


def test_grpo_two_groups_of_three():
    adv = grpo_advantages(SCORES, GIDS, MASK)
    assert adv.shape == MASK.shape
    a = _per_sample(adv, MASK)
    # group 7: mean 0, unbiased std = sqrt((1 + 0 + 1)/2) = 1 -> [1, 0, -1] / (1 + 1e-6)
    # group 3: mean 1/3, deviations [2/3, 2/3, -4/3], sum sq = 24/9, var = (24/9)/2 = 4/3,
    #          std = 2/sqrt(3) = 1.1547005 -> [0.5773503, 0.5773503, -1.1547005]
    s3 = 1 / math.sqrt(3)
    close(a, [1.0, s3, 0.0, s3, -1.0, -2 * s3], atol=1e-5)
    # eps matters only through the denominator
    close(grpo_advantages(SCORES, GIDS, MASK, eps=1.0)[0, 0], 0.5)  # 1 / (1 + 1)


def test_dr_grpo_two_groups_of_three():
    a = _per_sample(dr_grpo_advantages(SCORES, GIDS, MASK), MASK)
    # r - group mean: group 7 [1, 0, -1]; group 3 [2/3, 2/3, -4/3]
    close(a, [1.0, 2 / 3, 0.0, 2 / 3, -1.0, -4 / 3])
    close(grpo_advantages(SCORES, GIDS, MASK, norm_by_std=False), dr_grpo_advantages(SCORES, GIDS, MASK))


def test_rloo_two_groups_of_three():
    a = _per_sample(rloo_advantages(SCORES, GIDS, MASK), MASK)
    # group 7 [1, 0, -1]: 1 - (0 - 1)/2 = 1.5;  0 - (1 - 1)/2 = 0;  -1 - (1 + 0)/2 = -1.5
    # group 3 [1, 1, -1]: 1 - (1 - 1)/2 = 1;    1 - 0 = 1;          -1 - (1 + 1)/2 = -2
    close(a, [1.5, 1.0, 0.0, 1.0, -1.5, -2.0])


def test_group_of_size_one_gets_zero():
    scores = torch.tensor([1.0, 0.0, 1.0])
    gids = torch.tensor([0, 0, 1])
    mask = torch.ones(3, 2)
    # group 0: mean 0.5, unbiased std sqrt((0.25 + 0.25)/1) = 0.7071068 -> +-0.7071068; group 1 -> 0
    close(grpo_advantages(scores, gids, mask)[:, 0], [0.7071068, -0.7071068, 0.0], atol=1e-5)
    close(dr_grpo_advantages(scores, gids, mask)[:, 0], [0.5, -0.5, 0.0])
    close(rloo_advantages(scores, gids, mask)[:, 0], [1.0, -1.0, 0.0])  # 1 - 0, 0 - 1


def test_group_ids_may_be_a_list_of_strings():
    gids = ["p7", "p3", "p7", "p3", "p7", "p3"]
    close(grpo_advantages(SCORES, gids, MASK), grpo_advantages(SCORES, GIDS, MASK))


def test_reinforce_baseline_is_batch_whitened_dr_grpo():
    adv = reinforce_baseline_advantages(SCORES, GIDS, MASK)
    close(adv, masked_whiten(dr_grpo_advantages(SCORES, GIDS, MASK), MASK))


def test_registry_dispatch_and_errors():
    assert {"gae", "grpo", "dr_grpo", "rloo"} <= set(ADVANTAGES)
    # unused keyword arguments are dropped so a trainer can pass a superset
    common = dict(scores=SCORES, group_ids=GIDS, mask=MASK, token_rewards=None, values=None)
    close(compute_advantages("grpo", **common), grpo_advantages(SCORES, GIDS, MASK))
    close(compute_advantages("rloo", **common), rloo_advantages(SCORES, GIDS, MASK))
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.4, 0.6]])
    adv, ret = compute_advantages("gae", token_rewards=r, values=v, mask=torch.ones(1, 3), scores=None,
                                  gamma=0.9, lam=0.8, whiten=False)
    close(adv, [[0.16816, 0.428, 0.4]])
    with pytest.raises(ValueError, match="dr_grpo"):
        compute_advantages("ppo2", scores=SCORES)

    @register_advantage("_test_zero")
    def _zero(scores, mask):
        return torch.zeros(mask.shape)

    try:
        close(compute_advantages("_test_zero", scores=SCORES, mask=MASK, group_ids=GIDS), torch.zeros(6, 3))
        with pytest.raises(ValueError, match="already registered"):
            register_advantage("_test_zero")(lambda scores, mask: None)
    finally:
        ADVANTAGES.pop("_test_zero")


def test_policy_loss_registry():
    from medrlvr.algos import POLICY_LOSSES, compute_policy_loss, register_policy_loss

    assert POLICY_LOSSES["ppo"] is policy_loss
    g = torch.Generator().manual_seed(0)
    logp, old = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    adv, mask = torch.randn(2, 3, generator=g), torch.ones(2, 3)
    want, wm = policy_loss(logp, old, adv, mask, clip_low=0.1, clip_high=0.3)
    got, gm = compute_policy_loss("ppo", logp=logp, old_logp=old, advantages=adv, mask=mask, clip_low=0.1,
                                  clip_high=0.3, values=None)   # an argument it does not take is dropped
    assert torch.equal(got, want) and gm == wm
    with pytest.raises(ValueError, match="ppo"):
        compute_policy_loss("nope", logp=logp)

    @register_policy_loss("_test_zero")
    def _zero(logp, mask):
        return (logp * 0).sum(), {}

    try:
        assert compute_policy_loss("_test_zero", logp=logp, mask=mask, old_logp=old)[0].item() == 0.0
        with pytest.raises(ValueError, match="already registered"):
            register_policy_loss("_test_zero")(lambda logp, mask: None)
    finally:
        POLICY_LOSSES.pop("_test_zero")


# ------------------------------------------------------------------ aggregation


def test_aggregate_loss_modes():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, math.inf]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # token-mean: (1 + 2 + 3 + 4) / 4 = 2.5
    close(aggregate_loss(loss, m, "token-mean"), 2.5)
    # seq-mean-token-mean: ((1+2+3)/3 + 4/1) / 2 = (2 + 4) / 2 = 3
    close(aggregate_loss(loss, m, "seq-mean-token-mean"), 3.0)
    # seq-mean-token-sum: (6 + 4) / 2 = 5
    close(aggregate_loss(loss, m, "seq-mean-token-sum"), 5.0)
    # seq-mean-token-sum-norm, max_len = T = 3: (6/3 + 4/3) / 2 = 5/3
    close(aggregate_loss(loss, m, "seq-mean-token-sum-norm"), 5.0 / 3.0)
    # ... with max_len = 5: (6/5 + 4/5) / 2 = 1
    close(aggregate_loss(loss, m, "seq-mean-token-sum-norm", max_len=5), 1.0)
    with pytest.raises(ValueError, match="token-mean"):
        aggregate_loss(loss, m, "sum")


def test_aggregate_loss_skips_empty_rows_in_seq_means():
    loss = torch.tensor([[1.0, 2.0], [7.0, 7.0]])
    m = torch.tensor([[1, 1], [0, 0]])
    close(aggregate_loss(loss, m, "seq-mean-token-mean"), 1.5)  # only row 0: (1+2)/2
    close(aggregate_loss(loss, m, "seq-mean-token-sum"), 3.0)


# ------------------------------------------------------------------ policy loss


def _logr(ratios):
    return torch.log(torch.tensor(ratios, dtype=torch.float64)).float()


def test_policy_loss_clipping_and_metrics():
    ratios = [1.5, 0.5, 1.1, 1.5, 0.5, 3.0]
    A = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])  # last token is padding
    logp = _logr(ratios).unsqueeze(0).requires_grad_(True)
    old = torch.zeros(1, 6)
    loss, metrics = policy_loss(logp, old, A, mask, clip_low=0.2, clip_high=0.2)
    # per token max(-A r, -A clip(r, 0.8, 1.2)):
    # t0 r=1.5 A=+1: max(-1.5, -1.2) = -1.2   clipped (above 1+eps, A>0)
    # t1 r=0.5 A=-1: max( 0.5,  0.8) =  0.8   clipped (below 1-eps, A<0)
    # t2 r=1.1 A=+1: max(-1.1, -1.1) = -1.1   inside the range
    # t3 r=1.5 A=-1: max( 1.5,  1.2) =  1.5   not clipped (pessimistic side)
    # t4 r=0.5 A=+1: max(-0.5, -0.8) = -0.5   not clipped
    # token-mean = (-1.2 + 0.8 - 1.1 + 1.5 - 0.5) / 5 = -0.5 / 5 = -0.1
    close(loss, -0.1)
    close(metrics["clip_frac"], 2 / 5)
    # approx_kl = mean(old - new) = -(ln1.5 + ln0.5 + ln1.1 + ln1.5 + ln0.5)/5
    #           = -(0.4054651 - 0.6931472 + 0.0953102 + 0.4054651 - 0.6931472)/5 = 0.0960108
    close(metrics["approx_kl"], 0.0960108, atol=1e-6)
    close(metrics["ratio_mean"], (1.5 + 0.5 + 1.1 + 1.5 + 0.5) / 5)  # 1.02
    close(metrics["dual_clip_frac"], 0.0)
    loss.backward()
    # clipped tokens get no gradient; unclipped: d(-A r)/dlogp = -A r / 5
    close(logp.grad, [[0.0, 0.0, -1.1 / 5, 1.5 / 5, -0.5 / 5, 0.0]])


def test_policy_loss_clip_higher_asymmetry():
    logp = _logr([1.25, 0.7]).unsqueeze(0).requires_grad_(True)
    old = torch.zeros(1, 2)
    A = torch.tensor([[1.0, -1.0]])
    m = torch.ones(1, 2)
    # symmetric 0.2: t0 max(-1.25, -1.2) = -1.2 (clipped); t1 max(0.7, 0.8) = 0.8 (clipped)
    sym, ms = policy_loss(logp, old, A, m, clip_low=0.2, clip_high=0.2)
    close(sym, (-1.2 + 0.8) / 2)
    close(ms["clip_frac"], 1.0)
    # clip-higher 0.28: range [0.8, 1.28]; t0: 1.25 < 1.28 -> unclipped, -1.25; t1 still 0.8
    hi, mh = policy_loss(logp, old, A, m, clip_low=0.2, clip_high=0.28)
    close(hi, (-1.25 + 0.8) / 2)  # -0.225 (swapping low/high, range [0.72, 1.2], would give -0.24)
    close(mh["clip_frac"], 0.5)
    hi.backward()
    # only t0 (unclipped) has gradient: d(-A r)/dlogp = -1.25, / 2 tokens
    close(logp.grad, [[-1.25 / 2, 0.0]])
    # clip_low=0.35 widens only the lower side: range [0.65, 1.2]; t0 -1.2, t1 max(0.7, 0.65) = 0.7
    lo, ml = policy_loss(logp.detach(), old, A, m, clip_low=0.35, clip_high=0.2)
    close(lo, (-1.2 + 0.7) / 2)
    close(ml["clip_frac"], 0.5)


def test_policy_loss_dual_clip():
    logp = _logr([5.0, 2.0, 5.0]).unsqueeze(0).requires_grad_(True)
    old = torch.zeros(1, 3)
    A = torch.tensor([[-1.0, -1.0, 1.0]])
    m = torch.ones(1, 3)
    loss, metrics = policy_loss(logp, old, A, m, dual_clip=3.0)
    # t0 r=5, A=-1: max(5, 1.2) = 5 -> dual clip min(5, -c A = 3) = 3
    # t1 r=2, A=-1: max(2, 1.2) = 2 -> min(2, 3) = 2 (cap not reached)
    # t2 r=5, A=+1: max(-5, -1.2) = -1.2 (dual clip does not touch A > 0)
    close(loss, (3.0 + 2.0 - 1.2) / 3)
    close(metrics["dual_clip_frac"], 1 / 3)
    close(metrics["clip_frac"], 1 / 3)  # only t2 is (regularly) clipped
    loss.backward()
    # capped token has zero gradient; t1: d(-A r)/dlogp = r = 2, /3
    close(logp.grad, [[0.0, 2.0 / 3, 0.0]])
    # without dual clip t0 costs 5
    no_dual, _ = policy_loss(logp.detach(), old, A, m)
    close(no_dual, (5.0 + 2.0 - 1.2) / 3)
    with pytest.raises(ValueError):
        policy_loss(logp, old, A, m, dual_clip=0.5)


def test_policy_loss_agg_modes_forwarded():
    logp = torch.zeros(2, 2)
    A = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    m = torch.tensor([[1, 1], [1, 0]])
    # ratio 1 -> loss = -A: token-mean (-1 -1 -2)/3; seq-mean-token-sum-norm (-2/4 + -2/4)/2 = -0.5
    close(policy_loss(logp, logp, A, m)[0], -4 / 3)
    close(policy_loss(logp, logp, A, m, agg="seq-mean-token-sum-norm", max_len=4)[0], -0.5)


# ------------------------------------------------------------------ value loss


def test_value_loss_clipping():
    v = torch.tensor([[0.5, 0.1, -0.5, 0.5, 42.0]])
    old = torch.zeros(1, 5)
    R = torch.tensor([[1.0, 1.0, -1.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1, 1, 0]])
    loss, metrics = value_loss(v, old, R, m, clip=0.2)
    # t0: (0.5-1)^2 = 0.25, v_clip = 0.2: (0.2-1)^2 = 0.64  -> 0.5*0.64 = 0.32   clip active
    # t1: (0.1-1)^2 = 0.81, v_clip = 0.1 (within range)      -> 0.405          not active
    # t2: (-0.5+1)^2 = 0.25, v_clip = -0.2: 0.64             -> 0.32           active
    # t3: (0.5-0)^2 = 0.25, v_clip = 0.2: 0.04               -> 0.125          not active
    # mean = (0.32 + 0.405 + 0.32 + 0.125) / 4 = 1.17 / 4 = 0.2925
    close(loss, 0.2925)
    close(metrics["vf_clip_frac"], 0.5)
    # clip=None: 0.5 * (0.25 + 0.81 + 0.25 + 0.25) / 4 = 0.195
    loss_nc, m_nc = value_loss(v, old, R, m, clip=None)
    close(loss_nc, 0.195)
    close(m_nc["vf_clip_frac"], 0.0)


# ------------------------------------------------------------------ entropy / logprobs


def test_entropy_uniform_is_log_v():
    logits = torch.zeros(2, 3, 7)
    close(entropy_from_logits(logits), torch.full((2, 3), math.log(7)))
    close(entropy_from_logits_chunked(logits, chunk=2), torch.full((2, 3), math.log(7)))
    # a one-hot (-inf elsewhere) distribution has entropy 0, no nan
    z = torch.tensor([[0.0, -math.inf, -math.inf]])
    close(entropy_from_logits(z), [0.0])
    close(entropy_from_logits_chunked(z), [0.0])
    # two equally likely tokens out of four, others -inf: log 2
    close(entropy_from_logits(torch.tensor([3.0, 3.0, -math.inf, -math.inf])), math.log(2))


def test_entropy_chunked_matches_unchunked_and_grads():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 11, generator=g) * 4).requires_grad_(True)
    ref = entropy_from_logits(logits)
    for chunk in (1, 2, 4, 1024):
        out = entropy_from_logits_chunked(logits, chunk=chunk)
        close(out, ref, atol=1e-5)
    w = torch.randn(3, 5, generator=g)
    (gr,) = torch.autograd.grad((ref * w).sum(), logits)
    (gc,) = torch.autograd.grad((entropy_from_logits_chunked(logits, chunk=3) * w).sum(), logits)
    close(gc, gr, atol=1e-5)
    # sliced (non-contiguous) input and 2-D input
    close(entropy_from_logits_chunked(logits[:, :-1], chunk=2), ref[:, :-1], atol=1e-5)
    close(entropy_from_logits_chunked(logits.reshape(15, 11), chunk=4), ref.reshape(15), atol=1e-5)
    # bf16 input is computed in float32
    lb = logits.detach().bfloat16()
    out = entropy_from_logits_chunked(lb, chunk=4)
    assert out.dtype == torch.float32
    close(out, entropy_from_logits(lb.float()), atol=1e-5)


def test_logprobs_from_logits_matches_log_softmax():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 6, 13, generator=g) * 3).requires_grad_(True)
    labels = torch.randint(0, 13, (2, 6), generator=g)
    ref = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    for chunk in (1, 4, 1024):
        close(logprobs_from_logits(logits, labels, chunk=chunk), ref, atol=1e-6)
    # gradients match autograd through log_softmax
    w = torch.randn(2, 6, generator=g)
    (gr,) = torch.autograd.grad((ref * w).sum(), logits)
    (gc,) = torch.autograd.grad((logprobs_from_logits(logits, labels, chunk=5) * w).sum(), logits)
    close(gc, gr, atol=1e-6)
    # non-contiguous slice, as in logits[:, :-1] vs labels[:, 1:]
    sl = logprobs_from_logits(logits[:, :-1], labels[:, 1:], chunk=2)
    ref_sl = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].unsqueeze(-1)).squeeze(-1)
    close(sl, ref_sl, atol=1e-6)


def test_logprobs_from_logits_bf16():
    g = torch.Generator().manual_seed(2)
    logits32 = torch.randn(2, 5, 17, generator=g) * 3
    labels = torch.randint(0, 17, (2, 5), generator=g)
    lb = logits32.bfloat16().requires_grad_(True)
    out = logprobs_from_logits(lb, labels, chunk=3)
    assert out.dtype == torch.float32
    # computed in float32 from the bf16 values: exact up to float32 rounding
    ref = torch.log_softmax(lb.detach().float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    close(out, ref, atol=1e-5)
    # vs the float32 logits before rounding to bf16: bf16 has ~3 significant digits (|z| <~ 10)
    ref32 = torch.log_softmax(logits32, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    close(out, ref32, atol=0.1)
    out.sum().backward()
    assert lb.grad.dtype == torch.bfloat16
    # d sum log p / dz = onehot - softmax, per row sums to 0
    close(lb.grad.float().sum(-1), torch.zeros(2, 5), atol=2e-2)


# ------------------------------------------------------------------ dynamic sampling


def test_zero_variance_filter_and_fraction():
    scores = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, -1.0, -1.0])
    gids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 3, 3])
    # group 0 all 1 -> drop; group 1 mixed -> keep; group 2 singleton -> drop; group 3 all -1 -> drop
    keep = filter_zero_variance_groups(scores, gids)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [False, False, False, True, True, True, False, False, False]
    # 3 of 4 groups have all-equal rewards
    assert zero_variance_fraction(scores, gids) == pytest.approx(0.75)
    assert zero_variance_fraction(torch.tensor([1.0, 0.0]), torch.tensor([5, 5])) == 0.0


# ------------------------------------------------------------------ pass@k


def test_pass_at_k_hand_values():
    assert unbiased_pass_at_k(5, 2, 1) == pytest.approx(0.4)  # c / n
    assert unbiased_pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert unbiased_pass_at_k(4, 0, 2) == 0.0
    assert unbiased_pass_at_k(4, 3, 2) == 1.0  # n - c = 1 < k
    with pytest.raises(ValueError):
        unbiased_pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        unbiased_pass_at_k(3, 1, 4)


def test_pass_at_k_matches_brute_force_enumeration():
    for n in range(1, 7):
        for c in range(0, n + 1):
            outcomes = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
                assert unbiased_pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_public_api_names():
    for name in algos.__all__:
        assert hasattr(algos, name), name
