"""Choosing the next token from the logits, on the device, without waiting on the host.

temperature 0 is greedy (argmax; ties go to the lowest id, as in transformers). Otherwise one draw from
p = softmax(logits / temperature) by inverse transform sampling: one uniform number u per row, and the
first token whose cumulative probability exceeds u. It is exact (up to float rounding of the cumulative
sum), needs no host synchronisation, so it runs inside a CUDA graph, and costs a cumulative sum and a
binary search per row: torch.multinomial costs more than the tiny model's whole decode step on a CPU
and may synchronise on CUDA, and the exponential race (argmax p / Exp(1)) draws V numbers per row.
The uniform numbers come from torch's default generator of the device, whose state checkpoints save:
a resumed run draws the same tokens. Banned ids (the vision special tokens) get probability 0 and are
never drawn: a token with p = 0 adds nothing to the cumulative sum, so no u lands on it.

Each token comes with its log-probability under the distribution it was drawn from: the softmax of
logits / temperature over the ids that are not banned (the policy the trainer's log-probs compute,
src/grpo/forward.py), so the trainer can measure how far its own forward pass is from the sampler's.
Greedy tokens come with the log-probabilities of the unscaled distribution (temperature 1).
"""
from __future__ import annotations

import torch


def next_tokens(logits: torch.Tensor, temperature: float, banned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [n, V] -> (token ids [n], their log-probabilities [n] fp32); `banned` [k] ids are never chosen."""
    logits = logits.float().index_fill(-1, banned, float("-inf"))                  # [n, V] fp32
    scaled = logits / temperature if temperature > 0 else logits                   # [n, V]
    if temperature == 0:
        token = logits.argmax(-1)                                                  # [n]
    else:
        cumulative = torch.softmax(scaled, dim=-1).cumsum(-1)                      # [n, V]
        total = cumulative[:, -1:]                                                 # [n, 1], 1 up to rounding
        u = torch.rand(total.shape, device=logits.device) * total                  # [n, 1] in [0, total)
        u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))      # < total even after rounding
        token = torch.searchsorted(cumulative, u, right=True).squeeze(1)           # first cumulative > u
    logp = scaled.gather(-1, token.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(scaled, dim=-1)  # [n]
    return token, logp
