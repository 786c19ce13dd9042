"""The one record every dataset loader returns, and every reward, prompt and metric reads."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

AnswerType = Literal["closed", "open", "choice"]


@dataclass(frozen=True)
class Sample:
    """One visual question with its reference answer (and reasoning, where annotated).

    image:        a file path, or the encoded image bytes (parquet exports carry bytes).
    answer:       the short answer ("yes", "left", "(A)" for multiple choice).
    alternatives: further answers that also count as correct (VQA-Med 2019's `#`-separated ones);
                  `answer` itself is not repeated here.
    reasoning:    the reference reasoning text, or None where the dataset has no annotation.
    answer_type:  'closed' (yes/no and other closed sets), 'open' (free text) or 'choice'
                  (multiple choice; `choices` holds the option texts in letter order A, B, ...).
    modality:     imaging modality ("MRI", "CT", "X-ray", ...) where known: used to stratify subsets.
    task:         sub-task for per-task scores (CV-Bench: Count, Relation, Depth, Distance).
    """

    id: str
    dataset: str
    image: str | bytes
    question: str
    answer: str
    answer_type: AnswerType
    reasoning: str | None = None
    choices: tuple[str, ...] = ()
    alternatives: tuple[str, ...] = ()
    modality: str | None = None
    task: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def references(self) -> tuple[str, ...]:
        """Every answer that counts as correct: the answer first, then its alternatives."""
        return (self.answer, *self.alternatives)
