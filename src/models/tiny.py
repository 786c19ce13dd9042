"""`tiny`: a Qwen2-VL-architecture model small enough to train on 2 CPU cores.

Same classes as Qwen2-VL-2B-Instruct (vision tower with 14 px patches merged 2x2, M-RoPE, tied
embeddings), scaled down to about 1M parameters, random-initialised from a seed, with a byte-level
BPE tokenizer trained on the fly that carries Qwen2-VL's special tokens and chat template. It is
written to disk as an ordinary model directory (config.json, model.safetensors, tokenizer files,
preprocessor_config.json), so the real loading code path reads it like a downloaded checkpoint.
Building is deterministic: the cache key hashes the configuration and the tokenizer corpus.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from src.data.cache_lock import cache_lock
from src.models.inputs import QWEN2_VL_CHAT_TEMPLATE

# Qwen2-VL's special tokens, in the order of their ids (151643 ... 151656) in the real vocabulary.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

TEXT_CONFIG = dict(
    hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
    # M-RoPE sections must sum to head_dim / 2 = 128 / 4 / 2 = 16 (Qwen2-VL-2B: [16, 24, 24] of 64)
    rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [4, 6, 6]},
)
VISION_CONFIG = dict(
    depth=2, embed_dim=64, num_heads=4, mlp_ratio=2, hidden_size=128,  # hidden_size: merger output = text hidden
    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
)
# 112 x 112 images give 8 x 8 patches, merged 2 x 2 into 16 image tokens.
IMAGE_PIXELS = dict(min_pixels=56 * 56, max_pixels=112 * 112)
BPE_VOCAB = 1024  # learned tokens before the special tokens

# Words the tokenizer should hold whole: the tags, the prompts' vocabulary, short medical answers.
CORPUS_SEED_TEXT = """system
user
assistant
<think> </think> <answer> </answer> <think>The image shows</think><answer>yes</answer>
<think>The organ shows no lesion.</think><answer>no</answer>
You are a Medical Assistant. Carefully analyze the medical image and the User's question. Think through
the problem step by step using clinical reasoning and relevant visual cues. Present your thinking process
clearly within <think> </think> tags, and then provide a well-justified answer within <answer> </answer> tags.
Read the User's question and the associated medical image. Provide your thinking within <think> </think>
tags and a concise factual answer within <answer> </answer> tags. The User askes a question based on the
provided medical image. Consider all visual and contextual details. Share your reasoning freely within
<think> </think> tags, and conclude with your best judgment within <answer> </answer> tags.
A conversation between a User and a Medical Assistant. The User asks a question about the image, and the
Assistant solves it. The Assistant first thinks through the reasoning process step-by-step, then provides
the answer to the User. The Assistant provides the answer to the User. You are a helpful assistant.
Is there a lesion? Is the lesion on the left? Is it on the right? How many lesions are there? Where is the
largest lesion? Is the image abnormal? Does this image look abnormal? Is the lung healthy? What organ is
shown? Which side? What modality is this? Is there a bright spot? Is there a dark spot?
yes no left right upper lower center middle none zero one two three four five six
The organ shows one bright round lesion. The organ shows two dark lesions. The largest lies in the upper
left of the organ. There is no visible lesion, so the organ looks normal. The lesion is on the right side.
lung liver brain kidney heart chest abdomen MRI CT X-ray ultrasound axial coronal sagittal pneumonia
mass nodule effusion opacity fracture tumor cyst edema normal abnormal bright dark round small large
"""


def tiny_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: the seed text plus the synthetic dataset's templates."""
    texts = CORPUS_SEED_TEXT.split("\n")
    try:  # the synthetic data's own phrases make its questions and answers short in tokens
        from src.data.synthetic import corpus as synthetic_corpus
    except ImportError:
        return texts
    return texts + list(synthetic_corpus())


def train_tokenizer(corpus: list[str], vocab_size: int = BPE_VOCAB, first_special_id: int | None = None):
    """A byte-level BPE with Qwen2's pre-tokenizer, wrapped as a `Qwen2Tokenizer` with the special tokens.

    first_special_id: pad the learned vocabulary with unused entries so that the special tokens get
    Qwen2-VL's real ids (151643 for `<|endoftext|>`), for a model with the real vocabulary size.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
    from tokenizers import Regex

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    vocab = dict(state["vocab"])
    if first_special_id is not None:
        vocab.update({f"<|unused_{i}|>": i for i in range(len(vocab), first_special_id)})
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, errors="replace")
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    tokenizer.model_max_length = TEXT_CONFIG["max_position_embeddings"]
    return tokenizer


def build_tiny_model(tokenizer, seed: int):
    """A randomly initialised Qwen2VLForConditionalGeneration whose token ids match `tokenizer`."""
    from transformers import GenerationConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = len(tokenizer)
    config = Qwen2VLConfig(
        text_config=dict(TEXT_CONFIG, vocab_size=vocab, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(VISION_CONFIG),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):  # seeded init that leaves the caller's random stream alone
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
    )
    return model


def cache_key(seed: int, corpus: list[str]) -> str:
    blob = json.dumps([seed, TEXT_CONFIG, VISION_CONFIG, IMAGE_PIXELS, BPE_VOCAB, SPECIAL_TOKENS, corpus])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    return Path(os.environ.get("RARL_CACHE", ".cache"))


def ensure_tiny(seed: int = 0, cache_dir: str | Path | None = None) -> Path:
    """Build the tiny model directory once (atomically: build in a temp dir, then rename) and return it.

    Concurrent callers (torchrun ranks) wait on a lock while the first one builds.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    corpus = tiny_corpus()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"tiny-qwen2-vl-seed{seed}-{cache_key(seed, corpus)}"
    if (target / "config.json").is_file():
        return target
    with cache_lock(target):
        if (target / "config.json").is_file():  # another process built it while we waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root))
        try:
            tokenizer = train_tokenizer(corpus)
            build_tiny_model(tokenizer, seed).save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            Qwen2VLImageProcessorPil(**IMAGE_PIXELS).save_pretrained(staging)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
