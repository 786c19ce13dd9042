"""The paper's reasoning set (Silvar-Med subset, sec. 2.1), and any set in its schema (the synthetic one).

Layout: `ROOT/train.jsonl` and `ROOT/test.jsonl` (or `.json` lists); one row per question:
    {"image" (or "img_name"): path relative to ROOT or ROOT/images, "question", "reasoning", "answer",
     optional "modality" (MRI, CT, X-ray), "answer_type" ('closed' / 'open'), "task", "id"}
A row without a reasoning text is kept with `reasoning=None` (the reasoning reward then skips it).
Without an answer_type field, yes/no answers are 'closed' and the rest 'open'.
"""
from __future__ import annotations

from pathlib import Path

from src.data.rows import (BadRowError, BadRows, closed_or_open, find_file, optional_text, read_json_records, text_field,
                           yes_no_type)
from src.data.sample import Sample


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
