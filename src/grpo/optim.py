"""AdamW over the trainable parameters, the warm-up + decay learning-rate schedule, and the step that
closes each update of every method."""
from __future__ import annotations

import math

import torch

from src.grpo.distributed import all_reduce_gradients


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8)


def lr_multiplier(update: int, total_updates: int, warmup_updates: int, schedule: str) -> float:
    """Factor on the base learning rate before optimizer update `update` (0-based).

    Linear warm-up from 1/(warmup+1) to 1, then: constant, linear decay to 0, or cosine decay to 0
    over the remaining updates.
    """
    if update < warmup_updates:
        return (update + 1) / (warmup_updates + 1)
    if schedule == "constant":
        return 1.0
    progress = (update - warmup_updates) / max(1, total_updates - warmup_updates)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    raise ValueError(f"unknown schedule {schedule!r}")


def make_scheduler(optimizer, total_updates: int, warmup_ratio: float, schedule: str):
    warmup = int(round(warmup_ratio * total_updates))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda update: lr_multiplier(update, total_updates, warmup, schedule))


def optimizer_step(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, scheduler,
                   max_grad_norm: float) -> float:
    """After this rank accumulated its share of the batch's gradient: sum the ranks' shares (each was
    weighted against the global batch), clip the norm, one AdamW step and one schedule step.
    Returns the gradient norm before clipping."""
    all_reduce_gradients(params)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm).item()
    optimizer.step()
    scheduler.step()
    return grad_norm
