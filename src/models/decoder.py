"""The language model's forward pass over a static KV cache, for prefill and for one-token decode steps.

The layers' own modules do the work (RMSNorms, the q/k/v/o projections, LoRA side paths included, the
MLPs); only attention is written here, because it reads and writes the static cache:

    for each layer:  h = norm(x);  q, k, v = proj(h);  q, k = M-RoPE(q, k)
                     cache[layer][:, :, index] = k, v
                     x = x + o_proj(softmax(q K^T / sqrt(D) + mask) V);   x = x + mlp(norm(x))

Grouped-query attention (Qwen2-VL-2B: 12 query heads on 2 KV heads) never copies keys in decoding:
a one-token query's 6 heads per KV head are laid out as 6 query positions of that KV head, as
transformers does. Prefill repeats the keys per query head, as transformers does with a mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from src.models.kv_cache import StaticKVCache
from src.models.mrope import rotary_cos_sin, rotate


def rotary_settings(model) -> tuple[torch.Tensor, list[int], float]:
    """(inv_freq [D/2], mrope_section, scaling) of the model's rotary embedding."""
    rotary = model.model.language_model.rotary_emb
    text = model.config.text_config
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    section = getattr(rotary, "mrope_section", None) or rope["mrope_section"]
    return rotary.inv_freq, list(section), float(getattr(rotary, "attention_scaling", 1.0))


def attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor,
              scale: float) -> torch.Tensor:
    """q [n, Hq, S, D], keys/values [n, Hkv, T, D], visible [n, 1, S, T] bool -> [n, Hq, S, D]."""
    n, heads, length, dim = q.shape
    groups = heads // keys.shape[1]
    if length == 1:  # decode: query heads of one KV head as positions, no key copies
        out = F.scaled_dot_product_attention(q.reshape(n, -1, groups, dim), keys, values, attn_mask=visible,
                                             scale=scale)                      # [n, Hkv, groups, D]
        return out.reshape(n, heads, 1, dim)
    keys = keys.repeat_interleave(groups, dim=1)                                 # [n, Hq, T, D]
    values = values.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=visible, scale=scale)


def forward(model, embeds: torch.Tensor, positions: torch.Tensor, cache: StaticKVCache, index: torch.Tensor,
            visible: torch.Tensor, kv_length: int | None = None) -> torch.Tensor:
    """Final hidden states [n, S, H] of tokens `embeds` [n, S, H] at M-RoPE `positions` [3, n, S],
    written to the cache at token positions `index` [S]; attention sees the cache's first `kv_length`
    positions (all by default: fixed shapes for CUDA graphs) where `visible` [n, 1, S, T] allows."""
    lm = model.model.language_model
    n, length, _ = embeds.shape
    inv_freq, section, scaling = rotary_settings(model)
    cos, sin = rotary_cos_sin(positions, inv_freq, section, embeds.dtype, scaling)     # [n, S, D] each
    x = embeds
    for layer_index, layer in enumerate(lm.layers):
        attn = layer.self_attn
        h = layer.input_layernorm(x)                                                   # [n, S, H]
        dim = attn.head_dim
        q = attn.q_proj(h).view(n, length, -1, dim).transpose(1, 2)                    # [n, Hq, S, D]
        k = attn.k_proj(h).view(n, length, -1, dim).transpose(1, 2)                    # [n, Hkv, S, D]
        v = attn.v_proj(h).view(n, length, -1, dim).transpose(1, 2)                    # [n, Hkv, S, D]
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        cache.write(layer_index, k, v, index)
        keys = cache.keys[layer_index][:, :, :kv_length]                               # [n, Hkv, T, D]
        values = cache.values[layer_index][:, :, :kv_length]
        out = attention(q, keys, values, visible[..., :keys.shape[2]], attn.scaling)   # [n, Hq, S, D]
        x = x + attn.o_proj(out.transpose(1, 2).reshape(n, length, -1))                # [n, S, H]
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return lm.norm(x)


def prefill_visibility(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, P] real-token mask -> [B, 1, P, P]: causal over real tokens; a padding position sees only
    itself (it is never seen by others, and a query with nothing to see would give NaN)."""
    width = attention_mask.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=attention_mask.device).tril()   # [P, P]
    diagonal = torch.eye(width, dtype=torch.bool, device=attention_mask.device)
    return ((causal & attention_mask.bool()[:, None, :]) | diagonal).unsqueeze(1)              # [B, 1, P, P]
