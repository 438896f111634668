"""The machine's own limit for a piece of work: measured GEMM rate and memory bandwidth, and FLOP/byte counts.

A benchmark that prints only tokens/s means different things on different CPUs. This module gives each
benchmark a limit measured in the SAME process and run as the work (so the load of a shared machine
weighs on both) and the fraction of it reached, ``fraction_of_limit = limit_seconds / measured_seconds``.

The model is a plain roofline, per forward pass (a decode step, a prefill, a scoring or training batch):

    limit_seconds = max(compute_seconds, memory_seconds)
    compute_seconds = sum over the linear layers of 2*M*N*K / rate(M, N, K)  +  attention FLOPs / best rate
    memory_seconds  = (weight bytes + KV-cache bytes read) / read bandwidth

Simplifications (stated, deliberate):

* ``rate(M, N, K)`` is measured with ``torch.nn.functional.linear`` at the model's own (N, K) shapes, the
  row count M of the work and the engine dtype, with the weight resident in cache (repeated calls): it is
  the best rate this machine's BLAS reaches at that shape, not a theoretical peak.
* attention FLOPs (QK^T and PV, ``4 * heads * head_dim * context`` per token and layer) are charged at the
  best linear rate measured for the same M; element-wise work (norms, RoPE, SiLU, softmax, sampling) is
  not counted: it is the overhead a fast engine must hide.
* memory: every weight of the linear layers is read once per forward (the embedding gather is not
  counted), the KV cache is read once per decode step (the prompt part once per prompt group when the
  engine shares it, the generated part once per row); bandwidth is a large streaming ``sum`` over a
  buffer bigger than the last-level cache.
* training: forward + backward = 3x the forward FLOPs (no recomputation), at the forward rate.

The FLOP and byte counts are pure functions of the model config (tested in ``tests/test_roofline.py``);
:func:`measure` does the timing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


# ------------------------------------------------------------------------------------------ shapes
@dataclass(frozen=True)
class ModelShape:
    """What the counts need from a Llama-family config (SmolLM2, Llama, Qwen2)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, cfg) -> "ModelShape":
        h = int(cfg.hidden_size)
        heads = int(cfg.num_attention_heads)
        return cls(layers=int(cfg.num_hidden_layers), hidden=h, intermediate=int(cfg.intermediate_size),
                   heads=heads, kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
                   head_dim=int(getattr(cfg, "head_dim", None) or h // heads), vocab=int(cfg.vocab_size))

    def linears(self) -> list[tuple[str, int, int, int]]:
        """(name, N, K, count): the distinct linear layers of one forward (fused QKV and gate/up, as the
        fast engine runs them: fusion does not change the FLOPs), and the LM head."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        L = self.layers
        return [("qkv", q + 2 * kv, self.hidden, L), ("o", self.hidden, q, L),
                ("gate_up", 2 * self.intermediate, self.hidden, L), ("down", self.hidden, self.intermediate, L),
                ("lm_head", self.vocab, self.hidden, 1)]

    def linear_params(self) -> int:
        return sum(n * k * c for _, n, k, c in self.linears())

    def linear_flops_per_token(self) -> int:
        """2 FLOPs per multiply-add of every linear layer (the LM head included)."""
        return 2 * self.linear_params()

    def attention_flops(self, context: float) -> float:
        """QK^T and PV for one token attending over ``context`` positions, all layers."""
        return 4.0 * self.layers * self.heads * self.head_dim * context

    def weight_bytes(self, dtype_bytes: int) -> int:
        return self.linear_params() * dtype_bytes

    def kv_bytes(self, positions: float, dtype_bytes: int) -> float:
        """K and V of ``positions`` cached positions, all layers."""
        return 2.0 * self.layers * self.kv_heads * self.head_dim * positions * dtype_bytes


# ------------------------------------------------------------------------------------ measurements
@dataclass
class Machine:
    """Measured limits: ``rates[(M, N, K)]`` in FLOP/s for the dtype, ``bandwidth`` in bytes/s."""

    dtype: str
    rates: dict[tuple[int, int, int], float] = field(default_factory=dict)
    bandwidth: float = float("nan")
    threads: int = 0

    def rate(self, M: int, N: int, K: int) -> float:
        """The rate at (M, N, K); for an M not measured, the rate at the nearest measured M (log scale)."""
        if (M, N, K) in self.rates:
            return self.rates[(M, N, K)]
        ms = sorted({m for (m, n, k) in self.rates if (n, k) == (N, K)})
        if not ms:
            raise KeyError(f"no GEMM rate measured for N={N}, K={K}")
        best = min(ms, key=lambda m: abs(math.log(m) - math.log(max(M, 1))))
        return self.rates[(best, N, K)]

    def best_rate(self, M: int, shape: ModelShape) -> float:
        return max(self.rate(M, n, k) for _, n, k, _ in shape.linears())



def cpu_summary() -> str:
    """CPU model, logical CPUs, the vector/matrix flags that decide the GEMM rate, torch's capability."""
    import os

    import torch

    from medrlvr.hardware import cpu_flags, cpu_model

    keep = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "avx512_fp16", "neon",
            "asimd", "sve", "bf16")
    fl = [f for f in keep if f in cpu_flags()]
    return (f"cpu {cpu_model()!r}, {os.cpu_count()} logical cpus, flags {' '.join(fl) or '-'}, "
            f"torch capability {torch.backends.cpu.get_cpu_capability()}, torch threads {torch.get_num_threads()}")


def _time_best(fn, min_s: float, reps_min: int = 3) -> float:
    """Best seconds per call of ``fn`` over at least ``reps_min`` calls and ``min_s`` seconds."""
    fn()
    best, total, reps = float("inf"), 0.0, 0
    while reps < reps_min or total < min_s:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, total, reps = min(best, dt), total + dt, reps + 1
    return best


def measure_gemm(M: int, N: int, K: int, dtype: str = "bf16", min_s: float = 0.05) -> float:
    """FLOP/s of ``F.linear`` with an (M, K) input and an (N, K) weight in ``dtype`` (best of repeated calls)."""
    import torch
    import torch.nn.functional as F

    dt = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(M, K, generator=g).to(dt)
    w = (torch.randn(N, K, generator=g) * K ** -0.5).to(dt)
    with torch.inference_mode():
        s = _time_best(lambda: F.linear(x, w), min_s)
    return 2.0 * M * N * K / s


def measure_bandwidth(mbytes: int = 512, min_s: float = 0.2) -> float:
    """Read bandwidth (bytes/s): a float32 ``sum`` over a buffer of ``mbytes`` MB (past the last-level
    cache on most CPUs; where the LLC is bigger this reads partly from cache, an optimistic limit)."""
    import torch

    buf = torch.ones(mbytes * (1 << 20) // 4, dtype=torch.float32)
    s = _time_best(lambda: buf.sum(), min_s)
    return buf.numel() * 4 / s


def measure(shape: ModelShape, Ms, dtype: str = "bf16", min_s: float = 0.05, bandwidth_mb: int = 512,
            thread_counts=None) -> Machine:
    """GEMM rates at every linear shape of ``shape`` for each row count in ``Ms``, and the bandwidth; each the
    best over ``thread_counts`` (default: torch's current count and 1; on a loaded machine the fork/join
    barriers of 2 threads can make one thread faster, and the limit is the best the machine does now)."""
    import torch

    cur = torch.get_num_threads()
    tcs = sorted(set(thread_counts or (cur, 1)), reverse=True)
    mach = Machine(dtype=dtype, threads=cur)
    bw = []
    try:
        for tc in tcs:
            torch.set_num_threads(tc)
            for M in sorted(set(int(m) for m in Ms)):
                for _, N, K, _ in shape.linears():
                    r = measure_gemm(M, N, K, dtype, min_s)
                    mach.rates[(M, N, K)] = max(r, mach.rates.get((M, N, K), 0.0))
            bw.append(measure_bandwidth(bandwidth_mb))
    finally:
        torch.set_num_threads(cur)
    mach.bandwidth = max(bw)
    return mach


# ------------------------------------------------------------------------------------------ limits
@dataclass
class Limit:
    """Limit of a piece of work: seconds, and what it is made of."""

    seconds: float = 0.0
    flops: float = 0.0
    bytes: float = 0.0
    compute_s: float = 0.0
    memory_s: float = 0.0

    def __add__(self, o: "Limit") -> "Limit":
        return Limit(self.seconds + o.seconds, self.flops + o.flops, self.bytes + o.bytes,
                     self.compute_s + o.compute_s, self.memory_s + o.memory_s)

    def scaled(self, k: float) -> "Limit":
        return Limit(self.seconds * k, self.flops * k, self.bytes * k, self.compute_s * k, self.memory_s * k)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"


def forward_limit(shape: ModelShape, mach: Machine | None, rows: int, attn_context: float = 0.0,
                  kv_positions: float = 0.0, dtype_bytes: int = 2, head_rows: int | None = None) -> Limit:
    """One forward over ``rows`` token positions: ``attn_context`` mean positions attended per row,
    ``kv_positions`` cached positions read from memory, ``head_rows`` rows through the LM head (default all).
    With ``mach=None`` only the FLOP and byte counts are filled."""
    hr = rows if head_rows is None else head_rows
    flops = attn = shape.attention_flops(attn_context) * rows
    comp = 0.0
    for name, N, K, c in shape.linears():
        m = hr if name == "lm_head" else rows
        f = 2.0 * m * N * K * c
        flops += f
        if mach is not None and m:
            comp += f / mach.rate(m, N, K)
    if mach is not None and attn:
        comp += attn / mach.best_rate(rows, shape)
    nbytes = shape.weight_bytes(dtype_bytes) + shape.kv_bytes(kv_positions, dtype_bytes)
    mem = nbytes / mach.bandwidth if mach is not None else 0.0
    return Limit(max(comp, mem), flops, nbytes, comp, mem)


def rollout_limit(shape: ModelShape, mach: Machine | None, prompt_lens, n: int, new_tokens: int, batch_rows: int,
                  dtype_bytes: int = 2, shared_prompt_kv: bool = True) -> Limit:
    """Generating ``new_tokens`` tokens for each of ``n`` samples of every prompt (fixed length, as with
    ``ignore_eos``), at most ``batch_rows`` rows per decode step: prompt groups go in waves of
    ``batch_rows // n`` prompts; each prompt is prefilled once (its last position through the LM head),
    then ``new_tokens - 1`` decode steps (the first token comes from the prefill). Per step, the context of
    every row is its prompt plus the tokens so far; the prompt KV is read once per group
    (``shared_prompt_kv``) or once per row."""
    plens = [int(p) for p in prompt_lens]
    total = Limit()
    for p in plens:
        total = total + forward_limit(shape, mach, p, attn_context=(p + 1) / 2, dtype_bytes=dtype_bytes, head_rows=1)
    per_wave = max(1, batch_rows // max(n, 1))
    for w0 in range(0, len(plens), per_wave):
        wave = plens[w0:w0 + per_wave]
        rows = len(wave) * n
        pmean = sum(wave) / len(wave)
        steps = max(new_tokens - 1, 0)
        if not steps:
            continue
        tmean = new_tokens / 2                      # generated positions attended, averaged over the steps
        kv = (sum(wave) if shared_prompt_kv else pmean * rows) + rows * tmean
        step = forward_limit(shape, mach, rows, attn_context=pmean + tmean, kv_positions=kv, dtype_bytes=dtype_bytes)
        total = total + step.scaled(steps)
    return total


def training_limit(shape: ModelShape, mach: Machine | None, seq_lens, micro_batch: int, scoring_passes: int = 1,
                   epochs: int = 1, dtype_bytes: int = 2, prompt_lens=None, group_size: int = 1) -> Limit:
    """A policy update on sequences of ``seq_lens`` tokens (prompt + response), ``micro_batch`` sequences
    per forward: ``scoring_passes`` no-grad forwards (old log-probs, reference) plus ``epochs`` forward +
    backward passes (3x a forward). Attention is causal over each sequence (mean context (T+1)/2).

    With ``prompt_lens`` (each sequence's prompt part), every ``group_size`` consecutive sequences share
    one prompt (one sequence per group when ``group_size`` is 1: nothing is shared), run once per group (``share_prompt``, :mod:`medrlvr.train.forward`):
    its tokens count once, and each response token attends to the prompt and the response before it.
    Micro-batches then hold whole groups, as the trainer packs them."""
    lens = [int(t) for t in seq_lens]
    if prompt_lens is None:            # no shared prompt: a whole sequence is "response" after a 0-token prompt
        prompt_lens, group_size = [0] * len(lens), 1
    plens = [int(p) for p in prompt_lens]
    if len(plens) != len(lens):
        raise ValueError(f"{len(plens)} prompt lengths for {len(lens)} sequences")
    group_size = max(1, group_size)
    step = max(group_size, micro_batch // group_size * group_size)
    total = Limit()
    for i in range(0, len(lens), step):
        rows, ctx_sum = 0, 0.0
        for g in range(i, min(i + step, len(lens)), group_size):
            P = plens[g]
            rows += P
            ctx_sum += P * (P + 1) / 2
            for t in lens[g:g + group_size]:
                r = t - P
                rows += r
                ctx_sum += r * P + r * (r + 1) / 2
        fwd = forward_limit(shape, mach, rows, attn_context=ctx_sum / max(rows, 1), dtype_bytes=dtype_bytes)
        total = total + fwd.scaled(scoring_passes + 3 * epochs)
    return total


def report(label: str, limit: Limit, seconds: float, work: str = "") -> str:
    """One line: the limit, what bounds it, and ``fraction_of_limit=`` (limit / measured seconds)."""
    frac = limit.seconds / seconds if seconds > 0 else float("nan")
    rate = limit.flops / seconds / 1e9 if seconds > 0 else float("nan")
    return (f"roofline [{label}]: {work + '; ' if work else ''}{limit.flops / 1e9:.1f} GFLOP, "
            f"{limit.bytes / 1e9:.2f} GB read; limit {limit.seconds:.3f} s ({limit.bound}-bound: compute "
            f"{limit.compute_s:.3f} s, memory {limit.memory_s:.3f} s), measured {seconds:.3f} s "
            f"({rate:.1f} GFLOP/s achieved) fraction_of_limit={frac:.3f}")


def describe_machine(mach: Machine, shape: ModelShape) -> str:
    """The measured rates (GFLOP/s per M, min-max over the model's shapes) and the bandwidth."""
    ms = sorted({m for (m, _, _) in mach.rates})
    parts = []
    for m in ms:
        r = [mach.rate(m, n, k) for _, n, k, _ in shape.linears()]
        parts.append(f"M={m}: {min(r) / 1e9:.0f}-{max(r) / 1e9:.0f}")
    return (f"measured in this run ({mach.dtype}, best of 1 and {mach.threads} threads): GEMM GFLOP/s at the model's shapes "
            f"{'; '.join(parts)}; read bandwidth {mach.bandwidth / 1e9:.1f} GB/s")
