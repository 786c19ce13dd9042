"""One GRPO training step, phase by phase, against the bare minimum of the same work.

    python -m benchmarks.bench_step --model tiny                                   # CPU
    python -m benchmarks.bench_step --model qwen2-vl-2b-random --device cuda       # the paper-scale step

Our step runs the trainer's own functions in grpo_step's order (sample_rollout, score_completions and
group_advantages, the reference's logprobs, grpo_update), with a device sync between phases so that each phase's time is its own, twice: with the
rollout engine (src/models/engine.py, the trainer's default; "ours") and with transformers' generate as
the sampler (`--rollout-engine hf`; "ours_hf"). engine_over_hf compares the two in the same process.
Every completion is forced to max_completion_length tokens (end tokens are banned until then), so each
run decodes and trains on exactly B * G * L completion tokens.

The baseline is the bare minimum of the same work on the same model, inputs and mini-batches:
plain `model.generate` on the already-built N prompt rows, one no-grad reference forward (adapters
off) and one forward/backward through the HF model with log_softmax over its full logits, and one
AdamW step on the same parameters. overhead = our step / baseline step (medians over --repeats runs
after one warm-up run of each).

Per phase: seconds, tokens per second (generate: completion tokens; score: completion tokens;
reference and policy: prompt + completion tokens through the model), and peak memory: CUDA
max_memory_allocated on GPU, peak resident set size on CPU (src/memory.py). Also the decode
bandwidth bound: the bytes one decode step must read (language-model weights + KV cache at the mean
context length) / --bandwidth, against our measured generate time per token (which also holds the
prefill, so the ratio is an upper bound).

Models: `tiny` (the embedded test model) or `qwen2-vl-2b-random`: Qwen2-VL-2B-Instruct's exact
architecture with random weights, built on the device in bf16, so nothing is downloaded
(benchmarks/qwen2_vl_2b.py: its config and its tokenizer).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import json
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.memory import peak_bytes, reset_peak, synchronize
from benchmarks.qwen2_vl_2b import random_qwen2_vl_2b
from src.data.prompts import TRAINING_PROMPTS
from src.data.sample import Sample
from src.grpo import trainer
from src.grpo.loss import group_advantages
from src.grpo.config import LossConfig, ModelConfig, OptimConfig, RolloutConfig, RunConfig, TrainConfig
from src.grpo.step import Run, grpo_update, sample_rollout
from src.models import engine
from src.models.engine import END_TOKENS, VISION_TOKENS, token_ids
from src.models.generation import prompt_batch
from src.models.inputs import PromptBatch, repeat_rows, select_rows
from src.models.loading import DTYPES, Policy, load_policy, resolve_dtype
from src.models.lora import disabled_adapters, lora_layers
from src.rewards.total import score_completions

MIB = 2**20
H100_SXM_BANDWIDTH = 3.35e12  # bytes/s, HBM3 of the H100 SXM (H100 PCIe: 2.0e12, H200: 4.8e12)
MODELS = ("tiny", "qwen2-vl-2b-random")
PHASES = ("generate", "score", "reference", "policy", "optimizer")
SIDES = ("ours", "ours_hf", "baseline")  # the trainer with the engine, the trainer with HF generate, bare minimum


def with_completions(prompts: PromptBatch, completion_ids: torch.Tensor,
                     completion_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward kwargs for prompt + completion rows: [N, P + L], completions right-padded (mask 0); the
    bare-minimum baseline's input, each completion row with its own copy of the prompt."""
    return dict(
        input_ids=torch.cat([prompts.input_ids, completion_ids], 1),                  # [N, P+L]
        attention_mask=torch.cat([prompts.attention_mask, completion_mask.long()], 1),  # [N, P+L]
        mm_token_type_ids=torch.cat([prompts.mm_token_type_ids,
                                     torch.zeros_like(completion_ids, dtype=prompts.mm_token_type_ids.dtype)], 1),
        pixel_values=prompts.pixel_values,
        image_grid_thw=prompts.image_grid_thw,
    )


def build_policy(name: str, device: torch.device, dtype: torch.dtype) -> Policy:
    if name == "tiny":
        return load_policy("tiny", device=device, dtype=dtype)
    return random_qwen2_vl_2b(device, dtype)


@contextlib.contextmanager
def merged_adapters(model: torch.nn.Module) -> Iterator[None]:
    """Fold B A into the weights for the duration (`--merge-lora`: one matmul per projection while
    sampling; the engine samples with the side path instead, see docs/BENCHMARKS.md).

    On exit the base weights are copied back, not unmerged: in bf16 (W + d) - d is not W, its last
    bits drift, and the frozen reference policy would drift with them. The copy holds the adapted
    layers' base weights for the duration (q, k, v, o of Qwen2-VL-2B: 0.15B values, 0.3 GB in bf16).
    """
    layers = [layer for layer in lora_layers(model) if not layer.merged]
    originals = [layer.base_layer.weight.detach().clone() for layer in layers]
    for layer in layers:
        layer.merge()
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, original in zip(layers, originals):
                layer.base_layer.weight.copy_(original)
                layer.merged = False


def bench_samples(count: int, image_size: int) -> list[Sample]:
    """`count` closed questions on random-noise images of image_size^2 pixels (the processor resizes as usual)."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray((rng.random((image_size, image_size, 3)) * 255).astype(np.uint8)).save(buffer, "PNG")
        samples.append(Sample(id=str(i), dataset="bench", image=buffer.getvalue(), question="Is there a lesion?",
                              answer="yes", answer_type="closed"))
    return samples


def bench_config(args: argparse.Namespace, rollout_engine: str = "engine") -> TrainConfig:
    """The paper's settings (LoRA r 8 / alpha 16 on q,k,v,o; beta 0.04; one update per rollout)."""
    return TrainConfig(
        run=RunConfig(method="grpo", output_dir=os.devnull, device=args.device),
        model=ModelConfig(model=args.model, gradient_checkpointing=args.gradient_checkpointing, dtype=args.dtype),
        rollout=RolloutConfig(group_size=args.group_size, max_completion_length=args.length,
                              rollout_engine=rollout_engine),
        loss=LossConfig(beta=0.04),
        optim=OptimConfig(prompts_per_step=args.prompts, mini_batch_size=args.mini_batch_size, learning_rate=1e-5,
                          warmup_ratio=0.0, schedule="constant"),
    )


class Phases:
    """Seconds and peak bytes of named phases; a phase may be opened and closed from hooks."""

    def __init__(self, device: torch.device):
        self.device = device
        self.decoding = ""  # how the sampler ran ("cuda graph", "eager", "hf generate", ...)
        self.seconds: dict[str, float] = {}
        self.peak: dict[str, int] = {}
        self._started: dict[str, float] = {}

    def open(self, name: str) -> None:
        reset_peak(self.device)  # syncs first, so earlier queued work is not billed to this phase
        self._started[name] = time.perf_counter()

    def close(self, name: str) -> None:
        synchronize(self.device)
        self.seconds[name] = time.perf_counter() - self._started.pop(name)
        self.peak[name] = peak_bytes(self.device)

    @contextlib.contextmanager
    def phase(self, name: str):
        self.open(name)
        yield
        self.close(name)


@contextlib.contextmanager
def forced_length():
    """The engine decodes every row to max_new_tokens for the duration (end tokens banned, as HF's
    min_new_tokens does for generate), without a benchmark-only switch in the trainer's code path."""
    generate = engine.generate
    engine.generate = functools.partial(generate, stop_at_end=False)  # the trainer calls engine.generate(...)
    try:
        yield
    finally:
        engine.generate = generate


@contextlib.contextmanager
def generation_settings(model, **settings):
    """Set fields of model.generation_config for the duration (what `hf_generate` does not pass itself)."""
    config = model.generation_config
    saved = {name: getattr(config, name) for name in settings}
    for name, value in settings.items():
        setattr(config, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(config, name, value)


def our_step(run: Run, samples: list[Sample], prompt_names: list[str], args: argparse.Namespace) -> Phases:
    """grpo_step's phases (beta > 0, one update per rollout), each timed on its own."""
    cfg, model = run.cfg, run.policy.model
    phases = Phases(run.policy.device)
    settings = dict(min_new_tokens=cfg.rollout.max_completion_length, cache_implementation=args.cache,
                    disable_compile=not args.compile)

    def before_step(*_) -> None:  # a pre-hook's return value would replace step()'s arguments
        phases.close("policy")
        phases.open("optimizer")

    def after_step(*_) -> None:
        phases.close("optimizer")

    hooks = [run.optimizer.register_step_pre_hook(before_step), run.optimizer.register_step_post_hook(after_step)]
    with phases.phase("generate"), generation_settings(model, **settings), forced_length(), \
            (merged_adapters(model) if args.merge_lora else contextlib.nullcontext()):
        rollout = sample_rollout(run.policy, samples, prompt_names, group_size=cfg.rollout.group_size,
                                 max_completion_length=cfg.rollout.max_completion_length,
                                 temperature=cfg.rollout.temperature, engine=cfg.rollout.rollout_engine)
    with phases.phase("score"):
        repeated = [s for s in samples for _ in range(cfg.rollout.group_size)]
        rewards = score_completions(rollout.texts, repeated, rollout.completion_mask.sum(1).tolist(), None,
                                    cfg.reward.weights, False).total
        advantages = group_advantages(torch.tensor(rewards), cfg.rollout.group_size).to(model.device)
    with phases.phase("reference"):
        ref_logp = run.reference.logprobs(rollout, cfg.rollout.temperature, cfg.optim.mini_batch_size)
    phases.open("policy")  # closed by the optimizer's pre-step hook, which opens "optimizer"
    grpo_update(run, rollout, advantages, ref_logp, None)
    for hook in hooks:
        hook.remove()
    phases.decoding = rollout.decoding
    if not bool(rollout.truncated.all()):
        raise RuntimeError("a completion ended early: the step did not decode max_completion_length tokens")
    return phases


def plain_logprobs(model, prompts: PromptBatch, ids: torch.Tensor, mask: torch.Tensor, temperature: float):
    """The textbook way: full [n, L, V] logits from the HF forward, log_softmax in fp32, gather."""
    logits = model(**with_completions(prompts, ids, mask), use_cache=False).logits    # [n, P+L, V]
    logits = logits[:, prompts.input_ids.shape[1] - 1:-1].float() / temperature       # [n, L, V]
    return torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)     # [n, L]


def baseline_step(run: Run, prompts: PromptBatch, optimizer: torch.optim.Optimizer) -> Phases:
    """The bare minimum of the same work: HF generate, one reference forward, one forward/backward, AdamW."""
    cfg, model, tokenizer = run.cfg, run.policy.model, run.policy.tokenizer
    length, temperature, mb = cfg.rollout.max_completion_length, cfg.rollout.temperature, cfg.optim.mini_batch_size
    rows = [list(range(s, min(s + mb, prompts.input_ids.shape[0]))) for s in range(0, prompts.input_ids.shape[0], mb)]
    phases = Phases(run.policy.device)
    phases.decoding = "hf generate"
    model.eval()
    with phases.phase("generate"):
        out = model.generate(
            **prompts.model_kwargs, max_new_tokens=length, min_new_tokens=length, do_sample=True,
            temperature=temperature, top_k=0, top_p=1.0, eos_token_id=token_ids(tokenizer, END_TOKENS),
            pad_token_id=tokenizer.pad_token_id, suppress_tokens=token_ids(tokenizer, VISION_TOKENS), use_cache=True)
    ids = out[:, prompts.input_ids.shape[1]:]                                           # [N, L]
    mask = torch.ones_like(ids, dtype=torch.bool)                                       # [N, L]
    advantages = torch.randn(ids.shape[0], device=ids.device)                           # [N]
    with phases.phase("reference"), torch.no_grad(), disabled_adapters(model):
        ref = torch.cat([plain_logprobs(model, select_rows(prompts, r), ids[r], mask[r], temperature) for r in rows])
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with phases.phase("policy"):
        for r in rows:
            logp = plain_logprobs(model, select_rows(prompts, r), ids[r], mask[r], temperature)  # [n, L]
            (-(advantages[r, None] * logp).sum() / ids.numel()).backward()
    with phases.phase("optimizer"):
        optimizer.step()
    del ref
    return phases


def decode_bound(model, rows: int, prompt_len: int, length: int, bandwidth: float) -> dict[str, float]:
    """Seconds one decode step takes if it only reads what it must, at full memory bandwidth.

    A decode step reads every language-model weight once (the vision tower is not used after the
    prefill; the tied embedding is read in full as the lm_head) and every row's KV cache:
    layers x 2 (K, V) x KV heads x head_dim x bytes per value x context length, per row.
    Context grows from P to P + L - 1; its mean, P + (L - 1) / 2, gives the mean bytes per step.
    """
    text = model.config.text_config
    language_model = model.model.language_model
    weight_bytes = sum(p.numel() * p.element_size() for name, p in language_model.named_parameters()
                       if "embed_tokens" not in name) + model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    head_dim = text.hidden_size // text.num_attention_heads
    value_bytes = model.lm_head.weight.element_size()
    kv_bytes_per_token = text.num_hidden_layers * 2 * text.num_key_value_heads * head_dim * value_bytes
    mean_context = prompt_len + (length - 1) / 2
    kv_bytes = kv_bytes_per_token * mean_context * rows
    return dict(weight_bytes=weight_bytes, kv_bytes_per_token=kv_bytes_per_token, mean_context=mean_context,
                kv_bytes_per_step=kv_bytes, bandwidth=bandwidth, bound_seconds_per_step=(weight_bytes + kv_bytes) / bandwidth)


def summarise(runs: list[Phases], tokens: dict[str, int | None]) -> dict:
    """Median seconds and largest peak per phase over the runs; step = median of the per-run phase sums."""
    phases = {}
    for name in (name for name in PHASES if name in runs[0].seconds):  # the baseline has no "score"
        seconds = statistics.median(r.seconds[name] for r in runs)
        phases[name] = dict(seconds=seconds, tokens_per_s=tokens[name] / seconds if tokens[name] else None,
                            peak_mib=max(r.peak[name] for r in runs) / MIB)
    return dict(phases=phases, step_seconds=statistics.median(sum(r.seconds.values()) for r in runs),
                decoding=runs[0].decoding)


def print_table(result: dict) -> None:
    print(f"{'phase':<10}" + " |".join(f" {side + ' s':>10} {'tok/s':>11} {'peak MiB':>9}" for side in SIDES))
    for name in PHASES:
        cells = []
        for side in SIDES:
            p = result[side]["phases"].get(name)
            if p is None:
                cells.append(f" {'-':>10} {'-':>11} {'-':>9}")
                continue
            rate = f"{p['tokens_per_s']:,.0f}" if p["tokens_per_s"] else "-"
            cells.append(f" {p['seconds']:>10.3f} {rate:>11} {p['peak_mib']:>9,.0f}")
        print(f"{name:<10}" + " |".join(cells))
    print(f"{'step':<10}" + " |".join(f" {result[side]['step_seconds']:>10.3f} {'':>21}" for side in SIDES))
    ratio = result["engine_over_hf"]
    print(f"sampler: ours {result['ours']['decoding']}, ours_hf {result['ours_hf']['decoding']}")
    print(f"engine / hf generate: generate phase {ratio['generate']:.3f} (speed-up {1 / ratio['generate']:.2f}x), "
          f"step {ratio['step']:.3f} (speed-up {1 / ratio['step']:.2f}x)")
    print(f"overhead (ours / baseline): {result['overhead_ratio']:.3f}")
    b = result["decode_bound"]
    print(f"decode bound: ({b['weight_bytes'] / 1e9:.3f} GB weights + {b['kv_bytes_per_step'] / 1e9:.3f} GB KV) / "
          f"{b['bandwidth'] / 1e12:.2f} TB/s = {b['bound_seconds_per_step'] * 1e3:.3f} ms/step; measured "
          f"{b['measured_seconds_per_step'] * 1e3:.3f} ms/step = {b['measured_over_bound']:.1f}x the bound")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="the model's dtype: auto (bfloat16 on CUDA, float32 on CPU); LoRA factors are float32")
    parser.add_argument("--prompts", type=int, default=4, help="B, prompts per step (paper scale: 4)")
    parser.add_argument("--group-size", type=int, default=8, help="G, completions per prompt (paper scale: 8)")
    parser.add_argument("--length", type=int, default=512, help="L, tokens every completion is forced to")
    parser.add_argument("--mini-batch-size", type=int, default=8, help="completions per forward/backward")
    parser.add_argument("--image-size", type=int, default=512,
                        help="side of the square input images in pixels; Qwen2-VL-2B sees 512 as 504 -> 324 tokens")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--merge-lora", action="store_true", help="generate with B A merged into the weights")
    parser.add_argument("--cache", choices=("dynamic", "static"), default="dynamic",
                        help="KV cache for our generation; transformers compiles decoding with 'static' on GPU")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="let transformers compile decoding when the cache is static (GPU)")
    parser.add_argument("--bandwidth", type=float, default=H100_SXM_BANDWIDTH,
                        help="memory bandwidth in bytes/s for the decode bound (H100 SXM 3.35e12)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice); 1 on a shared machine, where "
                             "threads waiting on each other make every small op take milliseconds")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each after one warm-up run")
    parser.add_argument("--output", default="bench_step.json", help="where the JSON result is written")
    return parser.parse_args(argv)


def main(argv=None, report=None) -> dict:
    """Run the benchmark; `report(name, value)`, when given, receives each run's phase seconds as soon as
    it is measured (benchmarks/gpu_check.py records them, so a run cut short keeps them)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    policy = build_policy(args.model, device, dtype)
    samples = bench_samples(args.prompts, args.image_size)
    prompt_names = [list(TRAINING_PROMPTS)[i % len(TRAINING_PROMPTS)] for i in range(args.prompts)]
    cfg = bench_config(args)
    torch.manual_seed(cfg.run.seed)  # LoRA A's init, as trainer.setup seeds it
    run = trainer.prepare_run(policy, cfg, samples)
    prompts = repeat_rows(prompt_batch(policy, samples, [TRAINING_PROMPTS[n] for n in prompt_names]),
                          args.group_size).to(device)                                    # N rows
    hf_run = dataclasses.replace(run, cfg=bench_config(args, rollout_engine="hf"))
    baseline_optimizer = torch.optim.AdamW(run.params, lr=1e-5)
    ours, ours_hf, baseline = [], [], []
    for repeat in range(args.repeats + 1):  # run 0 is the warm-up of each; the three alternate
        for side, runs, measure in (("ours", ours, lambda: our_step(run, samples, prompt_names, args)),
                                    ("ours_hf", ours_hf, lambda: our_step(hf_run, samples, prompt_names, args)),
                                    ("baseline", baseline, lambda: baseline_step(run, prompts, baseline_optimizer))):
            runs.append(measure())
            if report is not None:
                report(f"{side}_run{repeat}", {"seconds": dict(runs[-1].seconds), "decoding": runs[-1].decoding})
    rows, prompt_len, length = prompts.input_ids.shape[0], prompts.input_ids.shape[1], args.length
    model_tokens = rows * (prompt_len + length)
    tokens = dict(generate=rows * length, score=rows * length, reference=model_tokens, policy=model_tokens,
                  optimizer=None)
    result = dict(
        settings={**vars(args), "rows": rows, "prompt_tokens": prompt_len, "dtype": str(dtype).removeprefix("torch.")},
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        torch=torch.__version__,
        ours=summarise(ours[1:], tokens), ours_hf=summarise(ours_hf[1:], tokens),
        baseline=summarise(baseline[1:], tokens),
    )
    result["overhead_ratio"] = result["ours"]["step_seconds"] / result["baseline"]["step_seconds"]
    result["engine_over_hf"] = {
        "generate": result["ours"]["phases"]["generate"]["seconds"] / result["ours_hf"]["phases"]["generate"]["seconds"],
        "step": result["ours"]["step_seconds"] / result["ours_hf"]["step_seconds"]}
    bound = decode_bound(policy.model, rows, prompt_len, length, args.bandwidth)
    bound["measured_seconds_per_step"] = result["ours"]["phases"]["generate"]["seconds"] / length
    bound["measured_over_bound"] = bound["measured_seconds_per_step"] / bound["bound_seconds_per_step"]
    result["decode_bound"] = bound
    tmp = Path(args.output + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.output)
    print_table(result)
    return result


if __name__ == "__main__":
    main()
