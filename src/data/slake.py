"""SLAKE (Liu et al. 2021), English questions only.

Layout as the official archive unpacks:
    ROOT/train.json, ROOT/validate.json, ROOT/test.json   lists of {qid, img_id, img_name, question,
        answer, q_lang, location, modality, answer_type, base_type, content_type, triple}
    ROOT/imgs/xmlabN/source.jpg                          (img_name is relative to imgs/)
Rows with q_lang "zh" are dropped before parsing (they are not bad rows, just not used).
modality (MRI, CT, X-Ray) → modality; content_type (Organ, Position, Abnormality, ...) → task.
Known defect of the official files, skipped with one warning: in train.json the English question
"Does the picture contain liver?" of one row has an empty answer (4,919 English rows, 4,918 usable).
"""
from __future__ import annotations

from pathlib import Path

from src.data.rows import BadRows, KnownDefect, closed_or_open, image_file, optional_text, read_json_records, text_field
from src.data.sample import Sample

FILES = {"train": "train.json", "val": "validate.json", "test": "test.json"}
KNOWN_DEFECTS = [KnownDefect("train.json", {"q_lang": "en", "question": "Does the picture contain liver?"},
                             "empty 'answer'")]


def load_slake(root: Path, split: str, bad: BadRows) -> list[Sample]:
    path = root / FILES[split]

    def parse(number: int, record: object) -> Sample:
        text_field(record, "q_lang")  # a row that does not say its language is malformed
        return Sample(id=str(record.get("qid", f"{split}-{number}")), dataset="slake",
                      image=image_file(root / "imgs", text_field(record, "img_name")),
                      question=text_field(record, "question"), answer=text_field(record, "answer"),
                      answer_type=closed_or_open(record), modality=optional_text(record, "modality"),
                      task=optional_text(record, "content_type"), meta={"location": optional_text(record, "location")})

    english = ((number, record) for number, record in read_json_records(path)
               if not (isinstance(record, dict) and record.get("q_lang", "en") != "en"))
    return bad.parse(path, english, parse, KNOWN_DEFECTS)
