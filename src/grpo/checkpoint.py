"""Checkpoints: OUTPUT/checkpoint-STEP/ with the weights and everything needed to resume exactly.

- LoRA methods: the adapter in PEFT format (adapter_config.json + adapter_model.safetensors);
  grpo-full: the whole model (save_pretrained), with tokenizer and image processor beside it, so the
  directory is itself a model `evaluate.py --model` can load.
- trainer_state.pt: step, optimizer and schedule state, and the RNG states (python, numpy, torch CPU,
  and the CUDA generator of the device the process's model is on) of every rank, a list with one entry per
  process. The data position is a pure function of the step (see trainer.batch_for_step), so the
  step is all the position there is.
trainer_state.pt holds only tensors and plain values (numbers, strings, lists, dicts), and is read
with `torch.load(weights_only=True)`: a run folder from someone else cannot run code on --resume
(pickle would call whatever the file names); such a file is refused as damaged, naming what it asked for.
A checkpoint is written to checkpoint-STEP.tmp, forced to disk, and renamed when complete: a crash
mid-write leaves no directory that looks finished. A write that fails (a full disk) removes the
partial directory and raises a WriteError naming the file; the previous checkpoint stays the latest.

`resume_checkpoint` picks what `--resume` continues from: the newest checkpoint whose files all read
(a disk error or a hand-edited file can still damage a finished one); a newer one that does not is
skipped with a warning naming the file and what is wrong with it.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from src.files import WriteError, writing
from src.models.lora import LoRAConfig, load_adapter, save_adapter

STATE_FILE = "trainer_state.pt"
STATE_KEYS = ("step", "optimizer", "scheduler", "rng")
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message names the file and what is wrong."""


def rng_state(device: torch.device) -> dict:
    """This process's random generators as tensors and plain numbers, which weights_only loading reads.

    Python's and numpy's Mersenne Twisters are 624 32-bit words and a position (kept as int64
    tensors); CUDA's is the generator of `device`, the one the model samples with (the process's own
    GPU under torchrun, whatever --device names without it), and only that one, so that a run resumes
    on any number of GPUs (each rank restores the state its own device had).
    """
    _, words, gauss = random.getstate()  # (version 3, 624 words + position, cached gauss or None)
    _, keys, position, has_gauss, cached_gauss = np.random.get_state()
    state = {"python": torch.tensor(words, dtype=torch.int64), "python_gauss": gauss,
             "numpy": torch.from_numpy(keys.astype(np.int64)), "numpy_position": int(position),
             "numpy_gauss": float(cached_gauss) if has_gauss else None,
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore `rng_state`'s generators; the saved CUDA state goes to `device`'s generator."""
    random.setstate((3, tuple(state["python"].tolist()), state["python_gauss"]))
    gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_position"],
                         int(gauss is not None), gauss or 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(output_dir: Path, step: int, policy, lora: LoRAConfig | None, base_model: str,
                    optimizer, scheduler, rng_states: list[dict]) -> Path:
    """Write OUTPUT/checkpoint-STEP; rng_states: `rng_state()` of each rank, in rank order."""
    final = output_dir / f"checkpoint-{step}"
    staging = output_dir / f"checkpoint-{step}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with writing(staging):
            staging.mkdir(parents=True)
            if lora is not None:
                save_adapter(policy.model, staging, lora, base_model=base_model)
            else:
                policy.model.save_pretrained(staging)
                policy.tokenizer.save_pretrained(staging)
                policy.image_processor.save_pretrained(staging)
        with writing(staging / STATE_FILE):
            torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": rng_states}, staging / STATE_FILE)
        with writing(staging):
            sync_files(staging)  # on disk before the rename makes the directory look finished
    except WriteError as error:
        shutil.rmtree(staging, ignore_errors=True)  # give a full disk its space back
        previous = latest_checkpoint(output_dir)
        kept = f"{previous.name} stays the latest checkpoint" if previous else "there is no earlier checkpoint"
        raise WriteError(f"{error}. checkpoint-{step} was not written; {kept}. Free some space, then rerun "
                         "with --resume") from error
    shutil.rmtree(final, ignore_errors=True)  # re-saving a step (a resumed run's final save) replaces it
    os.replace(staging, final)
    return final


def sync_files(directory: Path) -> None:
    """fsync every file in `directory`, then the directory itself."""
    for path in directory.iterdir():
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def checkpoint_step(directory: Path) -> int:
    return int(CHECKPOINT.match(directory.name).group(1))


def checkpoints(output_dir: Path) -> list[Path]:
    """Every checkpoint-STEP directory in `output_dir`, newest first (a .tmp one is not finished)."""
    found = [p for p in output_dir.glob("checkpoint-*") if CHECKPOINT.match(p.name) and p.is_dir()]
    return sorted(found, key=checkpoint_step, reverse=True)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint with its trainer state (whether its files read: see `resume_checkpoint`)."""
    return next((p for p in checkpoints(output_dir) if (p / STATE_FILE).is_file()), None)


def resume_checkpoint(output_dir: Path) -> Path | None:
    """What `--resume` continues from: the newest checkpoint whose files all read, None if there is none.

    Each newer checkpoint passed over is named in one warning with its damaged file; when no
    checkpoint reads, CheckpointError lists them all (starting over would silently drop the run's logs).
    """
    skipped = []
    for directory in checkpoints(output_dir):
        problem = checkpoint_problem(directory)
        if problem is None:
            if skipped:
                warnings.warn(f"--resume: skipped {'; '.join(skipped)}; resuming from {directory}", stacklevel=2)
            return directory
        skipped.append(f"{directory.name} ({problem})")
    if skipped:
        raise CheckpointError(f"--resume: no checkpoint in {output_dir} can be read: {'; '.join(skipped)}. Restore "
                              "one, or start over without --resume (which rewrites the run's logs)")
    return None


def checkpoint_problem(directory: Path) -> str | None:
    """What makes `directory` unusable to resume from, naming the file; None when every file reads.

    Checks structure without loading the weights: JSON files parse; each safetensors file's header
    parses and its tensors fill the file exactly (a cut file does not); trainer_state.pt is a complete
    torch.save archive (its zip directory sits at the end) of tensors and plain values (`read_state`)
    holding the step its directory is named for.
    Flipped bits inside tensor data are beyond what these formats can tell.
    """
    state_path = directory / STATE_FILE
    if not state_path.is_file():
        return f"{state_path} is missing"
    if not (directory / "adapter_config.json").is_file() and not (directory / "config.json").is_file():
        return f"{directory} holds neither adapter_config.json nor config.json"
    for path in sorted(directory.glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            return f"{path} is not valid JSON ({error})"
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        return f"{directory} holds no .safetensors weights"
    for path in weights:
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError) as error:
            return f"{path} is cut short or not a safetensors file ({error})"
    try:
        state = read_state(state_path, mmap=True)  # tensors stay on disk
    except CheckpointError as error:
        return str(error)
    missing = [key for key in STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        return f"{state_path} lacks {', '.join(missing)}"
    if state["step"] != checkpoint_step(directory):
        return f"{state_path} holds step {state['step']}, not {checkpoint_step(directory)}"
    return None


def load_checkpoint(directory: Path, policy, uses_lora: bool, optimizer, scheduler) -> tuple[int, list[dict]]:
    """Restore weights, optimizer and schedule from `directory`.

    Returns the step it was saved at and the saved RNG states, one per rank of the run that saved it:
    the caller restores its own rank's (`set_rng_state`).
    """
    try:
        if uses_lora:
            load_adapter(policy.model, directory)
        else:  # read through from_pretrained, which maps the saved key layout back to the module names
            reloaded = type(policy.model).from_pretrained(directory, dtype=policy.model.dtype)
            policy.model.load_state_dict(reloaded.state_dict())
            del reloaded
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"cannot load the weights in {directory}: {error}") from error
    # on the CPU, not on the device that saved it (every rank's cuda:0); load_state_dict moves
    # the optimizer state to each parameter's device
    trainer_state = read_state(directory / STATE_FILE)
    optimizer.load_state_dict(trainer_state["optimizer"])
    scheduler.load_state_dict(trainer_state["scheduler"])
    return trainer_state["step"], trainer_state["rng"]


def read_state(path: Path, mmap: bool = False) -> dict:
    """trainer_state.pt, read with weights_only=True: tensors and plain values, never code.

    A file whose pickle names a function or class (os.system, a numpy array) raises CheckpointError
    saying what it asked for; so does a damaged or cut one.
    """
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is cut short or not a file torch.save wrote (no zip directory at its end)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path} cannot be read as tensors and plain values ({_asked_for(error)}); it was "
                              "not loaded, since a file that asks for more could run code") from None
    except Exception as error:  # a damaged archive fails in many ways (RuntimeError, EOFError, ...)
        raise CheckpointError(f"{path} cannot be read ({type(error).__name__}: {' '.join(str(error).split())})") \
            from None


def _asked_for(error: pickle.UnpicklingError) -> str:
    """The line of torch's weights_only refusal that names the global, without its advice to load unsafely."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[-1] if lines else "")
