"""Parsing and matching helpers: hand-picked cases for every rule in src/rewards/answers.py."""
import pytest

from src.data.sample import Sample
from src.rewards.answers import (
    choice_correct, choice_letter, closed_correct, normalize_text, parse_completion, yes_no,
)

HUGE = "lesion " * 15_000  # 105,000 characters
GARBAGE = bytes(range(256)).decode("latin-1")
ODD_TEXTS = ["", "   ", HUGE, GARBAGE, "<answer>", "</think></think><answer>"]


def sample(answer, answer_type="closed", alternatives=(), choices=()):
    return Sample(id="s", dataset="test", image="img.jpg", question="q?", answer=answer,
                  answer_type=answer_type, alternatives=alternatives, choices=choices)


@pytest.mark.parametrize("completion, think, answer, answer_text", [
    ("<think> look </think><answer> Yes </answer>", "look", "Yes", "Yes"),
    ("Yes, there is.", None, None, "Yes, there is."),
    ("<answer>left</answer>", None, "left", "left"),
    # no answer pair: the whole completion minus tags is what gets scored
    ("<think>it is round</think> yes", "it is round", None, "it is round yes"),
    # first pair wins; stray tags inside the answer are removed from answer_text only
    ("<answer>A</answer><answer>B</answer>", None, "A", "A"),
    ("<answer><think>B</answer>", None, "<think>B", "B"),
    ("<think>unclosed <answer>no</answer>", None, "no", "no"),
    ("<answer></answer>", None, "", ""),
])
def test_parse_completion(completion, think, answer, answer_text):
    parsed = parse_completion(completion)
    assert (parsed.think, parsed.answer, parsed.answer_text) == (think, answer, answer_text)


@pytest.mark.parametrize("text, expected", [
    ("The X-ray.", "xray"), ("  An   MRI! ", "mri"), ("Left", "left"), ("a", ""),
    ("Crohn's disease", "crohns disease"), ("¿Qué?", "qué"),
])
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("yes", "yes"), ("Yes.", "yes"), ("Yes, there is a lesion.", "yes"), ("YES!", "yes"),
    ("No.", "no"), ("no, there is no fracture", "no"),
    ("yes and no", None), ("Yes. No.", None), ("maybe", None), ("It is not enlarged", None),
    ("eyes", None), ("", None),  # "eyes" contains "yes" but is not the word
])
def test_yes_no(text, expected):
    assert yes_no(text) == expected


SIDES = ("left", "right", "neither")


@pytest.mark.parametrize("text, expected", [
    ("A", "A"), ("(A)", "A"), ("A.", "A"), ("[C]", "C"), ("B)", "B"),
    ("Answer: B", "B"), ("the answer is (C)", "C"), ("The answer is C.", "C"),
    ("(B) Left", "B"),  # the explicit letter wins over the option text ("left" is A)
    ("B. right", "B"), ("I pick (C) because both are equal", "C"),
    ("right", "B"), ("Right.", "B"), ("The right one", "B"),  # option text -> its letter
    ("a lesion", None),  # lowercase article, not option A
    ("Answer: D", None),  # only three options
    ("left or right", None),  # two options named: ambiguous
    ("", None),
])
def test_choice_letter(text, expected):
    assert choice_letter(text, SIDES) == expected


def test_choice_letter_counts_and_unknown_choices():
    assert choice_letter("There are 2 cars", ("1", "2", "3")) == "B"
    assert choice_letter("(E)", ()) == "E"  # choices unknown: any letter A-Z


@pytest.mark.parametrize("prediction, expected", [
    ("Yes", True), ("Yes, there is a lesion.", True), ("yes.", True),
    ("No.", False), ("yes and no", False), ("", False),
])
def test_closed_yes_no(prediction, expected):
    assert closed_correct(prediction, sample("yes")) is expected


@pytest.mark.parametrize("prediction, expected", [
    ("left", True), ("Left.", True), ("the left", True), ("  LEFT ", True),
    ("left side", False), ("right", False), ("", False), ("yes", False),
])
def test_closed_exact_match(prediction, expected):
    assert closed_correct(prediction, sample("left")) is expected


def test_closed_alternatives():
    vqa_med = sample("ct", alternatives=("computed tomography", "ct scan"))
    assert closed_correct("Computed tomography.", vqa_med)
    assert closed_correct("CT scan", vqa_med)
    assert not closed_correct("mri", vqa_med)


@pytest.mark.parametrize("prediction, expected", [
    ("(A)", True), ("A", True), ("left", True), ("Answer: A", True),
    ("B", False), ("right", False), ("", False), ("left or right", False),
])
def test_choice_correct(prediction, expected):
    assert choice_correct(prediction, sample("(A)", "choice", choices=SIDES)) is expected


@pytest.mark.parametrize("text", ODD_TEXTS)
def test_helpers_never_raise(text):
    parse_completion(text)
    assert isinstance(normalize_text(text), str)
    assert yes_no(text) in ("yes", "no", None)
    assert choice_letter(text, SIDES) in ("A", "B", "C", None)
    assert closed_correct(text, sample("yes")) in (True, False)
    assert choice_correct(text, sample("(A)", "choice", choices=SIDES)) in (True, False)
