"""M-RoPE, the multimodal rotary position embedding of every supported family: the position ids and the rotation.

Every token carries three position ids (temporal, height, width):
- text tokens: all three equal, counting up by one;
- an image's T = t * h * w / merge**2 tokens: (t, row, column) of the merged patch grid, each offset by
  the position where the image starts;
- text after an image continues from that offset + max(rows, columns), not + T.
So after the image a row's positions run behind its token count by a constant; completion token j
sits at `next_position + j`, where next_position = (largest prompt position) + 1, on all three axes.

The positions are the same in Qwen2-VL, Qwen2.5-VL and Qwen3-VL (for images; videos differ). What differs
is which axis turns which of a head's D/2 rotary frequencies (`frequency_axes`), as the family says
(src/models/families.py: rotary):
- chunked (Qwen2-VL, Qwen2.5-VL): `mrope_section` consecutive blocks, the first turned by t, the next by h,
  the last by w (Qwen2-VL-2B: [16, 24, 24] of 64);
- interleaved (Qwen3-VL): t, h, w alternate frequency by frequency (t h w t h w ...) over the first
  3 * section[1] frequencies, the remaining ones by t (Qwen3-VL-2B: [24, 20, 20] of 64 gives t h w x 20,
  then 4 more t).
Both halves of the head use the same angles (rotate_half convention). This matches transformers'
`get_rope_index` and the families' rotary embeddings (tests/test_engine.py and tests/test_families.py
compare them) for prompts holding one image each, as ours do.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def prompt_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_grid_thw: torch.Tensor,
                     image_token_id: int, merge_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE position ids of B left-padded prompts with one image each.

    input_ids, attention_mask: [B, P]; image_grid_thw: [B, 3] patch grid of each row's image.
    Returns positions [3, B, P] (0 on padding) and next_position [B], the position of completion token 0.
    """
    batch, width = input_ids.shape
    positions = torch.zeros(3, batch, width, dtype=torch.long)
    next_position = torch.zeros(batch, dtype=torch.long)
    for b in range(batch):
        real = attention_mask[b].bool().cpu()
        ids = input_ids[b].cpu()[real]                                           # [P_b] without padding
        is_image = ids == image_token_id
        start = int(is_image.nonzero()[0]) if is_image.any() else len(ids)
        t, h, w = (int(x) for x in image_grid_thw[b])
        h, w = h // merge_size, w // merge_size
        if int(is_image.sum()) != t * h * w:
            raise ValueError(f"prompt {b}: {int(is_image.sum())} image tokens for a {t}x{h}x{w} merged grid")
        grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"))
        after = len(ids) - start - t * h * w                                     # text tokens after the image
        row = torch.cat([
            torch.arange(start).expand(3, -1),                                   # text before the image
            grid.reshape(3, -1) + start,                                         # the image's (t, row, column)
            torch.arange(after).expand(3, -1) + start + max(h, w),               # text after it
        ], dim=1)                                                                # [3, P_b]
        positions[:, b, real] = row
        next_position[b] = row.max() + 1
    return positions.to(input_ids.device), next_position.to(input_ids.device)


def frequency_axes(section: list[int], layout: str, device: torch.device | None = None) -> torch.Tensor:
    """[D/2] long: the position axis (0 t, 1 h, 2 w) that turns each rotary frequency (module docstring).
    Device operations only, no host synchronisation: the decode step that calls it is captured as a CUDA graph."""
    if layout == "chunked":
        return torch.cat([torch.full((size,), axis % 3, dtype=torch.long, device=device)
                          for axis, size in enumerate(section)])
    if layout == "interleaved":
        index = torch.arange(sum(section), device=device)
        axes = index % 3
        beyond = ((axes == 1) & (index >= 3 * section[1])) | ((axes == 2) & (index >= 3 * section[2]))
        return torch.where(beyond, 0, axes)
    raise ValueError(f"unknown M-RoPE layout {layout!r}")


@dataclass(frozen=True)
class Rotary:
    """A model's M-RoPE: inverse frequencies [D/2], the sections, the attention scaling and the layout."""

    inv_freq: torch.Tensor
    section: list[int]
    scaling: float
    layout: str

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the rotation angles: positions [3, n, S] -> two [n, S, D] tensors in `dtype`."""
        angles = positions[..., None].float() * self.inv_freq.float()                # [3, n, S, D/2]
        axes = frequency_axes(self.section, self.layout, angles.device)              # [D/2]
        angles = angles.gather(0, axes.expand(1, *angles.shape[1:])).squeeze(0)      # [n, S, D/2]
        angles = torch.cat([angles, angles], dim=-1)                                 # [n, S, D]
        return (angles.cos() * self.scaling).to(dtype), (angles.sin() * self.scaling).to(dtype)


def rotary_of(model) -> Rotary:
    """The M-RoPE of a loaded model: its language model's rotary embedding, laid out as its family says."""
    from src.models.families import family_of

    rotary = model.model.language_model.rotary_emb
    text = model.config.text_config
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    section = getattr(rotary, "mrope_section", None) or rope["mrope_section"]
    return Rotary(rotary.inv_freq, list(section), float(getattr(rotary, "attention_scaling", 1.0)),
                  family_of(model).rotary)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [n, heads, S, D] turned by the angles of cos/sin [n, S, D]: x cos + rotate_half(x) sin."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)                                # [n, 1, S, D]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)                 # rotate_half(x)
    return x * cos + rotated * sin
