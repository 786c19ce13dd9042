"""What a sampled completion is, whichever sampler produced it.

Two rules every sampler keeps and every caller relies on:
- vision special tokens are never emitted: a completion holding `<|image_pad|>` would break the next
  forward pass ("Image features and image tokens do not match"), and a random or young policy does
  sample them;
- a completion ends at its first `<|im_end|>` (or `<|endoftext|>`); the mask keeps that end token
  (its log-prob is part of the policy's choice to stop) and zeroes everything after it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
END_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass
class Completions:
    """N sampled completions, right-padded to the longest one (L tokens)."""

    ids: torch.Tensor         # [N, L] long, pad after the end token
    mask: torch.Tensor        # [N, L] bool, True up to and including the end token
    truncated: torch.Tensor   # [N] bool, no end token within max_new_tokens
    logprobs: torch.Tensor    # [N, L] fp32 log-prob each token was drawn with (src/models/sampling.py), 0 after the end
    texts: list[str]          # decoded without special tokens
    decoding: str = ""        # how the sampler ran, for logs ("cuda graph", "eager", "hf generate", ...)

    @property
    def lengths(self) -> torch.Tensor:  # [N] tokens per completion, end token included
        return self.mask.sum(1)


def token_ids(tokenizer, tokens: Sequence[str]) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def completion_mask(ids: torch.Tensor, end_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, L] mask that is True up to and including the first end token; and [N] 'no end token' flags."""
    is_end = torch.isin(ids, torch.tensor(list(end_ids), device=ids.device))     # [N, L]
    ended_before = (is_end.long().cumsum(1) - is_end.long()) > 0                 # an end token strictly earlier
    return ~ended_before, ~is_end.any(1)
