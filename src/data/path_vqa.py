"""PathVQA (He et al. 2020): the authors' original release, or the Hugging Face parquet export.

The original release (the archive linked from github.com/UCSD-AI4H/PathVQA) unpacks as
    ROOT/pvqa/qas/train/train_qa.pkl, ROOT/pvqa/qas/val/val_qa.pkl, ROOT/pvqa/qas/test/test_qa.pkl
        pickled lists of {"image": "train_0422", "question": ..., "answer": ...}
    ROOT/pvqa/images/train/train_0422.jpg, ROOT/pvqa/images/val/…, ROOT/pvqa/images/test/…
(ROOT may also be the pvqa folder itself.) Its 19,755 / 6,279 / 6,761 question pairs are read as
published, exact duplicates included. The parquet export (flaviagiammarino/path-vqa, hf_parquet.py)
drops exact duplicate (image, question, answer) triplets and lower-cases the text: 19,654 / 6,259 / 6,719.
Neither has an answer type: yes/no answers are 'closed', the rest 'open'.
"""
from __future__ import annotations

from pathlib import Path

from src.data.hf_parquet import load_parquet_export
from src.data.rows import BadRows, image_file, read_pickle_records, text_field, yes_no_type
from src.data.sample import Sample


def original_release(root: Path) -> Path | None:
    """The `pvqa` folder of the original release under ROOT (or ROOT itself), or None for the export."""
    for folder in (root / "pvqa", root):
        if (folder / "qas").is_dir():
            return folder
    return None


def load_path_vqa(root: Path, split: str, bad: BadRows) -> list[Sample]:
    folder = original_release(root)
    if folder is None:
        return load_parquet_export("path-vqa", root, split, bad)
    path = folder / "qas" / split / f"{split}_qa.pkl"

    def parse(number: int, record: object) -> Sample:
        answer = text_field(record, "answer")
        image = text_field(record, "image")
        return Sample(id=f"{split}-{number}", dataset="path-vqa", image=image_file(folder / "images" / split, f"{image}.jpg"),
                      question=text_field(record, "question"), answer=answer, answer_type=yes_no_type(answer),
                      meta={"image_id": image})

    return bad.parse(path, read_pickle_records(path), parse)
