"""Pack (prompt, response) token sequences into padded tensors and score responses.

Layout: each row is ``prompt + response`` right-padded to the batch's longest row. Per-token
response quantities are returned left-aligned in a ``(B, Tr)`` tensor with a ``response_mask``.
Only the hidden states at response positions go through the LM head, in chunks, so the
full ``(B, L, V)`` float32 logits tensor is never materialised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .algos import entropy_from_logits_chunked, logprobs_from_logits


@dataclass
class PackedBatch:
    input_ids: torch.Tensor        # (B, L)
    attention_mask: torch.Tensor   # (B, L)
    gather_index: torch.Tensor     # (B, Tr) position whose output predicts response token k
    labels: torch.Tensor           # (B, Tr) response token ids (pad where masked)
    response_mask: torch.Tensor    # (B, Tr) float, 1 for real response tokens

    def to(self, device) -> "PackedBatch":
        return PackedBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.gather_index,
                                                      self.labels, self.response_mask)))


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> PackedBatch:
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
    return PackedBatch(ids, att, gidx, labels, rmask)


def _split_lm(model):
    """(trunk, lm_head) of a causal LM, looking through a peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model, base.lm_head


def response_hidden(model, batch: PackedBatch) -> torch.Tensor:
    trunk, _ = _split_lm(model)
    out = trunk(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    h = out.last_hidden_state
    idx = batch.gather_index.unsqueeze(-1).expand(-1, -1, h.shape[-1])
    return torch.gather(h, 1, idx)  # (B, Tr, H)


def response_logprobs(model, batch: PackedBatch, temperature: float = 1.0, with_entropy: bool = False,
                      chunk: int = 128, entropy_grad: bool = False):
    """Log-probs (B, Tr) of the response tokens under ``model`` (logits / temperature), and the
    per-token entropy when asked (else ``None``; differentiable only with ``entropy_grad``).
    The LM head is applied ``chunk`` positions at a time."""
    _, head = _split_lm(model)
    h = response_hidden(model, batch)
    lps, ents = [], []
    for s in range(0, h.shape[1], chunk):
        logits = head(h[:, s:s + chunk])
        if temperature != 1.0:
            logits = logits / temperature
        lps.append(logprobs_from_logits(logits, batch.labels[:, s:s + chunk]))
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                ents.append(entropy_from_logits_chunked(logits))
        del logits
    lp = torch.cat(lps, dim=1) * batch.response_mask
    ent = torch.cat(ents, dim=1) * batch.response_mask if with_entropy else None
    return lp, ent


def response_values(critic, batch: PackedBatch) -> torch.Tensor:
    """Critic values (B, Tr) at the positions that predict each response token."""
    v = critic(batch.input_ids, batch.attention_mask)
    return torch.gather(v, 1, batch.gather_index) * batch.response_mask
