"""A static KV cache: every layer's keys and values for `rows` sequences of up to `length` tokens,
allocated once before decoding.

Nothing is allocated or concatenated per token: decode step i writes its keys and values at index P + i,
in place, and marks that index as visible. Fixed shapes and in-place writes are also what lets a CUDA
graph capture a decode step once and replay it for every token (src/models/cuda_graph.py).
"""
from __future__ import annotations

import torch


class StaticKVCache:
    """keys, values: [layers, rows, kv_heads, length, head_dim]; visible: [rows, length] bool, the key
    positions a query may attend to (real prompt tokens and the tokens decoded so far)."""

    def __init__(self, layers: int, rows: int, kv_heads: int, length: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (layers, rows, kv_heads, length, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.visible = torch.zeros(rows, length, dtype=torch.bool, device=device)

    @classmethod
    def for_model(cls, model, rows: int, length: int) -> StaticKVCache:
        text = model.config.text_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        weight = model.get_input_embeddings().weight
        return cls(text.num_hidden_layers, rows, text.num_key_value_heads, length, head_dim, weight.dtype,
                   weight.device)

    @property
    def rows(self) -> int:
        return self.keys.shape[1]

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor, index: torch.Tensor) -> None:
        """keys, values [rows, kv_heads, S, head_dim] at token positions `index` [S] (a device tensor)."""
        self.keys[layer].index_copy_(2, index, keys)
        self.values[layer].index_copy_(2, index, values)

    def fill_prompts(self, prompts: StaticKVCache, prompt_visible: torch.Tensor, group_size: int) -> None:
        """Copy B prefilled prompts into this cache's B * G rows (row b * G + g is a copy of prompt b):
        each prompt is prefilled once, not once per completion. prompt_visible: [B, P] real tokens."""
        width = prompts.keys.shape[3]
        self.keys[:, :, :, :width] = prompts.keys.repeat_interleave(group_size, dim=1)
        self.values[:, :, :, :width] = prompts.values.repeat_interleave(group_size, dim=1)
        self.visible.zero_()
        self.visible[:, :width] = prompt_visible.repeat_interleave(group_size, dim=0)

    def keep(self, rows: torch.Tensor) -> None:
        """Only rows `rows` [r] from now on (the others have finished decoding)."""
        self.keys, self.values, self.visible = self.keys[:, rows], self.values[:, rows], self.visible[rows]
