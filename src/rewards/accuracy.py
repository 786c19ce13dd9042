"""Accuracy reward (RARL sec. 2.2.2): the answer against the sample's short answer.

closed (yes/no and other closed sets) and choice: 1.0 or 0.0 by `closed_correct` / `choice_correct`;
open: BERTScore F1, the best over the sample's references (VQA-Med lists alternatives).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from src.data.sample import Sample
from src.rewards.answers import choice_correct, closed_correct, parse_completion

if TYPE_CHECKING:  # only for annotations: importing it loads torch and transformers
    from src.rewards.bertscore import BertScorer


def accuracy_rewards(predictions: Sequence[str], samples: Sequence[Sample], scorer: BertScorer | None) -> list[float]:
    """Accuracy reward of each prediction, all open-question pairs scored in ONE scorer call.

    predictions: completions, or answers already taken out of them (parsing is idempotent): the
                 text scored is `parse_completion(p).answer_text`. `scorer` may be None only when no
                 sample is open.
    """
    if len(predictions) != len(samples):
        raise ValueError(f"{len(predictions)} predictions but {len(samples)} samples")
    answers = [parse_completion(prediction).answer_text for prediction in predictions]
    rewards = [0.0] * len(samples)
    open_pairs = []  # (item index, answer, reference): every reference of every open item
    for k, (answer, sample) in enumerate(zip(answers, samples)):
        if sample.answer_type == "closed":
            rewards[k] = float(closed_correct(answer, sample))
        elif sample.answer_type == "choice":
            rewards[k] = float(choice_correct(answer, sample))
        elif sample.answer_type == "open":
            open_pairs += [(k, answer, reference) for reference in sample.references]
        else:
            raise ValueError(f"sample {sample.id}: unknown answer_type {sample.answer_type!r}")
    if open_pairs:
        if scorer is None:
            raise ValueError("open questions need a BertScorer (load_bertscorer())")
        f1 = scorer.score([answer for _, answer, _ in open_pairs], [ref for _, _, ref in open_pairs])
        for (k, _, _), value in zip(open_pairs, f1):
            rewards[k] = max(rewards[k], value)
    return rewards


def accuracy_reward(prediction: str, sample: Sample, scorer: BertScorer | None = None) -> float:
    """Accuracy reward of one prediction (see `accuracy_rewards`)."""
    return accuracy_rewards([prediction], [sample], scorer)[0]
