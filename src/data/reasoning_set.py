"""The paper's reasoning set (Silvar-Med, sec. 2.1): in this project's schema, or as its authors published it.

This project's schema (the paper's 716/150 reasoning set, and any set in its schema: the synthetic
one): `ROOT/train.jsonl` and `ROOT/test.jsonl` (or `.json` lists); one row per question:
    {"image" (or "img_name"): path relative to ROOT or ROOT/images, "question", "reasoning", "answer",
     optional "modality" (MRI, CT, X-ray), "answer_type" ('closed' / 'open'), "task", "id"}
A row without a reasoning text is kept with `reasoning=None` (the reasoning reward then skips it).
Without an answer_type field, yes/no answers are 'closed' and the rest 'open'.

Silvar-Med (Pham et al. 2025), the authors' release (Hanhpt23/SilVarMed, read there by
OmniMod/datasets/datasets/audio_instruction.py; data on the hub as Hanhpt23/Silvar-Med), one folder
per split:
    ROOT/train/dataset_unique_abnormal.json   [{img_name, question, answer}, ...]
    ROOT/train/imgs_train_abnormal/xmlab102.jpg ...
    ROOT/test/<its one .json file>, ROOT/test/imgs_test_abnormal/
(or those files directly in ROOT). question and answer are strings, or parallel lists holding several
questions about one image: each pair becomes one sample (id "<split>-<row>-q<k>", k from 1 as the
authors number them). An img_name that is not in the folder falls back, as upstream, to the part
before its first "_" plus ".jpg" (xmlab102_1.jpg -> xmlab102.jpg).

The published answer carries the explanation ("Yes, the image appears abnormal due to ..."). Where
it starts with a yes or no and a punctuation mark followed by more text, that word is the short
answer and the whole published text the reasoning reference (the paper's Table 1 pairs them so). Any
other answer is kept whole as the answer, with no reasoning reference: a short answer cannot be split
off it reliably. The paper's 716/150 split, its short answers for non-yes/no questions and each
image's modality are not in the public file; docs/DATA.md says what that changes.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

from src.data.rows import (BadRowError, BadRows, DatasetError, closed_or_open, find_file, optional_text,
                           read_json_records, text_field, text_value, yes_no_type)
from src.data.sample import Sample

UPSTREAM_FILE = "dataset_unique_abnormal.json"
LEADING_YES_NO = re.compile(r"(yes|no)\s*[,.;:!]\s*(\S.*)", re.IGNORECASE | re.DOTALL)  # "Yes, the image ..."


def load_reasoning_set(dataset: str, root: Path, split: str, bad: BadRows) -> list[Sample]:
    path = find_file([root / f"{split}.jsonl", root / f"{split}.json"], f"{dataset} {split} file")

    def parse(number: int, record: object) -> Sample:
        answer = text_field(record, "answer")
        answer_type = closed_or_open(record) if "answer_type" in record else yes_no_type(answer)
        return Sample(id=str(record.get("id", f"{split}-{number}")), dataset=dataset,
                      image=reasoning_set_image(root, text_field(record, "image", "img_name")),
                      question=text_field(record, "question"), answer=answer, answer_type=answer_type,
                      reasoning=optional_text(record, "reasoning"),
                      modality=optional_text(record, "modality"), task=optional_text(record, "task"))

    return bad.parse(path, read_json_records(path), parse)


def reasoning_set_image(root: Path, name: str) -> str:
    for path in (root / name, root / "images" / name):
        if path.is_file():
            return str(path)
    raise BadRowError(f"image not found: {root / name} (nor under {root / 'images'})")


def is_reasoning_set(root: Path, split: str) -> bool:
    return (root / f"{split}.jsonl").is_file() or (root / f"{split}.json").is_file()


def upstream_folder(root: Path, split: str) -> Path | None:
    """The folder holding the authors' annotation file and imgs_<split>_abnormal/, or None."""
    for folder in (root / split, root):
        if (folder / f"imgs_{split}_abnormal").is_dir():
            return folder
    return None


def load_silvar_med(root: Path, split: str, bad: BadRows) -> list[Sample]:
    if is_reasoning_set(root, split):
        return load_reasoning_set("silvar-med", root, split, bad)
    folder = upstream_folder(root, split)
    if folder is None:
        raise DatasetError(f"silvar-med {split}: found neither {root / f'{split}.jsonl'} (or .json), the paper's set "
                           f"in our schema, nor the authors' release {root / split / f'imgs_{split}_abnormal'}/ "
                           "with its .json file (see docs/DATA.md)")
    return load_upstream_release(folder, split, bad)


def upstream_annotations(folder: Path) -> Path:
    """dataset_unique_abnormal.json, else the one .json file of the folder."""
    if (folder / UPSTREAM_FILE).is_file():
        return folder / UPSTREAM_FILE
    found = sorted(folder.glob("*.json"))
    if len(found) != 1:
        raise DatasetError(f"silvar-med: expected {folder / UPSTREAM_FILE} or one .json file in {folder}; "
                           f"found {', '.join(p.name for p in found) or 'none'}")
    return found[0]


def load_upstream_release(folder: Path, split: str, bad: BadRows) -> list[Sample]:
    path, images = upstream_annotations(folder), folder / f"imgs_{split}_abnormal"

    def parse(number: int, record: object) -> list[Sample]:
        if not isinstance(record, dict):
            raise BadRowError(f"expected a JSON object, found {type(record).__name__}")
        image = upstream_image(images, text_value(record.get("img_name"), "img_name"))
        pairs = question_answer_pairs(record)
        return [sample(f"{split}-{number}" + (f"-q{k}" if len(pairs) > 1 else ""), image, question, answer)
                for k, (question, answer) in enumerate(pairs, start=1)]

    samples = bad.parse(path, read_json_records(path), parse)
    whole = sum(sample.reasoning is None for sample in samples)
    if whole:
        warnings.warn(f"silvar-med {split} ({path}): {whole} of {len(samples)} published answers hold no explanation "
                      "that can be split from a short answer (only 'Yes, ...' / 'No. ...' can): they are the answer as "
                      "published, with no reasoning reference (docs/DATA.md)", stacklevel=2)
    return samples


def question_answer_pairs(record: dict) -> list[tuple[str, str]]:
    """The row's (question, answer) pairs: one for strings, one per position for parallel lists."""
    for field in ("question", "answer"):
        if field not in record:
            raise BadRowError(f"missing field {field!r}")
    questions, answers = record["question"], record["answer"]
    if isinstance(questions, list) != isinstance(answers, list):
        raise BadRowError("question and answer must both be strings or both be lists")
    if not isinstance(questions, list):
        return [(text_value(questions, "question"), text_value(answers, "answer"))]
    if len(questions) != len(answers) or not questions:
        raise BadRowError(f"question and answer lists must be non-empty and of one length; "
                          f"found {len(questions)} and {len(answers)}")
    return [(text_value(q, f"question[{i}]"), text_value(a, f"answer[{i}]"))
            for i, (q, a) in enumerate(zip(questions, answers))]


def upstream_image(images: Path, name: str) -> str:
    """images/NAME, else images/<NAME before its first "_">.jpg, as the authors' loader falls back."""
    candidates = list(dict.fromkeys([images / name, images / f"{name.split('_')[0]}.jpg"]))
    for path in candidates:
        if path.is_file():
            return str(path)
    raise BadRowError(f"image not found: {' nor '.join(map(str, candidates))}")


def split_explanation(answer: str) -> tuple[str, str | None]:
    """(short answer, reasoning reference) from a published answer; see the module docstring."""
    lead = LEADING_YES_NO.fullmatch(answer)
    if lead is None:
        return answer.rstrip(".") if answer.lower().rstrip(".") in ("yes", "no") else answer, None
    return lead.group(1), answer


def sample(id: str, image: str, question: str, published: str) -> Sample:
    answer, reasoning = split_explanation(published)
    return Sample(id=id, dataset="silvar-med", image=image, question=question, answer=answer,
                  answer_type=yes_no_type(answer), reasoning=reasoning, meta={"published_answer": published})
