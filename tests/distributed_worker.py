"""The per-rank side of tests/test_distributed.py, launched by `python -m torch.distributed.run`.

    ... tests/distributed_worker.py update DIR          one grpo_update on this rank's share of DIR/job.pt
    ... tests/distributed_worker.py train DIR ARGS...   train.py ARGS, recording what this rank did

Each rank writes DIR/rank{R}.pt; the test compares the ranks with each other and with one process.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from src.grpo import distributed, trainer  # noqa: E402
from src.grpo.config import config_from_dict  # noqa: E402
from src.grpo.step import grpo_update  # noqa: E402
from src.models.lora import lora_state_dict  # noqa: E402


def rank_rollout(rollout, rows: list[int]):
    """Rows `rows` of a rollout, padded only to their own longest completion, as this rank's rollout would be."""
    width = int(rollout.completion_mask[rows].sum(1).max())                              # L of this share
    return dataclasses.replace(
        rollout, prompt_index=[rollout.prompt_index[r] for r in rows], completion_ids=rollout.completion_ids[rows, :width],
        completion_mask=rollout.completion_mask[rows, :width], truncated=rollout.truncated[rows],
        sampler_logp=rollout.sampler_logp[rows, :width], texts=[rollout.texts[r] for r in rows])


def update(directory: Path) -> dict:
    """Per aggregation: this rank's summed gradients and statistics after grpo_update on its share."""
    import src.rewards.bertscore

    src.rewards.bertscore.load_bertscorer = lambda *args, **kwargs: None  # the rollout is given: nothing to score
    job = torch.load(directory / "job.pt", weights_only=False)
    cfg = config_from_dict(job["config"])
    run = trainer.setup(cfg)
    run.policy.model.load_state_dict(job["lora"], strict=False)
    rows = distributed.rank_share(list(range(job["rollout"].completion_ids.shape[0])))
    share = rank_rollout(job["rollout"], rows)
    width = share.completion_ids.shape[1]
    results = {}
    for aggregation in job["aggregations"]:
        run.cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, aggregation=aggregation))
        run.optimizer = torch.optim.SGD(run.params, lr=0.0)  # lr 0: gradients computed, weights untouched
        run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda _: 1.0)
        stats = grpo_update(run, share, job["advantages"][rows], job["ref_logp"][rows, :width],
                                    job["old_logp"][rows, :width])
        results[aggregation] = {"stats": stats, "grads": [p.grad.clone() for p in run.params]}
    return results


def train(argv: list[str]) -> dict:
    """train.py ARGV on this rank; returns its LoRA weights at start and end, RNG state and checkpoint saves."""
    import train as train_script

    record = {"saves": []}
    real_setup, real_save = trainer.setup, trainer.save_checkpoint

    def recording_setup(cfg, source):
        run = real_setup(cfg, source)
        record["run"] = run
        record["initial"] = {k: v.clone() for k, v in lora_state_dict(run.policy.model).items()}
        record["sampling_rng"] = torch.get_rng_state()
        return run

    def recording_save(output_dir, step, *args):
        record["saves"].append(step)
        return real_save(output_dir, step, *args)

    trainer.setup, trainer.save_checkpoint = recording_setup, recording_save
    train_script.main(argv)
    run = record.pop("run")
    record["final"] = lora_state_dict(run.policy.model)
    return record


def main() -> None:
    mode, directory = sys.argv[1], Path(sys.argv[2])
    result = update(directory) if mode == "update" else train(sys.argv[3:])
    torch.save(result, directory / f"rank{os.environ['RANK']}.pt")  # train.py has left the process group
    distributed.close_distributed()


if __name__ == "__main__":
    main()
