"""Format reward (RARL sec. 2.2.2): does the completion follow `<think>...</think><answer>...</answer>`?"""
from __future__ import annotations

import re

from src.rewards.answers import TAGS

_EXACT_RE = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)


def format_reward(completion: str) -> float:
    """1.0 for exactly one `<think>` block then one `<answer>` block, both non-empty, with only
    whitespace around them; 0.1 when any of the four tags appears but not in that form (nested or
    repeated tags, answer before think, unclosed tags, an empty block, text outside the blocks);
    0.0 when none of the tags appears. Tags are matched exactly: `<Think>` is not a tag.
    """
    counts = [completion.count(tag) for tag in TAGS]
    if not any(counts):
        return 0.0
    if counts != [1, 1, 1, 1]:  # a tag missing, repeated or nested
        return 0.1
    match = _EXACT_RE.fullmatch(completion)
    return 1.0 if match and match.group(1).strip() and match.group(2).strip() else 0.1
