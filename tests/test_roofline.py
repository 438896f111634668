"""The roofline's pure arithmetic: FLOP and byte counts of a model config, and the limits built from
given (not measured) rates. No timings here: bench/ scripts do those."""

import math
from types import SimpleNamespace

import pytest

from medrlvr import roofline
from medrlvr.roofline import Machine, ModelShape

# SmolLM2-135M's config (the numbers of its config.json)
SMOL = SimpleNamespace(num_hidden_layers=30, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                       num_key_value_heads=3, vocab_size=49152)


def test_shape_from_config_and_param_count():
    s = ModelShape.from_config(SMOL)
    assert (s.head_dim, s.kv_heads) == (64, 3)
    per_layer = (576 + 2 * 192) * 576 + 576 * 576 + 2 * 1536 * 576 + 576 * 1536
    assert s.linear_params() == 30 * per_layer + 49152 * 576
    # ~134.5M: the 135M of the name (tied embedding counted once, as the LM head; norms not counted)
    assert s.linear_params() == 134_479_872
    assert s.linear_flops_per_token() == 2 * 134_479_872
    assert s.weight_bytes(2) == 2 * 134_479_872


def test_head_dim_and_missing_kv_heads_default():
    cfg = SimpleNamespace(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                          vocab_size=100, head_dim=32)
    s = ModelShape.from_config(cfg)
    assert s.kv_heads == 4 and s.head_dim == 32
    assert dict((n, (N, K)) for n, N, K, _ in s.linears())["qkv"] == (3 * 4 * 32, 64)


def test_attention_and_kv_counts():
    s = ModelShape.from_config(SMOL)
    assert s.attention_flops(100) == 4 * 30 * 9 * 64 * 100
    assert s.kv_bytes(10, 2) == 2 * 30 * 3 * 64 * 10 * 2


def flat(rate=1e11, bw=1e10, Ms=(1, 32, 300)):
    s = ModelShape.from_config(SMOL)
    m = Machine(dtype="bf16", bandwidth=bw)
    for M in Ms:
        for _, N, K, _ in s.linears():
            m.rates[(M, N, K)] = rate
    return s, m


def test_forward_limit_is_the_max_of_compute_and_memory():
    s, m = flat(rate=1e12, bw=1e10)
    lim = roofline.forward_limit(s, m, rows=32)
    assert lim.flops == pytest.approx(32 * s.linear_flops_per_token())
    assert lim.compute_s == pytest.approx(lim.flops / 1e12)
    assert lim.memory_s == pytest.approx(s.weight_bytes(2) / 1e10)
    assert lim.seconds == max(lim.compute_s, lim.memory_s)
    assert lim.bound == "memory"            # 32 rows: 8.6 GFLOP at 1 TFLOP/s < 269 MB at 10 GB/s
    big = roofline.forward_limit(s, m, rows=300)
    assert big.bound == "compute" and big.seconds == pytest.approx(big.flops / 1e12)


def test_rate_lookup_uses_the_nearest_measured_rows():
    s = ModelShape.from_config(SMOL)
    m = Machine(dtype="bf16", rates={(8, 960, 576): 1.0, (128, 960, 576): 2.0})
    assert m.rate(8, 960, 576) == 1.0
    assert m.rate(20, 960, 576) == 1.0     # log-nearest: 20 is closer to 8 than to 128
    assert m.rate(64, 960, 576) == 2.0
    with pytest.raises(KeyError):
        m.rate(8, 1, 1)
    assert s  # shape unused here beyond construction


def test_lm_head_rows_and_attention_in_forward():
    s, m = flat()
    one = roofline.forward_limit(s, m, rows=300, head_rows=1, attn_context=150)
    head = 2 * 49152 * 576
    assert one.flops == pytest.approx(300 * (s.linear_flops_per_token() - head) + head
                                      + 300 * s.attention_flops(150))


def test_rollout_limit_counts_prefill_and_decode_steps():
    s, m = flat(Ms=(1, 8, 300))
    lim = roofline.rollout_limit(s, None, [300, 300], n=4, new_tokens=65, batch_rows=8)
    head = 2 * 49152 * 576
    per_tok = s.linear_flops_per_token()
    prefill = 2 * (300 * (per_tok - head) + head + 300 * s.attention_flops(150.5))
    decode = 64 * 8 * (per_tok + s.attention_flops(300 + 32.5))
    assert lim.flops == pytest.approx(prefill + decode)
    # one wave of 2 prompts x 4 rows; two waves when only 4 rows fit: same FLOPs, twice the weight reads
    two = roofline.rollout_limit(s, None, [300, 300], n=4, new_tokens=65, batch_rows=4)
    assert two.flops == pytest.approx(lim.flops)
    assert two.bytes > lim.bytes
    kv_shared = roofline.rollout_limit(s, None, [300, 300], 4, 65, 8, shared_prompt_kv=True).bytes
    kv_rows = roofline.rollout_limit(s, None, [300, 300], 4, 65, 8, shared_prompt_kv=False).bytes
    assert kv_rows - kv_shared == pytest.approx(64 * s.kv_bytes(600 * 3, 2))
    timed = roofline.rollout_limit(s, m, [300, 300], n=4, new_tokens=65, batch_rows=8)
    assert timed.seconds > 0 and timed.flops == pytest.approx(lim.flops)


def test_training_limit_is_three_forwards_per_epoch_plus_scoring():
    s = ModelShape.from_config(SMOL)
    fwd = roofline.forward_limit(s, None, rows=100, attn_context=50.5).flops
    t = roofline.training_limit(s, None, [100], micro_batch=8, scoring_passes=1, epochs=1)
    assert t.flops == pytest.approx(4 * fwd)
    t2 = roofline.training_limit(s, None, [100, 100], micro_batch=1, scoring_passes=0, epochs=2)
    assert t2.flops == pytest.approx(2 * 6 * fwd)


def test_training_limit_counts_a_shared_prompt_once_per_group():
    s = ModelShape.from_config(SMOL)
    # 2 groups of 4: prompt 100 tokens, responses 50 -> 2 * (100 + 4 * 50) = 600 rows, not 8 * 150 = 1200
    seqs, prompts = [150] * 8, [100] * 8
    shared = roofline.training_limit(s, None, seqs, micro_batch=8, scoring_passes=0, prompt_lens=prompts, group_size=4)
    ctx = (2 * 100 * 101 / 2 + 8 * (50 * 100 + 50 * 51 / 2)) / 600
    assert shared.flops == pytest.approx(3 * roofline.forward_limit(s, None, rows=600, attn_context=ctx).flops)
    full = roofline.training_limit(s, None, seqs, micro_batch=8, scoring_passes=0)
    assert 0.45 < shared.flops / full.flops < 0.55
    # group_size 1 (no sharing) is the unshared count; mismatched lengths are refused
    assert roofline.training_limit(s, None, seqs, 8, 0, prompt_lens=prompts, group_size=1).flops == full.flops
    with pytest.raises(ValueError):
        roofline.training_limit(s, None, seqs, 8, prompt_lens=[100], group_size=4)


def test_report_line():
    lim = roofline.Limit(seconds=2.0, flops=4e9, bytes=1e9, compute_s=2.0, memory_s=0.5)
    line = roofline.report("x", lim, 4.0)
    assert "fraction_of_limit=0.500" in line and "compute-bound" in line
    assert "fraction_of_limit=nan" in roofline.report("x", lim, 0.0)
    assert not math.isnan(lim.scaled(2).seconds) and lim.scaled(2).seconds == 4.0
