"""What a training run checks about its samples before any weights load: each prompt fits the model.

RL samples up to max_completion_length tokens after the prompt; SFT appends the reference target
(src/grpo/sft.py). The prompts are the method's training prompts (all three for rarl). See
src/models/prompt_length.py for how a prompt is counted.
"""
from __future__ import annotations

from src.data.prompts import TRAINING_PROMPTS
from src.data.sample import Sample
from src.grpo.config import TrainConfig
from src.grpo.sft import sft_target
from src.models.prompt_length import PromptLimit


def check_training_prompts(samples: list[Sample], cfg: TrainConfig) -> list[Sample]:
    """The samples that fit the model; the others raise a DatasetError (or with --skip-bad-rows are left out)."""
    limit = PromptLimit.from_model(cfg.model.model)
    prompts = list(TRAINING_PROMPTS.values()) if cfg.prompt_diversity else [TRAINING_PROMPTS["explanation"]]
    if cfg.is_sft:
        def completion_tokens(sample: Sample) -> int:
            return limit.text_tokens(sft_target(sample) + "<|im_end|>")
    else:
        def completion_tokens(sample: Sample) -> int:
            return cfg.rollout.max_completion_length
    return limit.check(samples, prompts, completion_tokens, cfg.data.skip_bad_rows)
