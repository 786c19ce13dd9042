"""Vision once: a step's prompts with their images already through the vision tower.

The vision tower is frozen (the paper trains the language side only), so an image's features are the same
in every pass of a step: sampling, the reference, the old policy and each update. `encode_prompts` runs
each distinct image of the step through the tower once; every later pass builds its input embeddings
from these features (`EncodedPrompts.inputs`) instead of re-running the tower on each of the G
completion rows of a prompt, as a plain `model(pixel_values=...)` call per row would.

Inputs are built the way transformers' models build them (embed the ids, put the image features in place
of the `<|image_pad|>` tokens in row order, M-RoPE position ids; for Qwen3-VL also the DeepStack features
and where the image tokens are), so the language model sees exactly what it would see from pixel_values
(tests/test_engine.py, tests/test_families.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from src.models.families import family_of
from src.models.inputs import PromptBatch
from src.models.mrope import prompt_positions


@dataclass
class EncodedPrompts:
    """B left-padded prompts of P tokens, with image features and M-RoPE positions; on the model's device."""

    input_ids: torch.Tensor          # [B, P] long
    attention_mask: torch.Tensor     # [B, P] long, 0 on left padding
    image_features: list[torch.Tensor]  # B x [T_b, H]: prompt b's image tokens as the language model sees them
    # B x [layers] x [T_b, H]: prompt b's DeepStack features, one per DeepStack layer (Qwen3-VL); [] otherwise
    deepstack_features: list[list[torch.Tensor]]
    positions: torch.Tensor          # [3, B, P] M-RoPE position ids (0 on padding)
    next_position: torch.Tensor      # [B] M-RoPE position of completion token 0 (the same on all three axes)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def inputs(self, model, prompt_index: Sequence[int], completion_ids: torch.Tensor | None = None,
               completion_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Keyword arguments of the language model for rows `prompt_index` (n of them, repeats allowed),
        each followed by its completion when given: inputs_embeds [n, P+L, H], attention_mask [n, P+L],
        position_ids [3, n, P+L]; with DeepStack also visual_pos_masks [n, P+L] (the image tokens) and
        deepstack_visual_embeds (one [sum T, H] per DeepStack layer), as transformers' Qwen3-VL language
        model takes them. Completions are right-padded (mask 0 after the end token)."""
        index = torch.as_tensor(list(prompt_index), dtype=torch.long, device=self.input_ids.device)
        ids, attention, positions = self.input_ids[index], self.attention_mask[index], self.positions[:, index]
        if completion_ids is not None:
            ids = torch.cat([ids, completion_ids], 1)                                     # [n, P+L]
            attention = torch.cat([attention, completion_mask.long()], 1)                 # [n, P+L]
            after = self.completion_positions(index, completion_ids.shape[1])             # [3, n, L]
            positions = torch.cat([positions, after], 2)                                  # [3, n, P+L]
        embeds = model.get_input_embeddings()(ids)                                        # [n, P+L, H]
        features = torch.cat([self.image_features[i] for i in index.tolist()]).to(embeds.dtype)  # [sum T, H]
        is_image = (ids == model.config.image_token_id).unsqueeze(-1)                     # [n, P+L, 1]
        embeds = embeds.masked_scatter(is_image, features)       # row-major: each row gets its own image's
        inputs = dict(inputs_embeds=embeds, attention_mask=attention, position_ids=positions)
        layers = len(self.deepstack_features[0]) if self.deepstack_features else 0
        if layers:
            inputs["visual_pos_masks"] = is_image.squeeze(-1)                             # [n, P+L]
            inputs["deepstack_visual_embeds"] = [torch.cat([self.deepstack_features[i][layer] for i in index.tolist()])
                                                 .to(embeds.dtype) for layer in range(layers)]  # layers x [sum T, H]
        return inputs

    def completion_positions(self, prompt_index: Sequence[int] | torch.Tensor, length: int) -> torch.Tensor:
        """M-RoPE positions [3, n, L] of completions of prompts `prompt_index`: token j of a completion
        of prompt b sits at next_position[b] + j on all three axes."""
        index = torch.as_tensor(prompt_index, dtype=torch.long, device=self.input_ids.device)
        steps = torch.arange(length, device=self.input_ids.device)                         # [L]
        return (self.next_position[index, None] + steps).expand(3, -1, -1)                 # [3, n, L]


def distinct_images(batch: PromptBatch) -> tuple[list[torch.Tensor], list[int]]:
    """The batch's distinct images (pixel blocks compared exactly) and, per prompt, which one it holds."""
    blocks = torch.split(batch.pixel_values, batch.image_grid_thw.prod(-1).tolist())
    distinct: list[torch.Tensor] = []
    which = []
    for block in blocks:
        match = next((i for i, d in enumerate(distinct) if d.shape == block.shape and torch.equal(d, block)), None)
        if match is None:
            distinct.append(block)
            match = len(distinct) - 1
        which.append(match)
    return distinct, which


def image_features(model, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
                   ) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """The vision tower and its merger on K images: K tensors [T_k, H]; and each image's DeepStack
    features, one [T_k, H] per DeepStack layer, where the family has them (K empty lists otherwise)."""
    out = model.model.get_image_features(pixel_values=pixel_values, image_grid_thw=image_grid_thw)
    features = getattr(out, "pooler_output", out)  # transformers >= 5.x wraps the per-image tuple in an output
    if isinstance(features, torch.Tensor):        # some versions return the concatenation
        merge = model.config.vision_config.spatial_merge_size
        features = torch.split(features, (image_grid_thw.prod(-1) // merge**2).tolist())
    layers = out.deepstack_features if family_of(model).deepstack else []          # layers x K
    return list(features), [[layer[k] for layer in layers] for k in range(len(features))]


@torch.no_grad()
def encode_prompts(model, batch: PromptBatch) -> EncodedPrompts:
    """Run each distinct image of `batch` through the (frozen) vision tower once; positions from the grid."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    distinct, which = distinct_images(batch)
    grids = torch.stack([batch.image_grid_thw[which.index(k)] for k in range(len(distinct))])  # [K, 3]
    features, deepstack = image_features(model, torch.cat(distinct), grids)                    # K x [T_k, H]
    positions, next_position = prompt_positions(batch.input_ids, batch.attention_mask, batch.image_grid_thw,
                                                model.config.image_token_id,
                                                model.config.vision_config.spatial_merge_size)
    return EncodedPrompts(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          image_features=[features[k] for k in which],
                          deepstack_features=[deepstack[k] for k in which], positions=positions,
                          next_position=next_position)
