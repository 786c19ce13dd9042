"""Open answers scored two ways: by BERTScore F1 (the paper's), or as a clinician would ("clinical").

    open_answer_scores(candidates, references, scorer, method) -> one float in [0, 1] per candidate

`references[i]` lists the answers that count as right for candidate i (VQA-Med's alternatives); a
candidate takes its best score over them, and an empty candidate scores 0.

bertscore  BERTScore F1 (paper sec. 2.2.2). Tolerant of wording, and almost blind to laterality: with
           all-MiniLM-L6-v2 "Left Lung" for "Right Lung" scores 0.885 (docs/REWARDS.md has the figures).
clinical   both answers are first read through RULES (below): lowercase, no punctuation, no articles or
           lead-ins ("It is", "on the"), singular forms, number words as digits, equivalent terms as one
           (TERMS: "computed tomography" -> "ct", "X-ray" -> "xray"), word order aside. Then, in order:
             1. the same reading                         -> 1.0
             2. a contradiction on an axis (AXES): the   -> 0.0  ("left lung" for "right lung", "upper" for
                two name different values of it                  "lower", "large bowel" for "small bowel",
                                                                 "CT" for "MRI", "3" for "2")
             3. otherwise BERTScore rescaled             -> max(0, (F1 - b) / (1 - b)), halved when the
                                                            reference names an axis the answer leaves out
           b is the scorer's own mean F1 between unrelated answers (BASELINE_ANSWERS), so 0 means "no
           closer than an unrelated answer" whatever the model: BERTScore's baseline rescaling (Zhang et
           al., 2020) with medical answers as the unrelated pairs. The halving makes leaving the side out
           earn less than guessing it: a coin-flip guess averages 0.5.
           Multi-part answers ("Lung, Spinal Cord", "heart and liver") are sets: parts are split at
           , ; / and "and"; each part is scored against each reference part as above, and the answer
           gets the F1 of the two sets (precision: each answer part's best match; recall: each
           reference part's best match), so naming one of two organs earns partial credit. A
           contradiction between the whole answers (their values pooled over parts) still scores 0.

The rules are data: extend them by building a `ClinicalRules` with more TERMS or AXES and passing it
as `rules=`. tests/test_rewards_open_answers.py states the intended behaviour case by case.
"""
from __future__ import annotations

import re
import unicodedata
import weakref
from dataclasses import dataclass, field
from functools import cached_property
from itertools import combinations
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:  # only for annotations: importing it loads torch and transformers
    from src.rewards.bertscore import BertScorer

METHODS = ("bertscore", "clinical")


# ---- the rules ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Axis:
    """One property whose values exclude each other: answers that name different values contradict.

    values:     canonical value -> the words that name it (single words, read after TERMS).
    positional: a side or position axis: its contradictions count as side errors (evaluate.py).
    both:       the value that means all the others at once ("bilateral"): an answer naming left and
                right names it.
    """

    name: str
    values: dict[str, tuple[str, ...]]
    positional: bool = False
    both: str | None = None


NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty")
ORDINAL_WORDS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")

TERMS: dict[str, tuple[str, ...]] = {
    # canonical form: the phrases read as it (matched on whole words, singular, longest phrase first)
    "ct": ("computed tomography", "cat scan"),
    "mri": ("mr", "magnetic resonance imaging", "magnetic resonance", "nmr"),
    "xray": ("x ray", "xr", "radiograph", "radiography", "plain film", "plain radiograph", "roentgenogram"),
    "chest xray": ("cxr",),
    "ultrasound": ("us", "sonography", "ultrasonography", "sonogram", "ultrasonogram"),
    "axial": ("transverse", "transaxial"),
    "pa": ("posteroanterior", "posterior anterior"),
    "ap": ("anteroposterior", "anterior posterior"),
    "bilateral": ("bilaterally", "both side", "both", "left and right", "right and left"),
    "left": ("l", "lt"),
    "right": ("r", "rt"),
    "t1": ("t1w",),
    "t2": ("t2w",),
    "gallbladder": ("gall bladder",),
    "inferior vena cava": ("ivc",),
    "superior vena cava": ("svc",),
    "cerebrospinal fluid": ("csf",),
    **{str(n): (word,) for n, word in enumerate(NUMBER_WORDS)},
    "0": ("zero", "none"),
    **{f"{n}{'st' if n == 1 else 'nd' if n == 2 else 'rd' if n == 3 else 'th'}": (word,)
       for n, word in enumerate(ORDINAL_WORDS, start=1)},
}

AXES: tuple[Axis, ...] = (
    Axis("side", {"left": ("left",), "right": ("right",), "bilateral": ("bilateral",)}, positional=True,
         both="bilateral"),
    Axis("vertical", {"upper": ("upper", "superior", "top", "cranial", "cephalad"),
                      "lower": ("lower", "inferior", "bottom", "caudal")}, positional=True),
    Axis("front-back", {"anterior": ("anterior", "ventral"), "posterior": ("posterior", "dorsal")}, positional=True),
    Axis("medial-lateral", {"medial": ("medial",), "lateral": ("lateral",)}, positional=True),
    Axis("proximal-distal", {"proximal": ("proximal",), "distal": ("distal",)}, positional=True),
    Axis("projection", {"pa": ("pa",), "ap": ("ap",)}, positional=True),
    Axis("size", {"large": ("large", "big", "enlarged", "enlargement"), "small": ("small", "tiny")}),
    Axis("modality", {"ct": ("ct",), "mri": ("mri",), "xray": ("xray",), "ultrasound": ("ultrasound",)}),
    Axis("plane", {"axial": ("axial",), "coronal": ("coronal",), "sagittal": ("sagittal",)}),
    Axis("weighting", {"t1": ("t1",), "t2": ("t2",)}),
    Axis("brain lobe", {lobe: (lobe,) for lobe in ("frontal", "parietal", "temporal", "occipital")}),
)
NUMBER_AXIS = "number"
"""Numbers are an axis of their own, built in: "2" for "3" contradicts, "2" and "two" agree."""

ARTICLES = ("a", "an", "the")
LEAD_INS = ("it is", "its", "this is", "that is", "these are", "there is", "there are", "answer is", "answer",
            "in", "on", "at")
"""Dropped from the start of an answer (after the articles): "It is on the left." reads as "left"."""
FILLERS = ("plane", "view", "scan", "image", "imaging", "film", "side", "sided", "weighted", "sequence", "patient")
"""Dropped anywhere (compared in singular form): "axial plane" is "axial", "right side" is "right",
"T2-weighted" is "t2", "the patient's left" is "left"."""

MAX_NUMBER_DIGITS = 30
"""Digits of the longest number read as a number (a size, a count, a year); a longer run of digits is
read as a word, kept as written: it names no value on the number axis."""

MAX_PARTS = 16
"""Parts read per answer; more are left out (so a 512-token list of guesses costs at most 16 x the
reference's parts BERTScore pairs, and still scores low: most of its 16 parts match nothing)."""
OMISSION_FACTOR = 0.5
"""Multiplies the rescaled BERTScore of an answer that leaves out an axis the reference names."""

BASELINE_ANSWERS: dict[str, tuple[str, ...]] = {
    # Short answers of medical VQA in seven kinds; b is the mean F1 over pairs of different kinds.
    "modality": ("ct", "mri", "x-ray", "ultrasound"),
    "plane": ("axial", "coronal", "sagittal"),
    "organ": ("liver", "brain", "kidney", "heart", "spleen"),
    "finding": ("pneumothorax", "pleural effusion", "cardiomegaly", "hydrocephalus", "fracture"),
    "location": ("right upper lobe", "left lower quadrant", "posterior fossa"),
    "count": ("1", "2", "3"),
    "attribute": ("hypodense", "ring enhancing", "calcified"),
}


@dataclass(frozen=True)
class ClinicalRules:
    """What the clinical score reads as equal (terms, articles, lead-ins, fillers) and as contradicting (axes)."""

    terms: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(TERMS))
    axes: tuple[Axis, ...] = AXES
    articles: tuple[str, ...] = ARTICLES
    lead_ins: tuple[str, ...] = LEAD_INS
    fillers: tuple[str, ...] = FILLERS

    @cached_property
    def phrases(self) -> dict[tuple[str, ...], tuple[str, ...]]:
        """Singular phrase -> canonical words, the canonical form itself included."""
        table = {}
        for canonical, phrases in self.terms.items():
            for phrase in (canonical, *phrases):
                table[tuple(singular(w) for w in phrase.split())] = tuple(canonical.split())
        return table

    @cached_property
    def longest_phrase(self) -> int:
        return max(len(phrase) for phrase in self.phrases)

    @cached_property
    def axis_words(self) -> dict[str, tuple[Axis, str]]:
        """Word -> (its axis, the value it names)."""
        return {word: (axis, value) for axis in self.axes for value, words in axis.values.items() for word in words}

    @cached_property
    def lead_in_words(self) -> tuple[tuple[str, ...], ...]:
        return tuple(sorted((tuple(p.split()) for p in self.lead_ins), key=len, reverse=True))


RULES = ClinicalRules()


# ---- reading an answer ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reading:
    """An answer (or one part of it) as the rules read it.

    text:   the canonical words, what BERTScore compares.
    key:    the words in singular form, sorted: two readings with equal keys are the same answer
            ("T2-weighted MRI" and "MRI, T2 weighted", "upper left" and "left upper").
    values: axis name -> the values the answer names on it ("number" included); axes it does not
            name are absent.
    """

    text: str
    key: tuple[str, ...]
    values: dict[str, frozenset[str]]


@dataclass(frozen=True)
class Answer:
    """A whole answer: its parts (one for a single-part answer) and the whole (the parts pooled)."""

    whole: Reading
    parts: tuple[Reading, ...]


_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?|\d+(?:st|nd|rd|th)")
_TOKEN_RE = re.compile(r"\d+\.\d+|[a-z0-9]+")
_NUMBER_UNIT_RE = re.compile(r"\b(\d+(?:\.\d+)?)(?!(?:st|nd|rd|th)\b)([a-z]+)")  # "5mm" -> "5 mm", not "3rd"
_PART_SEPARATORS = re.compile(r"[,;/]")


def singular(word: str) -> str:
    """A light English singular: lungs -> lung, opacities -> opacity, masses -> mass; "pancreas",
    "sinus", "metastasis" stay. Used only to compare words, never shown."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "xes", "ches", "shes", "uses")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is", "as")):
        return word[:-1]
    return word


def _number(word: str) -> str | None:
    """The number a word states ("3", "3.4", "3rd"), written one way ("03" -> "3", "3.40" -> "3.4"),
    else None; so is a word of more than MAX_NUMBER_DIGITS digits. Digits are compared as text, never
    converted: any length reads in time linear in it."""
    if sum(c.isdigit() for c in word) > MAX_NUMBER_DIGITS or not _NUMBER_RE.fullmatch(word):
        return None
    if word[-1].isalpha():
        return word
    whole, _, fraction = word.partition(".")
    whole, fraction = whole.lstrip("0") or "0", fraction.rstrip("0")
    return f"{whole}.{fraction}" if fraction else whole


def _words(text: str) -> list[str]:
    """Lowercase ASCII words and numbers; apostrophes vanish ("patient's" -> "patients"), all other
    punctuation separates ("x-ray" -> "x ray")."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    text = _NUMBER_UNIT_RE.sub(r"\1 \2", text.replace("'", ""))
    return _TOKEN_RE.findall(text)


def _canonical(words: list[str], rules: ClinicalRules) -> list[str]:
    """Words with every phrase of TERMS replaced by its canonical form (longest match first, compared
    in singular form), fillers dropped, numbers written one way and immediate repeats collapsed
    ("plain film x-ray" -> "xray")."""
    stems, out, i = [singular(w) for w in words], [], 0
    while i < len(words):
        for n in range(min(rules.longest_phrase, len(words) - i), 0, -1):
            canonical = rules.phrases.get(tuple(stems[i:i + n]))
            if canonical is not None:
                out.extend(canonical)
                i += n
                break
        else:
            out.append(words[i])
            i += 1
    out = [_number(w) or w for w in out if singular(w) not in rules.fillers]
    return [w for k, w in enumerate(out) if k == 0 or w != out[k - 1]]


def _values(words: Sequence[str], rules: ClinicalRules) -> dict[str, frozenset[str]]:
    """Axis name -> the values the words name (with an axis's `both` value standing for all of them)."""
    named: dict[str, set[str]] = {}
    for word in words:
        number = _number(word)
        if number is not None:
            named.setdefault(NUMBER_AXIS, set()).add(number)
        hit = rules.axis_words.get(word) or rules.axis_words.get(singular(word))
        if hit:
            named.setdefault(hit[0].name, set()).add(hit[1])
    for axis in rules.axes:
        values = named.get(axis.name)
        if axis.both and values and (axis.both in values or values >= set(axis.values) - {axis.both}):
            named[axis.name] = {axis.both}
    return {name: frozenset(values) for name, values in named.items()}


def _reading(words: list[str], rules: ClinicalRules) -> Reading:
    return Reading(" ".join(words), _key(words), _values(words, rules))


def _key(words: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(singular(w) for w in words))


def read_answer(text: str, rules: ClinicalRules = RULES) -> Answer:
    """Read an answer: split into parts at , ; / and "and" (the first MAX_PARTS), each part canonical
    (see the module doc)."""
    text = re.sub(r"\bw/o\b", " without ", text, flags=re.IGNORECASE)
    text = re.sub(r"\bw/", " with ", text, flags=re.IGNORECASE).replace("&", " and ")
    parts: list[list[str]] = []
    for chunk in _PART_SEPARATORS.split(text):
        words = [w for w in _words(chunk) if w not in rules.articles]
        stripped = True
        while stripped and words:  # lead-ins, possibly several: "it is on the left"
            stripped = False
            for lead in rules.lead_in_words:
                if tuple(words[:len(lead)]) == lead and len(words) > len(lead):
                    words, stripped = words[len(lead):], True
                    break
        current: list[str] = []
        for word in _canonical(words, rules) + ["and"]:  # "left and right" became "bilateral" above
            if word == "and":
                if current:
                    parts.append(current)
                current = []
            else:
                current.append(word)
    parts = parts[:MAX_PARTS]
    readings: dict[tuple[str, ...], Reading] = {}  # a part said twice counts once
    for part in parts:
        readings.setdefault(_key(part), _reading(part, rules))
    return Answer(_reading([w for part in parts for w in part], rules), tuple(readings.values()))


# ---- scoring --------------------------------------------------------------------------------------

def contradiction(answer: Reading, reference: Reading, axes: Sequence[str] | None = None) -> str | None:
    """The first axis (of `axes`, default all) on which both name values and the values differ, else None."""
    for name, values in answer.values.items():
        if (axes is None or name in axes) and name in reference.values and reference.values[name] != values:
            return name
    return None


def _part_score(answer: Reading, reference: Reading, f1: Callable[[str, str], float]) -> float:
    if answer.key == reference.key:
        return 1.0
    if contradiction(answer, reference) is not None:
        return 0.0
    score = f1(answer.text, reference.text)
    return score * OMISSION_FACTOR if set(reference.values) - set(answer.values) else score


def _answer_score(answer: Answer, reference: Answer, f1: Callable[[str, str], float]) -> float:
    """The clinical score of one answer against one reference (module doc, steps 1-3 and sets)."""
    if not answer.parts or not reference.parts:
        return 0.0
    if answer.whole.key == reference.whole.key:
        return 1.0
    if contradiction(answer.whole, reference.whole) is not None:
        return 0.0
    if len(answer.parts) == len(reference.parts) == 1:
        return _part_score(answer.parts[0], reference.parts[0], f1)
    matrix = [[_part_score(a, r, f1) for r in reference.parts] for a in answer.parts]
    precision = sum(max(row) for row in matrix) / len(answer.parts)
    recall = sum(max(column) for column in zip(*matrix)) / len(reference.parts)
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


_BASELINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def baseline(scorer: BertScorer, rules: ClinicalRules = RULES) -> float:
    """b: the scorer's mean BERTScore F1 between unrelated answers (pairs of BASELINE_ANSWERS of
    different kinds, read as the clinical score reads them). Computed once per scorer: one call of
    ~280 short pairs."""
    try:
        return _BASELINES[scorer]
    except (KeyError, TypeError):
        pass
    items = [(kind, read_answer(text, rules).whole.text) for kind, texts in BASELINE_ANSWERS.items() for text in texts]
    pairs = [(a, b) for (kind_a, a), (kind_b, b) in combinations(items, 2) if kind_a != kind_b]
    f1 = scorer.score([a for a, _ in pairs], [b for _, b in pairs])
    value = sum(f1) / len(f1)
    try:
        _BASELINES[scorer] = value
    except TypeError:  # a scorer that cannot be weakly referenced is measured on every call
        pass
    return value


def rescale(f1: float, b: float) -> float:
    """BERTScore baseline rescaling, clipped to [0, 1]: b -> 0, 1 -> 1."""
    return min(1.0, max(0.0, (f1 - b) / max(1.0 - b, 1e-6)))


def best_bertscore(scorer: BertScorer, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Per candidate, the highest BERTScore F1 over its references; an empty candidate scores 0.

    All (candidate, reference) pairs go to the scorer in one call, so it can batch them.
    """
    pairs = [(i, c, r) for i, (c, refs) in enumerate(zip(candidates, references)) if c.strip() for r in refs]
    scores = scorer.score([c for _, c, _ in pairs], [r for _, _, r in pairs]) if pairs else []
    best = [0.0] * len(candidates)
    for (i, _, _), score in zip(pairs, scores):
        best[i] = max(best[i], score)
    return best


def clinical_scores(scorer: BertScorer, candidates: Sequence[str], references: Sequence[Sequence[str]],
                    rules: ClinicalRules = RULES) -> list[float]:
    """The clinical score of each candidate, best over its references; BERTScore in one scorer call."""
    answers = [read_answer(c, rules) for c in candidates]
    refs = [[read_answer(r, rules) for r in alternatives] for alternatives in references]

    def score_all(f1: Callable[[str, str], float]) -> list[float]:
        return [max((_answer_score(a, r, f1) for r in rs), default=0.0) for a, rs in zip(answers, refs)]

    needed: dict[tuple[str, str], float] = {}
    score_all(lambda a, r: needed.setdefault((a, r), 0.0))  # a dry run: which pairs need BERTScore
    if needed:
        pairs, b = list(needed), baseline(scorer, rules)
        f1 = scorer.score([a for a, _ in pairs], [r for _, r in pairs])
        needed = {pair: rescale(value, b) for pair, value in zip(pairs, f1)}
    return score_all(lambda a, r: needed[a, r])


def open_answer_scores(candidates: Sequence[str], references: Sequence[Sequence[str]], scorer: BertScorer,
                       method: str, rules: ClinicalRules = RULES) -> list[float]:
    """Score open answers by `method` ("bertscore" or "clinical", module doc); one float in [0, 1] each.

    references: per candidate, the answers that count as right (a candidate takes its best score).
    scorer:     a `load_bertscorer()` scorer; both methods make one batched call (clinical adds one
                more, the first time it meets a scorer: its baseline b).
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    if method == "bertscore":
        return best_bertscore(scorer, candidates, references)
    if method == "clinical":
        return clinical_scores(scorer, candidates, references, rules)
    raise ValueError(f"unknown open-answer score {method!r} (known: {', '.join(METHODS)})")


def positional_axes(rules: ClinicalRules = RULES) -> tuple[str, ...]:
    return tuple(axis.name for axis in rules.axes if axis.positional)


def side_error(candidate: str, references: Sequence[str], rules: ClinicalRules = RULES) -> bool:
    """Whether the answer's side or position words (the positional axes) contradict every reference:
    "left lung" for "right lung" or "upper lobe" for "lower lobe" is one; "lung" for "right lung" is not."""
    answer, positional = read_answer(candidate, rules).whole, positional_axes(rules)
    return bool(references) and all(contradiction(answer, read_answer(r, rules).whole, positional) is not None
                                    for r in references)


def names_position(references: Sequence[str], rules: ClinicalRules = RULES) -> bool:
    """Whether some reference names a side or position: the questions a side error is possible on."""
    positional = positional_axes(rules)
    return any(name in positional for r in references for name in read_answer(r, rules).whole.values)
