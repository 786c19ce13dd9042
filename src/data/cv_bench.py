"""CV-Bench (Tong et al. 2024, nyu-visionx/CV-Bench): 2,638 multiple-choice vision questions, test only.

    ROOT/test.jsonl            (or the newer split files ROOT/test_2d.jsonl + ROOT/test_3d.jsonl)
        {idx, type (2D/3D), task (Count, Relation, Depth, Distance), question, choices [...],
         answer "(A)", prompt, filename "img/2D/count/ade20k_10.png", source, ...}
    ROOT/img/2D/…, ROOT/img/3D/…
`question` is the row's `prompt`, the benchmark's own text with the lettered options
("How many … ? Select from the following choices.\n(A) 0\n(B) 3 …"), since the answer is a letter the
model must see the options for; `choices` keeps the option texts and `task` the sub-task for per-task scores.
"""
from __future__ import annotations

import re
from pathlib import Path

from src.data.rows import BadRowError, BadRows, image_file, read_json_records, text_field
from src.data.sample import Sample

LETTER = re.compile(r"\(([A-Z])\)")


def load_cv_bench(root: Path, split: str, bad: BadRows) -> list[Sample]:
    files = [root / "test.jsonl"] if (root / "test.jsonl").is_file() else [root / "test_2d.jsonl", root / "test_3d.jsonl"]

    def parse(number: int, record: object) -> Sample:
        answer = text_field(record, "answer")
        choices = record.get("choices")
        if not isinstance(choices, list) or not choices or not all(isinstance(c, (str, int)) for c in choices):
            raise BadRowError(f"choices is not a non-empty list of options: {choices!r}")
        letter = LETTER.fullmatch(answer)
        if letter is None or ord(letter.group(1)) - ord("A") >= len(choices):
            raise BadRowError(f"answer {answer!r} is not one of the options (A)..({chr(ord('A') + len(choices) - 1)})")
        return Sample(id=str(record.get("idx", f"{split}-{number}")), dataset="cv-bench",
                      image=image_file(root, text_field(record, "filename")), question=text_field(record, "prompt"),
                      answer=answer, answer_type="choice", choices=tuple(str(c) for c in choices),
                      task=text_field(record, "task"), meta={"type": record.get("type")})

    return [sample for path in files for sample in bad.parse(path, read_json_records(path), parse)]
