"""VQA-RAD (Lau et al. 2018), in the widely used split of the official release or the HF parquet export.

JSON layout (MEVF / official split):
    ROOT/trainset.json, ROOT/testset.json   lists of {qid, image_name, image_organ, question, answer,
                                            answer_type, question_type, phrase_type}
    ROOT/images/synpicNNNNN.jpg
answer_type is "CLOSED" or "OPEN", sometimes with trailing spaces; CLOSED answers are not only yes/no
("left", "mri"), so the field is trusted rather than the answer. question_type (PRES, ABN, ...) → task.
Without trainset.json, ROOT is read as the parquet export (see hf_parquet.py).
"""
from __future__ import annotations

from pathlib import Path

from src.data.hf_parquet import load_parquet_export
from src.data.rows import BadRows, closed_or_open, image_file, optional_text, read_json_records, text_field
from src.data.sample import Sample

JSON_FILES = {"train": "trainset.json", "test": "testset.json"}


def is_json_layout(root: Path) -> bool:
    return (root / JSON_FILES["train"]).is_file() or (root / JSON_FILES["test"]).is_file()


def load_vqa_rad(root: Path, split: str, bad: BadRows) -> list[Sample]:
    if not is_json_layout(root):
        return load_parquet_export("vqa-rad", root, split, bad)
    path = root / JSON_FILES[split]

    def parse(number: int, record: object) -> Sample:
        answer = text_field(record, "answer")
        return Sample(id=str(record.get("qid", f"{split}-{number}")), dataset="vqa-rad",
                      image=image_file(root / "images", text_field(record, "image_name")),
                      question=text_field(record, "question"), answer=answer, answer_type=closed_or_open(record),
                      task=optional_text(record, "question_type"), meta={"organ": optional_text(record, "image_organ")})

    return bad.parse(path, read_json_records(path), parse)
