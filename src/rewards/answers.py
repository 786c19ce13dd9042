"""Pure text helpers shared by the rewards and the evaluator: parse a completion, normalise an
answer, and decide whether a closed or multiple-choice prediction matches the sample's reference.

Nothing here raises on odd text (empty, huge, binary garbage): every helper returns a value.
"""
from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass
from typing import Sequence

from src.data.sample import Sample

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_TAG_RE = re.compile("|".join(re.escape(tag) for tag in TAGS))
_ARTICLES = frozenset({"a", "an", "the"})


@dataclass(frozen=True)
class ParsedCompletion:
    """The parts of a completion `<think>...</think><answer>...</answer>`.

    think:       content of the first complete `<think>...</think>` pair (stripped), None if absent.
    answer:      content of the first complete `<answer>...</answer>` pair (stripped), None if absent.
    answer_text: the text to score: `answer` with any stray tags removed, or, when there is no
                 answer pair, the whole completion with the four tags removed (a model that ignores
                 the format is still scored on what it said).
    """

    think: str | None
    answer: str | None
    answer_text: str


def strip_tags(text: str) -> str:
    """`text` with every `<think>`, `</think>`, `<answer>`, `</answer>` (and the whitespace around it)
    replaced by one space, then stripped."""
    return " ".join(part.strip() for part in _TAG_RE.split(text) if part.strip())


def _first_block(text: str, open_tag: str, close_tag: str) -> str | None:
    """Stripped content from the first `open_tag` to the next `close_tag`, None without both.
    str.find, not a lazy regex: a regex retries from every open tag and is quadratic on 100k of them."""
    start = text.find(open_tag)
    end = text.find(close_tag, start + len(open_tag)) if start >= 0 else -1
    return text[start + len(open_tag):end].strip() if end >= 0 else None


def parse_completion(completion: str) -> ParsedCompletion:
    """Split a completion into its think and answer parts (first complete pair of each wins).

    Tags are matched exactly (lowercase, no attributes): `<Think>` is plain text, not a tag.
    """
    think = _first_block(completion, "<think>", "</think>")
    answer = _first_block(completion, "<answer>", "</answer>")
    answer_text = strip_tags(answer if answer is not None else completion)
    return ParsedCompletion(think=think, answer=answer, answer_text=answer_text)


def _is_punctuation(char: str) -> bool:
    return char in string.punctuation or unicodedata.category(char).startswith("P")


def normalize_text(text: str) -> str:
    """SQuAD-style answer normalisation: lowercase, delete punctuation, drop the articles a/an/the,
    collapse whitespace. "The X-ray." -> "xray"; "Left " -> "left".
    """
    without_punctuation = "".join(c for c in text.lower() if not _is_punctuation(c))
    return " ".join(word for word in without_punctuation.split() if word not in _ARTICLES)


def yes_no(text: str) -> str | None:
    """'yes' or 'no' when the text says exactly one of them as a word, else None.

    "Yes, there is a lesion." -> 'yes'; "No." -> 'no'; "yes and no" -> None (both said: an answer that
    hedges is wrong); "maybe" -> None. "not" is not "no": "It is not enlarged" -> None.
    """
    words = set(re.findall(r"[a-z]+", text.lower()))
    said = [word for word in ("yes", "no") if word in words]
    return said[0] if len(said) == 1 else None


def _letters(choices: Sequence[str]) -> str:
    """Valid option letters: A.. for the given choices, all of A-Z when the choices are unknown."""
    return string.ascii_uppercase[: len(choices)] if choices else string.ascii_uppercase


# Ordered from most to least explicit; the first pattern that finds a valid letter wins.
_LETTER_PATTERNS = (
    re.compile(r"^\s*[\(\[]?([A-Z])[\)\]]?\s*[.:)]?\s*$"),  # "A", "(A)", "A.", "[A]", "A)"
    re.compile(r"(?i:answer|option|choice)\s*(?:is|:)?\s*[\(\[]?([A-Z])\b"),  # "Answer: B", "answer is (C)"
    re.compile(r"^\s*[\(\[]?([A-Z])(?:[\)\]]|[.:]\s)"),  # "(B) Left", "B. Left", "B: Left"
    re.compile(r"[\(\[]([A-Z])[\)\]]"),  # "(C)" anywhere: "I pick (C) because ..."
)


def choice_letter(text: str, choices: Sequence[str]) -> str | None:
    """The option letter a multiple-choice answer names, uppercase, or None.

    First an explicit letter ("A", "(A)", "A.", "Answer: B", "the answer is (C)", "(B) Left"): only
    uppercase letters count, so the article in "a lesion" is not option A. Then the option text: the
    option whose normalised text equals the normalised answer, else the only option whose text
    appears in the answer as whole words. Letters beyond the number of choices are ignored.
    """
    valid = _letters(choices)
    for pattern in _LETTER_PATTERNS:
        for match in pattern.finditer(text):
            if match.group(1) in valid:
                return match.group(1)
    answer = normalize_text(text)
    options = [normalize_text(choice) for choice in choices]
    if not answer:
        return None
    exact = [valid[i] for i, option in enumerate(options) if option == answer]
    if exact:
        return exact[0]
    padded = f" {answer} "
    contained = [valid[i] for i, option in enumerate(options) if option and f" {option} " in padded]
    return contained[0] if len(contained) == 1 else None


def closed_correct(prediction: str, sample: Sample) -> bool:
    """Whether a closed-question prediction matches any reference of the sample.

    A yes/no reference is matched by `yes_no` (so "Yes, there is." is right and "yes and no" wrong);
    any other reference ("left", "mri") by normalised exact match ("Left." and "the left" match
    "left"). An empty prediction is never correct.
    """
    predicted = normalize_text(prediction)
    if not predicted:
        return False
    for reference in sample.references:
        expected = normalize_text(reference)
        if expected in ("yes", "no"):
            if yes_no(prediction) == expected:
                return True
        elif expected and predicted == expected:
            return True
    return False


def choice_correct(prediction: str, sample: Sample) -> bool:
    """Whether a multiple-choice prediction names the reference option ("(A)") of the sample."""
    predicted = choice_letter(prediction, sample.choices)
    if predicted is None:
        return False
    return any(choice_letter(reference, sample.choices) == predicted for reference in sample.references)
