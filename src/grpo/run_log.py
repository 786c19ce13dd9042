"""What a run writes besides checkpoints: the resolved config, one JSON line of metrics per step
(metrics.jsonl), and for RL one JSON line per sampled completion (completions.jsonl)."""
from __future__ import annotations

import json
import math
import resource
import sys
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
