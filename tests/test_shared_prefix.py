"""The shared-prefix forward (src/models/shared_prefix.py) against the unshared one, in fp32 on the tiny model.

Three prompts of different lengths (different images and system prompts, so the batch is left-padded),
G = 3 completions each with ragged lengths, a LoRA adapter with B != 0 (so that A and B both get
gradients) and mini-batches of 2 rows: groups 0 and 1 are split across mini-batches, and a mini-batch
holds completions of two prompts. Log-probs and accumulated LoRA gradients must agree within 1e-5,
relative to the largest value of each tensor.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from src.data.prompts import TRAINING_PROMPTS
from src.grpo.step import completion_logprobs, minibatches, rollout_logprobs
from src.grpo.step import Rollout
from src.models.engine import VISION_TOKENS, token_ids
from src.models.encoded_prompts import encode_prompts
from src.models.generation import prompt_batch
from src.models import shared_prefix
from src.models.loading import enable_gradient_checkpointing
from src.models.lora import LoRAConfig, inject_lora, lora_layers, mark_only_lora_as_trainable
from tests.test_trainer import _sample

G, L = 3, 9
PROMPTS = (("explanation", (112, 112)), ("short", (56, 168)), ("open-ended", (84, 84)))  # 16, 12 and 9 image tokens


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|: the error on the tensor's own scale."""
    return ((ours - reference).abs().max() / reference.abs().max()).item()


@pytest.fixture
def setting(tiny_policy):
    """A LoRA model (B != 0) and a rollout of 3 prompts x G completions with ragged lengths."""
    torch.manual_seed(0)
    model = tiny_policy.model
    inject_lora(model, LoRAConfig(dropout=0.0))
    mark_only_lora_as_trainable(model)
    for layer in lora_layers(model):
        torch.nn.init.normal_(layer.lora_B.weight, std=0.05)
    samples = [_sample(i, size) for i, (_, size) in enumerate(PROMPTS)]
    batch = prompt_batch(tiny_policy, samples, [TRAINING_PROMPTS[name] for name, _ in PROMPTS])
    prompts = encode_prompts(model, batch)
    banned = torch.tensor(token_ids(tiny_policy.tokenizer, VISION_TOKENS))
    allowed = torch.tensor([i for i in range(model.config.text_config.vocab_size) if i not in set(banned.tolist())])
    rows = len(PROMPTS) * G
    ids = allowed[torch.randint(len(allowed), (rows, L))]                            # [N, L]
    lengths = torch.tensor([L, 4, 7, 1, L, 6, 3, 8, 2])                               # ragged; one of 1 token
    mask = torch.arange(L) < lengths[:, None]                                        # [N, L]
    ids = ids.masked_fill(~mask, tiny_policy.tokenizer.pad_token_id)                 # right padding, as sampled
    rollout = Rollout(prompts=prompts, prompt_index=[r // G for r in range(rows)], completion_ids=ids,
                      completion_mask=mask, truncated=~mask[:, -1].clone(), sampler_logp=torch.zeros(rows, L),
                      banned=banned, texts=[""] * rows)
    return model, rollout


def test_prompts_are_left_padded_to_different_lengths(setting):
    _, rollout = setting
    real = rollout.prompts.attention_mask.sum(1).tolist()
    assert len(set(real)) == 3 and max(real) == rollout.prompts.input_ids.shape[1]  # two rows carry padding


def update_pass(model, rollout, sharing: bool, mini_batch: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The update's forward and backward over mini-batches: log-probs [N, L] and the accumulated LoRA grads."""
    model.train()
    model.zero_grad(set_to_none=True)
    weights = torch.linspace(-1.0, 1.0, rollout.completion_ids.numel()).view_as(rollout.completion_ids)  # [N, L]
    parts = []
    for rows in minibatches(rollout.completion_ids.shape[0], mini_batch):
        logp = completion_logprobs(model, rollout.prompts, *rollout.rows(rows), banned=rollout.banned,
                                   prefix_sharing=sharing)                                     # [n, L]
        (logp * weights[rows] * rollout.completion_mask[rows]).sum().backward()
        parts.append(logp.detach())
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return torch.cat(parts), grads


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient checkpointing"])
def test_shared_prefix_log_probs_and_lora_gradients_equal_the_unshared_path(setting, checkpointing):
    model, rollout = setting
    mask = rollout.completion_mask
    if checkpointing:
        enable_gradient_checkpointing(model)
    calls = []
    model.model.language_model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    unshared_logp, unshared_grads = update_pass(model, rollout, sharing=False, mini_batch=2)
    calls.clear()
    shared_logp, shared_grads = update_pass(model, rollout, sharing=True, mini_batch=2)
    assert len(calls) == (10 if checkpointing else 5)    # 5 mini-batches; checkpointing reruns each in backward
    assert relative_error(shared_logp[mask], unshared_logp[mask]) < 1e-5
    assert len(shared_grads) == 2 * 4 * 2                # A and B of q, k, v, o in 2 layers
    for shared, unshared in zip(shared_grads, unshared_grads):
        assert unshared.abs().max() > 0
        assert relative_error(shared, unshared) < 1e-5
    # the whole batch in one mini-batch (each prompt once) accumulates the same gradient as the split groups;
    # so do mini-batches of 4 rows, whose first (prompt 0 three times, prompt 1 once) takes the index path
    for mini_batch in (len(PROMPTS) * G, 4):
        logp, grads = update_pass(model, rollout, sharing=True, mini_batch=mini_batch)
        assert relative_error(logp[mask], unshared_logp[mask]) < 1e-5
        for ours, unshared in zip(grads, unshared_grads):
            assert relative_error(ours, unshared) < 1e-5


def test_completions_copy_their_prompt_by_expand_when_in_equal_runs_else_by_index(setting):
    model, rollout = setting
    x = torch.randn(3, 2, 5, requires_grad=True)
    cases = {(0, 0, 0, 1, 1, 1, 2, 2, 2): 3, (1, 1): 2, (0, 1): 1, (0, 0, 0, 1): None, (0, 1, 0, 1): None}
    for prompt_index, repeats in cases.items():
        distinct = list(dict.fromkeys(prompt_index))
        layout = shared_prefix.layout_for(model, rollout.prompts, distinct, prompt_index, L, torch.float32)
        assert layout.repeats == repeats, prompt_index
        rows = shared_prefix.per_completion(x[distinct], layout)
        assert torch.equal(rows, x[list(prompt_index)])
        rows.backward(torch.ones_like(rows))
        counts = torch.bincount(torch.tensor(prompt_index), minlength=3).float()
        assert torch.equal(x.grad, counts[:, None, None].expand_as(x))  # each prompt gets the sum of its copies
        x.grad = None


def test_reference_pass_is_the_same_without_a_graph(setting):
    model, rollout = setting
    model.eval()
    with torch.no_grad():
        unshared = rollout_logprobs(model, rollout, temperature=0.7, mini_batch_size=4, prefix_sharing=False)
    shared = rollout_logprobs(model, rollout, temperature=0.7, mini_batch_size=4, prefix_sharing=True)
    assert not shared.requires_grad
    mask = rollout.completion_mask
    assert relative_error(shared[mask], unshared[mask]) < 1e-5


def test_no_completion_sees_another(setting):
    """Changing completion 1 of group 0 from token 2 on leaves every other completion's log-probs bit for
    bit, and its own at tokens 0 and 1."""
    model, rollout = setting
    model.eval()
    with torch.no_grad():
        before = completion_logprobs(model, rollout.prompts, rollout.prompt_index, rollout.completion_ids,
                                     rollout.completion_mask, banned=rollout.banned)             # [N, L]
        ids = rollout.completion_ids.clone()
        ids[1, 2:] = ids[1, 2:].flip(0)
        after = completion_logprobs(model, rollout.prompts, rollout.prompt_index, ids, rollout.completion_mask,
                                    banned=rollout.banned)
    others = [r for r in range(ids.shape[0]) if r != 1]
    assert torch.equal(after[others], before[others])
    assert torch.equal(after[1, :2], before[1, :2]) and not torch.equal(after[1, 2:], before[1, 2:])


def test_bf16_shared_prefix_stays_within_bf16_rounding_of_the_unshared_path(setting):
    model, rollout = setting
    model.to(torch.bfloat16).eval()
    prompts = dataclasses.replace(rollout.prompts,
                                  image_features=[f.to(torch.bfloat16) for f in rollout.prompts.image_features])
    with torch.no_grad():
        logp = [completion_logprobs(model, prompts, rollout.prompt_index, rollout.completion_ids,
                                    rollout.completion_mask, banned=rollout.banned, prefix_sharing=sharing)
                for sharing in (False, True)]
    mask = rollout.completion_mask
    assert logp[1].dtype == torch.float32
    assert (logp[1][mask] - logp[0][mask]).abs().max() < 0.05  # a few bf16 roundings of ~6.6 nats
