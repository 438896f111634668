"""The shared-prompt forward (one prompt pass per GRPO group) equals the padded full-row forward."""

import torch

from medrlvr.batching import pack, response_logprobs
from medrlvr.models import load_policy


def _rows(seed=0):
    g = torch.Generator().manual_seed(seed)
    p1 = torch.randint(5, 400, (23,), generator=g).tolist()
    p2 = torch.randint(5, 400, (17,), generator=g).tolist()
    lens = [9, 1, 0, 14, 5, 11, 3]
    prompts = [p1, p1, p1, p2, p2, p1, [7, 8, 9]]          # two groups, interleaved, and a singleton
    resps = [torch.randint(5, 400, (n,), generator=g).tolist() for n in lens]
    return prompts, resps


def test_shared_prompt_equals_full_forward_values_and_grads():
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
