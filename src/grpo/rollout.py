"""A step's experience: G completions sampled for each of B prompts, as the update reads them.

The prompts are encoded once (src/models/encoded_prompts.py): each distinct image goes through the
vision tower once per step, and every later pass (reference, old policy, updates) reuses its features.
Shape legend (src/grpo/__init__.py): B prompts, G completions per prompt, N = B * G rows (row b * G + g
is completion g of prompt b), P prompt tokens (left-padded), L completion tokens.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from src.data.prompts import TRAINING_PROMPTS
from src.data.sample import Sample
from src.models.engine import VISION_TOKENS, token_ids
from src.models.encoded_prompts import EncodedPrompts, encode_prompts
from src.models.generation import prompt_batch, sample_groups
from src.models.loading import Policy


@dataclass
class Rollout:
    """B prompts x G sampled completions; tensors on the policy's device."""

    prompts: EncodedPrompts         # the B prompts, their image features computed once
    prompt_index: list[int]         # [N] prompt of each row: row b*G+g -> b
    completion_ids: torch.Tensor    # [N, L]
    completion_mask: torch.Tensor   # [N, L] bool: sampled tokens, up to and including the end token
    truncated: torch.Tensor         # [N] bool: hit max_completion_length without an end token
    sampler_logp: torch.Tensor      # [N, L] fp32 log-prob each token was drawn with, by the sampler (0 on padding)
    banned: torch.Tensor            # [k] ids never drawn (vision tokens): probability 0 in every log-prob
    texts: list[str]                # [N] decoded completions
    decoding: str = ""              # how the sampler ran ("cuda graph", "eager", ...)

    def rows(self, rows: Sequence[int]) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """(prompt of each row, completion_ids [n, L], completion_mask [n, L]) of rows `rows`."""
        return [self.prompt_index[r] for r in rows], self.completion_ids[rows], self.completion_mask[rows]


@torch.no_grad()
def sample_rollout(policy: Policy, samples: Sequence[Sample], prompt_names: Sequence[str], *, group_size: int,
                   max_completion_length: int, temperature: float, engine: str = "engine") -> Rollout:
    """Sample G completions of each sample's question under its training prompt (eval mode: no dropout)."""
    policy.model.eval()
    batch = prompt_batch(policy, samples, [TRAINING_PROMPTS[name] for name in prompt_names])  # B prompts
    prompts = encode_prompts(policy.model, batch)                               # vision tower once per image
    completions = sample_groups(policy, batch, prompts, group_size=group_size, max_new_tokens=max_completion_length,
                                temperature=temperature, engine_name=engine)   # N rows
    banned = torch.tensor(token_ids(policy.tokenizer, VISION_TOKENS), device=policy.device)
    return Rollout(prompts=prompts, prompt_index=[row // group_size for row in range(len(completions.texts))],
                   completion_ids=completions.ids, completion_mask=completions.mask, truncated=completions.truncated,
                   sampler_logp=completions.logprobs, banned=banned, texts=completions.texts,
                   decoding=completions.decoding)
