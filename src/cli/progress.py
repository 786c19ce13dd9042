"""One line when a long phase starts and one when it ends, with its duration, for the phases whose
own progress bar (if any) does not say what is being loaded: datasets, models, the BERTScore model."""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator


@contextlib.contextmanager
def phase(what: str, enabled: bool = True) -> Iterator[None]:
    if enabled:
        print(f"{what} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    if enabled:
        print(f"{what}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
