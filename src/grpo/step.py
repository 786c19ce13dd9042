"""One GRPO step on B prompts (grpo_step), in the paper's order, and everything it runs:

    sample     G completions per prompt from the current policy (pi_old)
    rewards    r_i of each completion; advantages A_i normalised within its group (eq. 2)
    reference  log pi_ref of every completion token, only when beta > 0 (eq. 3)
    old        log pi_old, only when num_iterations > 1 (with one update the ratio is exactly 1)
    update     num_iterations times: the loss of eq. 1 accumulated over mini-batches, weighted over the
               global batch (loss.token_weights), then one clipped AdamW step

Shape legend: B prompts, G group size, N = B*G completions, P prompt tokens, L completion tokens.

The module reads top to bottom: the rollout (what sampling hands the update), the policy's forward pass
(log pi of every completion token), the reference policy, then the step and its update. The loop
around it (setup, epochs, checkpoints, logs) is src/grpo/trainer.py; the math is src/grpo/loss.py.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from src.data.prompts import TRAINING_PROMPTS
from src.data.sample import Sample
from src.grpo.config import TrainConfig
from src.grpo.distributed import gather_rows, sum_over_ranks
from src.grpo.logprobs import linear_logprobs
from src.grpo.loss import (
    group_advantages, grpo_loss, sampler_mismatch, tied_group_rows, token_weights, zero_std_fraction,
)
from src.grpo.optim import optimizer_step
from src.grpo.run_log import PhaseTimer, grpo_metrics
from src.models import shared_prefix
from src.models.encoded_prompts import EncodedPrompts, encode_prompts
from src.models.engine import VISION_TOKENS, token_ids
from src.models.generation import prompt_batch, sample_groups
from src.models.loading import Policy
from src.models.lora import LoRAConfig, disabled_adapters, lora_state_dict, swapped_adapters
from src.rewards.total import score_completions


# ----------------------------------------------------------------------------------------------------
# A step's experience: G completions sampled for each of B prompts, as the update reads them.
#
# The prompts are encoded once (src/models/encoded_prompts.py): each distinct image goes through the
# vision tower once per step, and every later pass (reference, old policy, updates) reuses its features.
# Shape legend (src/grpo/__init__.py): B prompts, G completions per prompt, N = B * G rows (row b * G + g
# is completion g of prompt b), P prompt tokens (left-padded), L completion tokens.
# ----------------------------------------------------------------------------------------------------

@dataclass
class Rollout:
    """B prompts x G sampled completions; tensors on the policy's device."""

    prompts: EncodedPrompts         # the B prompts, their image features computed once
    prompt_index: list[int]         # [N] prompt of each row: row b*G+g -> b
    completion_ids: torch.Tensor    # [N, L]
    completion_mask: torch.Tensor   # [N, L] bool: sampled tokens, up to and including the end token
    truncated: torch.Tensor         # [N] bool: hit max_completion_length without an end token
    sampler_logp: torch.Tensor      # [N, L] fp32 log-prob each token was drawn with, by the sampler (0 on padding)
    banned: torch.Tensor            # [k] ids never drawn (vision tokens): probability 0 in every log-prob
    texts: list[str]                # [N] decoded completions
    decoding: str = ""              # how the sampler ran ("cuda graph", "eager", ...)

    def rows(self, rows: Sequence[int]) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """(prompt of each row, completion_ids [n, L], completion_mask [n, L]) of rows `rows`."""
        return [self.prompt_index[r] for r in rows], self.completion_ids[rows], self.completion_mask[rows]


@torch.no_grad()
def sample_rollout(policy: Policy, samples: Sequence[Sample], prompt_names: Sequence[str], *, group_size: int,
                   max_completion_length: int, temperature: float, engine: str = "engine") -> Rollout:
    """Sample G completions of each sample's question under its training prompt (eval mode: no dropout)."""
    policy.model.eval()
    batch = prompt_batch(policy, samples, [TRAINING_PROMPTS[name] for name in prompt_names])  # B prompts
    prompts = encode_prompts(policy.model, batch)                               # vision tower once per image
    completions = sample_groups(policy, batch, prompts, group_size=group_size, max_new_tokens=max_completion_length,
                                temperature=temperature, engine_name=engine)   # N rows
    banned = torch.tensor(token_ids(policy.tokenizer, VISION_TOKENS), device=policy.device)
    return Rollout(prompts=prompts, prompt_index=[row // group_size for row in range(len(completions.texts))],
                   completion_ids=completions.ids, completion_mask=completions.mask, truncated=completions.truncated,
                   sampler_logp=completions.logprobs, banned=banned, texts=completions.texts,
                   decoding=completions.decoding)


# ----------------------------------------------------------------------------------------------------
# The policy's forward pass over prompts + completions: log pi of every completion token.
#
# Two ways to the language model's last hidden states at the positions that predict completion tokens:
# - shared prefix (the default): each distinct prompt of a mini-batch goes through the layers once and its
#   completions attend to its keys and values (src/models/shared_prefix.py);
# - unshared (`prefix_sharing=False`, train.py's --no-prefix-sharing): every row is prompt + completion
#   through transformers' language model, the prompt computed once per completion. It is the reference
#   the shared path is tested against (tests/test_shared_prefix.py).
# Either way the hidden states go through `linear_logprobs`, which applies the lm_head in chunks: the
# [N, L, V] logits of the whole batch (V = 151,936 for Qwen2-VL) never exist at once, in forward or backward.
#
# Mini-batches are `mini_batch_size` consecutive rows. Rows are laid out group by group (row b*G + g), so
# a mini-batch holds whole groups when its size is a multiple of G (the default: 8 = G) and group slices
# otherwise. A group split over k mini-batches has its prompt computed in each of them, k times instead of
# once, and the gradient is still exact: a mini-batch's prompt activations depend only on the weights,
# which accumulation does not change, and the prompt's gradient from one slice is the sum over that
# slice's completions, so the k slices add up to the sum over all G completions.
# ----------------------------------------------------------------------------------------------------

def completion_logprobs(model, prompts: EncodedPrompts, prompt_index: Sequence[int], completion_ids: torch.Tensor,
                        completion_mask: torch.Tensor, temperature: float = 1.0,
                        banned: torch.Tensor | None = None, prefix_sharing: bool = True) -> torch.Tensor:
    """log pi(o_t | q, o_<t) for every completion token: [N, L] fp32 (padding positions hold junk; mask them).
    With `banned` ids (a rollout's: the ids its sampler never draws) pi is the softmax over the other
    ids, the distribution the completions were drawn from.

    Completion i continues prompt `prompt_index[i]`; the prompt's image features are the ones computed
    once for the step. Position P-1 (the assistant header's last token) predicts completion token 0,
    position P+L-2 predicts token L-1. prefix_sharing: each distinct prompt through the layers once
    (True), or once per row (False; the module docstring).
    """
    if prefix_sharing:
        hidden = shared_prefix.forward(model, prompts, prompt_index, completion_ids)  # [N, L, H]
    else:
        prompt_len = prompts.input_ids.shape[1]                                 # P
        inputs = prompts.inputs(model, prompt_index, completion_ids, completion_mask)
        hidden = model.model.language_model(**inputs, use_cache=False).last_hidden_state  # [N, P+L, H]
        hidden = hidden[:, prompt_len - 1 : -1]                                 # [N, L, H]
    return linear_logprobs(hidden, model.lm_head.weight, completion_ids, temperature=temperature,
                           banned=banned)                                       # [N, L]


def minibatches(num_rows: int, size: int) -> Iterator[list[int]]:
    for start in range(0, num_rows, size):
        yield list(range(start, min(start + size, num_rows)))


@torch.no_grad()
def rollout_logprobs(model, rollout, temperature: float, mini_batch_size: int, prefix_sharing: bool = True) -> torch.Tensor:
    """log pi of every completion token of a rollout (a Rollout, above), mini-batch by
    mini-batch, without building a graph: the reference and old-policy passes. [N, L] fp32."""
    parts = [completion_logprobs(model, rollout.prompts, *rollout.rows(rows), temperature, rollout.banned,
                                 prefix_sharing)
             for rows in minibatches(rollout.completion_ids.shape[0], mini_batch_size)]
    return torch.cat(parts)                                                     # [N, L]


# ----------------------------------------------------------------------------------------------------
# The reference policy pi_ref of eq. 3's KL term: the policy the run started from, decided once.
#
# - LoRA from a base model: the same model with its adapters disabled (no second copy of the weights);
# - LoRA continuing an existing adapter (--model ADAPTER_DIR): the adapter's starting weights swapped in
#   for the reference pass (only the adapter's few weights are kept twice), never silently the base;
# - full fine-tuning (grpo-full): a frozen copy of the starting model, less its vision tower: the vision
#   tower is frozen in every method, and the reference reads the image features the rollout computed
#   (EncodedPrompts), so it never runs one (on Qwen2-VL-2B that leaves out 0.67 B parameters, 1.24 GiB in bf16);
# - no reference at all when beta = 0 (`make_reference` returns None).
# ----------------------------------------------------------------------------------------------------

@dataclass
class Reference:
    """`model`, inside `context()`, computes pi_ref."""

    model: torch.nn.Module
    context: Callable[[], AbstractContextManager]
    kind: str                    # "adapters disabled", "starting adapter" or "frozen copy", for the log

    def logprobs(self, rollout, temperature: float, mini_batch_size: int, prefix_sharing: bool = True) -> torch.Tensor:
        """log pi_ref of every completion token of the rollout: [N, L] fp32 (rollout_logprobs above)."""
        self.model.eval()
        with self.context():
            return rollout_logprobs(self.model, rollout, temperature, mini_batch_size, prefix_sharing)


class NoVisionTower(torch.nn.Module):
    """What the frozen reference copy holds in place of the vision tower: nothing to run."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("the frozen reference has no vision tower: it reads the rollout's image features")


def make_reference(model: torch.nn.Module, uses_lora: bool, continuing_adapter: bool) -> Reference:
    """The reference for a run that trains `model` (call before training changes it)."""
    if not uses_lora:  # deepcopy takes the memo's entry for the vision tower instead of copying it
        frozen = copy.deepcopy(model, memo={id(model.model.visual): NoVisionTower()})
        return Reference(frozen.eval().requires_grad_(False), contextlib.nullcontext, "frozen copy")
    if continuing_adapter:
        start = {k: v.detach().clone() for k, v in lora_state_dict(model).items()}
        return Reference(model, lambda: swapped_adapters(model, start), "starting adapter")
    return Reference(model, lambda: disabled_adapters(model), "adapters disabled")


# ----------------------------------------------------------------------------------------------------
# The step: sample, score, reference, update (eq. 1-3).
# ----------------------------------------------------------------------------------------------------

@dataclass
class Run:
    """Everything a run sets up once."""

    cfg: TrainConfig
    policy: Policy
    lora: LoRAConfig | None          # None for the -full methods
    reference: Reference | None      # pi_ref of eq. 3; None when beta = 0 (and for SFT)
    samples: list[Sample]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    params: list[torch.nn.Parameter]
    steps_per_epoch: int
    total_steps: int
    scorer: object = None            # BERTScore scorer (None for sft)


def grpo_step(run: Run, samples: list[Sample], prompt_names: list[str]) -> tuple[dict[str, float], list[dict]]:
    """One GRPO step (eq. 1-3) on B prompts; returns the step's metrics and one record per completion."""
    cfg, model, G, timer = run.cfg, run.policy.model, run.cfg.rollout.group_size, PhaseTimer()
    with timer("generate"):  # G completions per prompt from the current policy, pi_old
        rollout = sample_rollout(run.policy, samples, prompt_names, group_size=G,
                                 max_completion_length=cfg.rollout.max_completion_length,
                                 temperature=cfg.rollout.temperature,
                                 engine=cfg.rollout.rollout_engine)                   # ids, mask [N, L]
    with timer("score"):  # eq. 2: rewards r_i, advantages A_i = (r_i - mean) / std within each group
        scores = score_completions(rollout.texts, [s for s in samples for _ in range(G)],
                                   rollout.completion_mask.sum(1).tolist(), run.scorer, cfg.reward.weights,
                                   cfg.uses_reasoning_reward, cfg.reward.open_answer_score)
        rewards = torch.tensor(scores.total)                                                   # [N]
        advantages = group_advantages(rewards, G, scale=cfg.loss.advantage_scale == "group")   # [N]
    with timer("reference"):  # eq. 3's pi_ref; pi_old only if the policy moves between updates
        passes = (cfg.rollout.temperature, cfg.optim.mini_batch_size, cfg.model.prefix_sharing)
        ref_logp = run.reference.logprobs(rollout, *passes) if run.reference else None        # [N, L]
        old_logp = rollout_logprobs(model, rollout, *passes) if cfg.loss.num_iterations > 1 else None  # [N, L]
    with timer("update"):
        stats = grpo_update(run, rollout, advantages.to(run.policy.device), ref_logp, old_logp)
    metrics = grpo_metrics(stats, gather_rows(rewards), scores.means(), rollout, zero_std_fraction(rewards, G),
                           timer.seconds)
    return metrics, completion_records(rollout, samples, prompt_names, G, rewards, advantages, scores.components)


def grpo_update(run: Run, rollout: Rollout, advantages: torch.Tensor, ref_logp: torch.Tensor | None,
                old_logp: torch.Tensor | None) -> dict[str, float]:
    """num_iterations optimizer updates on one rollout (eq. 1); returns the last update's statistics,
    and how far the first update's log-probs are from the sampler's (rollout_logp_diff, rollout_kl:
    token means over the completion tokens, src/grpo/loss.py: sampler_mismatch), measured on the update's own forward pass.

    Every token's weight in the loss is fixed up front over the global batch (all mini-batches, all
    ranks), so each mini-batch's loss is its weighted sum and the accumulated gradient is the batch's.
    Cut-off completions (--mask-truncated) and tied groups (--drop-tied-groups) get weight 0; tied groups
    also leave the count of completions the normaliser divides by.
    """
    cfg, model = run.cfg, run.policy.model
    mask = rollout.completion_mask                                                         # [N, L] in the loss
    if cfg.rollout.mask_truncated:  # a cut-off completion was never judged on a finished answer
        mask = mask & ~rollout.truncated.unsqueeze(1)                                       # [N, L]
    kept = torch.ones(mask.shape[0], dtype=torch.bool, device=mask.device)                  # [N] rows in the loss
    if cfg.loss.drop_tied_groups:  # a tied group has A = 0: out of the normaliser too, not just the numerator
        kept = ~tied_group_rows(advantages, cfg.rollout.group_size)                         # [N]
        mask = mask & kept.unsqueeze(1)                                                     # [N, L]
    batch = sum_over_ranks({"completions": kept.sum().item(), "tokens": mask.sum().item(),
                            "sampled_tokens": rollout.completion_mask.sum().item()})        # the global batch
    weights = token_weights(mask, cfg.loss.aggregation, batch["completions"], batch["tokens"],
                            cfg.rollout.max_completion_length)                              # [N, L]
    mismatch = torch.zeros(2, device=mask.device)  # summed |log p_sampler - log p_train| and k3, first update
    model.train()  # for gradient checkpointing; RL has no dropout (TrainConfig), so every pass sees one policy
    for iteration in range(cfg.loss.num_iterations):
        run.optimizer.zero_grad(set_to_none=True)
        totals = {"loss": 0.0, "kl": 0.0, "ratio_mean": 0.0, "clipfrac_low": 0.0, "clipfrac_high": 0.0}
        for rows in minibatches(mask.shape[0], cfg.optim.mini_batch_size):
            logp = completion_logprobs(model, rollout.prompts, *rollout.rows(rows), cfg.rollout.temperature,
                                       rollout.banned, cfg.model.prefix_sharing)           # [n, L]
            if iteration == 0:  # the weights that sampled: the trainer's log-probs against the sampler's
                mismatch += sampler_mismatch(logp.detach(), rollout.sampler_logp[rows], rollout.completion_mask[rows])
            # eq. 1 with eq. 3: ratio = exp(logp - old_logp), min(ratio A, clip(ratio) A) - beta k3(logp, ref_logp)
            loss, stats = grpo_loss(logp, None if old_logp is None else old_logp[rows],
                                    None if ref_logp is None else ref_logp[rows], advantages[rows], weights[rows],
                                    epsilon_low=cfg.loss.epsilon_low, epsilon_high=cfg.loss.epsilon_high,
                                    beta=cfg.loss.beta, importance_level=cfg.loss.importance_level)
            loss.backward()
            token_share = mask[rows].sum().item() / max(1, batch["tokens"])  # stats are token means
            totals["loss"] += loss.item()
            for name, value in stats.as_floats().items():
                totals[name] += value * token_share
        grad_norm = optimizer_step(run.params, run.optimizer, run.scheduler, cfg.optim.max_grad_norm)
    logp_diff, rollout_kl = (mismatch / max(1, batch["sampled_tokens"])).tolist()
    totals = sum_over_ranks({**totals, "rollout_logp_diff": logp_diff, "rollout_kl": rollout_kl})
    totals["grad_norm"] = grad_norm
    return totals


def completion_records(rollout: Rollout, samples: list[Sample], prompt_names: list[str], group_size: int,
                       rewards: torch.Tensor, advantages: torch.Tensor,
                       components: dict[str, list[float | None]]) -> list[dict]:
    """What each sampled completion was and what it earned: the question it answers (sample id,
    training prompt), its text, its total reward and each component, its advantage, and whether it
    was cut off. Row b*G+g is completion g of prompt b."""
    return [{"id": samples[i // group_size].id, "prompt": prompt_names[i // group_size], "completion": text,
             "reward": rewards[i].item(),
             **{f"reward/{name}": values[i] for name, values in components.items()},
             "advantage": advantages[i].item(), "truncated": bool(rollout.truncated[i])}
            for i, text in enumerate(rollout.texts)]
