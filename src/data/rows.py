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
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from src.data.sample import Sample
from src.errors import UserError

SHOWN_REASONS = 5  # how many bad rows an error or warning spells out
NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what a non-UTF-8 byte decodes to under errors="surrogateescape"


class DatasetError(UserError):
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


@dataclass(frozen=True)
class KnownDefect:
    """A row that the publishers' own file gets wrong: skipped by default, with one warning.

    It matches a row of the file named `file` that fails with a reason starting with `problem` and
    whose `fields` hold these (stripped) values, so a copy that fixed the row simply loads it.
    """

    file: str        # the file's name, e.g. "train.json"
    fields: dict     # field -> stripped value identifying the row
    problem: str     # the start of the BadRowError text, e.g. "empty 'answer'"

    def matches(self, file: Path, record: object, reason: str) -> bool:
        return (file.name == self.file and reason.startswith(self.problem) and isinstance(record, dict)
                and all(str(record.get(key, "")).strip() == value for key, value in self.fields.items()))


class BadRows:
    """The unusable rows of one load; `resolve` raises or skips them once every file is read."""

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.rows: list[BadRow] = []
        self.known: list[BadRow] = []   # rows of known upstream defects, always skipped
        self.origins: dict[int, tuple[Path, int]] = {}  # id(sample) -> (file, row) of each sample `parse` made

    def parse(self, file: Path, records: Iterable[tuple[int, object]],
              parse: Callable[[int, object], Sample | list[Sample]],
              known: Iterable[KnownDefect] = ()) -> list[Sample]:
        """Samples of the rows `parse` accepts (it returns one Sample, or a list for a row holding
        several questions); a record that is a BadRowError (a malformed line) is bad."""
        known = list(known)
        samples = []
        for number, record in records:
            try:
                if isinstance(record, BadRowError):
                    raise record
                parsed = parse(number, record)
            except BadRowError as error:
                defect = any(defect.matches(file, record, str(error)) for defect in known)
                (self.known if defect else self.rows).append(BadRow(file, number, str(error)))
                continue
            for sample in parsed if isinstance(parsed, list) else [parsed]:
                self.origins[id(sample)] = (file, number)
                samples.append(sample)
        return samples

    def reject(self, sample: Sample, reason: str) -> None:
        """Count a sample `parse` made as a bad row after all (its image does not decode: loaders.check_images)."""
        file, row = self.origins[id(sample)]
        self.rows.append(BadRow(file, row, reason))

    def resolve(self, skip_bad_rows: bool) -> None:
        """Warn about skipped known defects; then raise a DatasetError naming the bad rows, or
        (skip_bad_rows) warn listing every row skipped."""
        if self.known:
            warnings.warn(f"{self.dataset}: skipped {len(self.known)} row(s) that the official release itself gets "
                          f"wrong (known upstream defects, see docs/DATA.md): {listing(self.known)}", stacklevel=3)
        if not self.rows:
            return
        rows = sorted(self.rows, key=lambda row: (str(row.file), row.row))
        if not skip_bad_rows:
            raise DatasetError(f"{self.dataset}: {len(rows)} unusable row(s): {listing(rows)}. "
                               "Fix the files, or pass skip_bad_rows=True to skip such rows.")
        every = "; ".join(str(row) for row in rows)  # every one: the record of what the run left out
        warnings.warn(f"{self.dataset}: skipped {len(rows)} unusable row(s): {every}", stacklevel=3)


def listing(rows: list[BadRow]) -> str:
    """The first SHOWN_REASONS rows spelled out, then how many more."""
    more = len(rows) - SHOWN_REASONS
    return "; ".join(str(row) for row in rows[:SHOWN_REASONS]) + (f"; and {more} more" if more > 0 else "")


def read_json_records(path: Path) -> Iterator[tuple[int, object]]:
    """(row number, record) from a JSON list file, or from a JSONL file (one JSON value a line).

    A JSONL line that is not valid JSON, and a row holding bytes that are not UTF-8, come back as
    BadRowError records (bad rows, skippable). A `.json` file that is not a JSON list raises
    DatasetError, as no row of it can be trusted.
    """
    text = read_text(path)
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                yield number, undecodable_row(line) or BadRowError(f"malformed JSON line ({error.msg})")
                continue
            yield number, undecodable_row(record) or record
        return
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        if NOT_UTF8.fullmatch(text[error.pos:error.pos + 1]):  # a stray byte outside every string
            offset = len(text[:error.pos].encode("utf-8", errors="surrogateescape"))
            raise DatasetError(
                f"{path}: byte 0x{ord(text[error.pos]) - 0xDC00:02x} at line {error.lineno}, column {error.colno} "
                f"(byte offset {offset}) is not UTF-8 and lies outside any row's text, so the rows of this JSON "
                "list cannot be told apart and none can be skipped: re-save the file as UTF-8") from None
        raise DatasetError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    if not isinstance(rows, list):
        raise DatasetError(f"{path}: expected a JSON list of rows, found {type(rows).__name__}")
    for number, record in enumerate(rows, start=1):
        yield number, undecodable_row(record) or record


def read_pickle_records(path: Path) -> Iterator[tuple[int, object]]:
    """(row number, record) from a pickled list of plain dicts (PathVQA's original release).

    Only plain Python values (lists, dicts, strings, numbers) are unpickled: a file that asks for any
    class or function is refused, since unpickling one can run arbitrary code.
    """
    if not path.is_file():
        raise DatasetError(f"file not found: {path}")
    try:
        with open(path, "rb") as handle:
            rows = PlainUnpickler(handle).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DatasetError(f"{path}: not a readable pickle of plain rows ({error})") from None
    if not isinstance(rows, list):
        raise DatasetError(f"{path}: expected a pickled list of rows, found {type(rows).__name__}")
    yield from enumerate(rows, start=1)


class PlainUnpickler(pickle.Unpickler):
    """An unpickler for plain data: every class or function lookup is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"it asks for {module}.{name}; only plain lists, dicts and strings are read")


def read_parquet_records(path: Path, columns: list[str]) -> Iterator[tuple[int, dict]]:
    """(row number, {column: value}) from a parquet file, read in batches so memory stays bounded."""
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError as error:
        raise DatasetError(f"reading {path} needs pyarrow, a dependency of this project that is missing here: "
                           "pip install -e . (or pip install pyarrow)") from error
    try:
        parquet = pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as error:
        raise DatasetError(f"{path}: not a readable parquet file ({error})") from None
    missing = [column for column in columns if column not in parquet.schema_arrow.names]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; found {parquet.schema_arrow.names}")
    number = 0
    try:
        for batch in parquet.iter_batches(batch_size=256, columns=columns):
            for record in batch.to_pylist():
                number += 1
                yield number, record
    except (pyarrow.ArrowException, OSError) as error:
        raise DatasetError(f"{path}: unreadable after row {number} ({error})") from None


def read_text(path: Path) -> str:
    """The file's text. Bytes that are not UTF-8 are kept as lone surrogates (errors="surrogateescape")
    so that the row holding them, not the whole file, is reported: see `undecodable`."""
    if not path.is_file():
        raise DatasetError(f"file not found: {path}")
    return path.read_bytes().decode("utf-8-sig", errors="surrogateescape")


def undecodable(text: str) -> str | None:
    """Where `text` (as `read_text` returns it) holds a byte that is not UTF-8, described; else None."""
    found = NOT_UTF8.search(text)
    if found is None:
        return None
    return f"byte 0x{ord(found.group()) - 0xDC00:02x} at character {found.start() + 1} is not UTF-8"


def undecodable_row(record: object, where: str = "") -> BadRowError | None:
    """A BadRowError naming the first field of `record` (nested lists and dicts included) whose text
    holds a byte that is not UTF-8, or None when every string decodes."""
    if isinstance(record, str):
        problem = undecodable(record)
        return BadRowError(f"{f'field {where!r}' if where else 'the line'}: {problem} (re-save the file as UTF-8)") \
            if problem else None
    items = record.items() if isinstance(record, dict) else enumerate(record) if isinstance(record, list) else ()
    for key, value in items:
        name = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key)
        error = undecodable_row(value, name)
        if error:
            return error
    return None


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
    return text_value(record[key], key)


def text_value(value: object, name: str) -> str:
    """`value` as stripped, non-empty text; `name` says which field (or list item) it came from."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadRowError(f"field {name!r} is not text: {short_repr(value)}")
    text = str(value).strip()
    if not text:
        raise BadRowError(f"empty {name!r}")
    return text


def optional_text(record: dict, key: str) -> str | None:
    """The stripped text under `key`, or None when the field is absent, null or blank."""
    value = record.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return text_value(value, key)


def short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


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
