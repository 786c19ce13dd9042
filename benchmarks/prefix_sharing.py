"""The shared-prefix forward against the unshared one: the update and the reference pass, time and peak memory.

    python -m benchmarks.prefix_sharing                   # CPU fp32, Qwen2-VL-2B widths, 2 layers, G 8 x 128 tokens
    python -m benchmarks.prefix_sharing --threads 1
    python -m benchmarks.prefix_sharing --device cuda --dtype bfloat16 --layers 28 --prompts 4 --length 512 \\
        --image-size 512                                  # gpu_check's prefix-sharing phase: the paper's step

The model is Qwen2-VL-2B-Instruct's language model at its widths (hidden 1536, 12 query / 2 KV heads, MLP
8960, vocabulary 151,936, M-RoPE [16, 24, 24]; benchmarks/qwen2_vl_2b.py) with --layers decoder layers
and random weights, LoRA r 8 on q, k, v, o (B != 0), gradient checkpointing on, as the trainer runs it.
The vision tower runs once per image before anything is timed (src/models/encoded_prompts.py), so it
is built one block deep: its features have the real shape (448 px -> 256 image tokens), and what is
timed is the language model. Prompts are the trainer's (system prompt, image, question) through
Qwen2-VL's own tokenizer; each of the G completions per prompt is --length random non-vision tokens,
all real. Mini-batches are G rows: one group each, the trainer's default (mini_batch_size 8 = G).

Each side runs the trainer's own functions on the same rollout: the update (completion_logprobs over
the mini-batches, forward and backward of a weighted log-prob sum) and the reference
(Reference.logprobs: adapters disabled, no graph), unshared (--no-prefix-sharing) then shared,
--repeats times; figures are medians. Peak memory is CUDA max_memory_allocated on GPU, the rise of
the resident set (VmHWM, after returning freed heap pages to the system) on CPU, above what was in use
when the pass started. max |d logp| compares the two sides' log-probs on every completion token, of
the update and of the reference. The last line reads

    prefix sharing: update X.XXx faster, peak memory Y.YYx lower, max |d logp| Z

The lm_head is applied to the completion tokens only, the same work on both sides. Its 151,936 rows
cost as much per completion token as 5 decoder layers; next to 2 layers instead of 28 it would be most
of the step, and the figure would say more about the layer count than about sharing. So the head keeps
--lm-head-rows rows (default 151,936 x layers / 28: the real model's share of the work; 151936: the
whole head) and the completions' token ids are drawn below that; the embedding keeps every row, so
the prompts are the real tokenizer's ids.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import statistics
import time
from pathlib import Path

import torch

from src.data.prompts import TRAINING_PROMPTS
from src.grpo.step import completion_logprobs, minibatches
from src.grpo.step import make_reference
from src.grpo.step import Rollout
from src.memory import peak_bytes, reset_peak, synchronize
from src.models.engine import VISION_TOKENS, token_ids
from src.models.encoded_prompts import encode_prompts
from src.models.generation import prompt_batch
from src.models.loading import DTYPES, Policy, enable_gradient_checkpointing, load_policy, resolve_dtype
from src.models.lora import LoRAConfig, inject_lora, lora_layers, mark_only_lora_as_trainable

MIB = 2**20
QWEN2_VL_2B_LAYERS = 28
SIDES = ("unshared", "shared")
PASSES = ("update", "reference")


def build_policy(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Policy:
    """Qwen2-VL-2B's widths with --layers layers and a one-block vision tower (or the tiny model), random weights."""
    if args.model == "tiny":
        return load_policy("tiny", device=device, dtype=dtype)
    from transformers import Qwen2VLForConditionalGeneration

    from benchmarks.qwen2_vl_2b import image_processor, qwen2_vl_2b_config, qwen_sized_tokenizer
    from src.models.loading import attention_implementation

    config = qwen2_vl_2b_config()
    config.text_config.num_hidden_layers = args.layers
    config.text_config.layer_types = config.text_config.layer_types[:args.layers]
    config.vision_config.depth = 1
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = False  # the head is cut, the embedding not
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration._from_config(config, dtype=dtype,
                                                             attn_implementation=attention_implementation(device, dtype))
    rows = args.lm_head_rows or round(config.text_config.vocab_size * args.layers / QWEN2_VL_2B_LAYERS)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight[:rows].clone(), requires_grad=False)
    return Policy(model=model.eval(), tokenizer=qwen_sized_tokenizer(), image_processor=image_processor(),
                  name=f"qwen2-vl-2b-widths-{args.layers}-layers")


def bench_rollout(policy: Policy, args: argparse.Namespace) -> Rollout:
    """B prompts (one --image-size image each) x G random completions of --length tokens, all real."""
    from benchmarks.bench_step import bench_samples

    samples = bench_samples(args.prompts, args.image_size)
    names = [list(TRAINING_PROMPTS)[i % len(TRAINING_PROMPTS)] for i in range(args.prompts)]
    prompts = encode_prompts(policy.model, prompt_batch(policy, samples, [TRAINING_PROMPTS[n] for n in names]))
    banned = torch.tensor(token_ids(policy.tokenizer, VISION_TOKENS), device=policy.device)
    vocab = policy.model.lm_head.weight.shape[0]          # the head's rows (--lm-head-rows)
    allowed = torch.ones(vocab, dtype=torch.bool)
    banned = banned[banned < vocab]                        # a cut head has no vision-token rows to ban
    allowed[banned.cpu()] = False
    choices = allowed.nonzero().squeeze(1)
    rows = args.prompts * args.group_size
    generator = torch.Generator().manual_seed(0)
    ids = choices[torch.randint(len(choices), (rows, args.length), generator=generator)].to(policy.device)  # [N, L]
    mask = torch.ones_like(ids, dtype=torch.bool)                                                            # [N, L]
    return Rollout(prompts=prompts, prompt_index=[r // args.group_size for r in range(rows)], completion_ids=ids,
                   completion_mask=mask, truncated=torch.zeros(rows, dtype=torch.bool, device=policy.device),
                   sampler_logp=torch.zeros(ids.shape, device=policy.device), banned=banned, texts=[""] * rows)


def update(model, rollout: Rollout, sharing: bool, mini_batch: int) -> torch.Tensor:
    """The update's passes: forward and backward over the mini-batches (weights -1/T on every token)."""
    model.train()
    model.zero_grad(set_to_none=True)
    parts = []
    for rows in minibatches(rollout.completion_ids.shape[0], mini_batch):
        logp = completion_logprobs(model, rollout.prompts, *rollout.rows(rows), banned=rollout.banned,
                                   prefix_sharing=sharing)                                 # [n, L]
        (-logp.sum() / rollout.completion_ids.numel()).backward()
        parts.append(logp.detach())
    return torch.cat(parts)


_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None


@contextlib.contextmanager
def measured(device: torch.device, figures: dict):
    """Seconds and peak bytes (above the start) of the block, into `figures`."""
    if device.type == "cpu" and _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)  # freed heap pages back to the system, so the next peak starts from what is in use
    before = reset_peak(device)
    start = time.perf_counter()
    yield
    synchronize(device)
    figures["seconds"] = time.perf_counter() - start
    figures["peak_mib"] = (peak_bytes(device) - before) / MIB


def run(args: argparse.Namespace, report=None) -> dict:
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    policy = build_policy(args, device, dtype)
    model = policy.model
    inject_lora(model, LoRAConfig(dropout=0.0))
    mark_only_lora_as_trainable(model)
    torch.manual_seed(0)
    for layer in lora_layers(model):  # B != 0: the adapted policy differs from the reference
        torch.nn.init.normal_(layer.lora_B.weight, std=0.01)
    reference = make_reference(model, uses_lora=True, continuing_adapter=False)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    rollout = bench_rollout(policy, args)
    mini_batch = args.mini_batch_size or args.group_size
    settings = dict(model=policy.name, layers=len(model.model.language_model.layers),
                    lm_head_rows=model.lm_head.weight.shape[0], device=str(device),
                    dtype=str(dtype).removeprefix("torch."), threads=torch.get_num_threads(), prompts=args.prompts,
                    group_size=args.group_size, length=args.length, image_size=args.image_size,
                    prompt_tokens=rollout.prompts.input_ids.shape[1],
                    image_tokens=[len(f) for f in rollout.prompts.image_features], mini_batch_size=mini_batch,
                    gradient_checkpointing=args.gradient_checkpointing)
    print(json.dumps(settings), flush=True)
    runs = {side: {name: [] for name in PASSES} for side in SIDES}
    logp = {}
    for repeat in range(args.repeats):
        for side in SIDES:
            sharing = side == "shared"
            figures = {}
            with measured(device, figures):
                logp[side, "update"] = update(model, rollout, sharing, mini_batch)
            runs[side]["update"].append(figures)
            model.zero_grad(set_to_none=True)
            figures = {}
            with measured(device, figures):
                logp[side, "reference"] = reference.logprobs(rollout, 1.0, mini_batch, sharing)
            runs[side]["reference"].append(figures)
            line = {f"{side}_{name}_run{repeat}": runs[side][name][-1] for name in PASSES}
            print(json.dumps(line), flush=True)
            if report:
                for key, value in line.items():
                    report(key, value)
    mask = rollout.completion_mask
    result = {"settings": settings}
    for side in SIDES:
        result[side] = {name: {key: statistics.median(f[key] for f in runs[side][name]) for key in ("seconds", "peak_mib")}
                        for name in PASSES}
    result["speedup"] = {name: result["unshared"][name]["seconds"] / result["shared"][name]["seconds"] for name in PASSES}
    result["memory_ratio"] = {name: result["unshared"][name]["peak_mib"] / max(result["shared"][name]["peak_mib"], 1e-9)
                              for name in PASSES}
    result["max_abs_logp_diff"] = max(float((logp["shared", name][mask] - logp["unshared", name][mask]).abs().max())
                                      for name in PASSES)
    result["line"] = (f"prefix sharing: update {result['speedup']['update']:.2f}x faster, peak memory "
                      f"{result['memory_ratio']['update']:.2f}x lower, max |d logp| {result['max_abs_logp_diff']:.2e}")
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2-vl-2b-widths", choices=("qwen2-vl-2b-widths", "tiny"),
                        help="Qwen2-VL-2B's widths with --layers layers, or the tiny test model")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (Qwen2-VL-2B: 28)")
    parser.add_argument("--lm-head-rows", type=int, default=None,
                        help="rows of the lm_head (default: 151,936 x layers / 28, the real model's share of the "
                             "work; 151936: all of them)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--prompts", type=int, default=1, help="B prompts")
    parser.add_argument("--group-size", type=int, default=8, help="G completions per prompt")
    parser.add_argument("--length", type=int, default=128, help="tokens per completion")
    parser.add_argument("--image-size", type=int, default=448, help="square image side in pixels (448: 256 tokens)")
    parser.add_argument("--mini-batch-size", type=int, default=None, help="rows per pass (default: G, one group)")
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side (figures: medians)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--output", type=Path, help="also write the figures here as JSON")
    return parser.parse_args(argv)


def main(argv=None, report=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args, report)
    for name in PASSES:
        print(f"{name:<9} unshared {result['unshared'][name]['seconds']:8.2f} s {result['unshared'][name]['peak_mib']:9.0f} MiB"
              f"   shared {result['shared'][name]['seconds']:8.2f} s {result['shared'][name]['peak_mib']:9.0f} MiB"
              f"   {result['speedup'][name]:.2f}x faster, {result['memory_ratio'][name]:.2f}x less memory")
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(result["line"], flush=True)
    return result


if __name__ == "__main__":
    main()
