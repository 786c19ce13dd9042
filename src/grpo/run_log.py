"""What a run writes besides checkpoints: the resolved config, one JSON line of metrics per step
(metrics.jsonl), and for RL one JSON line per sampled completion (completions.jsonl).

Both logs are appended while the run goes, so a crash can leave a line cut short, and lines of steps
after the last checkpoint. `--resume` from the checkpoint of step S keeps exactly the lines of steps
1..S and recomputes the rest; those S steps are not recomputed, so a line of theirs that is cut,
garbled or missing stops the resume with a `RunLogError` naming file and line (never a silent gap).
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch

from src.files import append_jsonl, read_jsonl, writing


class RunLogError(ValueError):
    """A run log that lacks a line of a step the checkpoint holds; the message names file and line."""


def steps_prefix(path: Path, resume_step: int, rows_per_step: int) -> int:
    """Length in bytes of the start of `path` that holds steps 1..resume_step, `rows_per_step` lines each.

    Lines are in step order (the log is appended step by step), so what follows that prefix belongs
    to later steps, which a resumed run recomputes. Raises RunLogError, naming file and line, when a
    line of steps 1..resume_step is cut short, not JSON, out of order or missing.
    """
    data = path.read_bytes()
    lines = data.split(b"\n")  # the last item: bytes after the last newline (b"" unless a line was cut)
    step, row, kept = 1, 0, 0  # the step and row the next line must hold; bytes kept so far
    for number, line in enumerate(lines, start=1):
        if step > resume_step:
            break
        cut = number == len(lines)
        if cut and not line:
            break
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
            record = None
        if not isinstance(record, dict):
            state = "is cut short" if cut else "is not a JSON record"
            raise RunLogError(f"{where} {state}; it should hold row {row + 1} of {rows_per_step} of step {step}. "
                              + _remedy(step, resume_step))
        if record.get("step") != step:
            raise RunLogError(f"{where} holds step {record.get('step')!r} where row {row + 1} of {rows_per_step} "
                              f"of step {step} belongs (a line lost, repeated or out of order). "
                              + _remedy(step, resume_step))
        kept += len(line) + (0 if cut else 1)
        row += 1
        if row == rows_per_step:
            step, row = step + 1, 0
    if step <= resume_step:
        raise RunLogError(f"{path} ends after line {len(lines) - 1} with row {row} of {rows_per_step} of step "
                          f"{step}. " + _remedy(step, resume_step))
    return kept


def _remedy(step: int, resume_step: int) -> str:
    return (f"--resume continues after step {resume_step} and does not recompute the steps before: restore the "
            f"line, or delete the checkpoints of step {step} and later so that --resume starts before it")


class MetricsLog:
    """A JSONL file of records that carry their "step" (metrics.jsonl, completions.jsonl), appended a
    step at a time and forced to disk.

    On resume from step S the lines of steps after S (written after the checkpoint, before the crash)
    are cut off, so the file reads as if the run had never stopped; `rows_per_step` is how many lines
    each step writes (the check that steps 1..S are whole). A fresh run (S = 0) starts the file empty.
    """

    def __init__(self, path: Path, resume_step: int | None, rows_per_step: int = 1):
        self.path = path
        resume_step = resume_step or 0
        kept = steps_prefix(path, resume_step, rows_per_step) if resume_step and path.is_file() else 0
        with writing(path), path.open("r+b" if path.is_file() else "wb") as f:
            f.truncate(kept)  # cut in place: no copy of a long log, no moment without the file
            if kept:
                f.seek(kept - 1)
                if f.read(1) != b"\n":
                    f.write(b"\n")  # a whole last record whose newline the crash cut off

    def write(self, records: list[dict]) -> None:
        """Append a step's records and force them to disk (one fsync per call)."""
        with writing(self.path), self.path.open("a", encoding="utf-8") as handle:
            append_jsonl(handle, records)


def check_run_log(path: Path, resume_step: int, rows_per_step: int = 1) -> None:
    """Raise RunLogError unless `path` (if it exists) holds every line of steps 1..resume_step."""
    if resume_step and path.is_file():
        steps_prefix(path, resume_step, rows_per_step)


def read_metrics(path: Path) -> list[dict]:
    """The records of a run log (metrics.jsonl, completions.jsonl), in step order."""
    return read_jsonl(Path(path))


class PhaseTimer:
    """Wall-clock seconds of a step's named phases, as metrics.jsonl's time/<phase> fields."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        yield
        self.seconds[f"time/{phase}"] = time.perf_counter() - start


def grpo_metrics(update: dict[str, float], rewards: torch.Tensor, reward_means: dict[str, float], rollout,
                 frac_zero_std: float, seconds: dict[str, float]) -> dict:
    """One GRPO step's metrics.jsonl fields: the update's statistics, rewards over the global batch
    ([N] of all ranks), completion lengths and truncation, seconds per phase, one sample completion."""
    return {
        **update,
        "clip_ratio": update["clipfrac_low"] + update["clipfrac_high"],
        "reward": rewards.mean().item(),
        "reward_std": rewards.std().item() if len(rewards) > 1 else 0.0,
        **reward_means,
        "completion_length": rollout.completion_mask.sum(1).float().mean().item(),
        "frac_truncated": rollout.truncated.float().mean().item(),
        "frac_zero_std": frac_zero_std,
        **seconds,
        "sample_completion": rollout.texts[0][:300],
    }
