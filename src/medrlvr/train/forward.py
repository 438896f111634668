"""Pack (prompt, response) token sequences into padded tensors and score responses.

Layout: each row is ``prompt + response`` right-padded to the batch's longest row. Per-token
response quantities are returned left-aligned in a ``(B, Tr)`` tensor with a ``response_mask``.
Only the hidden states at response positions go through the LM head, in chunks, so the
full ``(B, L, V)`` float32 logits tensor is never materialised.

Shared prompts (``pack(..., share_prompt=True)``): the rows of a GRPO group share their prompt, which is
most of each row's tokens (about 210 prompt tokens against 60-160 response tokens in ``cpu-demo``). The
prompt is then run once per distinct prompt (batch 1, with gradients), its key/value cache repeated
for the group's rows, and only the responses are run on top of it. The result, and its gradient, are
those of the padded full-row forward (tested to 1e-5 in fp32); the prompt's FLOPs are paid once per
group instead of once per sample.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch

from medrlvr.algos import entropy_from_logits_chunked, logprobs_from_logits
from medrlvr.models import unwrap_peft


@dataclass
class PackedBatch:
    input_ids: torch.Tensor        # (B, L)
    attention_mask: torch.Tensor   # (B, L)
    gather_index: torch.Tensor     # (B, Tr) position whose output predicts response token k
    labels: torch.Tensor           # (B, Tr) response token ids (pad where masked)
    response_mask: torch.Tensor    # (B, Tr) float, 1 for real response tokens
    prompts: list[list[int]] | None = None     # kept for the shared-prompt forward
    responses: list[list[int]] | None = None
    pad_id: int = 0
    share_prompt: bool = False

    def to(self, device) -> "PackedBatch":
        return PackedBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.gather_index,
                                                      self.labels, self.response_mask)),
                           self.prompts, self.responses, self.pad_id, self.share_prompt)


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int, share_prompt: bool = False) -> PackedBatch:
    if len(prompts) != len(responses):
        raise ValueError("prompts and responses differ in length")
    B = len(prompts)
    L = max(len(p) + len(r) for p, r in zip(prompts, responses))
    Tr = max(1, max(len(r) for r in responses))
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    att = torch.zeros((B, L), dtype=torch.long)
    gidx = torch.zeros((B, Tr), dtype=torch.long)
    labels = torch.full((B, Tr), pad_id, dtype=torch.long)
    rmask = torch.zeros((B, Tr), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if not p:
            raise ValueError(f"row {i}: empty prompt")
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r, dtype=torch.long)
        att[i, :n] = 1
        k = len(r)
        if k:
            gidx[i, :k] = torch.arange(len(p) - 1, len(p) - 1 + k)
            labels[i, :k] = torch.tensor(r, dtype=torch.long)
            rmask[i, :k] = 1.0
    share = share_prompt and len({tuple(p) for p in prompts}) < B
    return PackedBatch(ids, att, gidx, labels, rmask, [list(p) for p in prompts], [list(r) for r in responses],
                       pad_id, share)


def split_lm(model):
    """(trunk, lm_head) of a causal LM, looking through a peft wrapper."""
    base = unwrap_peft(model)
    return base.model, base.lm_head


@functools.lru_cache(maxsize=None)
def _cache_kwarg(trunk_cls: type) -> str:
    """``cache`` (transformers >= 5.24) or ``past_key_values`` (older), whichever ``forward`` takes."""
    return "cache" if "cache" in inspect.signature(trunk_cls.forward).parameters else "past_key_values"


# token-equivalents one more trunk forward (and its backward) costs, against the padding it saves: a group's
# responses run in length buckets (see plan_buckets)
BUCKET_OVERHEAD = 32


def plan_buckets(lengths: list[int], overhead: int | None = None) -> list[list[int]]:
    """Rows of one group (indices into ``lengths``, the tokens each row runs) in buckets, each run as one
    forward padded to its longest row: contiguous runs of the rows sorted longest first, chosen to minimise
    the tokens run (padding included) plus ``overhead`` (:data:`BUCKET_OVERHEAD`) per forward beyond the
    first; exact, by dynamic programming over the sorted lengths. Rows of length 0 run nothing: left out."""
    overhead = BUCKET_OVERHEAD if overhead is None else overhead
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: (-lengths[i], i))
    k = len(order)
    best = [0.0] + [float("inf")] * k
    cut = [0] * (k + 1)
    for e in range(1, k + 1):
        for s in range(e):             # order[s:e] in one forward, padded to its longest row, order[s]
            c = best[s] + (e - s) * lengths[order[s]] + (overhead if s else 0)
            if c < best[e]:
                best[e], cut[e] = c, s
    runs, e = [], k
    while e > 0:
        runs.append(order[cut[e]:e])
        e = cut[e]
    return runs[::-1]


def _repeat_first_row(cache, n: int, device) -> None:
    """Make every layer of ``cache`` hold ``n`` copies of its first row (the prompt's keys and values). An
    ``expand`` where the cache's layers expose ``keys``/``values`` (transformers 5.x): its backward is a sum,
    where ``batch_select_indices``' is an accumulating index_put, slow on the CPU and called many times an
    update (evidence: docs/decisions/update-step.md); older caches use ``batch_select_indices``."""
    layers = getattr(cache, "layers", None)
    if layers and all(hasattr(l, "keys") and hasattr(l, "values") for l in layers):
        for l in layers:
            if isinstance(l.keys, torch.Tensor) and isinstance(l.values, torch.Tensor) and l.keys.dim() == 4:
                l.keys = l.keys[:1].expand(n, *l.keys.shape[1:])
                l.values = l.values[:1].expand(n, *l.values.shape[1:])
        return
    cache.batch_select_indices(torch.zeros(n, dtype=torch.long, device=device))


def _shared_prompt_hidden(trunk, batch: PackedBatch) -> torch.Tensor:
    """Hidden states (B, Tr, H) at the positions predicting each response token, one prompt forward per
    distinct prompt (see the module docstring). A group's responses run on its prompt's key/value cache in
    length buckets (:func:`plan_buckets`: a group of 128-, 128-, 22- and 10-token responses runs as 2 x 127
    + 2 x 21 tokens instead of 4 x 127); between buckets the cache is cropped back to the prompt. Every token
    of the batch is embedded in one call, so the backward builds one dense (vocabulary x H) embedding
    gradient instead of one per trunk call (each 49k x 576 at SmolLM2; evidence: docs/decisions/update-step.md)."""
    dev = batch.input_ids.device
    B, Tr = batch.labels.shape
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(batch.prompts):
        groups.setdefault(tuple(p), []).append(i)
    plan, pieces = [], []
    for prompt, rows in groups.items():
        pieces.append(torch.tensor(prompt, dtype=torch.long))
        runs = [len(batch.responses[i]) - 1 for i in rows]     # the last token predicts nothing we need
        buckets = []
        for bucket in plan_buckets(runs):
            R = max(runs[j] for j in bucket)
            ids = torch.full((len(bucket), R), batch.pad_id, dtype=torch.long)
            for j, r in enumerate(bucket):
                ids[j, :runs[r]] = torch.tensor(batch.responses[rows[r]][:-1], dtype=torch.long)
            pieces.append(ids.reshape(-1))
            buckets.append(([rows[r] for r in bucket], [runs[r] for r in bucket], R))
        plan.append((prompt, rows, buckets))
    embeds = iter(torch.split(trunk.get_input_embeddings()(torch.cat(pieces).to(dev)), [len(x) for x in pieces]))
    rows_out: list[torch.Tensor | None] = [None] * B
    for prompt, rows, buckets in plan:
        P = len(prompt)
        po = trunk(inputs_embeds=next(embeds).unsqueeze(0), use_cache=True)
        first = po.last_hidden_state[0, -1:]                      # predicts response token 0
        for i in rows:
            rows_out[i] = first
        cache = getattr(po, "cache", None) or po.past_key_values
        ran = 0                                                    # tokens the cache holds past the prompt
        for brows, bruns, R in buckets:
            n = len(brows)
            if ran:
                cache.crop(-ran)
            _repeat_first_row(cache, n, dev)
            att = torch.zeros((n, P + R), dtype=torch.long, device=dev)
            att[:, :P] = 1
            for j, r in enumerate(bruns):
                att[j, P:P + r] = 1
            pos = torch.arange(P, P + R, device=dev).unsqueeze(0).expand(n, -1)
            ro = trunk(inputs_embeds=next(embeds).view(n, R, -1), attention_mask=att, position_ids=pos,
                       use_cache=True, **{_cache_kwarg(type(trunk)): cache})
            ran = R
            for j, i in enumerate(brows):
                rows_out[i] = torch.cat([first, ro.last_hidden_state[j]], 0)
    return torch.stack([torch.nn.functional.pad(h[:Tr], (0, 0, 0, Tr - min(Tr, h.shape[0]))) for h in rows_out], 0)


def response_hidden(model, batch: PackedBatch) -> torch.Tensor:
    trunk, _ = split_lm(model)
    if batch.share_prompt and batch.prompts is not None:
        return _shared_prompt_hidden(trunk, batch)
    out = trunk(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    h = out.last_hidden_state
    idx = batch.gather_index.unsqueeze(-1).expand(-1, -1, h.shape[-1])
    return torch.gather(h, 1, idx)  # (B, Tr, H)


def response_logprobs(model, batch: PackedBatch, temperature: float = 1.0, with_entropy: bool = False,
                      chunk: int = 128, entropy_grad: bool = False):
    """Log-probs (B, Tr) of the response tokens under ``model`` (logits / temperature), and the
    per-token entropy when asked (else ``None``; differentiable only with ``entropy_grad``); 0 at padding.
    Only the real response positions go through the LM head (a batch's padding is often a third of its
    positions, and the head over a 49k vocabulary is the largest matmul), ``chunk`` x B of them at a time."""
    _, head = split_lm(model)
    h = response_hidden(model, batch)
    B, Tr = batch.labels.shape
    sel = batch.response_mask.bool()
    hs, ys = h[sel], batch.labels[sel]                     # (n, H), (n,) in row-major order
    if hs.shape[0] == 0:                                   # no response token at all: zeros, still in the graph
        z = h.sum(-1) * 0.0
        return z.float(), (z.float() if with_entropy else None)
    rows = chunk * max(1, B)
    # the log-softmax and entropy walk the head's output in pieces of ~12 MiB of float32 (64 positions at a 49k
    # vocabulary): one big piece is slower, its temporaries page-fault on every allocation
    # (evidence: docs/decisions/update-step.md)
    lps, ents = [], []
    for s in range(0, hs.shape[0], rows):
        logits = head(hs[s:s + rows])
        if temperature != 1.0:
            logits = logits / temperature
        inner = max(1, (12 << 20) // (4 * logits.shape[-1]))
        lps.append(logprobs_from_logits(logits, ys[s:s + rows], chunk=inner))
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                ents.append(entropy_from_logits_chunked(logits, chunk=inner))
        del logits

    def scatter(flat):
        return torch.zeros((B, Tr), dtype=flat.dtype, device=flat.device).masked_scatter(sel, flat)

    lp = scatter(torch.cat(lps))
    ent = scatter(torch.cat(ents)) if with_entropy else None
    return lp, ent


def response_values(critic, batch: PackedBatch) -> torch.Tensor:
    """Critic values (B, Tr) at the positions that predict each response token."""
    v = critic(batch.input_ids, batch.attention_mask)
    return torch.gather(v, 1, batch.gather_index) * batch.response_mask
