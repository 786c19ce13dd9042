"""M-RoPE, Qwen2-VL's multimodal rotary position embedding: the position ids and the rotation.

Every token carries three position ids (temporal, height, width):
- text tokens: all three equal, counting up by one;
- an image's T = t * h * w / merge**2 tokens: (t, row, column) of the merged patch grid, each offset by
  the position where the image starts;
- text after an image continues from that offset + max(rows, columns), not + T.
So after the image a row's positions run behind its token count by a constant; completion token j
sits at `next_position + j`, where next_position = (largest prompt position) + 1, on all three axes.

The rotation splits the D/2 rotary frequencies of a head into `mrope_section` chunks (Qwen2-VL-2B:
[16, 24, 24] of 64); chunk i turns by position axis i % 3. Both halves of the head use the same angles
(rotate_half convention). This matches transformers' `get_rope_index` and `Qwen2VLRotaryEmbedding`
(tests/test_engine.py compares them) for prompts holding one image each, as ours do.
"""
from __future__ import annotations

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


def rotary_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, mrope_section: list[int],
                   dtype: torch.dtype, scaling: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles: positions [3, n, S] -> two [n, S, D] tensors in `dtype`."""
    angles = positions[..., None].float() * inv_freq.float()                       # [3, n, S, D/2]
    angles = torch.cat([chunk[i % 3] for i, chunk in enumerate(angles.split(mrope_section, dim=-1))], -1)
    angles = torch.cat([angles, angles], dim=-1)                                   # [n, S, D]
    return (angles.cos() * scaling).to(dtype), (angles.sin() * scaling).to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [n, heads, S, D] turned by the angles of cos/sin [n, S, D]: x cos + rotate_half(x) sin."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)                                # [n, 1, S, D]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)                 # rotate_half(x)
    return x * cos + rotated * sin
