"""BERTScore against the clinical score on real open answers of medical VQA test sets.

    python -m benchmarks.open_answers                                      # the bundled VQA-RAD fixture
    python -m benchmarks.open_answers --data "VQA_RAD Dataset Public.json" --data Slake1.0/test.json
    python -m benchmarks.open_answers --data "VQA_RAD Dataset Public.json" --write-fixture tests/fixtures/vqa_rad_open_test.json

Reads the open questions of each file (VQA-RAD's official release or testset.json: the test questions,
answer_type OPEN; SLAKE's test.json: English, OPEN; or a fixture this script wrote) and builds pairs of
(candidate, reference) answers from their reference answers, no model involved:

  wrong        two different answers to questions of the same kind (VQA-RAD question_type, SLAKE
               content_type), each unordered pair of distinct answers once, the alphabetically first
               as the candidate. Pairs the clinical rules read as the same answer ("Axial" and "axial
               plane", "x-ray" and "XR") are not wrong: they are listed as `equivalent` instead.
  side         two different answers, of any kind, that are the same words apart from side, position or
               size words, and whose side, position or size words differ ("Left Lung" / "Right Lung",
               "Upper Right Lobe" / "Left Lobe", "Large Bowel" / "Small Bowel").
  side-flipped every answer with side, position or size words, each of them turned into its opposite
               (left <-> right, upper <-> lower, anterior <-> posterior, superior <-> inferior, medial <->
               lateral, proximal <-> distal, large <-> small), against the answer itself.
  paraphrase   every distinct answer against itself lowercased, in title case, with "the" added (or a
               leading article removed), after "It is", and with a trailing period.
  equivalent   the pairs left out of `wrong` above.

Prints, per file and group, the pairs and the mean of each score, the share of pairs at or above 0.7,
and the issue's example pairs; --output writes it all as JSON. docs/REWARDS.md quotes the figures.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections import defaultdict
from itertools import combinations
from pathlib import Path

from src.rewards.open_answers import METHODS, RULES, open_answer_scores, read_answer

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "vqa_rad_open_test.json"
GROUPS = ("wrong", "side", "side-flipped", "paraphrase", "equivalent")
EXAMPLES = (("Left Lung", "Right Lung"), ("Large Bowel", "Small Bowel"), ("Upper Right Lobe", "Left Lobe"),
            ("right temporal lobe", "Right frontal lobe"), ("Plain film x-ray", "XR"), ("two", "2"))
OPPOSITES = {"left": "right", "upper": "lower", "anterior": "posterior", "superior": "inferior",
             "medial": "lateral", "proximal": "distal", "large": "small"}
OPPOSITES |= {b: a for a, b in OPPOSITES.items()}
_OPPOSITE_RE = re.compile(r"\b(" + "|".join(OPPOSITES) + r")\b", re.IGNORECASE)
POSITION_AXES = tuple(axis.name for axis in RULES.axes if axis.positional) + ("size",)
POSITION_WORDS = {word for axis in RULES.axes if axis.name in POSITION_AXES for words in axis.values.values()
                  for word in words}


def read_open_questions(path: Path) -> tuple[str, list[dict]]:
    """(name, rows of {id, kind, question, answer}) of the open test questions in an official file or a fixture."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):  # a fixture written by --write-fixture
        return data["name"], data["rows"]
    if data and "q_lang" in data[0]:  # SLAKE test.json
        return "SLAKE test", [{"id": r["qid"], "kind": r["content_type"], "question": r["question"],
                               "answer": r["answer"]}
                              for r in data if r["q_lang"] == "en" and r["answer_type"].strip() == "OPEN"]
    if data and "phrase_type" in data[0]:  # VQA-RAD: the official release holds both splits
        test = [r for r in data if r["phrase_type"].startswith("test")] or data
        return "VQA-RAD test", [{"id": r["qid"], "kind": r["question_type"], "question": r["question"],
                                 "answer": r["answer"]} for r in test if r["answer_type"].strip() == "OPEN"]
    raise ValueError(f"{path}: neither VQA-RAD (phrase_type) nor SLAKE (q_lang) records, nor a fixture")


def same_answer(a: str, b: str) -> bool:
    """Whether the clinical rules read two answers as one (whole, or as the same set of parts)."""
    x, y = read_answer(a), read_answer(b)
    return x.whole.key == y.whole.key or {p.key for p in x.parts} == {p.key for p in y.parts}


def _without_position(answer: str) -> tuple[str, ...]:
    return tuple(word for word in read_answer(answer).whole.key if word not in POSITION_WORDS)


def _position_values(answer: str) -> dict:
    return {name: v for name, v in read_answer(answer).whole.values.items() if name in POSITION_AXES}


def build_pairs(rows: list[dict]) -> dict[str, list[tuple[str, str]]]:
    """(candidate, reference) pairs per group (module doc), in a fixed order."""
    by_kind: dict[str, dict[str, str]] = defaultdict(dict)
    for row in rows:
        answer = " ".join(row["answer"].split())
        by_kind[row["kind"]].setdefault(answer.lower(), answer)
    distinct = sorted({answer for answers in by_kind.values() for answer in answers.values()})
    pairs: dict[str, list[tuple[str, str]]] = {group: [] for group in GROUPS}
    for kind in sorted(by_kind):
        for a, b in combinations(sorted(by_kind[kind].values()), 2):
            pairs["equivalent" if same_answer(a, b) else "wrong"].append((a, b))
    for a, b in combinations(distinct, 2):
        values_a, values_b = _position_values(a), _position_values(b)
        if (not same_answer(a, b) and _without_position(a) == _without_position(b)
                and any(name in values_b and values_b[name] != v for name, v in values_a.items())):
            pairs["side"].append((a, b))
    for answer in distinct:
        flipped = _OPPOSITE_RE.sub(lambda m: _case_like(OPPOSITES[m.group(1).lower()], m.group(1)), answer)
        if flipped != answer and _position_values(flipped) != _position_values(answer):
            pairs["side-flipped"].append((flipped, answer))
        lowered = answer[0].lower() + answer[1:]
        article = re.sub(r"^(the|a|an)\s+", "", answer, flags=re.IGNORECASE)
        pairs["paraphrase"] += [(answer.lower(), answer), (answer.title(), answer),
                                (article if article != answer else f"the {lowered}", answer),
                                (f"It is {lowered}", answer), (f"{answer}.", answer)]
    return pairs


def _case_like(word: str, model: str) -> str:
    return word.upper() if model.isupper() else word.capitalize() if model[0].isupper() else word


def measure(pairs: dict[str, list[tuple[str, str]]], scorer) -> dict:
    """Per group: pairs, and per method the mean score and the share of pairs scoring >= 0.7."""
    result = {}
    for group, items in pairs.items():
        entry = {"pairs": len(items)}
        for method in METHODS:
            scores = open_answer_scores([c for c, _ in items], [[r] for _, r in items], scorer, method)
            entry[method] = {"mean": sum(scores) / len(scores) if scores else None,
                             "share_at_least_0.7": sum(s >= 0.7 for s in scores) / len(scores) if scores else None}
        result[group] = entry
    return result


def write_fixture(path: Path, source: Path, name: str, rows: list[dict]) -> None:
    """The open questions as JSON, one row a line, with where they come from and their license."""
    header = {
        "name": name,
        "source": (f"{source.name} (sha256 {hashlib.sha256(source.read_bytes()).hexdigest()}): the open questions "
                   "(answer_type OPEN) of the official test split (phrase_type test_freeform / test_para) of "
                   "VQA-RAD (Lau et al. 2018, 'A dataset of clinically generated visual questions and answers about "
                   "radiology images', Scientific Data 5, 180251), as released at https://osf.io/89kps/"),
        "license": "CC0 1.0 Universal (public domain dedication), as VQA-RAD is released",
        "fields": "id = qid, kind = question_type, question, answer, as in the release",
    }
    lines = [f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}," for key, value in header.items()]
    body = ",\n".join(f"  {json.dumps(row, ensure_ascii=False)}" for row in rows)
    path.write_text("{\n" + "\n".join(lines) + '\n "rows": [\n' + body + "\n ]\n}\n", encoding="utf-8")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append",
                        help="a VQA-RAD or SLAKE test file (repeatable; default: the bundled VQA-RAD fixture)")
    parser.add_argument("--bertscore-model", default="sentence-transformers/all-MiniLM-L6-v2",
                        help="BERTScore model (default: the embedded MiniLM, as the issue measured)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, help="also write the figures as JSON")
    parser.add_argument("--write-fixture", type=Path,
                        help="write the first --data file's open questions here, and stop")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    files = args.data or [FIXTURE]
    if args.write_fixture:
        name, rows = read_open_questions(files[0])
        write_fixture(args.write_fixture, files[0], name, rows)
        print(f"{args.write_fixture}: {len(rows)} open questions of {name}")
        return {}
    from src.rewards.bertscore import load_bertscorer

    scorer = load_bertscorer(args.bertscore_model, device=args.device)
    report = {"bertscore_model": scorer.model_name, "files": {}}
    for path in files:
        name, rows = read_open_questions(path)
        figures = measure(build_pairs(rows), scorer)
        report["files"][name] = {"path": str(path), "open_questions": len(rows), "groups": figures}
        print(f"\n{name}: {len(rows)} open questions ({path}); BERTScore model {scorer.model_name}")
        print("| pairs | n | BERTScore mean | clinical mean | BERTScore >= 0.7 | clinical >= 0.7 |\n" + "|---" * 6 + "|")
        for group, entry in figures.items():
            b, c = entry["bertscore"], entry["clinical"]
            if entry["pairs"]:
                print(f"| {group} | {entry['pairs']} | {b['mean']:.3f} | {c['mean']:.3f} | "
                      f"{b['share_at_least_0.7']:.0%} | {c['share_at_least_0.7']:.0%} |")
    examples = {}
    for candidate, reference in EXAMPLES:
        b, c = (open_answer_scores([candidate], [[reference]], scorer, method)[0] for method in METHODS)
        examples[f"{candidate} | {reference}"] = {"bertscore": b, "clinical": c}
        print(f'"{candidate}" for "{reference}": BERTScore {b:.3f}, clinical {c:.3f}')
    report["examples"] = examples
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
