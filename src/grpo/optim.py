"""AdamW over the trainable parameters, the warm-up + decay learning-rate schedule, and the step that
closes each update of every method.

Precision: AdamW moves a weight by about lr per step. bf16 keeps 8 significant bits, so a bf16 weight
of magnitude |w| only changes when the step exceeds ~|w| / 256: at the full fine-tuning rate lr = 1e-6
no weight above ~3e-4 would ever move. Trainable parameters that are not fp32 (the -full methods under
`--dtype bfloat16`) are therefore stepped as fp32 master copies (MasterWeightAdamW), which accumulate
every small step and are rounded into the model's bf16 weights after each one. LoRA factors are fp32
already (src/models/lora.py) and get torch's AdamW.
"""
from __future__ import annotations

import math

import torch

from src.grpo.distributed import all_reduce_gradients

BETAS, EPS = (0.9, 0.999), 1e-8


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """torch's AdamW when every parameter is fp32, else AdamW on fp32 master copies (MasterWeightAdamW)."""
    if all(p.dtype == torch.float32 for p in params):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=BETAS, eps=EPS)
    return MasterWeightAdamW(params, lr=lr, weight_decay=weight_decay, betas=BETAS, eps=EPS)


class MasterWeightAdamW(torch.optim.Optimizer):
    """AdamW (Loshchilov & Hutter 2019, torch.optim.AdamW's update) on fp32 master copies of the model's
    low-precision parameters ("mixed-precision training", Micikevicius et al. 2018).

        g = grad.float();  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        master = master (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
        param = round(master)                     (to the parameter's dtype, bf16)

    The model computes with `param`; the optimizer's own parameters are the masters, so its state
    (m, v) is fp32 and its state_dict carries the masters' values ("master_weights"): a resumed run
    continues from the fp32 weights, not from their rounding. Gradients are the model's (bf16), summed
    over ranks and clipped there by optimizer_step, and read in fp32 here. Memory per trained
    parameter: 2 (bf16) + 2 (grad) + 12 (master, m, v) bytes, against 16 for fp32 training.
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, betas=BETAS, eps: float = EPS):
        self.model_params = list(params)
        masters = [p.detach().to(torch.float32, copy=True) for p in self.model_params]
        super().__init__(masters, dict(lr=lr, weight_decay=weight_decay, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MasterWeightAdamW takes no closure")
        masters = (master for group in self.param_groups for master in group["params"])
        groups = (group for group in self.param_groups for _ in group["params"])
        for param, master, group in zip(self.model_params, masters, groups):
            if param.grad is None:
                continue
            grad = param.grad.float()
            state = self.state[master]
            if not state:
                state.update(step=0, exp_avg=torch.zeros_like(master), exp_avg_sq=torch.zeros_like(master))
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            state["step"] += 1
            t = state["step"]
            master.mul_(1 - lr * group["weight_decay"])                       # decoupled weight decay
            state["exp_avg"].lerp_(grad, 1 - beta1)                           # m
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v
            denominator = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
            master.addcdiv_(state["exp_avg"], denominator, value=-lr / (1 - beta1**t))
            param.copy_(master)                                               # round into the model's dtype

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.model_params:
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.zero_()

    def state_dict(self) -> dict:
        """torch's optimizer state plus "master_weights", the fp32 masters themselves: like m and v in
        torch's state_dict they are the live tensors, not copies (a copy of Qwen2-VL-2B's 1.54 B trained
        parameters' masters is 5.75 GiB of GPU memory at every checkpoint); torch.save writes them one
        tensor at a time, each through its own CPU copy."""
        state = super().state_dict()
        state["master_weights"] = [m.detach() for g in self.param_groups for m in g["params"]]
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop("master_weights")
        super().load_state_dict(state_dict)
        with torch.no_grad():
            for param, master, value in zip(self.model_params, (m for g in self.param_groups for m in g["params"]),
                                            saved):
                master.copy_(value)
                param.copy_(master)


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
