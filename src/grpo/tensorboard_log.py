"""`--report-to tensorboard`: every number of a metrics.jsonl record, under the same name, as a
TensorBoard scalar at the record's step (OUTPUT/tensorboard/). metrics.jsonl stays the record of
truth; this is a view of it for those who watch runs in TensorBoard.

On resume from step S, events after S (written after the checkpoint, before the crash) are purged,
as metrics.jsonl drops its lines after S, so the curves read as if the run had never stopped.
"""
from __future__ import annotations

from pathlib import Path


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
