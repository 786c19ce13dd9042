"""Model inputs built from the tokenizer and the image processor (no AutoProcessor, no torchvision).

The same for every family (src/models/families.py): the family shows in what the checkpoint brings, its
chat template, its added tokens and its image processor's patch size (14 or 16 px), not in this code.
For each row: render the chat with the model's template (one `<|vision_start|><|image_pad|><|vision_end|>`
per image), expand the single `<|image_pad|>` into as many copies as the image yields tokens
(t * h * w / merge_size**2 from `image_grid_thw`), tokenize, then left-pad the batch.
`pixel_values` holds every image's patches concatenated in row order, so row i's image tokens are
filled with row i's own image: the vision tower splits the concatenation by `image_grid_thw`, row by
row. (Repeating or reordering pixel_values without the grid is how images end up paired with the
wrong completions when batch > 1.)

The module holds the three things a prompt is made of: the chat rendered with the model's template
(the templates themselves are the families', src/models/families.py), the image (opened, upright, RGB,
with errors that name the file) and the batch the model takes.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from src.models.families import IMAGE_PAD, QWEN2_VL_CHAT_TEMPLATE  # noqa: F401 - QWEN2_VL_CHAT_TEMPLATE: for callers


# ----------------------------------------------------------------------------------------------------
# Opening images for the model: EXIF orientation applied, converted to RGB, errors that name the file.
#
# Size: an image is decoded in full and the image processor then resizes it, aspect ratio kept and
# nothing cropped, to at most its max_pixels (12.8 MP for Qwen2-VL-2B: 16,384 image tokens), as
# Qwen2-VL's own pipeline does. The limits are Pillow's decompression-bomb limits, applied here rather
# than by Pillow, which warns (DecompressionBombWarning) from whichever call first opens a large image,
# mid-run: images above `LARGE_IMAGE_PIXELS` (89.5 MP) are decoded and named once, in one warning, when
# their dataset loads (src/data/loaders.py); above `MAX_IMAGE_PIXELS` (twice that) `load_image`
# refuses them with an ImageLoadError naming the file: downscale such an image first. Pillow's own
# guard is therefore switched off for this process (`Image.MAX_IMAGE_PIXELS = None`).
# ----------------------------------------------------------------------------------------------------

LARGE_IMAGE_PIXELS = 89_478_485      # Pillow's default MAX_IMAGE_PIXELS, where it would warn
MAX_IMAGE_PIXELS = 2 * LARGE_IMAGE_PIXELS  # where it would refuse
Image.MAX_IMAGE_PIXELS = None  # the limits above are applied by this module instead (see the docstring)


class ImageLoadError(ValueError):
    """An image that cannot be used; the message names the file (or the sample, for in-memory bytes)."""


def load_image(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """Open `source` (a path, or encoded bytes from a parquet row) as an RGB image.

    Scanners often store grayscale (mode L / I;16) or palette images and phones write rotations as
    EXIF tags; the vision tower wants upright 3-channel pixels, so both are normalised here.
    `name` is what error messages call the image when `source` is bytes.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<image bytes>")
    try:
        if isinstance(source, bytes):
            image = Image.open(io.BytesIO(source))
        else:
            path = Path(source)
            if not path.is_file():
                raise ImageLoadError(f"image not found: {path}")
            image = Image.open(path)
        if image.width * image.height > MAX_IMAGE_PIXELS:  # known from the header, before any decoding
            raise ImageLoadError(f"cannot read image {label}: {image.width}x{image.height} is "
                                 f"{image.width * image.height:,} pixels, more than the {MAX_IMAGE_PIXELS:,} "
                                 "decoded here (Pillow's decompression-bomb limit); downscale the image")
        image.load()  # decode now, so a truncated file fails here and not inside a training step
        image = ImageOps.exif_transpose(image)
    except ImageLoadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        reason = "empty file" if not isinstance(source, bytes) and Path(source).stat().st_size == 0 else error
        raise ImageLoadError(f"cannot read image {label}: {reason}") from error
    if image.mode.startswith("I"):
        # 16/32-bit scans: stretch to 8 bit before RGB conversion, which would otherwise clip at 255
        pixels = np.asarray(image, dtype=np.float64)
        pixels = (pixels - pixels.min()) / max(pixels.max() - pixels.min(), 1.0) * 255.0
        image = Image.fromarray(pixels.round().astype(np.uint8), mode="L")
    return image.convert("RGB")


# ----------------------------------------------------------------------------------------------------
# Prompt batches: the chat rendered, image tokens expanded, left-padded.
# ----------------------------------------------------------------------------------------------------

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


def select_rows(batch: PromptBatch, rows: Sequence[int]) -> PromptBatch:
    """The batch of prompts `rows` in that order (an index may repeat), each row with its own image.

    pixel_values is a concatenation of variable-length per-image blocks, so it is split by the grid
    and the blocks are concatenated again in the new row order.
    """
    blocks = torch.split(batch.pixel_values, batch.image_grid_thw.prod(-1).tolist())  # [B] blocks of patches
    index = torch.as_tensor(list(rows), dtype=torch.long)
    return PromptBatch(
        input_ids=batch.input_ids[index],
        attention_mask=batch.attention_mask[index],
        mm_token_type_ids=batch.mm_token_type_ids[index],
        pixel_values=torch.cat([blocks[i] for i in rows]),
        image_grid_thw=batch.image_grid_thw[index],
    )


def repeat_rows(batch: PromptBatch, times: int) -> PromptBatch:
    """Each prompt `times` times in a row (rows b*G + g), each copy with its own prompt's image."""
    return select_rows(batch, [b for b in range(batch.input_ids.shape[0]) for _ in range(times)])
