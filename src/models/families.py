"""The model families this project trains, and everything that differs between them, in one place.

Qwen2-VL, Qwen2.5-VL and Qwen3-VL are one design: a vision tower whose features take the place of the
`<|image_pad|>` tokens, a decoder-only language model with multimodal rotary positions (M-RoPE), the same
BPE and chat format. The rollout engine (src/models/engine.py), the shared-prefix forward
(src/models/shared_prefix.py), the inputs (src/models/inputs.py, encoded_prompts.py), the loaders and
the tiny test models (src/models/tiny.py) are written once for all three and read a `Family` where they
differ; nothing else asks which model it is. A family is recognised from config.json's `model_type`
before any weights load, and any other model_type is refused (`family_named`).

What differs, as the released checkpoints and transformers' modeling code have it:

                          Qwen2-VL            Qwen2.5-VL           Qwen3-VL
    model_type            qwen2_vl            qwen2_5_vl           qwen3_vl
    q, k, v bias          yes                 yes                  no
    q/k RMSNorm per head  no                  no                   yes, before the rotary
    M-RoPE frequencies    chunked [16,24,24]  chunked [16,24,24]   interleaved [24,20,20]
    DeepStack             no                  no                   yes: features of several vision blocks
                                                                   added after the first language layers
    vision patch          14 px               14 px                16 px (x 2 x 2 merged: 28 / 28 / 32 px
                                                                   per image token)
    vision tower          ViT                 windowed ViT         ViT with learned positions
    added tokens          14                  22 (tool, FIM)       26 (+ tool response, <think> </think>)
    default system turn   yes                 yes                  no

The vision tower always runs through transformers (frozen, once per image and step); what runs in our own
code is the language model, so its attention details, rotary layout and DeepStack are what a family has
to state. The model's own modules (norms, projections with their LoRA side paths, MLPs) still do the
work: a family only says which of them exist and in what order they apply. `check_architecture` compares
that against the loaded model, so a transformers release that changes a layer is refused, not silently
computed another way.

Adding a family: one `Family` below (its tiny configuration included) and its tests (tests/test_families.py
runs every family through the same parity checks).
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from src.errors import UserError

# ----------------------------------------------------------------------------------------------------
# Tokens every family shares: the first 14 added tokens (ids 151643 ... 151656 in the real vocabulary),
# the end of a completion, and the vision tokens a sampler must never emit.
# ----------------------------------------------------------------------------------------------------

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
# Added after those by Qwen2.5 (and kept by Qwen3): ordinary (not special) added tokens.
QWEN2_5_TOOL_TOKENS = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                       "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")
QWEN3_TOKENS = ("<tool_response>", "</tool_response>", "<think>", "</think>")

END_TOKENS = ("<|im_end|>", "<|endoftext|>")  # a completion ends at the first of either (kept in its mask)
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
IMAGE_PAD = "<|image_pad|>"

# ----------------------------------------------------------------------------------------------------
# Chat templates of the Instruct releases, for the tiny models and the benchmarks' real-size tokenizers
# (a downloaded checkpoint brings its own). Rendered with add_generation_prompt=True, a system turn, and
# one image before the question, both give
#
#     <|im_start|>system
#     SYSTEM<|im_end|>
#     <|im_start|>user
#     <|vision_start|><|image_pad|><|vision_end|>QUESTION<|im_end|>
#     <|im_start|>assistant
#
# Without a system message Qwen2-VL's (and Qwen2.5-VL's, the same file) inserts "You are a helpful
# assistant."; Qwen3-VL's inserts none. Qwen3-VL's is written here for messages without tools (the
# released one also renders tool definitions, calls and responses, which this project never sends).
# ----------------------------------------------------------------------------------------------------

QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN3_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% if messages[0].role == 'system' %}{{ '<|im_start|>system\\n' }}"
    "{% if messages[0].content is string %}{{ messages[0].content }}"
    "{% else %}{% for content in messages[0].content %}{% if 'text' in content %}{{ content.text }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}{% if message.role == 'user' or message.role == 'assistant' %}"
    "{{ '<|im_start|>' + message.role + '\\n' }}"
    "{% if message.content is string %}{{ message.content }}"
    "{% else %}{% for content in message.content %}"
    "{% if message.role == 'user' and (content.type == 'image' or 'image' in content or 'image_url' in content) %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif message.role == 'user' and (content.type == 'video' or 'video' in content) %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content.text }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    """One model family: what the language-model code, the loaders and the tiny models need to know."""

    name: str                     # as people write it: "Qwen2-VL"
    model_type: str               # config.json's model_type
    model_class: str              # the transformers class that loads it (transformers >= 5.17 has all three)
    config_class: str             # its configuration class (what the tiny model is built from)
    processor_class: str          # transformers' processor, which our input builder is tested against
    qkv_bias: bool                # q/k/v projections carry a bias
    qk_norm: bool                 # RMSNorm over each head's q and k (attn.q_norm / k_norm) before the rotary
    rotary: str                   # M-RoPE: "chunked" (frequency blocks per axis) or "interleaved" (t, h, w alternate)
    deepstack: bool               # vision features of several blocks added to the first language layers' outputs
    patch_size: int               # vision patch side in pixels; merged 2 x 2 into one image token
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    added_tokens: tuple[str, ...]  # the tokenizer's added tokens from id 151643 on, in id order
    chat_template: str            # the Instruct release's (src/models/tiny.py and the benchmarks use it)
    # The sampling settings the Instruct release's generation_config.json publishes. Neither sampler
    # honours them (src/models/generation.py says why); the tiny models carry them so that tests show it.
    sampling: dict = field(default_factory=dict)
    # The tiny test model (src/models/tiny.py): the family's own features switched on at toy size.
    tiny_text: dict = field(default_factory=dict)
    tiny_vision: dict = field(default_factory=dict)
    tiny_pixels: dict = field(default_factory=dict)   # the tiny image processor's limits

    def model_cls(self):
        return getattr(importlib.import_module("transformers"), self.model_class)

    def config_cls(self):
        return getattr(importlib.import_module("transformers"), self.config_class)


QWEN2_VL = Family(
    name="Qwen2-VL", model_type="qwen2_vl", model_class="Qwen2VLForConditionalGeneration",
    config_class="Qwen2VLConfig", processor_class="Qwen2VLProcessor",
    qkv_bias=True, qk_norm=False, rotary="chunked", deepstack=False, patch_size=14,
    image_mean=(0.48145466, 0.4578275, 0.40821073), image_std=(0.26862954, 0.26130258, 0.27577711),
    added_tokens=QWEN_SPECIAL_TOKENS, chat_template=QWEN2_VL_CHAT_TEMPLATE,
    sampling=dict(do_sample=True, temperature=0.01, top_k=1, top_p=0.001, repetition_penalty=1.0),
    # M-RoPE sections must sum to head_dim / 2 = 128 / 4 / 2 = 16 (Qwen2-VL-2B: [16, 24, 24] of 64)
    tiny_text=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
                   rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [4, 6, 6]}),
    tiny_vision=dict(depth=2, embed_dim=64, num_heads=4, mlp_ratio=2, hidden_size=128, patch_size=14,
                     spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
    # 112 x 112 images give 8 x 8 patches, merged 2 x 2 into 16 image tokens
    tiny_pixels=dict(min_pixels=56 * 56, max_pixels=112 * 112),
)

QWEN2_5_VL = Family(
    name="Qwen2.5-VL", model_type="qwen2_5_vl", model_class="Qwen2_5_VLForConditionalGeneration",
    config_class="Qwen2_5_VLConfig", processor_class="Qwen2_5_VLProcessor",
    qkv_bias=True, qk_norm=False, rotary="chunked", deepstack=False, patch_size=14,
    image_mean=QWEN2_VL.image_mean, image_std=QWEN2_VL.image_std,
    added_tokens=QWEN_SPECIAL_TOKENS + QWEN2_5_TOOL_TOKENS, chat_template=QWEN2_VL_CHAT_TEMPLATE,
    sampling=dict(do_sample=True, temperature=0.1, top_k=1, top_p=0.001, repetition_penalty=1.05),
    tiny_text=dict(QWEN2_VL.tiny_text),
    # windows of 56 px = 2 x 2 image tokens (Qwen2.5-VL: 112 px, 4 x 4), full attention in block 1 of 3
    tiny_vision=dict(depth=3, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128,
                     patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=56,
                     fullatt_block_indexes=[1], hidden_act="silu"),
    tiny_pixels=dict(QWEN2_VL.tiny_pixels),
)

QWEN3_VL = Family(
    name="Qwen3-VL", model_type="qwen3_vl", model_class="Qwen3VLForConditionalGeneration",
    config_class="Qwen3VLConfig", processor_class="Qwen3VLProcessor",
    qkv_bias=False, qk_norm=True, rotary="interleaved", deepstack=True, patch_size=16,
    image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
    added_tokens=QWEN_SPECIAL_TOKENS + QWEN2_5_TOOL_TOKENS + QWEN3_TOKENS, chat_template=QWEN3_VL_CHAT_TEMPLATE,
    sampling=dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.0),
    # head_dim 32 is set apart from hidden / heads (16), as Qwen3 allows; sections sum to 32 / 2 = 16,
    # interleaved ([24, 20, 20] of 64 in Qwen3-VL); DeepStack from vision blocks 0 and 1 into language
    # layers 0 and 1 of 3
    tiny_text=dict(hidden_size=64, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=32, max_position_embeddings=4096, rms_norm_eps=1e-6,
                   attention_bias=False,
                   rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [6, 5, 5],
                                    "mrope_interleaved": True}),
    tiny_vision=dict(depth=3, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                     patch_size=16, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                     num_position_embeddings=64, deepstack_visual_indexes=[0, 1], hidden_act="gelu_pytorch_tanh"),
    # 112 x 112 images are resized to 128 x 128: 8 x 8 patches of 16 px, 16 image tokens
    tiny_pixels=dict(min_pixels=64 * 64, max_pixels=128 * 128),
)

FAMILIES: dict[str, Family] = {family.model_type: family for family in (QWEN2_VL, QWEN2_5_VL, QWEN3_VL)}


class UnsupportedModel(UserError):
    """A checkpoint whose model_type is none of FAMILIES."""


def supported() -> str:
    return ", ".join(f"{family.model_type} ({family.name})" for family in FAMILIES.values())


def family_named(model_type: str | None, source: str) -> Family:
    """The family of model_type, or an UnsupportedModel naming `source` and the supported ones (one line)."""
    if model_type not in FAMILIES:
        raise UnsupportedModel(f"{source}: model_type {model_type!r} is not supported; supported model types: "
                               f"{supported()}")
    return FAMILIES[model_type]


def family_of(model) -> Family:
    """The family of a loaded model (its config's model_type)."""
    return family_named(model.config.model_type, type(model).__name__)


def checkpoint_family(path: str, label: str | None = None) -> Family:
    """The family of a model directory or hub id, from config.json alone: no weights are read (for a hub id
    only config.json is fetched, or read from the local cache). A refusal names `label` (default: the file)."""
    from transformers.utils import cached_file

    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        config_file = Path(cached_file(path, "config.json"))  # OSError when missing or unreachable
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise UserError(f"{config_file}: not a model's config.json ({error})") from None
    return family_named(model_type, label or f"{path} (config.json)")


def image_processor(family: Family, pixels: dict):
    """The family's image processor (its patch size, mean and std) with the pixel limits `pixels`
    (min_pixels, max_pixels), on the PIL backend: no torchvision needed."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=family.patch_size, image_mean=list(family.image_mean),
                                    image_std=list(family.image_std), **pixels)


def check_architecture(model, family: Family) -> None:
    """The loaded language model has exactly the attention parts `family` says (the engine and the
    shared-prefix forward compute attention themselves from those parts)."""
    attention = model.model.language_model.layers[0].self_attn
    found = {"qk_norm": hasattr(attention, "q_norm") and hasattr(attention, "k_norm"),
             "qkv_bias": attention.q_proj.bias is not None}
    expected = {"qk_norm": family.qk_norm, "qkv_bias": family.qkv_bias}
    if found != expected:
        raise RuntimeError(f"{type(model).__name__}: attention has {found}, the {family.name} description says "
                           f"{expected}; this transformers release builds the model differently")


# ----------------------------------------------------------------------------------------------------
# What the language-model code reads per family at run time.
# ----------------------------------------------------------------------------------------------------

def projections(attention, hidden: torch.Tensor, family: Family) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [..., Hq, D], k, v [..., Hkv, D] of hidden states [..., H]: the layer's own projections (LoRA side
    paths included), then, where the family has it, RMSNorm of each head's q and k (before the rotary)."""
    dim = attention.head_dim
    q = attention.q_proj(hidden).unflatten(-1, (-1, dim))
    k = attention.k_proj(hidden).unflatten(-1, (-1, dim))
    v = attention.v_proj(hidden).unflatten(-1, (-1, dim))
    if family.qk_norm:
        q, k = attention.q_norm(q), attention.k_norm(k)
    return q, k, v


def add_deepstack(hidden: torch.Tensor, image_positions: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """DeepStack: hidden [..., H] with `features` [k, H] added at the k `image_positions` (a boolean mask
    over hidden's leading dimensions, row-major order), as transformers' _deepstack_process does it."""
    hidden = hidden.clone()
    hidden[image_positions] = hidden[image_positions] + features.to(hidden.dtype)
    return hidden
