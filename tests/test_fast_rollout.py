"""The ``fast`` rollout engine against transformers ``generate`` (the ``hf`` engine) and a plain forward.

Tiny random models (SmolLM2 tokenizer): a Llama with head_dim 16 (fp32) and small Llama / Qwen2 models with
head_dim 64 (bf16, as on CPUs where it is native; PyTorch emulates it elsewhere, slowly but correctly).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from medrlvr.rollout.fast import FastEngine, UnsupportedModelError
from medrlvr.models import make_tiny_model
from medrlvr.rollout import ENGINES, SamplingParams, make_engine

HEAD = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
        "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
        "User: ")
WORDS = ["the", "patient", "presents", "with", "fever", "cough", "and", "chest", "pain", "after", "a", "long",
         "flight", "from", "abroad"]


def mixed_prompts(k: int, shared_head: bool = False) -> list[str]:
    out = []
    for i in range(k):
        body = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + (7 * i) % 23))
        out.append((HEAD if shared_head else "") + f"Case {i}: {body}")
    return out


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these tiny models are latency-bound, and the test machine is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def ids_of(groups):
    return [[c.token_ids for c in g] for g in groups]


@pytest.fixture(scope="module")
def llama(tokenizer):
    m = make_tiny_model(seed=0, vocab_size=len(tokenizer))
    return m.eval()


@pytest.fixture(scope="module")
def llama64(tokenizer):
    m = make_tiny_model(seed=1, vocab_size=len(tokenizer), hidden=192, heads=3, kv_heads=1)
    return m.eval()


def tiny_qwen2(vocab: int, hidden: int = 64, heads: int = 4, kv_heads: int = 2, seed: int = 0):
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        m = AutoModelForCausalLM.from_config(cfg)
        with torch.no_grad():   # non-zero q/k/v biases, so the test exercises them
            for layer in m.model.layers:
                for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    p.bias.normal_(0, 0.5)
    return m.eval()


# ----------------------------------------------------------------------------------- vs transformers
def test_registered(llama, tokenizer):
    assert "fast" in ENGINES
    assert isinstance(make_engine("fast", llama, tokenizer, dtype="fp32"), FastEngine)


def test_greedy_fp32_equals_generate(llama, tokenizer):
    prompts = mixed_prompts(24)
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) > 10     # mixed lengths
    params = SamplingParams(max_new_tokens=16, temperature=0.0, stop=())
    ref = make_engine("hf", llama, tokenizer).generate(prompts, 1, params)
    out = make_engine("fast", llama, tokenizer, dtype="fp32", batch_size=8).generate(prompts, 1, params)
    assert ids_of(out) == ids_of(ref)
    for g_out, g_ref in zip(out, ref):
        assert g_out[0].text == g_ref[0].text
        assert g_out[0].finish_reason == g_ref[0].finish_reason
        assert g_out[0].prompt_ids == g_ref[0].prompt_ids


def test_greedy_fp32_equals_generate_qwen2(tokenizer):
    m = tiny_qwen2(len(tokenizer))
    prompts = mixed_prompts(8)
    params = SamplingParams(max_new_tokens=12, temperature=0.0, stop=())
    ref = make_engine("hf", m, tokenizer).generate(prompts, 1, params)
    out = make_engine("fast", m, tokenizer, dtype="fp32").generate(prompts, 1, params)
    assert ids_of(out) == ids_of(ref)


def test_greedy_fp32_equals_generate_lora_and_live_weights(tokenizer):
    from peft import LoraConfig, get_peft_model

    base = make_tiny_model(seed=2, vocab_size=len(tokenizer))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model.eval()
    prompts = mixed_prompts(6)
    params = SamplingParams(max_new_tokens=10, temperature=0.0, stop=())
    hf, fast = make_engine("hf", model, tokenizer), make_engine("fast", model, tokenizer, dtype="fp32")
    first = fast.generate(prompts, 1, params)
    assert ids_of(first) == ids_of(hf.generate(prompts, 1, params))
    with torch.no_grad():                       # an "optimizer step": the engine must see the new weights
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(-3.0)
    second = fast.generate(prompts, 1, params)
    assert ids_of(second) == ids_of(hf.generate(prompts, 1, params))
    assert ids_of(second) != ids_of(first)


def test_eos_and_stop_strings_like_hf(llama, tokenizer):
    prompts = mixed_prompts(6)
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0, stop=())
    free = make_engine("fast", llama, tokenizer, dtype="fp32").generate(prompts, 1, greedy)
    # a stop string taken from the middle of one completion's text, and an "EOS" that the model emits
    text = free[0][0].text
    stop = text[len(text) // 3: len(text) // 3 + 4]
    assert stop.strip()
    params = SamplingParams(max_new_tokens=12, temperature=0.0, stop=(stop,))
    hf_out = make_engine("hf", llama, tokenizer).generate(prompts, 1, params)
    fast_out = make_engine("fast", llama, tokenizer, dtype="fp32").generate(prompts, 1, params)
    assert [(c.token_ids, c.text, c.finish_reason) for g in fast_out for c in g] == \
        [(c.token_ids, c.text, c.finish_reason) for g in hf_out for c in g]
    assert fast_out[0][0].finish_reason == "stop" and fast_out[0][0].text.endswith(stop)
    assert len(fast_out[0][0].logprobs) == len(fast_out[0][0].token_ids)

    eos_tok = free[1][0].token_ids[4]
    gc = llama.generation_config
    old = gc.eos_token_id
    gc.eos_token_id = [2, eos_tok]
    try:
        hf_out = make_engine("hf", llama, tokenizer).generate(prompts, 1, greedy)
        fast_out = make_engine("fast", llama, tokenizer, dtype="fp32").generate(prompts, 1, greedy)
    finally:
        gc.eos_token_id = old
    assert [(c.token_ids, c.finish_reason) for g in fast_out for c in g] == \
        [(c.token_ids, c.finish_reason) for g in hf_out for c in g]
    assert fast_out[1][0].finish_reason == "eos" and fast_out[1][0].token_ids[-1] == eos_tok


# ------------------------------------------------------------------------------- sampling, log-probs
def forward_logprobs(model, c, temperature: float) -> torch.Tensor:
    ids = torch.tensor([c.prompt_ids + c.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    P = len(c.prompt_ids)
    lp = torch.log_softmax(logits[P - 1:-1] / temperature, dim=-1)
    return lp.gather(1, torch.tensor(c.token_ids)[:, None])[:, 0]


@pytest.mark.parametrize("top_p,top_k", [(1.0, 0), (0.9, 20)])
def test_logprobs_match_forward_fp32(llama, tokenizer, top_p, top_k):
    params = SamplingParams(max_new_tokens=12, temperature=0.7, top_p=top_p, top_k=top_k, stop=(), seed=3)
    out = make_engine("fast", llama, tokenizer, dtype="fp32").generate(mixed_prompts(3), 2, params)
    for g in out:
        for c in g:
            assert len(c.logprobs) == len(c.token_ids)
            ref = forward_logprobs(llama, c, params.temperature)
            assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-3), (c.logprobs, ref)


def test_seeded_sampling_and_groups(llama, tokenizer):
    prompts = mixed_prompts(3)
    eng = make_engine("fast", llama, tokenizer, dtype="fp32", batch_size=4)
    p = SamplingParams(max_new_tokens=10, temperature=1.0, stop=(), seed=11)
    a, b = eng.generate(prompts, 4, p), eng.generate(prompts, 4, p)
    c = eng.generate(prompts, 4, SamplingParams(max_new_tokens=10, temperature=1.0, stop=(), seed=12))
    assert ids_of(a) == ids_of(b)
    assert ids_of(a) != ids_of(c)
    assert len(a) == 3 and all(len(g) == 4 for g in a)
    for g, prompt in zip(a, prompts):
        assert len({tuple(x.prompt_ids) for x in g}) == 1                 # n samples share the prompt
        assert g[0].prompt_ids == tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert len({tuple(x.token_ids) for x in g}) > 1                   # ... and differ when sampling


def test_unsupported_model_raises(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    m = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(UnsupportedModelError, match="hf"):
        make_engine("fast", m, tokenizer)
    with pytest.raises(ValueError):
        make_engine("fast", make_tiny_model(vocab_size=len(tokenizer)), tokenizer, dtype="int8")


# ---------------------------------------------------------------------------------------- bf16 path
def test_bf16_path_close_to_fp32(llama64, tokenizer):
    prompts = mixed_prompts(10, shared_head=True)
    eng = make_engine("fast", llama64, tokenizer, dtype="bf16", batch_size=8)
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0, stop=())
    ref = make_engine("fast", llama64, tokenizer, dtype="fp32").generate(prompts, 1, greedy)
    out = eng.generate(prompts, 1, greedy)
    agree = sum(len(os.path.commonprefix([a[0].token_ids, b[0].token_ids])) for a, b in zip(out, ref))
    assert agree >= 0.8 * sum(len(a[0].token_ids) for a in ref)
    params = SamplingParams(max_new_tokens=10, temperature=0.8, stop=(), seed=5)
    out = eng.generate(prompts[:4], 3, params)
    assert ids_of(out) == ids_of(eng.generate(prompts[:4], 3, params))
    for g in out:
        assert len({tuple(c.token_ids) for c in g}) > 1
        for c in g:
            ref_lp = forward_logprobs(llama64, c, params.temperature)
            assert (torch.tensor(c.logprobs) - ref_lp).abs().max() < 0.05


def test_bf16_thread_tuning_restores_torch_threads(llama64, tokenizer):
    """bf16 tunes torch's thread count per step (all vs one) and puts it back after the call."""
    torch.set_num_threads(2)
    try:
        eng = make_engine("fast", llama64, tokenizer, dtype="bf16", batch_size=4)
        eng.generate(mixed_prompts(3), 2, SamplingParams(max_new_tokens=6, temperature=1.0, stop=(), seed=1))
        assert torch.get_num_threads() == 2
        assert eng.last_stats["threads"] in (1, 2)
        assert set(eng.last_stats["thread_timings_us"]["decode"]) <= {1, 2}
    finally:
        torch.set_num_threads(1)


def test_bf16_path_qwen2_biases(tokenizer):
    m = tiny_qwen2(len(tokenizer), hidden=128, heads=2, kv_heads=1, seed=4)
    eng = make_engine("fast", m, tokenizer, dtype="bf16")
    params = SamplingParams(max_new_tokens=8, temperature=1.0, stop=(), seed=2)
    for g in eng.generate(mixed_prompts(3), 2, params):
        for c in g:
            assert (torch.tensor(c.logprobs) - forward_logprobs(m, c, 1.0)).abs().max() < 0.05


@pytest.mark.parametrize("V", [256 * 7, 1000, 49152])
def test_inverse_cdf_matches_one_level_search(V):
    """The two-level sampler returns the token a single cumsum + searchsorted picks (up to float ties at a
    boundary), never a token of probability 0, also at u -> 1 and with V not a multiple of the block."""
    from medrlvr.rollout.fast import inverse_cdf as _inverse_cdf

    g = torch.Generator().manual_seed(V)
    R = 64
    probs = torch.softmax(torch.randn(R, V, generator=g) * 3, -1)
    probs[:, ::3] = 0.0                                       # masked tokens (top-k / top-p)
    probs[1, :] = 0.0
    probs[1, V - 5] = 1.0                                     # all the mass on one late token
    probs = probs / probs.sum(-1, keepdim=True)
    u = torch.rand(R, 1, generator=g)
    u[0] = 0.0
    u[2] = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0))   # the largest float below 1
    got = _inverse_cdf(probs, u)
    cdf = probs.cumsum(-1)
    ref = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0].clamp(max=V - 1)
    assert got.shape == (R,)
    assert (probs.gather(1, got[:, None]) > 0).all()
    assert int(got[1]) == V - 5
    agree = (got == ref).float().mean().item()
    assert agree >= 0.95, agree                               # differs only where the two sums round apart
    assert ((got - ref).abs() <= 3).all()                     # and then to a neighbouring non-zero token


# ------------------------------------------------------------------------------ fused decode attention
def _kernel_or_skip():
    from medrlvr.rollout.kernels import decode_kernel, decode_kernel_reason

    lib = decode_kernel()
    if lib is None:   # e.g. no g++ on this machine: the engine then runs its PyTorch path (tested above)
        pytest.skip(f"the fused decode-attention kernel cannot be built here: {decode_kernel_reason()}")
    return lib


def _reference_attention(qkv, cos, sin, pos, kp, vp, kg, vg, plen, t, S, n, H, Hk, hd, P, M):
    """Float64 attention of one decode step over the blocked cache layout (before this step's writes)."""
    G, B = H // Hk, S * n
    x = qkv.double()
    q, k, v = x[:, :H * hd].view(B, H, hd), x[:, H * hd:(H + Hk) * hd].view(B, Hk, hd), x[:, (H + Hk) * hd:].view(B, Hk, hd)

    def rot(y):
        c, s_ = cos[pos].double()[:, None], sin[pos].double()[:, None]
        return y * c + torch.cat((-y[..., hd // 2:], y[..., :hd // 2]), -1) * s_

    q, k = rot(q), rot(k)
    kpT = kp.double().permute(0, 1, 3, 2, 4).reshape(S, Hk, hd, P)              # (S, Hk, hd, P)
    kgr = kg.double().permute(0, 1, 2, 3, 5, 4).reshape(S, Hk, n, M, hd).clone()
    vgr = vg.double().clone()
    out = torch.empty(B, H, hd, dtype=torch.float64)
    for r in range(B):
        s_, j = divmod(r, n)
        for h in range(Hk):
            kgr[s_, h, j, t[r]], vgr[s_, h, j, t[r]] = k[r, h], v[r, h]
    for r in range(B):
        s_, j = divmod(r, n)
        for hh in range(H):
            kh = hh // G
            keys = torch.cat((kpT[s_, kh, :, :plen[s_]].T, kgr[s_, kh, j, :t[r] + 1]))
            vals = torch.cat((vp[s_, kh, :plen[s_]].double(), vgr[s_, kh, j, :t[r] + 1]))
            out[r, hh] = torch.softmax(keys @ q[r, hh] * hd ** -0.5, -1) @ vals
    return out.view(B, H * hd), kgr, vgr


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("S,n,H,Hk,hd", [(3, 2, 6, 2, 64), (2, 5, 6, 2, 64), (2, 3, 2, 2, 128), (1, 4, 4, 1, 80),
                                         (2, 2, 3, 3, 16)])
def test_decode_kernel_matches_reference(dtype, S, n, H, Hk, hd):
    """One layer's fused decode attention (RoPE, this step's K/V written at t, prompt + generated parts, softmax)
    against a float64 reference: queries per KV head from 2 to 15 (register blocks of 8 and 5 and their
    remainders), head dims 16 to 128, prompt lengths not multiples of 16, a row at its first token."""
    from medrlvr.rollout.fast import KVCache as _Cache
    from medrlvr.rollout.kernels import ptr as _ptr

    lib = _kernel_or_skip()
    fn = lib.fr_decode_attn_f32 if dtype == torch.float32 else lib.fr_decode_attn_bf16
    g = torch.Generator().manual_seed(S * 100 + n * 10 + hd)
    P, M, B = 48, 32, S * n
    c = _Cache(1, S, n, Hk, hd, P, M, dtype, "cpu", blocked=True)
    for buf in (c.kp, c.vp, c.kg, c.vg):
        buf.copy_(torch.randn(buf.shape, generator=g))
    plen = torch.tensor([48, 13, 27][:S])
    t = torch.randint(0, M, (B,), generator=g)
    t[0] = 0
    pos = plen.repeat_interleave(n) + t
    qkv = torch.randn(B, (H + 2 * Hk) * hd, generator=g).to(dtype)
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.arange(P + M + 1).float()[:, None] * inv[None]
    cos, sin = torch.cat((ang, ang), -1).cos().contiguous(), torch.cat((ang, ang), -1).sin().contiguous()
    ref, kgr, vgr = _reference_attention(qkv, cos, sin, pos, c.kp[0], c.vp[0], c.kg[0], c.vg[0], plen, t,
                                         S, n, H, Hk, hd, P, M)
    out = torch.full((B, H * hd), float("nan"), dtype=dtype)
    fn(_ptr(qkv), _ptr(cos), _ptr(sin), _ptr(pos), _ptr(c.kp[0]), _ptr(c.vp[0]), _ptr(c.kg[0]), _ptr(c.vg[0]),
       _ptr(plen), _ptr(t), _ptr(out), S, n, H, Hk, hd, P, M, hd ** -0.5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2           # bf16: q, k stored rounded; math in float32
    assert torch.isfinite(out.float()).all()
    assert (out.double() - ref).abs().max() < tol * max(1.0, ref.abs().max().item())
    kg_now = c.kg[0].double().permute(0, 1, 2, 3, 5, 4).reshape(S, Hk, n, M, hd)
    assert (kg_now - kgr).abs().max() < (1e-5 if dtype == torch.float32 else 2e-2)
    assert torch.equal(c.vg[0].double(), vgr)


def test_decode_kernel_fp32_engine_matches_pytorch_path(llama64, tokenizer):
    """attn_kernel=True on the fp32 path: greedy tokens equal those of the PyTorch path (transformers'
    arithmetic) with continuous batching over more prompts than slots, and sampled log-probs match a forward."""
    _kernel_or_skip()
    prompts = mixed_prompts(9, shared_head=True)
    ker = make_engine("fast", llama64, tokenizer, dtype="fp32", batch_size=4, attn_kernel=True)
    ref = make_engine("fast", llama64, tokenizer, dtype="fp32", batch_size=4)
    assert ker._kern is not None and ref._kern is None
    greedy = SamplingParams(max_new_tokens=20, temperature=0.0, stop=())
    assert ids_of(ker.generate(prompts, 1, greedy)) == ids_of(ref.generate(prompts, 1, greedy))
    params = SamplingParams(max_new_tokens=24, temperature=1.0, stop=(), seed=7)
    for grp in ker.generate(prompts[:5], 2, params):
        for c in grp:
            assert torch.allclose(torch.tensor(c.logprobs), forward_logprobs(llama64, c, 1.0), atol=1e-3)


def test_decode_kernel_choice_and_opt_out(llama, llama64, tokenizer, monkeypatch):
    """bf16 uses the kernel by default, fp32 only when asked; a head dim that is not a multiple of 16 and
    MEDRLVR_FAST_KERNELS=0 fall back to the PyTorch path and say why."""
    import medrlvr.rollout.kernels as kernels

    _kernel_or_skip()
    assert make_engine("fast", llama64, tokenizer, dtype="bf16")._kern is not None
    assert make_engine("fast", llama64, tokenizer, dtype="fp32")._kern is None
    assert make_engine("fast", llama64, tokenizer, dtype="bf16", attn_kernel=False)._kern is None
    assert make_engine("fast", llama, tokenizer, dtype="fp32", attn_kernel=True)._kern is not None   # head dim 16
    hd8 = make_tiny_model(vocab_size=len(tokenizer), hidden=32, heads=4, kv_heads=2)            # head dim 8
    e8 = make_engine("fast", hd8, tokenizer, dtype="bf16", attn_kernel=True)
    assert e8._kern is None and "head dim 8 is not a multiple of 16" in e8.kernel_note
    monkeypatch.setattr(kernels, "_kernel_state", {})
    monkeypatch.setenv("MEDRLVR_FAST_KERNELS", "0")
    off = make_engine("fast", llama64, tokenizer, dtype="bf16")
    assert off._kern is None and "MEDRLVR_FAST_KERNELS=0" in off.kernel_note
    out = off.generate(mixed_prompts(2), 2, SamplingParams(max_new_tokens=5, temperature=1.0, stop=(), seed=1))
    assert all(len(c.token_ids) == 5 for g in out for c in g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,D", [(3, 40), (4096, 48)])
def test_decode_glue_kernels_match_pytorch(dtype, rows, D):
    """The fused residual add + RMSNorm and SiLU-gated product against PyTorch in float32: a width with a tail
    past the 16-wide vectors, few rows (one thread) and many (OpenMP), with and without the residual."""
    from medrlvr.rollout.kernels import ptr as _ptr

    lib = _kernel_or_skip()
    sfx = "f32" if dtype == torch.float32 else "bf16"
    norm, silu = getattr(lib, f"fr_add_rmsnorm_{sfx}"), getattr(lib, f"fr_silu_mul_{sfx}")
    g = torch.Generator().manual_seed(rows + D)
    x, y = (torch.randn(rows, D, generator=g).to(dtype) for _ in range(2))
    w = (1 + 0.1 * torch.randn(D, generator=g)).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for with_y in (True, False):
        xk, h = x.clone(), torch.empty_like(x)
        norm(_ptr(xk), _ptr(y) if with_y else None, _ptr(w), _ptr(h), rows, D, 1e-5)
        xs = (x + y) if with_y else x                                    # the residual stream, in its dtype
        assert torch.equal(xk, xs)
        xf = xs.float()
        ref = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5) * w.float()
        assert (h.float() - ref).abs().max() < tol * max(1.0, ref.abs().max().item())
    gu = torch.randn(rows, 2 * D, generator=g).mul(4).to(dtype)
    out = torch.empty(rows, D, dtype=dtype)
    silu(_ptr(gu), _ptr(out), rows, D)
    ref = F.silu(gu[:, :D].float()) * gu[:, D:].float()
    assert (out.float() - ref).abs().max() < tol * max(1.0, ref.abs().max().item())
