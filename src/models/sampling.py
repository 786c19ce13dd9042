"""Choosing the next token from the logits, on the device.

temperature 0 is greedy (argmax; ties go to the lowest id, as in transformers). Otherwise one draw from
softmax(logits / temperature), in one of two exact ways:
- on CUDA, the exponential race: argmax_i p_i / E_i with E_i ~ Exp(1) picks i with probability p_i,
  and unlike torch.multinomial it never waits on the host, so it runs inside a CUDA graph;
- elsewhere, torch.multinomial (one uniform number per row): the race draws V exponentials per row,
  which on a CPU cost more than the tiny model's whole decode step.
The random numbers come from torch's default generator of the device, whose state checkpoints save:
a resumed run draws the same tokens. Banned ids (the vision special tokens) get probability 0.
"""
from __future__ import annotations

import torch


def next_tokens(logits: torch.Tensor, temperature: float, banned: torch.Tensor) -> torch.Tensor:
    """logits [n, V] -> token ids [n]; `banned` [k] ids are never chosen."""
    logits = logits.float().index_fill(-1, banned, float("-inf"))                  # [n, V] fp32
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)                           # [n, V]
    if probs.device.type != "cuda":
        return torch.multinomial(probs, 1).squeeze(1)
    race = torch.empty_like(probs).exponential_()                                 # [n, V] ~ Exp(1)
    return (probs / race).argmax(-1)
