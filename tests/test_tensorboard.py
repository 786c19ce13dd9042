"""--report-to tensorboard: the event file holds every scalar of metrics.jsonl under the same name."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from src.grpo import trainer
from src.grpo.run_log import read_metrics
from tests.test_trainer import tiny_config

pytest.importorskip("tensorboard")


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_scalars_are_the_metrics_jsonl_numbers_and_resume_does_not_repeat_steps(tmp_path):
    cfg = tiny_config(tmp_path, run=dict(report_to="tensorboard"), optim=dict(max_steps=2))
    trainer.train(cfg)
    longer = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=True),
                                 optim=dataclasses.replace(cfg.optim, max_steps=3))
    trainer.train(longer)
    out = Path(cfg.run.output_dir)
    metrics = read_metrics(out / "metrics.jsonl")
    board = scalars(out / "tensorboard")
    numeric = {k for m in metrics for k, v in m.items() if k != "step" and isinstance(v, (int, float))}
    assert set(board) == numeric and {"reward", "reward/format", "loss", "kl", "time/generate"} <= numeric
    for name, points in board.items():
        assert [step for step, _ in points] == [m["step"] for m in metrics if name in m]   # 1, 2, 3: each once
        assert [value for _, value in points] == pytest.approx([m[name] for m in metrics if name in m], rel=1e-6)
