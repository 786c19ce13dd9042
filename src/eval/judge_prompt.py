"""The LLM-as-judge prompt of the paper (Appendix B) and a forgiving parser for the judge's reply.

What the judge sees, for one prediction record (see `judge_prompt`):
  Question:     the dataset question; for multiple choice, followed by the lettered options unless
                the question already lists them (CV-Bench's does).
  Ground truth: "Reasoning: <reference reasoning>\nAnswer: <reference answer>" where the sample has an
                annotated reasoning (the paper's own test set), otherwise "Answer: <reference answer>";
                alternative correct answers (VQA-Med 2019's `#` list) follow as "(also correct: a; b)".
  Prediction:   "Reasoning: <text inside <think>>\nAnswer: <text inside <answer>>", with "(none)" for a
                missing think; a completion without tags is its whole text as the answer.
The judge returns reasoning_score and prediction_score; reasoning_score is only read for samples with
a reference reasoning (the paper scores reasoning on its own test set only, sec. 3.2).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

# Appendix B, verbatim apart from line breaks; the paper's listing ends at the output structure,
# so the three inputs are appended below it under the names the task sentence uses.
JUDGE_INSTRUCTIONS = """Task:
You are given a question, a ground truth, and a prediction in medical analysis. Evaluate the model prediction for its relevance, accuracy, and alignment with the ground truth.
Reasoning Scoring: if the reasoning of the prediction is similar to ground truth, returning 1, otherwise returning 0.
Prediction score: if the final prediction is similar to ground truth, returning 1, otherwise returning 0.
Output structure:
{
    "evaluation": Provide a concise justification sentence explaining why you rated the score.
    "reasoning_score": reasoning score
    "prediction_score": prediction score
}"""


def judge_prompt(record: dict) -> str:
    """The full judge prompt for one prediction record (a line of predictions/*.jsonl)."""
    return (
        f"{JUDGE_INSTRUCTIONS}\n\n"
        f"Question: {_question_text(record)}\n"
        f"Ground truth: {_ground_truth_text(record)}\n"
        f"Prediction: {_prediction_text(record)}"
    )


def _question_text(record: dict) -> str:
    if not record["choices"] or "(A)" in record["question"]:
        return record["question"]
    options = " ".join(f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(record["choices"]))
    return f"{record['question']}\nOptions: {options}"


def _ground_truth_text(record: dict) -> str:
    answer = record["reference"]
    if record["alternatives"]:
        answer += f" (also correct: {'; '.join(record['alternatives'])})"
    if record["reasoning_reference"]:
        return f"Reasoning: {record['reasoning_reference']}\nAnswer: {answer}"
    return f"Answer: {answer}"


def _prediction_text(record: dict) -> str:
    return f"Reasoning: {record['think'] or '(none)'}\nAnswer: {record['answer']}"


@dataclass(frozen=True)
class Judgment:
    """A parsed judge reply; reasoning_score is None when the reply has none."""

    evaluation: str
    reasoning_score: int | None
    prediction_score: int


class UnparseableReply(ValueError):
    """The judge's reply holds no usable prediction_score."""


_TRUE = {"1", "1.0", "yes", "true", "correct"}
_FALSE = {"0", "0.0", "no", "false", "incorrect"}


def parse_judgment(reply: str, require_reasoning: bool = False) -> Judgment:
    """Read {evaluation, reasoning_score, prediction_score} from a judge reply.

    Accepts the JSON object anywhere in the text (code fences, prose before or after), and, when the
    object is not valid JSON (the paper's own "Output structure" has no commas), the `"key": value`
    pairs themselves. Scores may be 0/1, 0.0/1.0, true/false or the strings "1", "0", "yes", "no".
    Raises UnparseableReply when no binary prediction_score can be read, or no reasoning_score where
    `require_reasoning` (the prompt carried a reference reasoning).
    """
    fields = _first_json_object(reply) or _key_value_pairs(reply)
    for name in ("prediction_score", "reasoning_score") if require_reasoning else ("prediction_score",):
        if name not in fields:
            raise UnparseableReply(f"no {name} in reply: {reply[:200]!r}")
    reasoning = fields.get("reasoning_score")
    return Judgment(
        evaluation=str(fields.get("evaluation", "")).strip(),
        reasoning_score=None if reasoning is None else _binary(reasoning, "reasoning_score"),
        prediction_score=_binary(fields["prediction_score"], "prediction_score"),
    )


def _first_json_object(text: str) -> dict:
    """The first JSON object in `text` that has a prediction_score, or {}."""
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and "prediction_score" in value:
            return value
    return {}


_PAIR = re.compile(r'"?(evaluation|reasoning_score|prediction_score)"?\s*:\s*("(?:[^"\\]|\\.)*"|[^,}\n]+)')


def _key_value_pairs(text: str) -> dict:
    """`"key": value` pairs of the three judge fields, read line by line from malformed JSON."""
    return {key: value.strip().strip('"') for key, value in _PAIR.findall(text)}


def _binary(value: object, name: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    raise UnparseableReply(f"{name} is not 0 or 1: {value!r}")
