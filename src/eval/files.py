"""Crash-safe files for evaluation results: append-only JSONL and atomic whole-file writes.

Predictions and judge replies are appended one JSON line at a time and fsync'ed, so a killed run
loses at most the line being written. On the next start `read_jsonl` notices such a torn last line
and cuts it off; a malformed line anywhere else is real corruption and raises, naming file and line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO


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
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
    if tail.strip():
        write_atomic(path, data[: len(data) - len(tail)])
    return records


def append_jsonl(handle: IO[str], records: list[dict]) -> None:
    """Append records, one line each, and force them to disk before returning."""
    handle.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    handle.flush()
    os.fsync(handle.fileno())


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write a whole file so that readers see either the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    data = content if isinstance(content, bytes) else content.encode("utf-8")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
