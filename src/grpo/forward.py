"""The policy's forward pass over prompts + completions: log pi of every completion token.

Two ways to the language model's last hidden states at the positions that predict completion tokens:
- shared prefix (the default): each distinct prompt of a mini-batch goes through the layers once and its
  completions attend to its keys and values (src/models/shared_prefix.py);
- unshared (`prefix_sharing=False`, train.py's --no-prefix-sharing): every row is prompt + completion
  through transformers' language model, the prompt computed once per completion. It is the reference
  the shared path is tested against (tests/test_shared_prefix.py).
Either way the hidden states go through `linear_logprobs`, which applies the lm_head in chunks: the
[N, L, V] logits of the whole batch (V = 151,936 for Qwen2-VL) never exist at once, in forward or backward.

Mini-batches are `mini_batch_size` consecutive rows. Rows are laid out group by group (row b*G + g), so
a mini-batch holds whole groups when its size is a multiple of G (the default: 8 = G) and group slices
otherwise. A group split over k mini-batches has its prompt computed in each of them, k times instead of
once, and the gradient is still exact: a mini-batch's prompt activations depend only on the weights,
which accumulation does not change, and the prompt's gradient from one slice is the sum over that
slice's completions, so the k slices add up to the sum over all G completions.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from src.grpo.logprobs import linear_logprobs
from src.models import shared_prefix
from src.models.encoded_prompts import EncodedPrompts


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
    """log pi of every completion token of a rollout (a src.grpo.rollout.Rollout), mini-batch by
    mini-batch, without building a graph: the reference and old-policy passes. [N, L] fp32."""
    parts = [completion_logprobs(model, rollout.prompts, *rollout.rows(rows), temperature, rollout.banned,
                                 prefix_sharing)
             for rows in minibatches(rollout.completion_ids.shape[0], mini_batch_size)]
    return torch.cat(parts)                                                     # [N, L]
