"""Model inputs for Qwen2-VL built from the tokenizer and the image processor (no AutoProcessor, no torchvision).

For each row: render the chat with the model's template (one `<|vision_start|><|image_pad|><|vision_end|>`
per image), expand the single `<|image_pad|>` into as many copies as the image yields tokens
(t * h * w / merge_size**2 from `image_grid_thw`), tokenize, then left-pad the batch.
`pixel_values` holds every image's patches concatenated in row order, so row i's image tokens are
filled with row i's own image: the vision tower splits the concatenation by `image_grid_thw`, row by
row. (Repeating or reordering pixel_values without the grid is how images end up paired with the
wrong completions when batch > 1.)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

IMAGE_PAD = "<|image_pad|>"


@dataclass
class PromptBatch:
    """B prompts, left-padded to P tokens, with their images."""

    input_ids: torch.Tensor        # [B, P] long
    attention_mask: torch.Tensor   # [B, P] long, 0 on left padding
    mm_token_type_ids: torch.Tensor  # [B, P] int, 1 on image tokens (transformers 5 needs it for M-RoPE)
    pixel_values: torch.Tensor     # [sum_i t_i*h_i*w_i, C * temporal_patch * patch * patch]
    image_grid_thw: torch.Tensor   # [B, 3] long, one image per row

    def to(self, device: torch.device) -> PromptBatch:
        return PromptBatch(*(t.to(device) for t in (
            self.input_ids, self.attention_mask, self.mm_token_type_ids, self.pixel_values, self.image_grid_thw)))

    @property
    def model_kwargs(self) -> dict[str, torch.Tensor]:
        return dict(input_ids=self.input_ids, attention_mask=self.attention_mask,
                    mm_token_type_ids=self.mm_token_type_ids, pixel_values=self.pixel_values,
                    image_grid_thw=self.image_grid_thw)


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The chat string up to and including the assistant header (`<|im_start|>assistant\\n`)."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def image_token_count(grid_thw: torch.Tensor, merge_size: int) -> int:
    """Image tokens the language model sees for one image: patches t*h*w, merged merge_size x merge_size."""
    return int(grid_thw.prod()) // merge_size**2


def build_prompt_batch(tokenizer, image_processor, conversations: Sequence[list[dict]],
                       images: Sequence[Image.Image]) -> PromptBatch:
    """Tokenize B chats (each with exactly one image) into one left-padded batch."""
    if len(conversations) != len(images):
        raise ValueError(f"{len(conversations)} conversations but {len(images)} images")
    image_pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    rows, pixels, grids = [], [], []
    for index, (messages, image) in enumerate(zip(conversations, images)):
        vision = image_processor(images=[image], return_tensors="pt")
        grid = vision["image_grid_thw"][0]  # [3]
        text = render_prompt(tokenizer, messages)
        if text.count(IMAGE_PAD) != 1:
            raise ValueError(f"prompt {index} must hold exactly one image placeholder, found {text.count(IMAGE_PAD)}")
        text = text.replace(IMAGE_PAD, IMAGE_PAD * image_token_count(grid, image_processor.merge_size))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids.count(image_pad_id) != image_token_count(grid, image_processor.merge_size):
            raise ValueError(f"prompt {index}: image placeholder did not tokenize to one token per image patch group")
        rows.append(torch.tensor(ids, dtype=torch.long))
        pixels.append(vision["pixel_values"])
        grids.append(grid)
    input_ids, attention_mask = left_pad(rows, tokenizer.pad_token_id)
    return PromptBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        mm_token_type_ids=(input_ids == image_pad_id).int(),
        pixel_values=torch.cat(pixels),
        image_grid_thw=torch.stack(grids),
    )


def left_pad(rows: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D id tensors into [B, P], padding on the left; returns (ids, attention_mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


def repeat_rows(batch: PromptBatch, times: int) -> PromptBatch:
    """Each prompt `times` times in a row (rows b*G + g), each copy with its own prompt's image.

    pixel_values is a concatenation of variable-length per-image blocks, so it is split by the grid,
    each block repeated, and concatenated again in the new row order.
    """
    patches = batch.image_grid_thw.prod(-1).tolist()  # [B] patches per image
    blocks = torch.split(batch.pixel_values, patches)
    return PromptBatch(
        input_ids=batch.input_ids.repeat_interleave(times, 0),
        attention_mask=batch.attention_mask.repeat_interleave(times, 0),
        mm_token_type_ids=batch.mm_token_type_ids.repeat_interleave(times, 0),
        pixel_values=torch.cat([block for block in blocks for _ in range(times)]),
        image_grid_thw=batch.image_grid_thw.repeat_interleave(times, 0),
    )


def select_rows(batch: PromptBatch, rows: Sequence[int]) -> PromptBatch:
    """The sub-batch of `rows` (e.g. one mini-batch of completions), each row keeping its own image."""
    blocks = torch.split(batch.pixel_values, batch.image_grid_thw.prod(-1).tolist())
    index = torch.as_tensor(list(rows), dtype=torch.long)
    return PromptBatch(
        input_ids=batch.input_ids[index],
        attention_mask=batch.attention_mask[index],
        mm_token_type_ids=batch.mm_token_type_ids[index],
        pixel_values=torch.cat([blocks[i] for i in rows]),
        image_grid_thw=batch.image_grid_thw[index],
    )


def with_completions(prompts: PromptBatch, completion_ids: torch.Tensor,
                     completion_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward kwargs for prompt + completion rows: [N, P + L], completions right-padded (mask 0)."""
    return dict(
        input_ids=torch.cat([prompts.input_ids, completion_ids], 1),                  # [N, P+L]
        attention_mask=torch.cat([prompts.attention_mask, completion_mask.long()], 1),  # [N, P+L]
        mm_token_type_ids=torch.cat([prompts.mm_token_type_ids,
                                     torch.zeros_like(completion_ids, dtype=prompts.mm_token_type_ids.dtype)], 1),
        pixel_values=prompts.pixel_values,
        image_grid_thw=prompts.image_grid_thw,
    )
