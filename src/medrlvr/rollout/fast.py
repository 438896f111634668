"""A fast rollout engine for Llama-family policies (SmolLM2, Llama, Qwen2) on CPU.

``FastEngine`` (registered as ``"fast"``) runs its own compact forward pass over the weights of the
live policy module (a plain ``transformers`` model or a peft LoRA wrapper: the active adapters' deltas
are merged into the snapshot). At the start of every :meth:`FastEngine.generate` call the weights are
copied (and cast: ``dtype="bf16"`` by default) into persistent buffers, so the engine always samples
from the current policy and there is no separate weight-sync step.

What makes it fast, compared with transformers ``generate`` (see ``bench/rollout.py throughput``):

* each decode step's attention, per layer, is ONE call of a fused C++ kernel (``csrc/decode_attention.cpp``,
  built on first use with ``g++ -O3 -march=native``, any x86 or Arm CPU; see :func:`decode_kernel`) instead of
  ~25 small PyTorch ops: RoPE, the cache writes, both cache parts, the softmax, all in float32 math over
  bf16 or float32 storage; the same file fuses the residual add + RMSNorm and the SiLU-gated product. On by
  default for bf16, opt-in for fp32 (``attn_kernel=True``). Without a compiler, with
  ``MEDRLVR_FAST_KERNELS=0`` or a head dim that is not a multiple of 16, the PyTorch path runs. The linear
  layers stay with oneDNN. ``bench/rollout.py throughput --kernel-ab`` times the kernel against the PyTorch
  path side by side (evidence: docs/decisions/fast-engine.md).
* the prompts admitted together are prefilled in ONE packed forward (their tokens stacked as rows, so
  the linear layers see them all at once; attention stays within each prompt), and each prompt's
  key/value cache is shared by the ``n`` samples of its group:
  the decode attention over the prompt is one product per group and KV head, the ``n * G`` queries of
  the group against one copy of the prompt keys ("cascade" attention);
* a static, pre-allocated KV cache (a prompt part per group slot, a generated part per row);
* bf16 weights (fused QKV and gate/up projections) pre-packed once per call for oneDNN;
* continuous batching over dense slots: a slot whose samples are all done is refilled with the next
  prompt group; finished rows skip the LM head;
* bf16: the torch threads are tuned while generating (all torch threads vs one, by measured time per
  row or prompt token): on a busy machine the fork/join barriers of a thread pool can cost more than a
  second core gains;
* sampling inverts the CDF in two levels (block sums of 256 tokens, then one block), not with a cumsum
  over the whole vocabulary, and reads the log-prob from the same softmax (no logsumexp pass);
* stop strings are checked incrementally (a short decoded tail, only when the new token could end
  one); the log-prob of each sampled token under ``logits / temperature`` (float32, not modified by
  top-k / top-p) comes from the single logits row of the step: no per-position full-vocab tensors.

``dtype="fp32"`` is the reference path (PyTorch ops, float32, same arithmetic as transformers): greedy
decoding gives the tokens of ``generate``. With ``temperature == 0`` the returned log-probs are those
of ``log_softmax(logits)`` (temperature 1).

Post-processing (EOS / stop-string truncation, finish reason) is :func:`medrlvr.rollout.base.finish`, shared
with the ``hf`` engine, so both return identical structures.

Unsupported architectures (anything but ``llama`` / ``qwen2`` with a SiLU MLP and a static RoPE)
raise :class:`UnsupportedModelError` (a ``ValueError``); callers fall back to the ``hf`` engine.
"""

from __future__ import annotations

import ctypes
import time
from collections import deque

import torch
import torch.nn.functional as F

from medrlvr.models import unwrap_peft
from medrlvr.rollout.base import Completion, SamplingParams, eos_token_ids, finish
from medrlvr.rollout.kernels import decode_kernel, decode_kernel_reason, ptr

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}


class UnsupportedModelError(ValueError):
    """The model is not one the fast engine can run; use the ``hf`` engine instead."""


# ----------------------------------------------------------------------------------------- weights
def _effective_linear(mod) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) a linear layer applies now; peft LoRA deltas of the active adapters are added."""
    if hasattr(mod, "base_layer") and hasattr(mod, "lora_A"):
        base = mod.base_layer
        w, b = base.weight, base.bias
        if getattr(mod, "merged", False) or getattr(mod, "disable_adapters", False):
            return w, b
        for name in mod.active_adapters:
            if name not in mod.lora_A:
                continue
            if name in (getattr(mod, "lora_variant", None) or {}) or (getattr(mod, "use_dora", None) or {}).get(name):
                raise UnsupportedModelError("the fast engine supports plain LoRA adapters only (not DoRA / variants)")
            w = w + mod.get_delta_weight(name).to(w.dtype)
            if (getattr(mod, "lora_bias", None) or {}).get(name) and mod.lora_B[name].bias is not None:
                extra = mod.lora_B[name].bias * mod.scaling[name]
                b = extra if b is None else b + extra
        return w, b
    if not isinstance(mod, torch.nn.Linear):
        raise UnsupportedModelError(f"expected a Linear layer, found {type(mod).__name__}")
    return mod.weight, mod.bias


def _rope_type(cfg) -> str:
    rp = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    return (rp.get("rope_type") or rp.get("type") or "default") if isinstance(rp, dict) else "default"


def check_supported(model) -> None:
    """Raise :class:`UnsupportedModelError` unless the fast engine can run ``model``."""
    base = unwrap_peft(model)
    cfg = getattr(base, "config", None)
    mt = getattr(cfg, "model_type", None)
    if mt not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(f"the fast engine supports model types {', '.join(SUPPORTED_MODEL_TYPES)}, "
                                    f"not {mt!r}; use engine 'hf'")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"the fast engine needs a SiLU MLP, not {cfg.hidden_act!r}; use engine 'hf'")
    if _rope_type(cfg) in ("dynamic", "longrope"):
        raise UnsupportedModelError(f"the fast engine does not support rope_type={_rope_type(cfg)!r}; use engine 'hf'")
    if mt == "qwen2" and getattr(cfg, "use_sliding_window", False):
        raise UnsupportedModelError("the fast engine does not support Qwen2 sliding-window attention; use engine 'hf'")
    inner = getattr(base, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb") \
            or not hasattr(inner, "embed_tokens"):
        raise UnsupportedModelError("unexpected module layout (need model.embed_tokens, model.layers, "
                                    "model.rotary_emb); use engine 'hf'")
    head = getattr(base, "lm_head", None)
    if head is not None and not isinstance(head, torch.nn.Linear) and not hasattr(head, "base_layer"):
        raise UnsupportedModelError(f"unexpected lm_head {type(head).__name__}; use engine 'hf'")
    if inner.embed_tokens.weight.device.type != "cpu":
        raise UnsupportedModelError("the fast engine runs on CPU; use engine 'hf' for a model on "
                                    f"{inner.embed_tokens.weight.device}")


def _set_malloc_reuse() -> None:
    """Keep big freed blocks in the heap (glibc). Fresh mmap'ed pages cost a page fault each, which on
    small VMs dominated weight copies and large matmul outputs. Harmless elsewhere; ignored on failure."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)          # M_MMAP_THRESHOLD
        libc.mallopt(-1, (1 << 31) - 1)    # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


class _Linear:
    """A linear layer over a persistent weight buffer, optionally pre-packed for oneDNN (bf16)."""

    __slots__ = ("b", "packed", "w")

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None):
        self.w, self.b, self.packed = w, b, None

    def pack(self, batch: int) -> None:
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.w, batch)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.b, "none", [], "")
        return F.linear(x, self.w, self.b)


def _cat_bias(pairs) -> torch.Tensor | None:
    """Concatenated biases of fused projections (zeros for parts without one); None when none has one."""
    if all(b is None for b, _ in pairs):
        return None
    return torch.cat([b.detach() if b is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
                      for b, w in pairs])


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


class KVCache:
    """KV cache of one generate call. Prompt part per slot, generated part per row (slot x n):
    kp (L, S, Hk, hd, P) (keys transposed), vp (L, S, Hk, P, hd), kg and vg (L, S, Hk, n, M, hd)
    (one contiguous ``hd`` row per generated token, so a decode step writes its keys and values with
    one ``index_copy_`` each; see :meth:`gen_rows`). ``blocked`` (the fused kernel's layout; P and M multiples
    of 16): keys in blocks of 16 tokens, each block transposed, so one block is one contiguous read:
    kp (L, S, Hk, P/16, hd, 16) and kg (L, S, Hk, n, M/16, hd, 16)."""

    def __init__(self, L, S, n, Hk, hd, P, M, dtype, device, blocked: bool = False):
        self.P, self.M, self.n, self.Hk, self.blocked = P, M, n, Hk, blocked

        def z(*shape):
            return torch.zeros(shape, dtype=dtype, device=device)

        if blocked:
            self.kp, self.kg = z(L, S, Hk, P // 16, hd, 16), z(L, S, Hk, n, M // 16, hd, 16)
        else:
            self.kp, self.kg = z(L, S, Hk, hd, P), z(L, S, Hk, n, M, hd)
        self.vp, self.vg = z(L, S, Hk, P, hd), z(L, S, Hk, n, M, hd)

    def gen_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Row indices into a layer's generated cache viewed as ``(S * Hk * n * M, hd)`` for the token at
        position ``t[r]`` of each row ``r = slot * n + j``, ordered (row, kv head) like ``k.view(B * Hk, hd)``."""
        n, Hk, M = self.n, self.Hk, self.M
        r = torch.arange(t.shape[0], device=t.device)
        s, j = r // n, r % n
        h = torch.arange(Hk, device=t.device)
        return (((s[:, None] * Hk + h[None, :]) * n + j[:, None]) * M + t[:, None]).reshape(-1)

    def write_prompt(self, li: int, s: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: (Hk, P, hd) of the prompt in slot s, layer li."""
        Hk, P, hd = k.shape
        if self.blocked:   # keys past the prompt in its last block are zeros: scored with the block, then ignored
            nb = -(-P // 16)
            kpad = F.pad(k, (0, 0, 0, nb * 16 - P))
            self.kp[li, s, :, :nb] = kpad.view(Hk, nb, 16, hd).transpose(-1, -2)
        else:
            self.kp[li, s, :, :, :P] = k.transpose(-1, -2)
        self.vp[li, s, :, :P] = v


def auto_dtype(model) -> str:
    """``"bf16"`` where bf16 is native for ``model``'s device (:func:`medrlvr.hardware.fast_bf16`: CUDA sm80+,
    AVX512-BF16/AMX CPUs, where oneDNN runs it), else ``"fp32"``: on an AVX2-only CPU
    PyTorch's emulated bf16 is far slower than fp32."""
    from medrlvr.hardware import fast_bf16

    return "bf16" if fast_bf16(next(model.parameters()).device) else "fp32"


_CDF_BLOCK = 256
_PREFILL_TOKENS = 4096
"""Most prompt tokens packed into one prefill forward (bounds its activations: ~50 MB at SmolLM2-135M)."""


def _below(x: torch.Tensor) -> torch.Tensor:
    """The largest float below ``x`` (for ``x > 0``): an upper bound that stays strictly under ``x``."""
    return torch.nextafter(x, torch.zeros_like(x))


def inverse_cdf(pf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Token ``i`` per row with ``cdf[i-1] <= u * total < cdf[i]`` (``pf``: (R, V) probabilities, zeros
    allowed; ``u``: (R, 1) uniforms in [0, 1)). Two levels instead of one cumsum over the vocabulary (a
    serial scan, the slowest part of sampling): block sums of 256 entries, a cumsum over the blocks,
    then a cumsum inside each row's chosen block. A token of probability 0 is never returned."""
    R, V = pf.shape
    nb = -(-V // _CDF_BLOCK)
    if nb * _CDF_BLOCK != V:
        pf = F.pad(pf, (0, nb * _CDF_BLOCK - V))
    blocks = pf.view(R, nb, _CDF_BLOCK)
    bs = blocks.sum(-1)                                         # (R, nb)
    bc = bs.cumsum(-1)
    x = torch.minimum(u * bc[:, -1:], _below(bc[:, -1:]))       # < total: lands in a block of positive mass
    b = torch.searchsorted(bc, x, right=True).clamp_(max=nb - 1)
    rem = x - (bc.gather(1, b) - bs.gather(1, b))               # position inside block b
    wc = blocks[torch.arange(R, device=pf.device), b[:, 0]].cumsum(-1)   # (R, block)
    rem = torch.minimum(rem.clamp(min=0), _below(wc[:, -1:]))
    j = torch.searchsorted(wc, rem, right=True).clamp_(max=_CDF_BLOCK - 1)
    return (b * _CDF_BLOCK + j)[:, 0]


# -------------------------------------------------------------------------------------------- engine
class FastEngine:
    """Fast batched sampling for Llama / Qwen2 policies; see the module docstring.

    ``dtype``: ``"auto"`` (default: ``bf16`` where it is native, else ``fp32``; see :func:`auto_dtype`),
    ``"bf16"`` or ``"fp32"`` (PyTorch ops, the arithmetic of transformers: greedy decoding gives the tokens
    of ``generate``). ``batch_size``: most
    rows decoded together; the ``n`` samples of a prompt share one slot of ``n`` rows. ``prepack``: pre-pack the
    weights for oneDNN once per call (``None`` = on CPU when oneDNN is available: faster fp32 decoding, greedy
    tokens still equal to ``generate``'s; evidence: docs/decisions/fast-engine.md).
    ``num_threads``: torch threads while generating; ``None`` = choose between torch's thread count and 1 by
    measured speed (restored after the call). ``attn_kernel``: the fused decode-attention kernel (``None`` =
    for bf16; fp32 keeps transformers' arithmetic unless ``True``); :attr:`kernel_note` says why it is not
    used. After each call :attr:`last_stats` holds counters (prefill tokens, decode steps, threads).
    """

    def __init__(self, model, tokenizer, dtype: str = "auto", batch_size: int = 32,
                 prepack: bool | None = None, num_threads: int | None = None, attn_kernel: bool | None = None):
        check_supported(model)
        if dtype == "auto":
            dtype = auto_dtype(model)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        self.model, self.tok = model, tokenizer
        self.dtype = _DTYPES[dtype]
        self.batch_size = max(1, int(batch_size))
        self.prepack, self.num_threads = prepack, num_threads
        base = unwrap_peft(model)
        self.base, self.cfg = base, base.config
        cfg = self.cfg
        self.D, self.H = cfg.hidden_size, cfg.num_attention_heads
        self.Hk = getattr(cfg, "num_key_value_heads", None) or self.H
        self.hd = getattr(cfg, "head_dim", None) or self.D // self.H
        self.G, self.I, self.V = self.H // self.Hk, cfg.intermediate_size, cfg.vocab_size
        self.L, self.eps = cfg.num_hidden_layers, float(cfg.rms_norm_eps)
        self.scale = self.hd ** -0.5
        self._kern = None                 # the fused decode-attention function, when used (see _pick_kernel)
        self._k_norm = self._k_silu = None
        self._pick_kernel(attn_kernel)
        self._thr_cur = 0                 # torch threads in use (see _thread_plan)
        self._thr_base = 0                # torch's thread count when the call started
        self._thr_stats: dict[str, dict[int, float]] = {}
        self._thr_steps: dict[str, int] = {}
        self.last_stats: dict = {}        # counters of the last generate call
        self._w: dict | None = None       # persistent weight buffers
        self._piece: dict[int, str] = {}  # token id -> decoded text (stop-string pre-filter)
        _set_malloc_reuse()

    def _pick_kernel(self, want: bool | None) -> None:
        """Use the fused decode-attention kernel (:func:`decode_kernel`) for ``want=True``, or for ``None`` on
        the bf16 path (fp32 stays the reference path, PyTorch ops with transformers' arithmetic, unless asked).
        It needs a head dim that is a multiple of 16 and a CPU model; otherwise (or when it cannot be built)
        the PyTorch path runs, and :attr:`kernel_note` says why."""
        self.kernel_note = ""
        if want is False or (want is None and self.dtype != torch.bfloat16):
            self.kernel_note = "not requested"
            return
        if self.hd % 16:
            self.kernel_note = f"head dim {self.hd} is not a multiple of 16"
            return
        lib = decode_kernel()
        if lib is None:
            self.kernel_note = decode_kernel_reason()
            return
        sfx = "bf16" if self.dtype == torch.bfloat16 else "f32"
        self._kern = getattr(lib, f"fr_decode_attn_{sfx}")
        self._k_norm, self._k_silu = getattr(lib, f"fr_add_rmsnorm_{sfx}"), getattr(lib, f"fr_silu_mul_{sfx}")

    # ------------------------------------------------------------------------------- weight snapshot
    @torch.no_grad()
    def _refresh(self, batch: int) -> None:
        """Copy the live weights into the engine's buffers (casting to the engine dtype)."""
        base, dt = self.base, self.dtype
        inner = base.model
        emb = inner.embed_tokens.weight
        dev = emb.device
        if self._w is None:
            self._w = {"layers": [{} for _ in range(self.L)]}
        W = self._w

        def buf(store, key, src):
            t = store.get(key)
            if t is None or t.shape != src.shape:
                t = store[key] = torch.empty(src.shape, dtype=dt, device=dev)
            return t.copy_(src)

        def cat_buf(store, key, parts):
            rows = sum(p.shape[0] for p in parts)
            shape = (rows,) + tuple(parts[0].shape[1:])
            t = store.get(key)
            if t is None or t.shape != shape:
                t = store[key] = torch.empty(shape, dtype=dt, device=dev)
            o = 0
            for p in parts:
                t[o:o + p.shape[0]].copy_(p)
                o += p.shape[0]
            return t

        buf(W, "embed", emb)
        buf(W, "norm", inner.norm.weight)
        head = getattr(base, "lm_head", None)
        if head is None or (isinstance(head, torch.nn.Linear) and head.weight.data_ptr() == emb.data_ptr()):
            W["lm_head"] = W["embed"]
        else:
            hw, hb = _effective_linear(head)
            if hb is not None:
                raise UnsupportedModelError("an lm_head with a bias is not supported; use engine 'hf'")
            W["lm_head"] = buf(W, "lm_head_w", hw)
        for layer, Lw in zip(inner.layers, W["layers"]):
            at, mlp = layer.self_attn, layer.mlp
            (qw, qb), (kw, kb), (vw, vb) = (_effective_linear(m) for m in (at.q_proj, at.k_proj, at.v_proj))
            ow, ob = _effective_linear(at.o_proj)
            (gw, gb), (uw, ub) = _effective_linear(mlp.gate_proj), _effective_linear(mlp.up_proj)
            dw, db = _effective_linear(mlp.down_proj)
            bqkv = _cat_bias([(qb, qw), (kb, kw), (vb, vw)])
            bgu = _cat_bias([(gb, gw), (ub, uw)])
            buf(Lw, "ln1", layer.input_layernorm.weight)
            buf(Lw, "ln2", layer.post_attention_layernorm.weight)
            wqkv = cat_buf(Lw, "wqkv", [qw, kw, vw])
            wgu = cat_buf(Lw, "wgu", [gw, uw])
            wo, wd = buf(Lw, "wo", ow), buf(Lw, "wd", dw)
            bqkv = buf(Lw, "bqkv", bqkv) if bqkv is not None else None
            bgu = buf(Lw, "bgu", bgu) if bgu is not None else None
            bo = buf(Lw, "bo", ob) if ob is not None else None
            bd = buf(Lw, "bd", db) if db is not None else None
            Lw["qkv"], Lw["o"] = _Linear(wqkv, bqkv), _Linear(wo, bo)
            Lw["gu"], Lw["d"] = _Linear(wgu, bgu), _Linear(wd, bd)
        W["head"] = _Linear(W["lm_head"], None)
        use_pack = self.prepack
        if use_pack is None:
            use_pack = dev.type == "cpu" and torch.backends.mkldnn.is_available()
        if use_pack:
            lins = [Lw[k] for Lw in W["layers"] for k in ("qkv", "o", "gu", "d")] + [W["head"]]
            try:
                for lin in lins:
                    lin.pack(batch)
            except (RuntimeError, AttributeError):
                for lin in lins:
                    lin.packed = None
        # RoPE from the module's own inverse frequencies and attention scaling (default/linear/llama3/yarn)
        rot = inner.rotary_emb
        inv = rot.inv_freq.detach().float().clone()
        sc = float(getattr(rot, "attention_scaling", 1.0))
        if W.get("rope_inv") is None or not torch.equal(W["rope_inv"], inv) or W["rope_scale"] != sc:
            W["rope_inv"], W["rope_scale"], W["rope_len"] = inv, sc, 0

    def _rope(self, n: int):
        """cos/sin tables (positions >= n) in the engine dtype."""
        W = self._w
        if W["rope_len"] < n:
            n2 = max(n, 2 * W["rope_len"], 1024)
            t = torch.arange(n2, dtype=torch.float32, device=W["rope_inv"].device)
            freqs = t[:, None] * W["rope_inv"][None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            W["cos32"], W["sin32"] = (emb.cos() * W["rope_scale"]).contiguous(), (emb.sin() * W["rope_scale"]).contiguous()
            W["cos"], W["sin"] = W["cos32"].to(self.dtype), W["sin32"].to(self.dtype)
            W["rope_len"] = n2
        return W["cos"], W["sin"]

    # -------------------------------------------------------------------------------------- forward
    def _rms(self, x, w):
        if x.dtype == torch.float32:   # one fused op; bitwise equal to the transformers arithmetic in fp32
            return F.rms_norm(x, (x.shape[-1],), w, self.eps)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * xf.to(x.dtype)

    @staticmethod
    def _rot(x, cos, sin):
        h = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., h:], x[..., :h]), dim=-1) * sin

    def _thread_plan(self, kind: str) -> int:
        """Torch threads for the next decode step / prefill (``kind``, bf16). With ``num_threads=None`` and more
        than one torch thread, the engine measures the time per row (decode) or per prompt token (prefill)
        with all threads and with one, keeps the faster and probes the other now and then (every 32 decode
        steps or 8 prefills, times how much slower it was, at most 16 times that; counted over the engine's
        life): on a busy machine the fork/join barriers of a thread pool can cost far more than the second
        core gains, on an idle one two cores are faster."""
        base = self._thr_base or torch.get_num_threads()
        if self.num_threads or base == 1:
            self._thr_cur = int(self.num_threads or 1)
            return self._thr_cur
        n = base
        cands = (n, 1)
        stats = self._thr_stats.setdefault(kind, {})
        step = self._thr_steps[kind] = self._thr_steps.get(kind, -1) + 1
        missing = [c for c in cands if c not in stats]
        if missing:
            self._thr_cur = missing[0]
        else:
            best = min(cands, key=lambda c: stats[c])
            other = cands[1] if best == cands[0] else cands[0]
            base = 32 if kind == "decode" else 8
            every = int(base * min(16.0, max(1.0, stats[other] / max(stats[best], 1e-12))))
            self._thr_cur = other if step % every == 0 else best
        return self._thr_cur

    def _thread_feedback(self, kind: str, nt: int, seconds_per_unit: float) -> None:
        stats = self._thr_stats.setdefault(kind, {})
        old = stats.get(nt)
        current_best = old is not None and all(old <= v for v in stats.values())
        # the setting in use is smoothed; a probe of the other one replaces its (stale) figure
        stats[nt] = 0.7 * old + 0.3 * seconds_per_unit if current_best else seconds_per_unit

    @torch.no_grad()
    def _prefill_torch(self, prompts: list[list[int]], slots: list[int], cache: KVCache) -> torch.Tensor:
        """Run the prompts once, packed into one sequence of rows (the linear layers see all their tokens
        together; attention stays within each prompt), and store each prompt's K/V in its slot. Returns
        the last position's logits of each prompt, (len(prompts), V)."""
        W = self._w
        H, Hk, hd, I = self.H, self.Hk, self.hd, self.I
        lens = [len(ids) for ids in prompts]
        N = sum(lens)
        dev = W["embed"].device
        cos_t, sin_t = self._rope(max(lens))
        pos = torch.cat([torch.arange(P, device=dev) for P in lens])
        cos, sin = cos_t[pos][:, None, :], sin_t[pos][:, None, :]
        offs = [0]
        for P in lens:
            offs.append(offs[-1] + P)
        x = W["embed"][torch.tensor([t for ids in prompts for t in ids], device=dev)]
        layers = W["layers"]
        h = self._rms(x, layers[0]["ln1"])
        for li, Lw in enumerate(layers):
            qkv = Lw["qkv"](h)
            qk = self._rot(qkv[:, :(H + Hk) * hd].view(N, H + Hk, hd), cos, sin)   # RoPE on q and k at once
            v = qkv[:, (H + Hk) * hd:].view(N, Hk, hd)
            o = torch.empty(N, H, hd, dtype=x.dtype, device=dev)
            for i, slot in enumerate(slots):
                r0, r1 = offs[i], offs[i + 1]
                q_i, k_i, v_i = (t_.transpose(0, 1) for t_ in (qk[r0:r1, :H], qk[r0:r1, H:], v[r0:r1]))
                cache.write_prompt(li, slot, k_i, v_i)
                o_i = F.scaled_dot_product_attention(q_i[None], k_i[None], v_i[None], is_causal=True,
                                                     scale=self.scale, enable_gqa=self.G > 1)
                o[r0:r1] = o_i[0].transpose(0, 1)
            x = x + Lw["o"](o.view(N, H * hd))
            h = self._rms(x, Lw["ln2"])
            gu = Lw["gu"](h)
            x = x + Lw["d"](F.silu(gu[:, :I]) * gu[:, I:])
            h = self._rms(x, layers[li + 1]["ln1"] if li + 1 < self.L else W["norm"])
        last = torch.tensor(offs[1:], device=dev) - 1
        return W["head"](h[last].contiguous())

    @torch.no_grad()
    def _decode_torch(self, tok, pos, t, plen, S, n, cache: KVCache, rows: torch.Tensor | None = None) -> torch.Tensor:
        """One decode step with PyTorch ops over the dense slots ``[0, S)``. Returns logits in the engine
        dtype: (S*n, V), or only for ``rows`` (the live ones: finished rows skip the LM head)."""
        W = self._w
        H, Hk, hd, G, P = self.H, self.Hk, self.hd, self.G, cache.P
        B = S * n
        cos_t, sin_t = self._rope(int(pos.max()) + 1)
        if self._uses_kernel(cache.kp.device):
            return self._decode_kernel(tok, pos, t, plen, S, n, cache, rows)
        cos, sin = cos_t[pos][:, None, :], sin_t[pos][:, None, :]
        gen_rows = cache.gen_rows(t)
        T = int(t.max()) + 1
        valid = torch.cat((
            (torch.arange(P, device=tok.device)[None, :] < plen[:, None])[:, None, :].expand(S, n, P),
            (torch.arange(T, device=tok.device)[None, :] <= t[:, None]).view(S, n, T)), dim=-1)
        mask = torch.zeros(valid.shape, dtype=self.dtype, device=tok.device).masked_fill_(~valid, float("-inf"))
        mask = mask.view(S, 1, n, 1, P + T)
        x = W["embed"][tok]
        layers = W["layers"]
        for li, Lw in enumerate(layers):
            h = self._rms(x, Lw["ln1"])
            qkv = Lw["qkv"](h)
            qk = self._rot(qkv[:, :(H + Hk) * hd].view(B, H + Hk, hd), cos, sin)   # RoPE on q and k at once
            q, k = qk[:, :H], qk[:, H:]
            v = qkv[:, (H + Hk) * hd:].view(B, Hk, hd)
            kg_l, vg_l = cache.kg[li, :S], cache.vg[li, :S]
            kg_l.view(-1, hd).index_copy_(0, gen_rows, k.reshape(B * Hk, hd))
            vg_l.view(-1, hd).index_copy_(0, gen_rows, v.reshape(B * Hk, hd))
            qs = q.reshape(S, n, Hk, G, hd).transpose(1, 2)                            # (S, Hk, n, G, hd)
            sp = torch.matmul(qs.reshape(S, Hk, n * G, hd), cache.kp[li, :S]).view(S, Hk, n, G, P)
            sg = torch.matmul(qs, kg_l[..., :T, :].transpose(-1, -2))                  # (S, Hk, n, G, T)
            # in the engine dtype: torch's bf16 softmax accumulates in float32 (one rounding, of its output)
            s = torch.cat((sp, sg), dim=-1).mul_(self.scale).add_(mask)
            p = torch.softmax(s, dim=-1)
            o = torch.matmul(p[..., :P].reshape(S, Hk, n * G, P), cache.vp[li, :S]).view(S, Hk, n, G, hd)
            o = o + torch.matmul(p[..., P:], vg_l[..., :T, :])
            x = x + Lw["o"](o.transpose(1, 2).reshape(B, H * hd))
            h = self._rms(x, Lw["ln2"])
            gu = Lw["gu"](h)
            x = x + Lw["d"](F.silu(gu[:, :self.I]) * gu[:, self.I:])
        if rows is not None and len(rows) < B:
            x = x[rows]
        return W["head"](self._rms(x, W["norm"]))

    def _uses_kernel(self, device) -> bool:
        return self._kern is not None and torch.device(device).type == "cpu"

    @torch.no_grad()
    def _decode_kernel(self, tok, pos, t, plen, S, n, cache: KVCache, rows: torch.Tensor | None) -> torch.Tensor:
        """:meth:`_decode_torch` with each layer's attention (RoPE, cache writes, both cache parts, softmax) in
        one call of the fused kernel, and the residual adds + RMSNorms and the SiLU-gated product in one call
        each (float32 math, one rounding to the storage dtype)."""
        W = self._w
        H, Hk, hd, B, D, I = self.H, self.Hk, self.hd, S * n, self.D, self.I
        pos, t, plen = (v.to(torch.long).contiguous() for v in (pos, t, plen))
        cos32, sin32 = W["cos32"], W["sin32"]
        fixed = (ptr(cos32), ptr(sin32), ptr(pos))
        tail = (ptr(plen), ptr(t))
        x = W["embed"][tok].contiguous()
        h = torch.empty_like(x)
        o = torch.empty(B, H * hd, dtype=self.dtype, device=x.device)
        act = torch.empty(B, I, dtype=self.dtype, device=x.device)
        layers, eps, norm, silu = W["layers"], self.eps, self._k_norm, self._k_silu
        norm(ptr(x), None, ptr(layers[0]["ln1"]), ptr(h), B, D, eps)
        for li, Lw in enumerate(layers):
            qkv = Lw["qkv"](h).contiguous()
            self._kern(ptr(qkv), *fixed, ptr(cache.kp[li]), ptr(cache.vp[li]), ptr(cache.kg[li]),
                       ptr(cache.vg[li]), *tail, ptr(o), S, n, H, Hk, hd, cache.P, cache.M, self.scale)
            y = Lw["o"](o).contiguous()
            norm(ptr(x), ptr(y), ptr(Lw["ln2"]), ptr(h), B, D, eps)        # x += attn; h = rms(x) * ln2
            gu = Lw["gu"](h).contiguous()
            silu(ptr(gu), ptr(act), B, I)
            y = Lw["d"](act).contiguous()
            nxt = layers[li + 1]["ln1"] if li + 1 < self.L else W["norm"]
            norm(ptr(x), ptr(y), ptr(nxt), ptr(h), B, D, eps)            # x += mlp; h = rms(x) * next norm
        if rows is not None and len(rows) < B:
            h = h[rows]
        return W["head"](h)

    # ------------------------------------------------------------------------------------- sampling
    def _sample(self, logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None,
                rows: int | None = None, u: torch.Tensor | None = None):
        """One token per row (``rows`` rows of a single logits row when given); returns (tokens, log-probs)
        with log-probs of ``log_softmax(logits / T)`` (T = 1 when greedy) in float32. ``u``: the rows'
        uniforms in [0, 1) (float64), drawn by the caller (per-prompt generators), instead of ``gen``."""
        greedy = params.temperature == 0
        logits = logits.float()
        if rows is not None:
            logits = logits.expand(rows, -1)
        if greedy:
            tok = logits.argmax(-1)
            return tok, logits.gather(1, tok[:, None])[:, 0] - torch.logsumexp(logits, -1)
        z = logits / params.temperature if params.temperature != 1.0 else logits
        probs = torch.softmax(z, dim=-1)     # the log-prob is read from these (not changed by top-k / top-p)
        pf = probs
        top_k = bool(params.top_k) and 0 < params.top_k < z.shape[-1]
        if top_k or params.top_p < 1.0:
            zf = z
            if top_k:
                kth = torch.topk(zf, params.top_k, dim=-1).values[:, -1:]
                zf = zf.masked_fill(zf < kth, float("-inf"))
            if params.top_p < 1.0:
                sz, si = torch.sort(zf, dim=-1, descending=True)
                sp = torch.softmax(sz, dim=-1)
                drop = (sp.cumsum(-1) - sp) > params.top_p      # keep the smallest prefix reaching top_p
                drop[:, 0] = False
                zf = zf.scatter(1, si, sz.masked_fill(drop, float("-inf")))
            pf = torch.softmax(zf, dim=-1)
        if u is None:
            u = torch.rand(pf.shape[0], 1, dtype=pf.dtype, generator=gen, device=pf.device)
        else:
            u = u.to(device=pf.device, dtype=pf.dtype).reshape(-1, 1)
        tok = inverse_cdf(pf, u)
        return tok, probs.gather(1, tok[:, None])[:, 0].log()

    # ------------------------------------------------------------------------------------ stopping
    def _may_end_stop(self, t: int, last_chars: str) -> bool:
        p = self._piece.get(t)
        if p is None:
            p = self._piece[t] = self.tok.decode([t], skip_special_tokens=False)
        return "\ufffd" in p or any(c in p for c in last_chars)

    # ------------------------------------------------------------------------------------- generate
    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Completion]]:
        self._thr_base = torch.get_num_threads()
        try:
            return self._generate(prompts, n, params)
        finally:
            if torch.get_num_threads() != self._thr_base:
                torch.set_num_threads(self._thr_base)

    def _set_threads(self, kind: str) -> int:
        """bf16: the thread count :meth:`_thread_plan` picks for the next ``kind`` work, set in torch; fp32
        (the reference path, tokens equal to ``generate``'s) keeps torch's setting."""
        if self.dtype != torch.bfloat16:
            return 0
        nt = self._thread_plan(kind)
        if nt != torch.get_num_threads():
            torch.set_num_threads(nt)
        return nt

    @torch.no_grad()
    def _generate(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Completion]]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not prompts:
            return []
        tok = self.tok
        enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        for i, e in enumerate(enc):
            if not e:
                raise ValueError(f"prompt {i} is empty after tokenization")
        eos = eos_token_ids(self.model, tok)
        stop = tuple(s for s in (params.stop or ()) if s)
        stop_last = "".join(sorted({s[-1] for s in stop}))
        stop_window = 4 * max((len(s) for s in stop), default=0) + 2
        Mnew = params.max_new_tokens
        groups = max(1, self.batch_size // n)
        S = min(len(prompts), groups)            # dense slots, refilled when all their samples are done
        max_rows = max(self.batch_size, n)
        dev = self.base.model.embed_tokens.weight.device
        self._refresh(min(len(prompts), groups) * n)
        Pcap = _round_up(max(len(e) for e in enc), 32)
        Mcap = _round_up(Mnew, 32)
        self._rope(Pcap + Mcap + 1)
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2 ** 62, (1,)).item())
        gen = torch.Generator(device=dev).manual_seed(int(seed))
        # per-prompt generators (params.prompt_seeds): the slot holding prompt g draws its rows' uniforms
        # from g's own generator, so g's samples do not depend on which prompts share the call
        pseeds = params.prompt_seeds
        if pseeds is not None and len(pseeds) != len(prompts):
            raise ValueError(f"{len(pseeds)} prompt_seeds for {len(prompts)} prompts")
        cache = KVCache(self.L, S, n, self.Hk, self.hd, Pcap, Mcap, self.dtype, dev, blocked=self._uses_kernel(dev))
        slot_gen: list[torch.Generator | None] = [None] * S
        stats = self.last_stats = {"prefill_tokens": 0, "decode_steps": 0, "generated_tokens": 0}
        results: list[list[Completion | None]] = [[None] * n for _ in prompts]
        queue = deque(range(len(prompts)))
        slot_group = [-1] * S                    # prompt held by each slot (-1: free)
        plen = torch.zeros(S, dtype=torch.long)  # its prompt length
        NR = S * n                               # cache rows: row r = slot r // n, sample r % n
        rows_ids: list[list[int]] = [[] for _ in range(NR)]
        rows_lp: list[list[float]] = [[] for _ in range(NR)]
        done = [True] * NR
        cur = torch.zeros(NR, dtype=torch.long)  # last sampled token of each row
        t = torch.zeros(NR, dtype=torch.long)    # its index in the completion
        n_active = 0

        def after_token(r: int, token: int, lp: float) -> None:
            ids = rows_ids[r]
            ids.append(token)
            rows_lp[r].append(lp)
            if len(ids) >= Mnew or (not params.ignore_eos and token in eos):
                done[r] = True
            elif stop and self._may_end_stop(token, stop_last):
                text = tok.decode(ids[-stop_window:], skip_special_tokens=False)
                if any(s_ in text for s_ in stop):
                    done[r] = True

        def finalize_slot(s: int) -> None:
            g = slot_group[s]
            for j in range(n):
                r = s * n + j
                results[g][j] = finish(tok, enc[g], rows_ids[r], params, eos, rows_lp[r])
            slot_group[s] = -1

        def fill_slots(slots: list[int]) -> None:
            """Admit the next prompts into ``slots``: packed prefills of at most ``_PREFILL_TOKENS`` tokens
            (a longer prompt alone), then each slot's first tokens, in slot order."""
            gs = [queue.popleft() for _ in slots]
            for s, g in zip(slots, gs):
                slot_group[s], plen[s] = g, len(enc[g])
                stats["prefill_tokens"] += len(enc[g])
            parts, i = [], 0
            while i < len(slots):
                j, ntok = i + 1, len(enc[gs[i]])
                while j < len(slots) and ntok + len(enc[gs[j]]) <= _PREFILL_TOKENS:
                    ntok += len(enc[gs[j]])
                    j += 1
                nt = self._set_threads("prefill")
                t0 = time.perf_counter()
                parts.append(self._prefill_torch([enc[g] for g in gs[i:j]], slots[i:j], cache))
                if nt:
                    self._thread_feedback("prefill", nt, (time.perf_counter() - t0) / ntok)
                i = j
            logits = torch.cat(parts) if len(parts) > 1 else parts[0]
            for k, (s, g) in enumerate(zip(slots, gs)):
                u0 = None
                if pseeds is not None:
                    slot_gen[s] = torch.Generator(device=dev).manual_seed(int(pseeds[g]))
                    u0 = torch.rand(n, dtype=torch.float64, generator=slot_gen[s], device=dev)
                tk, lp = self._sample(logits[k:k + 1], params, gen, rows=n, u=u0)
                tl, ll = tk.tolist(), lp.tolist()
                for j in range(n):
                    r = s * n + j
                    rows_ids[r], rows_lp[r], done[r] = [], [], False
                    cur[r], t[r] = tl[j], 0
                    after_token(r, tl[j], ll[j])

        while True:
            for s in range(S):                   # free finished slots
                if slot_group[s] >= 0 and all(done[s * n:(s + 1) * n]):
                    finalize_slot(s)
            n_active = sum(1 for r in range(NR) if not done[r])
            admit = []                           # free slots for the next prompts, while rows are available
            for s in range(S):
                if len(admit) >= len(queue) or n_active + n > max_rows:
                    break
                if slot_group[s] < 0:
                    admit.append(s)
                    n_active += n
            if admit:
                fill_slots(admit)
                for s in admit:
                    if all(done[s * n:(s + 1) * n]):
                        finalize_slot(s)
            act = [r for r in range(NR) if not done[r]]
            if not act:
                if queue:
                    continue
                break
            Se = max(r // n for r in act) + 1     # dense over the slots up to the last live one
            tb = t[:Se * n].clamp(max=Mnew - 1)   # finished rows idle in place until their slot is freed
            pos = plen[:Se].repeat_interleave(n) + tb
            act_t = torch.tensor(act, dtype=torch.long)
            nt = self._set_threads("decode")
            t0 = time.perf_counter()
            logits = self._decode_torch(cur[:Se * n], pos, tb, plen[:Se], Se, n, cache, rows=act_t)
            if nt:
                self._thread_feedback("decode", nt, (time.perf_counter() - t0) / len(act))
            ua = None
            if pseeds is not None:   # act is sorted: the rows of one slot are contiguous
                parts, i0 = [], 0
                while i0 < len(act):
                    s_ = act[i0] // n
                    i1 = i0
                    while i1 < len(act) and act[i1] // n == s_:
                        i1 += 1
                    parts.append(torch.rand(i1 - i0, dtype=torch.float64, generator=slot_gen[s_], device=dev))
                    i0 = i1
                ua = torch.cat(parts)
            tk, lp = self._sample(logits, params, gen, u=ua)
            tl, ll = tk.tolist(), lp.tolist()
            cur[act_t] = tk
            t[act_t] += 1
            stats["decode_steps"] += 1
            for i, r in enumerate(act):
                after_token(r, tl[i], ll[i])
        stats["generated_tokens"] = sum(len(c.token_ids) for grp in results for c in grp)
        if self._thr_cur:
            stats["threads"] = self._thr_cur
            stats["thread_timings_us"] = {kind: {k: round(v * 1e6, 1) for k, v in d.items()}
                                          for kind, d in self._thr_stats.items()}
        return results  # type: ignore[return-value]
