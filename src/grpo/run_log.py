"""What a run writes besides checkpoints: the resolved config, one JSON line of metrics per step
(metrics.jsonl), and for RL one JSON line per sampled completion (completions.jsonl)."""
from __future__ import annotations

import contextlib
import json
import math
import resource
import sys
import time
from pathlib import Path

import torch

from src.eval.files import write_atomic


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by tensors on CUDA; on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return peak_kb / (2**20 if sys.platform == "darwin" else 2**10)


class MetricsLog:
    """A JSONL file of records that carry their "step" (metrics.jsonl, completions.jsonl), appended and
    flushed per record.

    On resume from step S the lines of steps after S (written after the checkpoint, before the
    crash) are dropped, so the file reads as if the run had never stopped.
    """

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        kept = []
        if resume_step is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by the crash
                    continue
                if record.get("step", math.inf) <= resume_step:
                    kept.append(line)
        write_atomic(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


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
