"""The four RARL rewards (sec. 2.2.2) and their weighted total, with each component kept for logging.

Each reward is a pure function of the completion text (and the sample), one value per completion:

    format     1.0 for exactly `<think>...</think><answer>...</answer>`, 0.1 when the tags are there but
               not in that form, 0.0 without any of them;
    length     min(0.001 x completion tokens, 1.0): longer completions earn up to 1.0, reached at 1,000;
    accuracy   the answer against the sample's short answer: closed (yes/no and other closed sets) and
               choice 1.0 or 0.0 by `closed_correct` / `choice_correct`; open the best score over the
               sample's references (VQA-Med lists alternatives) by the chosen open-answer score: BERTScore
               F1 (the paper's) or the clinical score (src/rewards/open_answers.py);
    reasoning  the "R" of RARL (sec. 2.2.2, 3.3): does the `<think>` text agree with the annotated
               reference reasoning? The paper gives no formula; this is BERTScore F1 between the two.
               Samples without a reasoning annotation get None: the reward is excluded, not zero.

    total_i = w_format * format_i + w_length * length_i + w_accuracy * accuracy_i
              + w_reasoning * reasoning_i      (the last term only where reasoning_i is not None)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from src.data.sample import Sample
from src.rewards.answers import TAGS, choice_correct, closed_correct, parse_completion
from src.rewards.open_answers import open_answer_scores

if TYPE_CHECKING:  # only for annotations: importing it loads torch and transformers
    from src.rewards.bertscore import BertScorer


_EXACT_RE = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)


def format_reward(completion: str) -> float:
    """1.0 for exactly one `<think>` block then one `<answer>` block, both non-empty, with only
    whitespace around them; 0.1 when any of the four tags appears but not in that form (nested or
    repeated tags, answer before think, unclosed tags, an empty block, text outside the blocks);
    0.0 when none of the tags appears. Tags are matched exactly: `<Think>` is not a tag.
    """
    counts = [completion.count(tag) for tag in TAGS]
    if not any(counts):
        return 0.0
    if counts != [1, 1, 1, 1]:  # a tag missing, repeated or nested
        return 0.1
    match = _EXACT_RE.fullmatch(completion)
    return 1.0 if match and match.group(1).strip() and match.group(2).strip() else 0.1


def length_reward(num_tokens: int) -> float:
    """min(0.001 x num_tokens, 1.0), num_tokens counted by the policy's tokenizer (the completion
    length the training loop already has). Computed as num_tokens / 1000 so 999 gives exactly 0.999.
    """
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    return min(num_tokens / 1000, 1.0)


def accuracy_rewards(predictions: Sequence[str], samples: Sequence[Sample], scorer: BertScorer | None,
                     open_answer_score: str = "bertscore") -> list[float]:
    """Accuracy reward of each prediction, all open-question pairs scored in ONE scorer call.

    predictions:       completions, or answers already taken out of them (parsing is idempotent): the
                       text scored is `parse_completion(p).answer_text`. `scorer` may be None only when
                       no sample is open.
    open_answer_score: "bertscore" (the paper's) or "clinical" (open_answers.METHODS).
    """
    if len(predictions) != len(samples):
        raise ValueError(f"{len(predictions)} predictions but {len(samples)} samples")
    answers = [parse_completion(prediction).answer_text for prediction in predictions]
    rewards = [0.0] * len(samples)
    open_items = []  # indices of the open questions, scored together below
    for k, (answer, sample) in enumerate(zip(answers, samples)):
        if sample.answer_type == "closed":
            rewards[k] = float(closed_correct(answer, sample))
        elif sample.answer_type == "choice":
            rewards[k] = float(choice_correct(answer, sample))
        elif sample.answer_type == "open":
            open_items.append(k)
        else:
            raise ValueError(f"sample {sample.id}: unknown answer_type {sample.answer_type!r}")
    if open_items:
        if scorer is None:
            raise ValueError("open questions need a BertScorer (load_bertscorer())")
        scores = open_answer_scores([answers[k] for k in open_items], [samples[k].references for k in open_items],
                                    scorer, open_answer_score)
        for k, value in zip(open_items, scores):
            rewards[k] = value
    return rewards


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
