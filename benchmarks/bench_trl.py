"""Our GRPO step against TRL's GRPOTrainer (HF-generate backend) on the same model, data and settings.

    pip install -e .[bench]                                                        # TRL
    python -m benchmarks.bench_trl --model tiny --threads 1                        # CPU
    python -m benchmarks.bench_trl --model qwen2-vl-2b-random --device cuda        # the paper-scale step

Both sides: B prompts x G completions, every completion forced to L tokens (end tokens banned until
then), mini-batches of --mini-batch-size completions with gradient accumulation to one optimizer step
per B x G batch, LoRA r 8 / alpha 16 / no dropout (as our RL runs) on the language model's q, k, v, o (ours
hand-written, TRL's through PEFT), beta 0.04 with the reference as the adapter-disabled model,
one update per generation, sequence-mean aggregation (TRL loss_type "grpo"), AdamW lr 1e-5, constant
schedule, gradient clipping at 1.0, temperature 1.0 without top-k / top-p, the same gradient
checkpointing setting, the same --dtype (auto: bf16 on GPU, fp32 on CPU; TRL's bf16 flag follows it). Our step is bench_step's (the trainer's own
functions); TRL's step is the wall time between its on_step_begin and on_step_end callbacks, which
spans generation, scoring, the reference and policy passes and the optimizer step. Medians over
--repeats steps after one warm-up step; ratio = TRL step / our step.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from benchmarks import bench_step
from src.memory import synchronize
from src.data.prompts import TRAINING_PROMPTS, build_messages
from src.grpo import trainer
from src.models.engine import END_TOKENS, VISION_TOKENS, token_ids
from src.models.loading import resolve_dtype
from src.rewards.total import RewardWeights, score_completions


def import_trl():
    """TRL, or an ImportError that says how to install it (main turns it into the command's exit message)."""
    try:
        import trl
    except ImportError as error:
        raise ImportError(f"this benchmark needs TRL ({error}); install it with `pip install -e .[bench]`") from error
    return trl


def image_only_processor(policy):
    """A Qwen2VLProcessor without its video processor: AutoProcessor would need torchvision for that."""
    from transformers import Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyQwen2VLProcessor(policy.image_processor, policy.tokenizer, policy.tokenizer.chat_template)


def trl_dataset(samples, prompt_names, steps: int):
    """The same B (prompt, image) pairs for every step, as TRL's conversational image dataset."""
    from datasets import Dataset

    rows = []
    for _ in range(steps):
        for sample, name in zip(samples, prompt_names):
            messages = [dict(m, content=m["content"] if isinstance(m["content"], list) else  # Arrow: one type
                             [{"type": "text", "text": m["content"]}])
                        for m in build_messages(sample.question, TRAINING_PROMPTS[name])]
            rows.append(dict(prompt=messages,
                             image=Image.open(io.BytesIO(sample.image)).convert("RGB"), answer=sample.answer))
    return Dataset.from_list(rows)


def trl_reward(samples):
    """Our reward (format + length + accuracy) on TRL's completions, so scoring costs the same on both sides."""
    def reward(completions, **_) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        repeated = [samples[0]] * len(texts)  # every bench sample asks the same closed question
        return score_completions(texts, repeated, [0] * len(texts), None, RewardWeights(), False).total
    return reward


def trl_steps(args: argparse.Namespace, device: torch.device) -> tuple[list[float], list[dict]]:
    """Seconds of each TRL optimizer step, and TRL's logged metrics."""
    import_trl()
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    dtype = resolve_dtype(args.dtype, device)
    policy = bench_step.build_policy(args.model, device, dtype)
    samples = bench_step.bench_samples(args.prompts, args.image_size)
    prompt_names = [list(TRAINING_PROMPTS)[i % len(TRAINING_PROMPTS)] for i in range(args.prompts)]
    rows = args.prompts * args.group_size
    tokenizer = policy.tokenizer
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"), report_to="none", save_strategy="no", logging_steps=1,
        max_steps=args.repeats + 1, per_device_train_batch_size=args.mini_batch_size,
        gradient_accumulation_steps=rows // args.mini_batch_size, num_generations=args.group_size,
        max_completion_length=args.length, temperature=1.0, top_p=1.0, top_k=0, beta=0.04, epsilon=0.2,
        loss_type="grpo", learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        gradient_checkpointing=args.gradient_checkpointing, bf16=dtype == torch.bfloat16, use_cpu=device.type == "cpu",
        remove_unused_columns=False, seed=0,
        generation_kwargs=dict(min_new_tokens=args.length, suppress_tokens=token_ids(tokenizer, VISION_TOKENS),
                               eos_token_id=token_ids(tokenizer, END_TOKENS)),
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    seconds: list[float] = []
    logged: list[dict] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            synchronize(device)
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            synchronize(device)
            seconds.append(time.perf_counter() - self.start)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logged.append(dict(logs or {}))

    trainer = GRPOTrainer(model=policy.model, reward_funcs=trl_reward(samples), args=config,
                          train_dataset=trl_dataset(samples, prompt_names, args.repeats + 1),
                          processing_class=image_only_processor(policy), peft_config=lora, callbacks=[StepTimer()])
    trainer.train()
    return seconds, logged


def our_steps(args: argparse.Namespace, device: torch.device) -> list[float]:
    policy = bench_step.build_policy(args.model, device, resolve_dtype(args.dtype, device))
    samples = bench_step.bench_samples(args.prompts, args.image_size)
    prompt_names = [list(TRAINING_PROMPTS)[i % len(TRAINING_PROMPTS)] for i in range(args.prompts)]
    cfg = bench_step.bench_config(args)
    torch.manual_seed(cfg.run.seed)  # LoRA A's init, as trainer.setup seeds it
    run = trainer.prepare_run(policy, cfg, samples)
    return [sum(bench_step.our_step(run, samples, prompt_names, args).seconds.values())
            for _ in range(args.repeats + 1)]


def main(argv=None) -> dict:
    args = bench_step.parse_args(argv)
    try:
        import_trl()  # fail before spending minutes on our side
    except ImportError as error:
        raise SystemExit(str(error)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ours = our_steps(args, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    trl_seconds, trl_logs = trl_steps(args, device)
    lengths = [log["completions/mean_length"] for log in trl_logs if "completions/mean_length" in log]
    result = dict(
        settings=vars(args), torch=torch.__version__, trl=import_trl().__version__,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        ours_step_seconds=statistics.median(ours[1:]), trl_step_seconds=statistics.median(trl_seconds[1:]),
        ours_all=ours, trl_all=trl_seconds, trl_mean_completion_length=lengths,
    )
    result["trl_over_ours"] = result["trl_step_seconds"] / result["ours_step_seconds"]
    tmp = Path(args.output + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.output)
    print(f"ours {result['ours_step_seconds']:.3f} s/step, TRL {result['trl']} {result['trl_step_seconds']:.3f} s/step "
          f"(completion length {lengths}): TRL / ours = {result['trl_over_ours']:.2f}")
    return result


if __name__ == "__main__":
    main()
