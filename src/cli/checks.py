"""`number`, the argparse type of every numeric flag: its range is checked as the command line or a
--config file is parsed. The checks that run before a model loads are in src/checks.py."""
from __future__ import annotations

import argparse
import math
from typing import Callable

BOUNDS = ("min", "gt", "max", "lt")
"""Range keys of a numeric flag: min <= value, gt < value, value <= max, value < lt."""


def number(kind: type, min: float | None = None, gt: float | None = None, max: float | None = None,
           lt: float | None = None) -> Callable[[str], int | float]:
    """The argparse `type=` of a numeric flag: `kind` (int or float) within the given bounds, finite.

    A value that does not parse is argparse's "invalid int value"; one out of range says which bound
    it breaks. --config values go through the same function (src/cli/config_file.py).
    """
    def parse(text: str) -> int | float:
        value = kind(text)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        for bound, broken, words in ((min, lambda b: value < b, "at least"), (gt, lambda b: value <= b, "more than"),
                                     (max, lambda b: value > b, "at most"), (lt, lambda b: value >= b, "less than")):
            if bound is not None and broken(bound):
                raise argparse.ArgumentTypeError(f"must be {words} {bound:g}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'x'"
    return parse
