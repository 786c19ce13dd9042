"""`number`, the argparse type of every numeric flag: its range is checked as the command line or a
--config file is parsed. The checks that run before a model loads are in src/checks.py."""
from __future__ import annotations

import argparse
import math
from typing import Callable

BOUNDS = ("min", "gt", "max", "lt")
"""Range keys of a numeric flag: min <= value, gt < value, value <= max, value < lt."""

INT_LIMIT = 2**63
"""Every integer flag is below this (int64, what torch and numpy hold), whatever its own range."""


def number(kind: type, min: float | None = None, gt: float | None = None, max: float | None = None,
           lt: float | None = None) -> Callable[[str], int | float]:
    """The argparse `type=` of a numeric flag: `kind` (int or float) within the given bounds, finite.

    A value that does not parse is argparse's "invalid int value"; one out of range says which bound
    it breaks. Integers are below 2**63 in any case (INT_LIMIT). --config values go through the same
    function (src/cli/config_file.py).
    """
    def parse(text: str) -> int | float:
        value = kind(text)  # int() refuses more than 4,300 digits: argparse's "invalid int value"
        if kind is float and not math.isfinite(value):  # (an int is finite, and too large for isfinite's float)
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        for bound, broken, words in ((min, lambda b: value < b, "at least"), (gt, lambda b: value <= b, "more than"),
                                     (max, lambda b: value > b, "at most"), (lt, lambda b: value >= b, "less than")):
            if bound is not None and broken(bound):
                shown = bound if isinstance(bound, int) else f"{bound:g}"
                raise argparse.ArgumentTypeError(f"must be {words} {shown}, got {_shown(text)}")
        if kind is int and abs(value) >= INT_LIMIT:
            raise argparse.ArgumentTypeError(f"must be less than 2**63 in size, got {_shown(text)}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'x'"
    return parse


def _shown(text: str, limit: int = 40) -> str:
    """A value as an error message shows it: a long one cut, with its length."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
