"""The weighted total of the four RARL rewards, with each component kept for logging.

    total_i = w_format * format_i + w_length * length_i + w_accuracy * accuracy_i
              + w_reasoning * reasoning_i      (the last term only where reasoning_i is not None)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from src.data.sample import Sample
from src.rewards.accuracy import accuracy_rewards
from src.rewards.answers import parse_completion
from src.rewards.format import format_reward
from src.rewards.length import length_reward
from src.rewards.reasoning import reasoning_rewards

if TYPE_CHECKING:  # only for annotations: importing it loads torch and transformers
    from src.rewards.bertscore import BertScorer

COMPONENTS = ("format", "length", "accuracy", "reasoning")


@dataclass(frozen=True)
class RewardWeights:
    """Weight of each reward in the total (the paper sums them unweighted: 1.0 each)."""

    format: float = 1.0
    length: float = 1.0
    accuracy: float = 1.0
    reasoning: float = 1.0


@dataclass(frozen=True)
class RewardBreakdown:
    """Rewards of a batch of completions.

    total:      the weighted sum per completion.
    components: per completion, keyed by COMPONENTS; 'reasoning' is None where it was excluded
                (no reasoning annotation, or use_reasoning=False).
    """

    total: list[float]
    components: dict[str, list[float | None]]

    def means(self) -> dict[str, float]:
        """'reward/<name>' -> mean over the completions where it was computed; a component computed
        for none of them is left out (rather than logged as a misleading 0)."""
        means = {}
        for name, values in self.components.items():
            present = [value for value in values if value is not None]
            if present:
                means[f"reward/{name}"] = sum(present) / len(present)
        return means


def score_completions(completions: Sequence[str], samples: Sequence[Sample], num_tokens: Sequence[int],
                      scorer: BertScorer | None, weights: RewardWeights, use_reasoning: bool,
                      open_answer_score: str = "bertscore") -> RewardBreakdown:
    """Score every completion of a step: one BERTScore call for the open answers, one for the
    reasoning. use_reasoning=False (plain GRPO) does not compute the reasoning reward at all.
    open_answer_score: how the accuracy reward scores open answers, "bertscore" (the paper's) or
    "clinical" (src/rewards/open_answers.py)."""
    if not len(completions) == len(samples) == len(num_tokens):
        raise ValueError(f"{len(completions)} completions, {len(samples)} samples, {len(num_tokens)} token counts")
    components: dict[str, list[float | None]] = {
        "format": [format_reward(completion) for completion in completions],
        "length": [length_reward(n) for n in num_tokens],
        "accuracy": accuracy_rewards(completions, samples, scorer, open_answer_score),
    }
    if use_reasoning:
        thinks = [parse_completion(completion).think for completion in completions]
        components["reasoning"] = reasoning_rewards(thinks, samples, scorer)
    else:
        components["reasoning"] = [None] * len(completions)
    total = [
        sum(getattr(weights, name) * components[name][k] for name in COMPONENTS if components[name][k] is not None)
        for k in range(len(completions))
    ]
    return RewardBreakdown(total=total, components=components)
