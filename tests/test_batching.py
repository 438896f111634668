"""The shared-prompt forward (one prompt pass per GRPO group) equals the padded full-row forward."""

import pytest
import torch

from medrlvr.train import forward as batching
from medrlvr.train.forward import pack, plan_buckets, response_logprobs
from medrlvr.models import load_policy


def _rows(seed=0):
    g = torch.Generator().manual_seed(seed)
    p1 = torch.randint(5, 400, (23,), generator=g).tolist()
    p2 = torch.randint(5, 400, (17,), generator=g).tolist()
    lens = [9, 1, 0, 14, 5, 11, 3]
    prompts = [p1, p1, p1, p2, p2, p1, [7, 8, 9]]          # two groups, interleaved, and a singleton
    resps = [torch.randint(5, 400, (n,), generator=g).tolist() for n in lens]
    return prompts, resps


@pytest.mark.parametrize("overhead", [0, 32, 10_000])   # a bucket per length, the default, one bucket per group
def test_shared_prompt_equals_full_forward_values_and_grads(overhead, monkeypatch):
    monkeypatch.setattr(batching, "BUCKET_OVERHEAD", overhead)
    model, tok = load_policy("tiny", seed=3)
    model.train()
    prompts, resps = _rows()
    out = {}
    for share in (False, True):
        model.zero_grad(set_to_none=True)
        b = pack(prompts, resps, tok.pad_token_id, share_prompt=share)
        assert b.share_prompt is share
        lp, ent = response_logprobs(model, b, temperature=0.7, with_entropy=True)
        (lp.sum() + 0.1 * (ent * b.response_mask).sum()).backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        out[share] = (lp.detach(), ent.detach(), b.response_mask, grads)
    lp0, ent0, m0, g0 = out[False]
    lp1, ent1, m1, g1 = out[True]
    assert torch.equal(m0, m1)
    assert float((lp0 - lp1).abs().max()) < 1e-5
    assert float(((ent0 - ent1) * m0).abs().max()) < 1e-4
    assert g0.keys() == g1.keys() and g0
    worst = max(float((g0[k] - g1[k]).abs().max() / (g0[k].abs().max() + 1e-8)) for k in g0)
    assert worst < 1e-4, worst


def test_distinct_prompts_use_the_plain_path():
    _, tok = load_policy("tiny", seed=3)
    b = pack([[1, 2], [3, 4]], [[5], [6]], tok.pad_token_id, share_prompt=True)
    assert b.share_prompt is False   # nothing to share: one padded forward is cheaper


def _naive(model, b, temperature):
    """Full-sequence logits, log-softmax and entropy at every position, gathered: the reference."""
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.float() / temperature
    idx = b.gather_index.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    z = torch.gather(logits, 1, idx)
    logp = torch.log_softmax(z, -1)
    lp = torch.gather(logp, -1, b.labels.unsqueeze(-1)).squeeze(-1) * b.response_mask
    ent = -(logp.exp() * logp).sum(-1) * b.response_mask
    return lp, ent


def test_head_on_real_tokens_only_matches_the_full_logits_reference():
    """Only real response positions go through the LM head; the result (and its gradient, padding at 0) is
    that of the full logits tensor, for chunks smaller than the batch's real tokens too."""
    model, tok = load_policy("tiny", seed=5)
    model.train()
    prompts, resps = _rows(1)
    b = pack(prompts, resps, tok.pad_token_id, share_prompt=False)
    model.zero_grad(set_to_none=True)
    lp_ref, ent_ref = _naive(model, b, 0.8)
    (lp_ref.sum() + 0.3 * ent_ref.sum()).backward()
    g_ref = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    lp, ent = response_logprobs(model, b, temperature=0.8, with_entropy=True, chunk=2, entropy_grad=True)
    assert lp.shape == b.labels.shape and ent.shape == b.labels.shape
    assert float((lp - lp_ref).detach().abs().max()) < 1e-5
    assert float((ent - ent_ref).detach().abs().max()) < 1e-4
    assert float((lp.detach() * (1 - b.response_mask)).abs().max()) == 0.0     # padding stays 0
    (lp.sum() + 0.3 * ent.sum()).backward()
    g = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert g.keys() == g_ref.keys()
    worst = max(float((g[k] - g_ref[k]).abs().max() / (g_ref[k].abs().max() + 1e-8)) for k in g)
    assert worst < 1e-4, worst


def test_batch_without_response_tokens_gives_zeros_and_a_graph():
    model, tok = load_policy("tiny", seed=5)
    for share in (False, True):
        b = pack([[4, 5, 6], [4, 5, 6]], [[], []], tok.pad_token_id, share_prompt=share)
        lp, ent = response_logprobs(model, b, with_entropy=True)
        assert lp.shape == (2, 1) and float(lp.detach().abs().sum()) == 0.0 and float(ent.detach().abs().sum()) == 0.0
        lp.sum().backward()   # a loss over no tokens still back-propagates (to zero gradients)


def test_plan_buckets():
    assert plan_buckets([127, 127, 9, 21], overhead=32) == [[0, 1], [3, 2]]   # 2 x 127 + 2 x 21 + 32 < 4 x 127
    assert plan_buckets([127, 120, 9, 21], overhead=32) == [[0, 1], [3, 2]]
    assert plan_buckets([127, 120, 115, 110], overhead=32) == [[0, 1, 2, 3]]  # 254 + 230 + 32 > 508
    assert plan_buckets([5, 0, 3, 0], overhead=0) == [[0], [2]]               # empty rows run nothing
    assert plan_buckets([0, 0]) == [] and plan_buckets([]) == []
    lens = [40, 3, 17, 17, 90, 1, 60, 5]
    for oh in (0, 8, 32, 1000):
        runs = plan_buckets(lens, overhead=oh)
        assert sorted(i for r in runs for i in r) == list(range(8))          # every row exactly once
        cost = sum(len(r) * max(lens[i] for i in r) for r in runs) + oh * (len(runs) - 1)
        assert cost <= 8 * 90                                                 # never worse than one padded forward
    assert len(plan_buckets(lens, overhead=0)) == len(set(lens))             # free forwards: one per distinct length
    assert len(plan_buckets(lens, overhead=1000)) == 1


def test_repeat_first_row_expands_the_cache_or_falls_back():
    from transformers import DynamicCache

    cache = DynamicCache()
    k, v = torch.randn(1, 3, 5, 4), torch.randn(1, 3, 5, 4)
    for layer in range(2):
        cache.update(k + layer, v - layer, layer)
    batching._repeat_first_row(cache, 4, "cpu")
    for layer in range(2):
        kk, vv = cache.layers[layer].keys, cache.layers[layer].values
        assert kk.shape == (4, 3, 5, 4) and torch.equal(kk[3], (k + layer)[0]) and torch.equal(vv[2], (v - layer)[0])

    class OldCache:   # transformers before 5.x: no per-layer objects, only batch_select_indices
        def batch_select_indices(self, idx):
            self.idx = idx

    old = OldCache()
    batching._repeat_first_row(old, 3, "cpu")
    assert old.idx.tolist() == [0, 0, 0]
