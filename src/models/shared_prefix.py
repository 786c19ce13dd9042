"""The language model over prompts and their completions with each prompt computed once: the shared-prefix forward.

Every training-side pass (the update's forward and backward, the reference, the old policy) needs the
hidden states of G completions per prompt. Run as G rows of prompt + completion, a prompt's P tokens go
through every layer G times; at 224-1024 px a prompt is 106-1,042 tokens, usually more than a completion.
Here each distinct prompt of a mini-batch goes through the layers once, and its completions attend to it:

    stream     the b prompts' P tokens and the n completions' L tokens are one stream of T = b*P + n*L
               tokens for every position-wise module: norms, q/k/v/o projections (with their LoRA side
               paths), MLP. These are the layers' own modules, as in the unshared forward.
    attention  a prompt query sees its prompt's real tokens up to itself (left padding masked);
               a completion query sees its own prompt's real tokens and its own completion up to itself,
               never another completion (a block mask): keys [n, Hkv, P + L, D] are its prompt's keys
               followed by its own.
    positions  M-RoPE: the prompt's from encode_prompts; completion token j at the prompt's next_position + j.
    family     what the model's family adds (src/models/families.py): Qwen3-VL's q/k norm inside the
               projections, and its DeepStack features added to the prompts' image tokens after the first
               layers, as the unshared forward adds them.
    output     the final hidden states that predict completion tokens 0 ... L-1: the prompt's last position,
               then the completion's positions 0 ... L-2 ([n, L, H], what the unshared forward slices).

Gradients: a prompt's keys and values (and its last hidden state) reach its completions' rows by
`per_completion`; its backward adds the gradients of all the prompt's completions into the one prompt
stream, so the prompt's contribution to every parameter's gradient is the sum over its completions, as
it is when each completion carries its own copy of the prompt. When each prompt's completions are
consecutive and equally many (whole groups, or equal slices of one: the mini-batches the trainer makes
by default), that is an expand, whose backward is a sum over the copies in a fixed order on every
device, so runs repeat bit for bit; otherwise an index, whose backward adds by atomic float adds in
parallel (in order on a CPU training run: src/grpo/trainer.same_sums_on_cpu).

What it copies: each completion row gets its prompt's keys and values (2 KV heads x D per token and
layer on Qwen2-VL-2B, a third of one hidden state), against running the prompt's projections and MLP
once per completion. Attention runs as torch's scaled_dot_product_attention with a boolean mask, like
the rollout engine's prefill (src/models/engine.py).

Which completions share a pass is the caller's mini-batch: src/grpo/step.py (completion_logprobs) takes consecutive rows,
whole groups by default (mini_batch_size = G), group slices when smaller, and says why.

Gradient checkpointing is per layer, as transformers does it: with the layer's `gradient_checkpointing`
flag set (src/models/loading.enable_gradient_checkpointing) and the model in training mode, a layer keeps
only its input [T, H] and recomputes the rest in backward.
Shape legend: b distinct prompts, n completions, P prompt tokens, L completion tokens, T = b*P + n*L,
H hidden size, Hq / Hkv query / key-value heads, D head size.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from src.models.engine import attention, prefill_visibility
from src.models.encoded_prompts import EncodedPrompts
from src.models.families import Family, add_deepstack, family_of, projections
from src.models.mrope import rotary_of, rotate


@dataclass
class Layout:
    """Where the prompts and the completions sit in the stream, and what each attends to."""

    prompts: int                  # b
    prompt_length: int            # P
    completions: int              # n
    completion_length: int        # L
    owner: torch.Tensor           # [n] long: which of the b prompts each completion continues
    repeats: int | None           # owner is 0 ... b-1, each `repeats` times in a row; None: any other order
    prompt_rotary: tuple[torch.Tensor, torch.Tensor]      # cos, sin [b, P, D]
    completion_rotary: tuple[torch.Tensor, torch.Tensor]  # cos, sin [n, L, D]
    prompt_visible: torch.Tensor      # [b, 1, P, P] bool
    completion_visible: torch.Tensor  # [n, 1, L, P + L] bool
    family: Family                    # q/k norm or not (src/models/families.py)

    @property
    def prompt_tokens(self) -> int:
        return self.prompts * self.prompt_length


def completion_visibility(prompt_mask: torch.Tensor, length: int) -> torch.Tensor:
    """[n, P] real prompt tokens of each completion's prompt -> [n, 1, L, P + L]: completion token j sees
    the real prompt tokens and its own tokens 0 ... j."""
    n, width = prompt_mask.shape
    causal = torch.ones(length, length, dtype=torch.bool, device=prompt_mask.device).tril()   # [L, L]
    prompt_part = prompt_mask.bool()[:, None, None, :].expand(n, 1, length, width)            # [n, 1, L, P]
    return torch.cat([prompt_part, causal.expand(n, 1, length, length)], dim=-1)              # [n, 1, L, P+L]


def per_completion(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """[b, ...] of the prompts -> [n, ...]: each completion's copy of its prompt's row (see Gradients)."""
    if layout.repeats is None:
        return x[layout.owner]
    b, rest = x.shape[0], x.shape[1:]
    return x.unsqueeze(1).expand(b, layout.repeats, *rest).reshape(b * layout.repeats, *rest)


def heads(x: torch.Tensor, rows: int, length: int) -> torch.Tensor:
    """[rows * length, heads, D] -> [rows, heads, length, D]."""
    return x.view(rows, length, *x.shape[1:]).transpose(1, 2)


def shared_attention(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Projected q [T, Hq, D], k, v [T, Hkv, D] of the stream -> attention output [T, Hq*D]."""
    split = layout.prompt_tokens
    b, P, n, L = layout.prompts, layout.prompt_length, layout.completions, layout.completion_length
    q_p, k_p, v_p = (heads(t[:split], b, P) for t in (q, k, v))                   # [b, H*, P, D]
    q_c, k_c, v_c = (heads(t[split:], n, L) for t in (q, k, v))                   # [n, H*, L, D]
    q_p, k_p = rotate(q_p, *layout.prompt_rotary), rotate(k_p, *layout.prompt_rotary)
    q_c, k_c = rotate(q_c, *layout.completion_rotary), rotate(k_c, *layout.completion_rotary)
    out_p = attention(q_p, k_p, v_p, layout.prompt_visible, attn.scaling)        # [b, Hq, P, D]
    keys = torch.cat([per_completion(k_p, layout), k_c], dim=2)                    # [n, Hkv, P+L, D]
    values = torch.cat([per_completion(v_p, layout), v_c], dim=2)                  # [n, Hkv, P+L, D]
    out_c = attention(q_c, keys, values, layout.completion_visible, attn.scaling)  # [n, Hq, L, D]
    return torch.cat([out_p.transpose(1, 2).reshape(split, -1),
                      out_c.transpose(1, 2).reshape(n * L, -1)])                   # [T, Hq*D]


def decoder_layer(layer, x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """One decoder layer on the stream x [T, H]: pre-norm attention and MLP, each with its residual."""
    attn = layer.self_attn
    q, k, v = projections(attn, layer.input_layernorm(x), layout.family)           # [T, H*, D]
    out = shared_attention(attn, q, k, v, layout)                                  # [T, Hq*D]
    x = x + attn.o_proj(out)                                                       # [T, H]
    return x + layer.mlp(layer.post_attention_layernorm(x))                        # [T, H]


def layout_for(model, prompts: EncodedPrompts, distinct: list[int], prompt_index: Sequence[int], length: int,
               dtype: torch.dtype) -> Layout:
    device = prompts.input_ids.device
    owners = [distinct.index(i) for i in prompt_index]
    repeats = len(owners) // len(distinct)
    in_runs = owners == [j for j in range(len(distinct)) for _ in range(repeats)]
    owner = torch.tensor(owners, dtype=torch.long, device=device)                                       # [n]
    prompt_mask = prompts.attention_mask[distinct]                                                     # [b, P]
    rotary = rotary_of(model)
    prompt_rotary = rotary.cos_sin(prompts.positions[:, distinct], dtype)                               # [b, P, D]
    completion_positions = prompts.completion_positions(list(prompt_index), length)                    # [3, n, L]
    completion_rotary = rotary.cos_sin(completion_positions, dtype)                                     # [n, L, D]
    return Layout(prompts=len(distinct), prompt_length=prompt_mask.shape[1], completions=len(owner),
                  completion_length=length, owner=owner, repeats=repeats if in_runs else None,
                  prompt_rotary=prompt_rotary,
                  completion_rotary=completion_rotary, prompt_visible=prefill_visibility(prompt_mask),
                  completion_visible=completion_visibility(prompt_mask[owner], length), family=family_of(model))


def forward(model, prompts: EncodedPrompts, prompt_index: Sequence[int], completion_ids: torch.Tensor) -> torch.Tensor:
    """Final hidden states [n, L, H] (after the last norm) that predict completion tokens 0 ... L-1 of the
    n completions `completion_ids` [n, L] (right-padded), completion i continuing prompt prompt_index[i].

    Each distinct prompt among prompt_index goes through the layers once. Padding after a completion's
    end is never seen by its real tokens (it comes after them), so no completion mask is needed; the
    hidden states at padding positions are junk, as in the unshared forward.
    """
    lm = model.model.language_model
    distinct = list(dict.fromkeys(prompt_index))                                  # b prompts, first-seen order
    inputs = prompts.inputs(model, distinct)
    prompt_embeds = inputs["inputs_embeds"]                                        # [b, P, H]
    completion_embeds = model.get_input_embeddings()(completion_ids)               # [n, L, H]
    (b, P, hidden), (n, L) = prompt_embeds.shape, completion_ids.shape
    layout = layout_for(model, prompts, distinct, prompt_index, L, prompt_embeds.dtype)
    x = torch.cat([prompt_embeds.reshape(b * P, hidden), completion_embeds.reshape(n * L, hidden)])  # [T, H]
    deepstack = inputs.get("deepstack_visual_embeds", ())                          # layers x [k, H] (Qwen3-VL)
    if deepstack:  # the prompts' image tokens in the stream (completions hold none)
        image_positions = torch.cat([inputs["visual_pos_masks"].reshape(-1),
                                     torch.zeros(n * L, dtype=torch.bool, device=x.device)])  # [T]
    for layer_index, layer in enumerate(lm.layers):
        if layer.gradient_checkpointing and layer.training and torch.is_grad_enabled():
            x = checkpoint(decoder_layer, layer, x, layout, use_reentrant=False)
        else:
            x = decoder_layer(layer, x, layout)
        if layer_index < len(deepstack):  # DeepStack: the layer's vision features join at the image tokens
            x = add_deepstack(x, image_positions, deepstack[layer_index])              # [T, H]
    last_prompt = per_completion(x[:b * P].view(b, P, hidden)[:, P - 1:], layout)  # [n, 1, H]: predicts token 0
    completions = x[b * P:].view(n, L, hidden)[:, :-1]                            # [n, L-1, H]: tokens 1 ... L-1
    return lm.norm(torch.cat([last_prompt, completions], dim=1))                  # [n, L, H]
