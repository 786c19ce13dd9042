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
"""
from __future__ import annotations

import torch


def next_tokens(logits: torch.Tensor, temperature: float, banned: torch.Tensor) -> torch.Tensor:
    """logits [n, V] -> token ids [n]; `banned` [k] ids are never chosen."""
    logits = logits.float().index_fill(-1, banned, float("-inf"))                  # [n, V] fp32
    if temperature == 0:
        return logits.argmax(-1)
    cumulative = torch.softmax(logits / temperature, dim=-1).cumsum(-1)            # [n, V]
    total = cumulative[:, -1:]                                                     # [n, 1], 1 up to rounding
    u = torch.rand(total.shape, device=logits.device) * total                      # [n, 1] in [0, total)
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))          # < total even after rounding
    return torch.searchsorted(cumulative, u, right=True).squeeze(1)                # first cumulative > u
