"""The reference policy pi_ref of eq. 3's KL term: the policy the run started from, decided once.

- LoRA from a base model: the same model with its adapters disabled (no second copy of the weights);
- LoRA continuing an existing adapter (--model ADAPTER_DIR): the adapter's starting weights swapped in
  for the reference pass (only the adapter's few weights are kept twice), never silently the base;
- full fine-tuning (grpo-full): a frozen copy of the starting model;
- no reference at all when beta = 0 (`make_reference` returns None).
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from src.grpo.forward import rollout_logprobs
from src.models.lora import disabled_adapters, lora_state_dict, swapped_adapters


@dataclass
class Reference:
    """`model`, inside `context()`, computes pi_ref."""

    model: torch.nn.Module
    context: Callable[[], AbstractContextManager]
    kind: str                    # "adapters disabled", "starting adapter" or "frozen copy", for the log

    def logprobs(self, rollout, temperature: float, mini_batch_size: int, prefix_sharing: bool = True) -> torch.Tensor:
        """log pi_ref of every completion token of the rollout: [N, L] fp32 (src/grpo/forward.py)."""
        self.model.eval()
        with self.context():
            return rollout_logprobs(self.model, rollout, temperature, mini_batch_size, prefix_sharing)


def make_reference(model: torch.nn.Module, uses_lora: bool, continuing_adapter: bool) -> Reference:
    """The reference for a run that trains `model` (call before training changes it)."""
    if not uses_lora:
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
        return Reference(frozen, contextlib.nullcontext, "frozen copy")
    if continuing_adapter:
        start = {k: v.detach().clone() for k, v in lora_state_dict(model).items()}
        return Reference(model, lambda: swapped_adapters(model, start), "starting adapter")
    return Reference(model, lambda: disabled_adapters(model), "adapters disabled")
