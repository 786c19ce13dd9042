"""Accuracy reward (RARL sec. 2.2.2): the answer against the sample's short answer.

closed (yes/no and other closed sets) and choice: 1.0 or 0.0 by `closed_correct` / `choice_correct`;
open: the best score over the sample's references (VQA-Med lists alternatives) by the chosen open-answer
score: BERTScore F1 (the paper's) or the clinical score (src/rewards/open_answers.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from src.data.sample import Sample
from src.rewards.answers import choice_correct, closed_correct, parse_completion
from src.rewards.open_answers import open_answer_scores

if TYPE_CHECKING:  # only for annotations: importing it loads torch and transformers
    from src.rewards.bertscore import BertScorer


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


def accuracy_reward(prediction: str, sample: Sample, scorer: BertScorer | None = None,
                    open_answer_score: str = "bertscore") -> float:
    """Accuracy reward of one prediction (see `accuracy_rewards`)."""
    return accuracy_rewards([prediction], [sample], scorer, open_answer_score)[0]
