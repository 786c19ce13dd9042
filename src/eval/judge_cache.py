"""On-disk cache of judge replies, so that no prompt is ever paid for twice.

One append-only JSONL file; each line is {key, model, prompt, reply, prompt_tokens,
completion_tokens, replies, stop, stop_reason}, written (and fsync'ed) the moment the reply arrives:
token counts are summed over the `replies` asked for this prompt (null when the provider reported no
usage), `stop` is how the last reply ended ("complete", "refused" or "truncated", with the
provider's reason). The key is sha256 of the judge model and the exact prompt. The raw reply is
stored, not its parsed scores, so an improved reply parser applies to past judgments without asking
again. Refused and truncated replies are cached like any answer (the provider was asked and billed);
requests that failed are not: a re-run retries them. To re-ask one judgment, delete its line.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from src.files import append_jsonl, read_jsonl


def cache_key(model: str, prompt: str) -> str:
    """sha256 over the judge model and the prompt, unambiguous for any two strings."""
    return hashlib.sha256(json.dumps([model, prompt]).encode("utf-8")).hexdigest()


class JudgeCache:
    """Judge replies by cache key, loaded from and appended to `path`."""

    def __init__(self, path: Path):
        self.path = path
        self.entries = {entry["key"]: entry for entry in read_jsonl(path)}

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, entry: dict) -> None:
        """Store an entry (it must carry its "key") in memory and on disk before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            append_jsonl(handle, [entry])
        self.entries[entry["key"]] = entry
