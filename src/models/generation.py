"""Sampling completions from a Qwen2-VL policy, for GRPO rollouts (temperature 1) and evaluation (greedy).

Two rules every caller relies on:
- vision special tokens are never emitted: a completion holding `<|image_pad|>` would break the next
  forward pass ("Image features and image tokens do not match"), and a random or young policy does
  sample them;
- a completion ends at its first `<|im_end|>` (or `<|endoftext|>`); the mask keeps that end token
  (its log-prob is part of the policy's choice to stop) and zeroes everything after it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from src.data.prompts import build_messages
from src.data.sample import Sample
from src.models.images import load_image
from src.models.inputs import PromptBatch, build_prompt_batch

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
END_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass
class Completions:
    """N sampled completions, right-padded to the longest one (L tokens)."""

    ids: torch.Tensor         # [N, L] long, pad after the end token
    mask: torch.Tensor        # [N, L] bool, True up to and including the end token
    truncated: torch.Tensor   # [N] bool, no end token within max_new_tokens
    texts: list[str]          # decoded without special tokens

    @property
    def lengths(self) -> torch.Tensor:  # [N] tokens per completion, end token included
        return self.mask.sum(1)


def token_ids(tokenizer, tokens: Sequence[str]) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def completion_mask(ids: torch.Tensor, end_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, L] mask that is True up to and including the first end token; and [N] 'no end token' flags."""
    is_end = torch.isin(ids, torch.tensor(list(end_ids), device=ids.device))     # [N, L]
    ended_before = (is_end.long().cumsum(1) - is_end.long()) > 0                 # an end token strictly earlier
    return ~ended_before, ~is_end.any(1)


@torch.no_grad()
def sample(model, tokenizer, prompts: PromptBatch, max_new_tokens: int, temperature: float) -> Completions:
    """One completion per prompt row; temperature 0 means greedy decoding."""
    end_ids = token_ids(tokenizer, END_TOKENS)
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else \
        dict(do_sample=False)
    out = model.generate(
        **prompts.model_kwargs, max_new_tokens=max_new_tokens, eos_token_id=end_ids,
        pad_token_id=tokenizer.pad_token_id, suppress_tokens=token_ids(tokenizer, VISION_TOKENS),
        use_cache=True, **sampling,
    )
    ids = out[:, prompts.input_ids.shape[1]:]                                    # [N, L]
    mask, truncated = completion_mask(ids, end_ids)
    ids = ids.masked_fill(~mask, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return Completions(ids=ids, mask=mask, truncated=truncated, texts=texts)


def prompt_batch(policy, samples: Sequence[Sample], system_prompts: Sequence[str]) -> PromptBatch:
    """B chats (system prompt + image + question), tokenized into one batch on the CPU."""
    conversations = [build_messages(s.question, system) for s, system in zip(samples, system_prompts)]
    images = [load_image(s.image, name=f"{s.dataset} sample {s.id}") for s in samples]
    return build_prompt_batch(policy.tokenizer, policy.image_processor, conversations, images)


def generate_completions(policy, samples: Sequence[Sample], system_prompt: str, max_new_tokens: int = 512,
                         temperature: float = 0.0, batch_size: int = 8) -> list[str]:
    """One completion per sample under `system_prompt` (greedy by default), in batches, for evaluation."""
    policy.model.eval()
    texts: list[str] = []
    starts = range(0, len(samples), batch_size)
    for start in tqdm(starts, desc="generate", unit="batch", disable=len(starts) < 2):
        chunk = samples[start:start + batch_size]
        batch = prompt_batch(policy, chunk, [system_prompt] * len(chunk)).to(policy.device)
        texts += sample(policy.model, policy.tokenizer, batch, max_new_tokens, temperature).texts
    return texts
