"""Qwen2-VL-2B-Instruct's architecture with random weights: the real job's size without downloading it.

    python -m benchmarks.qwen2_vl_2b --save models/qwen2-vl-2b-random     # a model directory (bf16, 4.4 GB)

The config repeats Qwen2-VL-2B-Instruct's config.json (hidden 1536, 28 layers, 12 heads / 2 KV
heads, vocabulary 151,936, M-RoPE [16, 24, 24], tied embeddings; vision tower depth 32, width 1280,
14 px patches merged 2 x 2), so parameter count (2,208,985,600), activations and KV cache are the real
model's. The image processor has the real preprocessor_config.json's limits (min_pixels 56*56,
max_pixels 12,845,056 = 28*28*16384). The tokenizer is the tiny model's byte-level BPE with its
vocabulary padded by unused entries so that every special token has its real id (151643 ...):
prompts are a few tokens per word, as with the real tokenizer, and image tokens, the bulk of each
prompt, are exactly as many as the real model sees.

`random_qwen2_vl_2b` builds it in memory on a device (what the benchmarks use); `save_random_qwen2_vl_2b`
writes it as an ordinary model directory (config.json, model.safetensors, tokenizer files,
preprocessor_config.json, generation_config.json), which train.py, evaluate.py and
`peft.PeftModel.from_pretrained` load exactly as they load the downloaded model.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import torch

from src.models.loading import Policy, attention_implementation

# Qwen2-VL-2B-Instruct's config.json and preprocessor_config.json.
QWEN2_VL_2B_IDS = dict(endoftext=151643, im_end=151645, vision_start=151652, vision_end=151653,
                       image_pad=151655, video_pad=151656)
QWEN2_VL_2B_TEXT = dict(
    vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
    num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6, hidden_act="silu",
    rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
)
QWEN2_VL_2B_VISION = dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4, hidden_size=1536, patch_size=14,
                          spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
QWEN2_VL_2B_PIXELS = dict(min_pixels=56 * 56, max_pixels=28 * 28 * 16384)
NAME = "qwen2-vl-2b-random"


def qwen2_vl_2b_config():
    from transformers import Qwen2VLConfig

    ids = QWEN2_VL_2B_IDS
    return Qwen2VLConfig(
        text_config=dict(QWEN2_VL_2B_TEXT, bos_token_id=ids["endoftext"], eos_token_id=ids["im_end"],
                         pad_token_id=ids["endoftext"]),
        vision_config=dict(QWEN2_VL_2B_VISION),
        image_token_id=ids["image_pad"], video_token_id=ids["video_pad"],
        vision_start_token_id=ids["vision_start"], vision_end_token_id=ids["vision_end"], tie_word_embeddings=True,
    )


def qwen_sized_tokenizer():
    """The tiny BPE with its special tokens moved to Qwen2-VL's ids (checked, not assumed)."""
    from src.models.tiny import tiny_corpus, train_tokenizer

    tokenizer = train_tokenizer(tiny_corpus(), first_special_id=QWEN2_VL_2B_IDS["endoftext"])
    check_special_ids(tokenizer)
    tokenizer.padding_side = "left"
    tokenizer.model_max_length = QWEN2_VL_2B_TEXT["max_position_embeddings"]
    return tokenizer


def check_special_ids(tokenizer) -> None:
    from src.models.tiny import SPECIAL_TOKENS

    got = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    expected = list(range(QWEN2_VL_2B_IDS["endoftext"], QWEN2_VL_2B_IDS["endoftext"] + len(SPECIAL_TOKENS)))
    if got != expected:
        raise RuntimeError(f"special token ids {got} are not Qwen2-VL's {expected}")


def image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(**QWEN2_VL_2B_PIXELS)


def random_model(device: torch.device, dtype: torch.dtype, attn_implementation: str):
    """Qwen2VLForConditionalGeneration at 2B with seeded random weights, initialised directly on `device`."""
    from transformers import GenerationConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration._from_config(
            qwen2_vl_2b_config(), dtype=dtype, attn_implementation=attn_implementation)
    ids = QWEN2_VL_2B_IDS
    model.generation_config = GenerationConfig(bos_token_id=ids["endoftext"], pad_token_id=ids["endoftext"],
                                               eos_token_id=[ids["im_end"], ids["endoftext"]])
    return model


def random_qwen2_vl_2b(device: torch.device, dtype: torch.dtype) -> Policy:
    """The random 2B policy in memory on `device` (bf16 on GPU: a few seconds to build, nothing read from disk)."""
    model = random_model(device, dtype, attention_implementation(device))
    return Policy(model=model, tokenizer=qwen_sized_tokenizer(), image_processor=image_processor(), name=NAME)


def save_random_qwen2_vl_2b(directory: str | Path) -> Path:
    """Write the random 2B as a model directory, in bf16 as the real checkpoint; atomic (staged, then renamed)."""
    directory = Path(directory)
    if (directory / "config.json").is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        random_model(torch.device("cpu"), torch.bfloat16, "sdpa").save_pretrained(staging)
        tokenizer = qwen_sized_tokenizer()
        tokenizer.save_pretrained(staging)
        image_processor().save_pretrained(staging)
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", required=True, help="directory to write the model to (kept if it exists)")
    print(f"random Qwen2-VL-2B-Instruct architecture: {save_random_qwen2_vl_2b(parser.parse_args(argv).save)}")


if __name__ == "__main__":
    main()
