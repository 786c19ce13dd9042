"""Human evaluation: a CSV sheet for clinicians to score, and reading their scores back.

One row per prediction. The reviewer fills reasoning_score and prediction_score with 1 (similar to
the reference, the same criterion the judge prompt states) or 0, or leaves a cell empty (not scored).
Rows are keyed by (dataset, split, prompt, id); the other columns are for reading only.

Every text cell is written by a model or a dataset, and a spreadsheet runs a cell that begins with
"=", "+", "-" or "@" as a formula (CSV injection: =HYPERLINK(...) sends data away when clicked). So
such a cell, and one that begins with a tab, a carriage return or a "'", is written with a "'" in
front (OWASP's rule: the spreadsheet shows it as text); reading the sheet back removes that "'", so
the keys round-trip exactly.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from src.files import write_atomic

KEY_COLUMNS = ["dataset", "split", "prompt", "id"]
COLUMNS = [*KEY_COLUMNS, "image", "question", "reference_reasoning", "reference",
           "prediction_think", "prediction_answer", "reasoning_score", "prediction_score"]
SCORE_COLUMNS = ("reasoning_score", "prediction_score")
HumanScores = dict[tuple[str, str, str, str], dict[str, int | None]]


def export_human_sheet(records: list[dict], path: Path) -> None:
    """Write the sheet for `records`; refuses to overwrite a sheet that already holds scores."""
    if path.exists() and any(v is not None for row in read_human_sheet(path).values() for v in row.values()):
        raise FileExistsError(f"{path} already holds human scores; move it away before exporting again")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    for record in records:
        writer.writerow({column: as_text_cell(value) for column, value in {
            "dataset": record["dataset"], "split": record["split"], "prompt": record["prompt"], "id": record["id"],
            "image": record["image"] or "", "question": record["question"],
            "reference_reasoning": record["reasoning_reference"] or "",
            "reference": " | ".join([record["reference"], *record["alternatives"]]),
            "prediction_think": record["think"] or "", "prediction_answer": record["answer"],
            "reasoning_score": "", "prediction_score": "",
        }.items()})
    write_atomic(path, buffer.getvalue())


def read_human_sheet(path: Path) -> HumanScores:
    """Scores by (dataset, split, prompt, id): each 0, 1 or None (empty cell).

    Raises ValueError naming the file and row for a missing column, a duplicate key or a score
    other than 0, 1 or empty.
    """
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in (*KEY_COLUMNS, *SCORE_COLUMNS) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}")
        scores: HumanScores = {}
        for row in reader:
            where = f"{path}: row {reader.line_num} (id {row['id']!r})"
            key = tuple(from_text_cell(row[c]) for c in KEY_COLUMNS)
            if key in scores:
                raise ValueError(f"{where}: duplicate row for {key}")
            scores[key] = {column: _score(row[column], where, column) for column in SCORE_COLUMNS}
    return scores


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")  # "'" too, so that removing one "'" on reading is exact


def as_text_cell(value: str) -> str:
    """`value` as a cell no spreadsheet runs as a formula: a "'" in front of a risky first character."""
    return f"'{value}" if str(value).startswith(FORMULA_STARTS) else str(value)


def from_text_cell(cell: str) -> str:
    """The value `as_text_cell` wrote (a cell a reviewer typed without the "'" reads as it is)."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS) else cell


def _score(cell: str | None, where: str, column: str) -> int | None:
    text = (cell or "").strip()
    if text in ("", "0", "1"):
        return int(text) if text else None
    raise ValueError(f"{where}: {column} must be 0, 1 or empty, got {cell!r}")
