"""Reading dataset files row by row, and what a loader does with a row it cannot use.

Every loader turns each row of its files into a `Sample` with a `parse(number, record)` function
that raises `BadRowError` for an unusable row (missing image, empty question or answer, a line that
is not JSON). `BadRows` collects those rows with file and row number, then, once the whole split is
read, either raises one `DatasetError` naming them or, when asked to skip them, warns with a count
and the first few reasons. Row numbers are 1-based: the line number in JSONL and text files, the
position in a JSON list or a parquet file.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from src.data.sample import Sample

SHOWN_REASONS = 5  # how many bad rows an error or warning spells out


class DatasetError(ValueError):
    """A dataset that cannot be loaded as asked: missing file, unusable rows, unknown split."""


class BadRowError(ValueError):
    """One row that cannot become a Sample; the message says why (the caller adds file and row)."""


@dataclass(frozen=True)
class BadRow:
    file: Path
    row: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}, row {self.row}: {self.reason}"


class BadRows:
    """The unusable rows of one load; `resolve` raises or skips them once every file is read."""

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.rows: list[BadRow] = []
        self.origins: dict[int, tuple[Path, int]] = {}  # id(sample) -> (file, row) of each sample `parse` made

    def parse(self, file: Path, records: Iterable[tuple[int, object]],
              parse: Callable[[int, object], Sample]) -> list[Sample]:
        """Samples of the rows `parse` accepts; a record that is a BadRowError (a malformed line) is bad."""
        samples = []
        for number, record in records:
            try:
                if isinstance(record, BadRowError):
                    raise record
                sample = parse(number, record)
            except BadRowError as error:
                self.rows.append(BadRow(file, number, str(error)))
                continue
            self.origins[id(sample)] = (file, number)
            samples.append(sample)
        return samples

    def reject(self, sample: Sample, reason: str) -> None:
        """Count a sample `parse` made as a bad row after all (its image does not decode, see image_check.py)."""
        file, row = self.origins[id(sample)]
        self.rows.append(BadRow(file, row, reason))

    def resolve(self, skip_bad_rows: bool) -> None:
        """Raise a DatasetError naming the bad rows, or (skip_bad_rows) warn how many were skipped."""
        if not self.rows:
            return
        rows = sorted(self.rows, key=lambda row: (str(row.file), row.row))
        if not skip_bad_rows:
            shown = "; ".join(str(row) for row in rows[:SHOWN_REASONS])
            more = len(rows) - SHOWN_REASONS
            listing = shown + (f"; and {more} more" if more > 0 else "")
            raise DatasetError(f"{self.dataset}: {len(rows)} unusable row(s): {listing}. "
                               "Fix the files, or pass skip_bad_rows=True to skip such rows.")
        listing = "; ".join(str(row) for row in rows)  # every one: the record of what the run left out
        warnings.warn(f"{self.dataset}: skipped {len(rows)} unusable row(s): {listing}", stacklevel=3)


def read_json_records(path: Path) -> Iterator[tuple[int, object]]:
    """(row number, record) from a JSON list file, or from a JSONL file (one JSON value a line).

    A JSONL line that is not valid JSON comes back as a BadRowError record; a `.json` file that is
    not a JSON list raises DatasetError, as no row of it can be trusted.
    """
    text = read_text(path)
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                yield number, BadRowError(f"malformed JSON line ({error.msg})")
        return
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from error
    if not isinstance(rows, list):
        raise DatasetError(f"{path}: expected a JSON list of rows, found {type(rows).__name__}")
    yield from enumerate(rows, start=1)


def read_parquet_records(path: Path, columns: list[str]) -> Iterator[tuple[int, dict]]:
    """(row number, {column: value}) from a parquet file, read in batches so memory stays bounded."""
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise DatasetError(f"reading {path} needs pyarrow: pip install 'rarl[parquet]' "
                           "(or pip install pyarrow)") from error
    parquet = pq.ParquetFile(path)
    missing = [column for column in columns if column not in parquet.schema_arrow.names]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; found {parquet.schema_arrow.names}")
    number = 0
    for batch in parquet.iter_batches(batch_size=256, columns=columns):
        for record in batch.to_pylist():
            number += 1
            yield number, record


def read_text(path: Path) -> str:
    if not path.is_file():
        raise DatasetError(f"file not found: {path}")
    return path.read_text(encoding="utf-8")


def find_file(candidates: Iterable[Path], what: str) -> Path:
    """The first existing file among `candidates`, else a DatasetError listing where it was looked for."""
    candidates = list(candidates)
    for path in candidates:
        if path.is_file():
            return path
    raise DatasetError(f"{what} not found; looked for: " + ", ".join(str(path) for path in candidates))


def text_field(record: object, *keys: str) -> str:
    """The stripped, non-empty text under the first present key (numbers are accepted as text)."""
    if not isinstance(record, dict):
        raise BadRowError(f"expected a JSON object, found {type(record).__name__}")
    key = next((key for key in keys if key in record), None)
    if key is None:
        raise BadRowError(f"missing field {' or '.join(map(repr, keys))}")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadRowError(f"field {key!r} is not text: {value!r}")
    text = str(value).strip()
    if not text:
        raise BadRowError(f"empty {key!r}")
    return text


def optional_text(record: dict, key: str) -> str | None:
    """The stripped text under `key`, or None when the field is absent or blank."""
    value = record.get(key)
    return (str(value).strip() or None) if value is not None else None


def image_file(folder: Path, name: str) -> str:
    """The path of an existing image file `folder / name`, as a string for `Sample.image`."""
    path = folder / name
    if not path.is_file():
        raise BadRowError(f"image not found: {path}")
    return str(path)


def image_bytes(value: object) -> bytes:
    """Encoded image bytes from a parquet image cell: raw bytes, or HF's {"bytes": ..., "path": ...}."""
    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, bytes) or not data:
        raise BadRowError("image cell holds no bytes")
    return data


def closed_or_open(record: dict) -> str:
    """The row's answer_type field ("CLOSED", "OPEN ", "closed", ...) as 'closed' or 'open'."""
    answer_type = text_field(record, "answer_type").lower()
    if answer_type not in ("closed", "open"):
        raise BadRowError(f"answer_type {record['answer_type']!r} is neither closed nor open")
    return answer_type


def yes_no_type(answer: str) -> str:
    """'closed' for a yes/no answer, 'open' otherwise (for datasets without an answer_type field)."""
    return "closed" if answer.lower() in ("yes", "no") else "open"
