"""Metrics that need no judge, computed from prediction records (lines of predictions/*.jsonl).

closed accuracy    correct / ALL closed questions. A prediction that matches nothing ("maybe", "yes and
                   no", an empty answer) counts as wrong and stays in the denominator; a popular
                   evaluator drops unmatched yes/no predictions from it and so overstates accuracy.
                   Matching: src.rewards.answers.closed_correct (the accuracy reward's own rule).
open token recall  |reference tokens ∩ prediction tokens| / |reference tokens| over the sets of
                   normalised words (normalize_text), best over the alternative references.
open exact match   normalised prediction equals a normalised reference.
open BERTScore F1  between the answer text and each reference, best over references.
open side errors   answers whose side or position words contradict every reference ("left lung" for
                   "right lung", "upper" for "lower": src.rewards.open_answers.side_error), as a count
                   and a rate over all open questions; side_questions counts the open questions whose
                   reference names a side or position (where such an error is possible).
open clinical      with open_answer_score="clinical": the clinical score, best over references
                   (src.rewards.open_answers; docs/REWARDS.md).
choice accuracy    the extracted option letter equals the reference letter (choice_correct); in total
                   over all questions pooled (how the paper's Table 2 total relates to its per-task
                   columns on CV-Bench's 788/650/600/600 questions).
by task            closed accuracy, open exact match, side-error rate (and clinical score) and choice
                   accuracy also per `task` (question kind).
reasoning BERTScore F1 between the <think> text and the reference reasoning, where one exists; a
                   missing or empty think scores 0.
format rate        fraction of completions in exactly the <think>...</think><answer>...</answer> form
                   (format reward 1.0).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Protocol, Sequence

from src.eval.predictions import record_sample
from src.rewards.answers import choice_correct, closed_correct, normalize_text
from src.rewards.open_answers import best_bertscore, names_position, open_answer_scores, side_error
from src.rewards.total import format_reward


class Scorer(Protocol):
    model_name: str

    def score(self, candidates: list[str], references: list[str]) -> list[float]:
        """BERTScore F1 of each candidate against the reference at the same index."""


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def token_recall(prediction: str, references: Sequence[str]) -> float:
    """Best over references of the fraction of the reference's distinct words found in the prediction.

    "left lung" vs prediction "the lung": reference words {left, lung}, found {lung} -> 0.5.
    A reference with no words after normalisation contributes 0.
    """
    predicted = set(normalize_text(prediction).split())
    recalls = [len(words & predicted) / len(words)
               for words in (set(normalize_text(r).split()) for r in references) if words]
    return max(recalls, default=0.0)


def exact_match(prediction: str, references: Sequence[str]) -> bool:
    """Whether the normalised prediction equals some normalised reference (never for an empty one)."""
    predicted = normalize_text(prediction)
    return bool(predicted) and any(predicted == normalize_text(r) for r in references)


def by_task(records: list[dict], values: dict[str, Sequence[float]]) -> dict:
    """{task: {"n": questions, name: mean of their values for each name}} over the records that carry a task."""
    grouped: dict[str, list[int]] = defaultdict(list)
    for k, record in enumerate(records):
        if record["task"]:
            grouped[record["task"]].append(k)
    return {task: {"n": len(rows), **{name: mean([column[k] for k in rows]) for name, column in values.items()}}
            for task, rows in sorted(grouped.items())}


def closed_metrics(records: list[dict]) -> dict:
    correct = [closed_correct(r["answer"], record_sample(r)) for r in records]
    return {"n": len(records), "accuracy": mean(correct), "by_task": by_task(records, {"accuracy": correct})}


def open_metrics(records: list[dict], scorer: Scorer, open_answer_score: str = "bertscore") -> dict:
    """Open-question metrics; open_answer_score="clinical" adds the clinical score (one more scorer call)."""
    references = [[r["reference"], *r["alternatives"]] for r in records]
    answers = [r["answer"] for r in records]
    exact = [exact_match(a, refs) for a, refs in zip(answers, references)]
    side = [side_error(a, refs) for a, refs in zip(answers, references)]
    metrics = {
        "n": len(records),
        "token_recall": mean([token_recall(a, refs) for a, refs in zip(answers, references)]),
        "exact_match": mean(exact),
        "bertscore_f1": mean(best_bertscore(scorer, answers, references)),
        "side_errors": sum(side),
        "side_error_rate": mean(side),
        "side_questions": sum(names_position(refs) for refs in references),
    }
    per_task = {"exact_match": exact, "side_error_rate": side}
    if open_answer_score == "clinical":
        per_task["clinical"] = open_answer_scores(answers, references, scorer, "clinical")
        metrics["clinical"] = mean(per_task["clinical"])
    return {**metrics, "by_task": by_task(records, per_task)}


def choice_metrics(records: list[dict]) -> dict:
    correct = [choice_correct(r["answer"], record_sample(r)) for r in records]
    return {"n": len(records), "accuracy": mean(correct), "by_task": by_task(records, {"accuracy": correct})}


def reasoning_metrics(records: list[dict], scorer: Scorer) -> dict:
    thinks = [r["think"] or "" for r in records]
    scores = best_bertscore(scorer, thinks, [[r["reasoning_reference"]] for r in records])
    return {"n": len(records), "bertscore_f1": mean(scores)}


def format_rate(records: list[dict]) -> float | None:
    return mean([format_reward(r["completion"]) == 1.0 for r in records])


def no_judge_metrics(records: list[dict], scorer: Scorer, open_answer_score: str = "bertscore") -> dict:
    """All judge-free metrics of one dataset under one prompt; a section is present only if non-empty."""
    metrics: dict = {"n": len(records), "format_rate": format_rate(records)}
    closed = [r for r in records if r["answer_type"] == "closed"]
    open_ = [r for r in records if r["answer_type"] == "open"]
    choice = [r for r in records if r["answer_type"] == "choice"]
    reasoned = [r for r in records if r["reasoning_reference"]]
    if closed:
        metrics["closed"] = closed_metrics(closed)
    if open_:
        metrics["open"] = open_metrics(open_, scorer, open_answer_score)
    if choice:
        metrics["choice"] = choice_metrics(choice)
    if reasoned:
        metrics["reasoning"] = reasoning_metrics(reasoned, scorer)
    return metrics
