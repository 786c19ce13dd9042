"""Memory of the -full methods in bf16: the frozen reference, one GRPO step and a checkpoint save, on CPU.

    python -m benchmarks.full_memory                 # Qwen2-VL-2B's widths: 2 of its 28 layers, all 32 vision blocks
    python -m benchmarks.full_memory --model tiny    # a smoke test of this script (a benchmark test runs it)

grpo-full trains the whole language model, so beside the bf16 weights it holds their gradients, fp32 master
weights with AdamW's m and v (src/grpo/optim.py: MasterWeightAdamW, 12 bytes per trained parameter) and a
frozen copy of the starting model as the KL reference. Two sides, each on a fresh model built from the same
seed, in one process:

  copies  the reference is copy.deepcopy of the whole model, and the optimizer's state_dict clones every
          fp32 master (what the trainer did before: `copy_reference`, `cloned_state_dict` below)
  ours    make_reference, whose copy leaves out the vision tower (the reference reads the image features
          the rollout computed, and never runs one), and MasterWeightAdamW.state_dict, which hands torch.save
          the masters themselves (it writes them one tensor at a time)

Each side: build the model, prepare the grpo-full run as the trainer does (trainer.prepare_run: the reference,
gradient checkpointing, the optimizer), one step in grpo_step's order (the engine samples B x G completions
of L tokens, every one forced to L; the reference's log-probs; one update, advantages fixed), then
save_checkpoint as the trainer calls it (written to disk), and trainer_state.pt's torch.save alone (its
bytes dropped). Memory is the resident set
above the process's before the model was built (src/memory.py: VmHWM, reset per measurement); glibc is told
to give every allocation above 64 KiB its own mapping, returned when freed, so that the resident set follows
torch's live tensors and one side leaves nothing behind for the next to reuse unseen.

The CPU's resident set stands for the GPU's allocated memory here: the copies it counts are the ones the
trainer makes on the model's device. What the two changes save at Qwen2-VL-2B's full size follows from
parameter counts (the vision tower's in bf16; the trained parameters' masters in fp32), printed beside the
measured figures; the figures on a GPU come from gpu_check, not from here.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import functools
import gc
import io
import json
import tempfile
import time
from pathlib import Path

import torch

from src.memory import peak_bytes, reset_peak, resident_bytes
from src.models.loading import Policy, load_policy

MIB, GIB = 2**20, 2**30
SIDES = ("copies", "ours")


def map_large_allocations() -> None:
    """glibc: every allocation above 64 KiB in its own mapping, unmapped when freed (by default the
    threshold grows to 32 MiB as large blocks are freed, and freed blocks below it stay resident)."""
    M_MMAP_THRESHOLD = -3
    with contextlib.suppress(OSError):  # not glibc: the resident set is then only an upper bound
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 64 * 1024)


def copy_reference(model: torch.nn.Module):
    """The -full reference as a copy of the whole model, vision tower included (the `copies` side)."""
    from src.grpo.step import Reference

    return Reference(copy.deepcopy(model).eval().requires_grad_(False), contextlib.nullcontext, "frozen copy")


def cloned_state_dict(optimizer) -> dict:
    """MasterWeightAdamW's state with every fp32 master cloned (the `copies` side)."""
    state = torch.optim.Optimizer.state_dict(optimizer)
    state["master_weights"] = [m.detach().clone() for g in optimizer.param_groups for m in g["params"]]
    return state


def build_policy(args: argparse.Namespace, tokenizer, image_processor) -> Policy:
    """The tiny model, or Qwen2-VL-2B's widths with --layers language-model layers and --vision-depth vision
    blocks, random weights from seed 0, in bf16 on the CPU."""
    if args.model == "tiny":
        return load_policy("tiny", device="cpu", dtype=torch.bfloat16)
    from transformers import Qwen2VLForConditionalGeneration

    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration._from_config(scaled_config(args), dtype=torch.bfloat16,
                                                         attn_implementation="sdpa")
    return Policy(model=model, tokenizer=tokenizer, image_processor=image_processor,
                  name=f"qwen2-vl-2b-widths-{args.layers}-layers")


def scaled_config(args: argparse.Namespace):
    from benchmarks.qwen2_vl_2b import qwen2_vl_2b_config

    config = qwen2_vl_2b_config()
    config.text_config.num_hidden_layers = args.layers
    config.text_config.layer_types = config.text_config.layer_types[:args.layers]
    config.vision_config.depth = args.vision_depth
    return config


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters of the vision tower (with its merger) and of the rest, which grpo-full trains (tied weights once)."""
    vision = sum(p.numel() for p in model.model.visual.parameters())
    return {"vision": vision, "trained": sum(p.numel() for p in model.parameters()) - vision}


def full_size_savings() -> dict[str, float]:
    """What the two changes save at Qwen2-VL-2B's full size, from its parameter counts (no memory allocated)."""
    from transformers import Qwen2VLForConditionalGeneration

    from benchmarks.qwen2_vl_2b import qwen2_vl_2b_config

    with torch.device("meta"):
        counts = parameter_counts(Qwen2VLForConditionalGeneration._from_config(qwen2_vl_2b_config(),
                                                                               dtype=torch.bfloat16))
    return {"vision_parameters": counts["vision"], "trained_parameters": counts["trained"],
            "reference_gib": counts["vision"] * 2 / GIB,     # the vision tower's bf16 copy
            "checkpoint_gib": counts["trained"] * 4 / GIB}   # a clone of every fp32 master


def full_config(args: argparse.Namespace, output_dir: str):
    from src.grpo.config import LossConfig, ModelConfig, OptimConfig, RolloutConfig, RunConfig, TrainConfig

    return TrainConfig(
        run=RunConfig(method="grpo-full", output_dir=output_dir, device="cpu"),
        model=ModelConfig(model=args.model, dtype="bfloat16"),
        rollout=RolloutConfig(group_size=args.group_size, max_completion_length=args.length),
        loss=LossConfig(beta=0.04),
        optim=OptimConfig(prompts_per_step=args.prompts, mini_batch_size=args.group_size, learning_rate=1e-6,
                          warmup_ratio=0.0, schedule="constant"),
    )


def measure_side(side: str, args: argparse.Namespace, tokenizer, image_processor, base: int) -> dict:
    """Build, prepare, one step and one checkpoint on one side; resident-set figures above `base` bytes."""
    from benchmarks.bench_step import bench_samples, forced_length
    from src.data.prompts import TRAINING_PROMPTS
    from src.grpo import step as step_module
    from src.grpo import trainer
    from src.grpo.checkpoint import rng_state, save_checkpoint

    cpu = torch.device("cpu")
    figures: dict[str, float] = {}
    start = time.perf_counter()
    policy = build_policy(args, tokenizer, image_processor)
    figures["weights_mib"] = (resident_bytes("VmRSS") - base) / MIB
    figures["build_seconds"] = time.perf_counter() - start
    samples = bench_samples(args.prompts, args.image_size)
    names = [list(TRAINING_PROMPTS)[i % len(TRAINING_PROMPTS)] for i in range(args.prompts)]
    with tempfile.TemporaryDirectory(prefix="full-memory-") as scratch:
        cfg = full_config(args, scratch)
        make_reference = step_module.make_reference if side == "ours" else \
            lambda model, uses_lora, continuing: copy_reference(model)
        before = resident_bytes("VmRSS")
        with _replaced(trainer, "make_reference", make_reference):
            run = trainer.prepare_run(policy, cfg, samples)  # the reference, checkpointing, the optimizer
        figures["prepare_mib"] = (resident_bytes("VmRSS") - before) / MIB  # the reference and the fp32 masters
        if side == "copies":
            run.optimizer.state_dict = functools.partial(cloned_state_dict, run.optimizer)

        reset_peak(cpu)
        torch.manual_seed(0)
        started = time.perf_counter()
        with forced_length():
            rollout = step_module.sample_rollout(policy, samples, names, group_size=args.group_size,
                                                 max_completion_length=args.length, temperature=1.0)
        advantages = torch.linspace(-1.0, 1.0, rollout.completion_ids.shape[0])   # random weights tie every reward
        ref_logp = run.reference.logprobs(rollout, 1.0, args.group_size)
        step_module.grpo_update(run, rollout, advantages, ref_logp, None)
        figures["step_peak_mib"] = (peak_bytes(cpu) - base) / MIB
        figures["after_step_mib"] = (resident_bytes("VmRSS") - base) / MIB
        figures["step_seconds"] = time.perf_counter() - started

        reset_peak(cpu)
        save_checkpoint(Path(scratch), 1, policy, None, "random", run.optimizer, run.scheduler, [rng_state(cpu)])
        figures["checkpoint_peak_mib"] = (peak_bytes(cpu) - base) / MIB
        steady = reset_peak(cpu)  # trainer_state.pt's torch.save again, its bytes counted and dropped
        torch.save({"step": 1, "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict()},
                   Discard())
        figures["trainer_state_peak_mib"] = (peak_bytes(cpu) - base) / MIB
        figures["trainer_state_rise_mib"] = (peak_bytes(cpu) - steady) / MIB
    figures["parameters"] = parameter_counts(policy.model)
    figures["rows"], figures["completion_tokens"] = rollout.completion_ids.shape[0], int(rollout.completion_mask.sum())
    figures["seconds"] = time.perf_counter() - start
    del run, policy, rollout, ref_logp
    gc.collect()
    return figures


class Discard(io.RawIOBase):
    """A file that keeps nothing: torch.save's own memory, without the disk's time."""

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return len(data)


@contextlib.contextmanager
def _replaced(module, name: str, value):
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


FIGURES = (("prepare_mib", "prepare (reference + masters)"), ("step_peak_mib", "step peak"),
           ("checkpoint_peak_mib", "checkpoint peak"), ("trainer_state_rise_mib", "trainer_state.pt rise"))


def print_table(result: dict) -> None:
    settings, sides = result["settings"], result["sides"]
    shape = "" if settings["model"] == "tiny" else \
        f", {settings['layers']} layers, vision depth {settings['vision_depth']}"
    print(f"\n-full step memory, CPU resident set above the process's before the model ({settings['model']}{shape}, "
          f"bf16, B {settings['prompts']} x G {settings['group_size']} x L {settings['length']}):")
    print(f"{'MiB':<32}{'copies':>10}{'ours':>10}{'ours/copies':>13}{'saved':>9}")
    for key, label in FIGURES:
        copies, ours = sides["copies"][key], sides["ours"][key]
        print(f"{label:<32}{copies:>10,.0f}{ours:>10,.0f}{result['ratios'][key]:>13.2f}{copies - ours:>9,.0f}")
    counts = sides["ours"]["parameters"]
    print(f"here: vision tower {counts['vision']:,} parameters (bf16 copy {counts['vision'] * 2 / MIB:,.0f} MiB), "
          f"trained {counts['trained']:,} (fp32 masters {counts['trained'] * 4 / MIB:,.0f} MiB)")
    full = result["full_size"]
    print(f"at Qwen2-VL-2B's full size, by parameter count: the reference leaves out {full['reference_gib']:.2f} GiB "
          f"(vision tower {full['vision_parameters']:,} parameters), a checkpoint no longer clones "
          f"{full['checkpoint_gib']:.2f} GiB (masters of {full['trained_parameters']:,} parameters)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("qwen2-vl-2b-widths", "tiny"), default="qwen2-vl-2b-widths")
    parser.add_argument("--layers", type=int, default=2, help="language-model layers (Qwen2-VL-2B has 28)")
    parser.add_argument("--vision-depth", type=int, default=32, help="vision blocks (Qwen2-VL-2B has 32)")
    parser.add_argument("--prompts", type=int, default=1)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=16, help="completion tokens (every completion is this long)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    map_large_allocations()
    tokenizer = image_processor = None
    if args.model != "tiny":
        from benchmarks.qwen2_vl_2b import image_processor as qwen_image_processor, qwen_sized_tokenizer

        tokenizer, image_processor = qwen_sized_tokenizer(), qwen_image_processor()
    gc.collect()
    base = resident_bytes("VmRSS")
    sides = {side: measure_side(side, args, tokenizer, image_processor, base) for side in SIDES}
    result = {"settings": {**vars(args), "output": None if args.output is None else str(args.output),
                           "threads": torch.get_num_threads()},
              "sides": sides, "full_size": full_size_savings(),
              "ratios": {key: sides["ours"][key] / sides["copies"][key] if sides["copies"][key] > 0 else float("nan")
                         for key, _ in FIGURES}}
    print_table(result)
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
