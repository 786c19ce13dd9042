"""Crash-safe files: append-only JSONL and atomic whole-file writes, for every result the project keeps.

Predictions, judge replies and a training run's metrics.jsonl / completions.jsonl are appended as
JSON lines and fsync'ed, so a killed run loses at most the lines being written; configs, summaries
and checkpoint files are written whole, atomically. On the next start `read_jsonl` notices a torn
last line and cuts it off; a malformed line anywhere else is real corruption and raises, naming file
and line.
A write that fails (a full disk) raises a `WriteError` naming the file and saying whether the disk
is full; what was on disk before stays as it was.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from safetensors import SafetensorError

from src.errors import UserError

FULL_DISK_BELOW = 64 * 2**20  # free bytes under which a failed write is put down to a full disk
# A full disk in the words of writers that drop the errno: safetensors ("No space left on device (os error
# 28)"); and torch.save's zip writer, which says only that a write failed ("unexpected pos 704 vs 598",
# "file write failed", "basic_ios::clear: iostream error").
FULL_DISK_TEXTS = ("No space left", "os error 28", "Disk quota exceeded", "os error 122")
WRITE_FAILED_TEXTS = ("unexpected pos", "file write failed", "iostream error")


class WriteError(OSError, UserError):
    """A file that could not be written; the message names it and says when the disk is full."""


def is_disk_full(error: BaseException, path: Path) -> bool:
    """Whether `error`, raised while writing `path`, comes from a full disk (or an exhausted quota).

    An OSError carries its errno. torch.save reports only "unexpected pos" or "iostream error", so
    such messages count as a full disk when the disk holding `path` has (almost) no space left.
    """
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    if any(marker in text for marker in FULL_DISK_TEXTS):
        return True
    return any(marker in text for marker in WRITE_FAILED_TEXTS) and free_bytes(path) < FULL_DISK_BELOW


def free_bytes(path: Path) -> int:
    """Bytes free to this user on the disk holding `path` (or its nearest existing parent)."""
    for folder in (Path(path), *Path(path).parents):
        if folder.exists():
            return shutil.disk_usage(folder).free
    return 0


def write_failure(path: Path, error: BaseException) -> WriteError:
    """The WriteError for `error` raised while writing `path`."""
    if is_disk_full(error, path):
        return WriteError(f"disk full: cannot write {path} ({error}); "
                          f"{free_bytes(path) / 2**20:.1f} MiB free on the disk that holds it")
    return WriteError(f"cannot write {path}: {type(error).__name__}: {error}")


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Re-raise a failure of the writes inside as a WriteError naming `path` (and a full disk as such)."""
    try:
        yield
    except WriteError:
        raise
    except (OSError, RuntimeError, SafetensorError) as error:  # RuntimeError: torch.save's zip writer
        raise write_failure(path, error) from error


def read_jsonl(path: Path) -> list[dict]:
    """Every record of a JSONL file written by `append_jsonl` ([] if the file does not exist).

    A last line without its newline is what a crash mid-write leaves: it is dropped and the file
    truncated to the last complete line, so appending can resume cleanly.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    complete, _, tail = data.rpartition(b"\n")  # `tail`: bytes after the last newline
    records = []
    for number, line in enumerate(complete.split(b"\n") if complete else [], start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
            raise ValueError(f"{path}: line {number} is not valid JSON ({reason})") from None
    if tail.strip():
        with writing(path):
            os.truncate(path, len(data) - len(tail))
    return records


def append_jsonl(handle: IO[str], records: list[dict]) -> None:
    """Append records, one line each, to an open file and force them to disk before returning."""
    with writing(Path(handle.name)):
        handle.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
        handle.flush()
        os.fsync(handle.fileno())


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write a whole file so that readers see either the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    data = content if isinstance(content, bytes) else content.encode("utf-8")
    try:
        with writing(path), open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except WriteError:
        tmp.unlink(missing_ok=True)  # a full disk gets its space back; `path` was never touched
        raise
    os.replace(tmp, path)


def changed_settings(path: Path, current: dict, may_change: tuple[str, ...] = ()) -> list[str]:
    """How the settings saved as JSON in `path` differ from `current`: "key: saved -> current" for each
    differing leaf, nested keys joined by dots ([] when the file does not exist).

    Keys in `may_change`, and keys the saved file lacks (a file written by an older version), are not
    compared. The one guard against mixing a run's results with another run's settings: train.py's
    --resume (config.json) and evaluate.py's output folder (run.json) both ask it.
    """
    if not path.is_file():
        return []

    def leaves(settings: dict, prefix: str = "") -> dict:
        flat = {}
        for key, value in settings.items():
            name = f"{prefix}{key}"
            flat.update(leaves(value, name + ".") if isinstance(value, dict) else {name: value})
        return flat

    saved, now = leaves(json.loads(path.read_text())), leaves(current)
    return [f"{key}: {saved[key]!r} -> {value!r}" for key, value in now.items()
            if key not in may_change and key in saved and saved[key] != value]


def file_key(source: str | bytes) -> tuple[str, int, int] | None:
    """(path, size, mtime in ns) of a file: the key under which a check of its contents is kept for the process; None for image bytes or a file that cannot be stat'ed."""
    if not isinstance(source, str):
        return None
    try:
        stat = os.stat(source)
    except OSError:
        return None
    return source, stat.st_size, stat.st_mtime_ns
