"""What a run writes besides checkpoints: the resolved config, one JSON line of metrics per step
(metrics.jsonl), and for RL one JSON line per sampled completion (completions.jsonl).

Both logs are appended while the run goes, so a crash can leave a line cut short, and lines of steps
after the last checkpoint. `--resume` from the checkpoint of step S keeps exactly the lines of steps
1..S and recomputes the rest; those S steps are not recomputed, so a line of theirs that is cut,
garbled or missing stops the resume with a `RunLogError` naming file and line (never a silent gap).

The same records, viewed: `--report-to tensorboard` mirrors every metric as a TensorBoard scalar
(TensorBoardLog), and curves.png plots the reward and its components over the steps (plot_curves).
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


# ----------------------------------------------------------------------------------------------------
# `--report-to tensorboard`: every number of a metrics.jsonl record, under the same name, as a
# TensorBoard scalar at the record's step (OUTPUT/tensorboard/). metrics.jsonl stays the record of
# truth; this is a view of it for those who watch runs in TensorBoard.
#
# On resume from step S, events after S (written after the checkpoint, before the crash) are purged,
# as metrics.jsonl drops its lines after S, so the curves read as if the run had never stopped.
# ----------------------------------------------------------------------------------------------------

class TensorBoardLog:
    def __init__(self, log_dir: Path, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter  # optional: the `tensorboard` extra

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=resume_step + 1 if resume_step else None)

    def write(self, record: dict) -> None:
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(name, value, global_step=record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# ----------------------------------------------------------------------------------------------------
# curves.png from metrics.jsonl: the reward and each of its components over the RL steps, plus KL and length;
# validation.png: held-out accuracy of each saved checkpoint, one line per run.
# ----------------------------------------------------------------------------------------------------

PANELS = (
    ("reward", "mean reward (weighted total)"),
    ("reward/format", "format reward"),
    ("reward/accuracy", "accuracy reward"),
    ("reward/reasoning", "reasoning reward"),
    ("reward/length", "length reward"),
    ("kl", "KL to the reference (k3)"),
    ("completion_length", "completion length (tokens)"),
    ("frac_zero_std", "groups with equal rewards"),
)


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` points (shorter at the start), so the curve keeps every step."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # optional: the `plot` extra
        raise ImportError("plots need matplotlib: pip install -e '.[plot]'") from error
    return plt


def save(plt, fig, out_path: str | Path) -> Path:
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def plot_curves(metrics_path: str | Path, out_path: str | Path, title: str = "", window: int = 10) -> Path:
    plt = pyplot()
    records = read_metrics(metrics_path)
    panels = [(key, label) for key, label in PANELS if any(key in r for r in records)]
    fig, axes = plt.subplots(2, (len(panels) + 1) // 2, figsize=(3.2 * ((len(panels) + 1) // 2), 5.6), squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels):
        steps = [r["step"] for r in records if key in r]
        values = [r[key] for r in records if key in r]
        ax.plot(steps, values, color="0.75", linewidth=0.8)
        ax.plot(steps, moving_average(values, window), color="C0", linewidth=1.8)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title or str(metrics_path), fontsize=10)
    return save(plt, fig, out_path)


def plot_validation(curves: dict[str, dict[int, float]], chosen: dict[str, int], out_path: str | Path,
                    title: str) -> Path:
    """One line per run: the share of validation questions answered right (%) at each saved step,
    step 0 being the model RL started from; a star marks the step each run chose."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, (label, curve) in enumerate(curves.items()):
        steps = sorted(curve)
        line, = ax.plot(steps, [100 * curve[s] for s in steps], marker="o", markersize=3, linewidth=1.2,
                        label=label, color=f"C{i % 10}")
        ax.plot([chosen[label]], [100 * curve[chosen[label]]], marker="*", markersize=11, color=line.get_color())
    ax.set_xlabel("RL step (0: the warm start)", fontsize=9)
    ax.set_ylabel("validation answers right (%)", fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    return save(plt, fig, out_path)
