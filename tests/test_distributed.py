"""Data-parallel training on 2 CPU processes (gloo): the same gradients as one process, identical
replicas, one writer. The per-rank side is tests/distributed_worker.py, launched with torchrun."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from src.data.synthetic import ensure_synthetic
from src.grpo import distributed, trainer
from src.grpo.step import grpo_update, rollout_logprobs
from src.grpo.step import sample_rollout
from src.grpo.run_log import read_metrics
from src.models.lora import PEFT_PREFIX, lora_layers, lora_state_dict
from tests.test_trainer import tiny_config

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "distributed_worker.py"
AGGREGATIONS = ("sequence", "token", "dr_grpo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(processes: int, *args: str) -> None:
    """tests/distributed_worker.py ARGS on `processes` gloo ranks on this machine."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(WORKER), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def ranks(directory: Path, count: int = 2) -> list[dict]:
    return [torch.load(directory / f"rank{r}.pt", weights_only=False) for r in range(count)]


# --- pure pieces, with the world size patched ----------------------------------------------------

def test_each_rank_takes_a_contiguous_equal_share(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert distributed.rank_share([10, 11, 12, 13]) == [12, 13]
    with pytest.raises(ValueError, match="3 prompts do not split evenly over 2 ranks"):
        distributed.rank_share([10, 11, 12])


def test_batches_that_do_not_split_over_the_ranks_fail_at_start(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    distributed.check_batch_split(num_samples=16, prompts_per_step=8)      # steps of 8, 8
    with pytest.raises(ValueError, match="a step of 2 prompts"):            # steps of 4, 4, 4, 2
        distributed.check_batch_split(num_samples=14, prompts_per_step=4)
    with pytest.raises(ValueError, match="a step of 6 prompts"):
        distributed.check_batch_split(num_samples=12, prompts_per_step=6)


def test_metrics_combine_to_the_global_batch():
    # each rank: 2 prompts (groups), 8 completions
    rank0 = {"step": 3, "lr": 1e-5, "loss": 0.25, "reward/format": 0.2, "frac_zero_std": 0.5, "time/generate": 2.0,
             "peak_memory_mb": 100.0, "sample_completion": "a"}
    rank1 = {"step": 3, "lr": 1e-5, "loss": 0.25, "reward/format": 0.6, "frac_zero_std": 0.0, "time/generate": 3.0,
             "peak_memory_mb": 120.0, "sample_completion": "b"}
    combined = distributed.combine_metrics([rank0, rank1])
    assert combined == {
        "step": 3, "lr": 1e-5, "loss": 0.25,        # agreed on by every rank: unchanged (and still an int)
        "reward/format": pytest.approx(0.4),        # (8 * 0.2 + 8 * 0.6) / 16 completions
        "frac_zero_std": 0.25,                      # 1 of rank 0's 2 groups + 0 of rank 1's 2 = 1 / 4
        "time/generate": 3.0, "peak_memory_mb": 120.0,  # the slowest rank, the largest process
        "sample_completion": "a",                   # rank 0's
    }
    assert isinstance(combined["step"], int)


def test_a_single_process_initialises_nothing():
    assert distributed.init_distributed("cpu") is None
    assert not torch.distributed.is_initialized()
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    values = {"rows": 8, "tokens": 61}
    assert distributed.sum_over_ranks(values) is values


# --- two processes --------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_ranks_accumulate_the_gradient_of_one_process_on_the_whole_batch(tmp_path):
    """A fixed rollout of B=4 prompts x G=4: ranks 0 and 1 each update on 2 prompts (8 rows, padded to
    their own longest completion); their summed gradients and statistics must equal one process's
    grpo_update on all 16 rows, for every aggregation."""
    cfg = tiny_config(tmp_path, loss=dict(beta=0.04), optim=dict(prompts_per_step=4, mini_batch_size=4))
    run = trainer.setup(cfg)
    torch.manual_seed(1)
    for layer in lora_layers(run.policy.model):  # B != 0 so that every factor gets a gradient
        torch.nn.init.normal_(layer.lora_B.weight, std=0.05)
    rollout = sample_rollout(run.policy, run.samples[:4], ["explanation", "short"] * 2, group_size=4,
                             max_completion_length=12, temperature=1.0)
    advantages = torch.linspace(-1.5, 1.5, 16)  # nonzero even if all rewards tie
    ref_logp = run.reference.logprobs(rollout, 1.0, 4)                                       # [16, L]
    # an old policy 0.3 nats off per token, so that ratios leave the clip range on both sides
    logp = rollout_logprobs(run.policy.model, rollout, 1.0, 16)
    old_logp = logp + 0.3 * torch.randn(logp.shape, generator=torch.Generator().manual_seed(2))  # [16, L]
    job = tmp_path / "job"
    job.mkdir()
    torch.save({"config": cfg.to_dict(), "lora": lora_state_dict(run.policy.model), "rollout": rollout,
                "advantages": advantages, "ref_logp": ref_logp, "old_logp": old_logp, "aggregations": AGGREGATIONS},
               job / "job.pt")

    single = {}
    for aggregation in AGGREGATIONS:
        run.cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, aggregation=aggregation))
        run.optimizer = torch.optim.SGD(run.params, lr=0.0)
        run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda _: 1.0)
        stats = grpo_update(run, rollout, advantages, ref_logp, old_logp)
        single[aggregation] = {"stats": stats, "grads": [p.grad.clone() for p in run.params]}
    assert single["token"]["stats"]["clipfrac_low"] > 0 and single["token"]["stats"]["clipfrac_high"] > 0

    torchrun(2, "update", str(job))
    rank0, rank1 = ranks(job)
    for aggregation in AGGREGATIONS:
        one, zero, first = single[aggregation], rank0[aggregation], rank1[aggregation]
        assert all(torch.equal(a, b) for a, b in zip(zero["grads"], first["grads"]))  # bit-identical replicas
        assert zero["stats"] == first["stats"]
        for got, expected in zip(zero["grads"], one["grads"]):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
        assert zero["stats"] == pytest.approx(one["stats"], rel=1e-5, abs=1e-7), aggregation


TRAIN_ARGS = ("--method", "rarl", "--model", "tiny", "--dataset", "synthetic", "--samples", "16",
              "--prompts-per-step", "4", "--group-size", "4", "--mini-batch-size", "4", "--max-completion-length",
              "12", "--no-gradient-checkpointing", "--lora-dropout", "0", "--learning-rate", "5e-3",
              "--device", "cpu", "--max-steps", "3", "--save-steps", "2")


def resumable_copy(source: Path, target: Path, step: int) -> None:
    """`source` as it was right after saving checkpoint-STEP (metrics of later steps are dropped on resume)."""
    target.mkdir()
    shutil.copytree(source / f"checkpoint-{step}", target / f"checkpoint-{step}")
    for name in ("config.json", "metrics.jsonl", "completions.jsonl"):
        shutil.copy(source / name, target / name)


@pytest.mark.slow
def test_torchrun_training_keeps_replicas_identical_writes_once_and_resumes(tmp_path, tiny_path):
    ensure_synthetic()  # built once here, not raced for by the ranks
    out = tmp_path / "run"
    torchrun(2, "train", str(tmp_path), *TRAIN_ARGS, "--output-dir", str(out))
    rank0, rank1 = ranks(tmp_path)
    # the same LoRA init on both ranks (same seed before inject), then different sampling streams
    assert rank0["initial"].keys() == rank1["initial"].keys()
    assert all(torch.equal(rank0["initial"][k], rank1["initial"][k]) for k in rank0["initial"])
    assert not torch.equal(rank0["sampling_rng"], rank1["sampling_rng"])
    # identical replicas after 3 updates, equal to the checkpoint rank 0 wrote
    assert any(not torch.equal(rank0["final"][k], rank0["initial"][k]) for k in rank0["final"])
    assert all(torch.equal(rank0["final"][k], rank1["final"][k]) for k in rank0["final"])
    saved = load_file(out / "checkpoint-3" / "adapter_model.safetensors")
    assert all(torch.equal(saved[PEFT_PREFIX + k], v) for k, v in rank0["final"].items())
    # one writer: rank 0 saved each checkpoint, metrics hold one line per step
    assert (rank0["saves"], rank1["saves"]) == ([2, 3], [])
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "checkpoint-3", "completions.jsonl",
                                                      "config.json", "metrics.jsonl"]
    straight = read_metrics(out / "metrics.jsonl")
    assert [m["step"] for m in straight] == [1, 2, 3]
    completions = read_metrics(out / "completions.jsonl")  # both ranks' 2 prompts x G 4, rank 0's first
    assert [c["step"] for c in completions] == [1] * 16 + [2] * 16 + [3] * 16
    assert completions[0]["completion"].startswith(straight[0]["sample_completion"])
    assert len(torch.load(out / "checkpoint-2" / "trainer_state.pt", weights_only=False)["rng"]) == 2

    # resume on 2 ranks from checkpoint-2: every rank gets its own RNG state back, so step 3 repeats exactly
    again = tmp_path / "again"
    resumable_copy(out, again, step=2)
    torchrun(2, "train", str(tmp_path), *TRAIN_ARGS, "--output-dir", str(again), "--resume")
    resumed = read_metrics(again / "metrics.jsonl")
    assert [m["step"] for m in resumed] == [1, 2, 3]
    for x, y in zip(straight[2:], resumed[2:], strict=True):
        for key in x:
            if isinstance(x[key], str):
                assert x[key] == y[key], (x["step"], key)
            elif not key.startswith("time/") and key != "peak_memory_mb":
                assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-9), (x["step"], key)
    assert all(torch.equal(saved[k], v) for k, v in load_file(again / "checkpoint-3" /
                                                               "adapter_model.safetensors").items())
    assert read_metrics(again / "completions.jsonl") == completions

    # resume on 1 process: it takes rank 0's RNG state and the whole batch; the run completes
    alone = tmp_path / "alone"
    resumable_copy(out, alone, step=2)
    command = [sys.executable, "train.py", *TRAIN_ARGS, "--output-dir", str(alone), "--resume"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [m["step"] for m in read_metrics(alone / "metrics.jsonl")] == [1, 2, 3]
    assert json.loads((alone / "config.json").read_text())["optim"]["prompts_per_step"] == 4
