"""Supervised fine-tuning, the paper's baseline: cross-entropy on the reference answer in the tag format.

Target: `<think>REASONING</think><answer>ANSWER</answer><|im_end|>`, or `<answer>ANSWER</answer><|im_end|>`
where the sample has no reasoning annotation. Same prompt as GRPO's fixed one (explanation-required),
same LoRA, same optimizer, schedule and checkpoints; only the loss differs.
"""
from __future__ import annotations

import time

import torch

from src.data.prompts import TRAINING_PROMPTS
from src.data.sample import Sample
from src.grpo.distributed import sum_over_ranks
from src.grpo.step import completion_logprobs, minibatches
from src.grpo.optim import optimizer_step
from src.models.encoded_prompts import encode_prompts
from src.models.generation import prompt_batch


def sft_target(sample: Sample) -> str:
    if sample.reasoning:
        return f"<think>{sample.reasoning}</think><answer>{sample.answer}</answer>"
    return f"<answer>{sample.answer}</answer>"


def target_batch(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded target ids [B, L] ending in <|im_end|>, and their mask [B, L]."""
    rows = [tokenizer(t + "<|im_end|>", add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = True
    return ids, mask


def sft_step(run, samples: list[Sample]) -> dict[str, float]:
    """One optimizer step of mean token cross-entropy over the batch's targets (all ranks' when distributed)."""
    start = time.perf_counter()
    policy, cfg = run.policy, run.cfg
    policy.model.eval()  # the frozen vision tower, once per image
    prompts = encode_prompts(policy.model, prompt_batch(policy, samples, [TRAINING_PROMPTS["explanation"]] * len(samples)))
    ids, mask = target_batch(policy.tokenizer, [sft_target(s) for s in samples])
    ids, mask = ids.to(policy.device), mask.to(policy.device)
    policy.model.train()
    run.optimizer.zero_grad(set_to_none=True)
    total_tokens, loss_sum = sum_over_ranks({"tokens": mask.sum().item()})["tokens"], 0.0
    for rows in minibatches(len(samples), cfg.optim.mini_batch_size):
        logp = completion_logprobs(policy.model, prompts, rows, ids[rows], mask[rows],
                                   prefix_sharing=cfg.model.prefix_sharing)                  # [b, L]
        nll = -(logp * mask[rows]).sum()
        (nll / total_tokens).backward()  # the whole batch's token mean, accumulated over mini-batches
        loss_sum += nll.item()
    # each rank divided by the global token count: the ranks' sum is the batch's gradient
    grad_norm = optimizer_step(run.params, run.optimizer, run.scheduler, cfg.optim.max_grad_norm)
    loss_sum = sum_over_ranks({"nll": loss_sum})["nll"]
    return {"loss": loss_sum / total_tokens, "grad_norm": grad_norm, "target_length": mask.sum(1).float().mean().item(),
            "time/update": time.perf_counter() - start}
