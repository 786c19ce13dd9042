"""Reasoning reward, the "R" of RARL (sec. 2.2.2, 3.3): does the `<think>` text agree with the
annotated reference reasoning? The paper gives no formula; this is BERTScore F1 between the two.
Samples without a reasoning annotation get None: the reward is excluded, not zero.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from src.data.sample import Sample

if TYPE_CHECKING:  # only for annotations: importing it loads torch and transformers
    from src.rewards.bertscore import BertScorer


def has_reasoning(sample: Sample) -> bool:
    """Whether the sample carries a (non-blank) reference reasoning."""
    return bool(sample.reasoning and sample.reasoning.strip())


def reasoning_rewards(thinks: Sequence[str | None], samples: Sequence[Sample], scorer: BertScorer) -> list[float | None]:
    """BERTScore F1 of each think text against its sample's reasoning, in ONE scorer call.

    None where the sample has no reasoning annotation; 0.0 where it has one but the completion has
    no (or an empty) `<think>` block.
    """
    if len(thinks) != len(samples):
        raise ValueError(f"{len(thinks)} think texts but {len(samples)} samples")
    annotated = [k for k, sample in enumerate(samples) if has_reasoning(sample)]
    rewards: list[float | None] = [None] * len(samples)
    if annotated:
        f1 = scorer.score([thinks[k] or "" for k in annotated], [samples[k].reasoning for k in annotated])
        for k, value in zip(annotated, f1):
            rewards[k] = value
    return rewards


def reasoning_reward(think: str | None, sample: Sample, scorer: BertScorer) -> float | None:
    """Reasoning reward of one think text (see `reasoning_rewards`)."""
    return reasoning_rewards([think], [sample], scorer)[0]
