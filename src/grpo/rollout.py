"""Collecting one step's experience: sample G completions per prompt, score them, compute advantages.

Shape legend (as in src/grpo/loss.py): B prompts per step, G completions per prompt, N = B * G rows
(row b * G + g is completion g of prompt b), P prompt tokens (left-padded), L completion tokens.
The prompts are encoded once (src/models/encoded_prompts.py): each distinct image goes through the
vision tower once per step, and every later pass (reference, old policy, updates) reuses its features.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from src.data.prompts import TRAINING_PROMPTS
from src.data.sample import Sample
from src.grpo.advantages import group_advantages, zero_std_fraction
from src.models.encoded_prompts import EncodedPrompts, encode_prompts
from src.models.generation import prompt_batch, sample_groups
from src.models.loading import Policy
from src.rewards.total import RewardWeights, score_completions


@dataclass
class Rollout:
    """B prompts x G completions with everything the update needs; tensors on the policy's device."""

    prompts: EncodedPrompts         # the B prompts, their image features computed once
    prompt_index: list[int]         # [N] prompt of each row: row b*G+g -> b
    completion_ids: torch.Tensor    # [N, L]
    completion_mask: torch.Tensor   # [N, L] bool: completion tokens up to and including the end token
    truncated: torch.Tensor         # [N] bool: hit max_completion_length without an end token
    texts: list[str]                # [N] decoded completions
    rewards: torch.Tensor           # [N] weighted total reward r_i
    reward_means: dict[str, float]  # 'reward/<component>' -> batch mean, for logging
    reward_components: dict[str, list[float | None]]  # component -> [N] unweighted values (None: not computed)
    advantages: torch.Tensor        # [N] A_i of eq. 2 (not a reward: normalised within each group)
    frac_zero_std: float            # fraction of groups whose G rewards are all equal (A = 0 for all)
    seconds_generate: float
    seconds_score: float


def collect_rollout(policy: Policy, samples: Sequence[Sample], prompt_names: Sequence[str], *, group_size: int,
                    max_completion_length: int, temperature: float, mask_truncated: bool, scorer,
                    weights: RewardWeights, use_reasoning: bool, scale_rewards: bool = True,
                    engine: str = "engine") -> Rollout:
    """Sample, score and normalise: everything of a GRPO step that needs no gradient."""
    start = time.perf_counter()
    policy.model.eval()  # no dropout while sampling
    batch = prompt_batch(policy, samples, [TRAINING_PROMPTS[name] for name in prompt_names])  # B prompts
    prompts = encode_prompts(policy.model, batch)                               # vision tower once per image
    completions = sample_groups(policy, batch, prompts, group_size=group_size, max_new_tokens=max_completion_length,
                                temperature=temperature, engine_name=engine)   # N rows
    seconds_generate = time.perf_counter() - start

    start = time.perf_counter()
    repeated = [s for s in samples for _ in range(group_size)]                   # [N], row b*G+g -> sample b
    breakdown = score_completions(completions.texts, repeated, completions.lengths.tolist(), scorer, weights,
                                  use_reasoning)
    rewards = torch.tensor(breakdown.total, dtype=torch.float32)                 # [N]
    advantages = group_advantages(rewards, group_size, scale=scale_rewards)     # [N], eq. 2
    mask = completions.mask
    if mask_truncated:  # a cut-off completion was never judged on a finished answer: leave it out
        mask = mask & ~completions.truncated.unsqueeze(1)                        # [N, L]
    return Rollout(
        prompts=prompts, prompt_index=[row // group_size for row in range(len(repeated))],
        completion_ids=completions.ids, completion_mask=mask, truncated=completions.truncated,
        texts=completions.texts, rewards=rewards, reward_means=breakdown.means(),
        reward_components=breakdown.components,
        advantages=advantages.to(policy.device), frac_zero_std=zero_std_fraction(rewards, group_size),
        seconds_generate=seconds_generate, seconds_score=time.perf_counter() - start,
    )
