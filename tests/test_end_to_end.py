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


@pytest.mark.slow
def test_rl_from_a_warm_start_that_answers_at_random_learns_the_rewarded_answer(tmp_path):
    """RL learns from the reward, in under a minute: it raises the share of right answers from a warm
    start that has only been shown random ones. Side questions of a small synthetic set, kept where
    the right answer is "yes" (train and test): the warm start (60 sft-full steps on `random-answers`,
    yes and no drawn at random) samples "yes" about half the time; rarl, rewarded for the format and
    the answer only (length and reasoning weights 0), must learn that "yes" is right. Fails if the
    policy gradient loses its sign, stops reaching the weights, or the accuracy reward stops reading
    the answer. Measured, sampled accuracy over steps 1-6 -> steps 19-24: 0.40 -> 0.61 on a 2-core EPYC
    (1 and 2 threads); 0.40 -> 0.64 (2 threads) and 0.47 -> 0.72 (1 thread) on a 2-core Xeon.

    Greedy answers are not asserted: each held-out question flips all at once when the policy's
    probability of "yes" crosses one half, so after 24 steps greedy accuracy was 100% on the EPYC and
    13% on the Xeon with a similar sampled gain (100% on both after 36 steps). Other seeds learn at
    other speeds (on the Xeon, seed 2 with 1 thread had not moved after 36 steps): the test runs seed 0."""
    import train
    from src.data.synthetic import SyntheticConfig, ensure_synthetic
    from src.grpo.run_log import read_metrics

    root = ensure_synthetic(seed=0, config=SyntheticConfig(n_train=128, n_test=64, question_kinds=("side",)),
                            cache_dir=tmp_path / "data")
    for split in ("train", "test"):  # only the questions whose right answer is "yes"
        path = root / f"{split}.jsonl"
        rows = [line for line in path.read_text().splitlines() if json.loads(line)["answer"] == "yes"]
        path.write_text("\n".join(rows) + "\n")
    common = ["--dataset", "synthetic", "--data-root", str(root), "--device", "cpu", "--no-gradient-checkpointing",
              "--schedule", "constant", "--warmup-ratio", "0"]
    warm = train.main(common + ["--method", "sft-full", "--model", "tiny", "--split", "random-answers",
                                "--prompts-per-step", "16", "--mini-batch-size", "16", "--learning-rate", "5e-3",
                                "--max-steps", "60", "--save-steps", "60", "--output-dir", str(tmp_path / "warm")])
    train.main(common + ["--method", "rarl", "--model", str(warm), "--split", "train",
                         "--prompts-per-step", "4", "--group-size", "8", "--mini-batch-size", "32",
                         "--max-completion-length", "48", "--learning-rate", "1e-2", "--beta", "0.04",
                         "--length-weight", "0", "--reasoning-weight", "0",
                         "--max-steps", "24", "--save-steps", "24", "--output-dir", str(tmp_path / "rl")])
    accuracy = [record["reward/accuracy"] for record in read_metrics(tmp_path / "rl" / "metrics.jsonl")]
    first, last = sum(accuracy[:6]) / 6, sum(accuracy[-6:]) / 6  # 192 sampled answers each
    assert first < 0.7 and last > first + 0.15, accuracy
