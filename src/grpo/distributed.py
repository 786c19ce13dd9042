"""Data-parallel training over several processes, launched by torchrun (one process per GPU).

    torchrun --nproc_per_node 4 train.py --prompts-per-step 16 ...

Each of the W ranks holds a full replica of the policy and takes a contiguous share of B / W of the
step's B prompts (a group of G completions never spans ranks, so eq. 2 needs no communication). A
step on W ranks computes what a single process computes on the whole batch:

- gradients: every rank weights its tokens' losses against the GLOBAL batch (all ranks' completions
  and completion tokens: loss.token_weights), so the sum of the ranks' accumulated gradients is the
  whole batch's gradient. `all_reduce_gradients` forms that sum after
  accumulation; gradient clipping and AdamW then see identical gradients on every rank, and the
  replicas stay identical without ever exchanging weights.
- statistics: the loss statistics are summed the same way; the remaining metrics are combined by
  `combine_metrics` (means over equal shares, max for times and memory).

Why an explicit all-reduce rather than wrapping the model in DistributedDataParallel: the loop calls
the rollout engine, the language model and the chunked lm_head directly, switches adapters off for the
reference pass and accumulates over mini-batches; DDP only reduces gradients inside `forward` of its
wrapper (and needs `no_sync` for accumulation and care with gradient checkpointing). One all-reduce
after accumulation is the same arithmetic as DDP's (a sum of per-rank gradients), works unchanged
for LoRA and for full fine-tuning, and leaves the single-process code as it is. It does not overlap
communication with the backward pass as DDP's buckets do; for LoRA the gradients are a few MB, and
a GRPO step is dominated by generation. It does not shard parameters or optimizer state either
(FSDP): every rank needs the memory a single-GPU run needs.

With WORLD_SIZE unset or 1 (plain `python train.py`) nothing is initialised and every function
here is the identity: rank 0 of 1.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device: str | None) -> torch.device | None:
    """Join torchrun's process group; returns this rank's device, or None when not launched by torchrun.

    torchrun sets WORLD_SIZE, RANK and LOCAL_RANK (and MASTER_ADDR / MASTER_PORT). The backend is
    NCCL on GPUs and gloo on CPUs (`device` 'cpu', or no GPU); rank r of a node uses cuda:LOCAL_RANK.
    Calling it again in a process that has joined already returns the same device.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return None
    use_cuda = device != "cpu" and torch.cuda.is_available()
    rank_device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(rank_device)  # NCCL's collectives run on the current device
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rank_device


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the one process that writes config.json, metrics.jsonl and checkpoints."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def check_batch_split(num_samples: int, prompts_per_step: int) -> None:
    """Fail at start-up unless every step's prompts split evenly over the ranks.

    A step has prompts_per_step prompts, except the last step of an epoch, which has the remainder
    num_samples % prompts_per_step. Equal shares keep the ranks in lock-step and make a mean over
    ranks the mean over the global batch.
    """
    last = num_samples % prompts_per_step
    for size in {prompts_per_step, last} - {0}:
        if size % world_size():
            raise ValueError(
                f"a step of {size} prompts (prompts_per_step {prompts_per_step}, {num_samples} samples) does not "
                f"split over {world_size()} ranks: choose --prompts-per-step (and --samples) divisible by the "
                f"number of processes")


def rank_share(items: list) -> list:
    """This rank's contiguous share of the global batch: items [r * n / W, (r + 1) * n / W)."""
    if len(items) % world_size():
        raise ValueError(f"{len(items)} prompts do not split evenly over {world_size()} ranks")
    share = len(items) // world_size()
    return items[rank() * share:(rank() + 1) * share]


def sampling_seed(seed: int) -> int:
    """Seed of this rank's sampling stream, distinct per rank (and from `seed`, which initialised LoRA).

    Ranks that drew the same random numbers would sample completions in lock-step: the same
    token choices wherever their prompts' distributions agree.
    """
    return seed * 1_000 + 1 + rank()


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum each parameter's .grad over the ranks, in place (launched together, then awaited).

    A parameter that got no gradient on this rank contributes zeros, so every rank joins the same
    collectives in the same order.
    """
    if not dist.is_initialized():
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    handles = [dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, async_op=True) for p in params]
    for handle in handles:
        handle.wait()


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """{name: sum over ranks of value}, in float64 (exact for token counts) on the backend's device."""
    if not dist.is_initialized():
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    summed = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return dict(zip(values, summed.tolist()))


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (any picklable object)."""
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def combine_metrics(per_rank: list[dict]) -> dict:
    """One step's metrics for the global batch, from each rank's metrics over its equal share.

    - time/* and peak_memory_mb: the maximum (the slowest rank sets the step's pace);
    - text (a sample completion): rank 0's;
    - other numbers: the mean over ranks, which is the global batch's mean because every rank
      holds the same number of prompts, completions and groups.
    A value all ranks agree on passes through unchanged: the step, the learning rate and what the
    step already reduced over ranks (loss statistics, gradient norm, reward and its std), whose
    mean would only add rounding.
    """
    combined = {}
    for key, first in per_rank[0].items():
        values = [metrics[key] for metrics in per_rank]
        if isinstance(first, str) or all(v == first for v in values):
            combined[key] = first
        elif key.startswith("time/") or key == "peak_memory_mb":
            combined[key] = max(values)
        else:
            combined[key] = sum(values) / len(values)
    return combined


def reduce_metrics(metrics: dict) -> dict:
    """`combine_metrics` over all ranks' metrics of this step; the metrics themselves on one process."""
    if not dist.is_initialized():
        return metrics
    return combine_metrics(gather_objects(metrics))


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """The rank-ordered concatenation of every rank's [n, ...] tensor, on the CPU: the global batch's rows."""
    return torch.cat([t.cpu() for t in gather_objects(tensor.cpu())])


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
