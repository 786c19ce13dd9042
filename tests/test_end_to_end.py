"""train.py then evaluate.py on the checkpoint it wrote: the tiny model and the synthetic data, no judge."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_train_then_evaluate_the_adapter_checkpoint(tmp_path):
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    run("train.py", "--method", "grpo", "--model", "tiny", "--dataset", "synthetic", "--samples", "8",
        "--max-steps", "2", "--group-size", "2", "--max-completion-length", "8", "--no-gradient-checkpointing",
        "--output-dir", str(train_dir))
    checkpoint = train_dir / "checkpoint-2"
    assert json.loads((checkpoint / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"

    args = ("evaluate.py", "--model", str(checkpoint), "--datasets", "synthetic:test", "--limit", "5",
            "--max-new-tokens", "8", "--batch-size", "3", "--judge", "none", "--output-dir", str(eval_dir))
    run(*args)
    summary = json.loads((eval_dir / "summary.json").read_text())
    groups = {g["prompt"]: g["metrics"] for g in summary["groups"]}
    assert set(groups) == {"reasoning", "non-reasoning"}
    for metrics in groups.values():
        assert metrics["n"] == 5
        assert metrics["closed"]["n"] + metrics["open"]["n"] == 5  # every question in a denominator
    records = (eval_dir / "predictions" / "synthetic-test-reasoning.jsonl").read_text().splitlines()
    assert len(records) == 5 and all("completion" in json.loads(r) for r in records)
    assert "Metrics without a judge" in (eval_dir / "report.md").read_text()

    # a second run finds every prediction on disk: nothing is generated again, the files are unchanged
    before = {p.name: (p.read_text(), p.stat().st_mtime_ns) for p in (eval_dir / "predictions").iterdir()}
    run(*args)
    assert {p.name: (p.read_text(), p.stat().st_mtime_ns) for p in (eval_dir / "predictions").iterdir()} == before
