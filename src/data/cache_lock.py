"""One builder at a time for a cached artefact (the tiny model, the synthetic set).

Several processes may ask for the same cache entry at once (torchrun ranks, parallel test workers).
Without a lock each builds its own copy and the second to finish finds the first one's folder in
the way; with it, the first builds and the others wait, then find the finished entry.
"""
from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def cache_lock(entry: Path) -> Iterator[None]:
    """Hold an exclusive lock on ENTRY.lock (next to the entry) for the duration."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f".{entry.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
