"""Checkpoints: OUTPUT/checkpoint-STEP/ with the weights and everything needed to resume exactly.

- LoRA methods: the adapter in PEFT format (adapter_config.json + adapter_model.safetensors);
  grpo-full: the whole model (save_pretrained), with tokenizer and image processor beside it, so the
  directory is itself a model `evaluate.py --model` can load.
- trainer_state.pt: step, optimizer and schedule state, every RNG state (python, numpy, torch CPU
  and CUDA) of every rank, a list with one entry per process. The data position is a pure function
  of the step (see trainer.batch_for_step), so the step is all the position there is.
A checkpoint is written to checkpoint-STEP.tmp and renamed when complete: a crash mid-write leaves
no directory that looks finished, and `latest_checkpoint` only ever sees complete ones.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from src.models.lora import LoRAConfig
from src.models.peft_io import load_adapter, save_adapter

STATE_FILE = "trainer_state.pt"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: Path, step: int, policy, lora: LoRAConfig | None, base_model: str,
                    optimizer, scheduler, rng_states: list[dict]) -> Path:
    """Write OUTPUT/checkpoint-STEP; rng_states: `rng_state()` of each rank, in rank order."""
    final = output_dir / f"checkpoint-{step}"
    staging = output_dir / f"checkpoint-{step}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if lora is not None:
        save_adapter(policy.model, staging, lora, base_model=base_model)
    else:
        policy.model.save_pretrained(staging)
        policy.tokenizer.save_pretrained(staging)
        policy.image_processor.save_pretrained(staging)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_states}, staging / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)  # re-saving a step (a resumed run's final save) replaces it
    os.replace(staging, final)
    return final


def latest_checkpoint(output_dir: Path) -> Path | None:
    steps = [(int(m.group(1)), p) for p in output_dir.glob("checkpoint-*")
             if (m := CHECKPOINT.match(p.name)) and (p / STATE_FILE).is_file()]
    return max(steps)[1] if steps else None


def load_checkpoint(directory: Path, policy, uses_lora: bool, optimizer, scheduler) -> tuple[int, list[dict]]:
    """Restore weights, optimizer and schedule from `directory`.

    Returns the step it was saved at and the saved RNG states, one per rank of the run that saved it:
    the caller restores its own rank's (`set_rng_state`).
    """
    if uses_lora:
        load_adapter(policy.model, directory)
    else:  # read through from_pretrained, which maps the saved key layout back to the module names
        reloaded = type(policy.model).from_pretrained(directory, dtype=policy.model.dtype)
        policy.model.load_state_dict(reloaded.state_dict())
        del reloaded
    # on the CPU, not on the device that saved it (every rank's cuda:0); load_state_dict moves
    # the optimizer state to each parameter's device
    trainer_state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(trainer_state["optimizer"])
    scheduler.load_state_dict(trainer_state["scheduler"])
    return trainer_state["step"], trainer_state["rng"]
