"""Tiny models of each family, small enough to train on 2 CPU cores.

    --model tiny              Qwen2-VL, tied embeddings, norms at their initial 1 / 0: the demo's model
    --model tiny-qwen2-vl     Qwen2-VL    \
    --model tiny-qwen2.5-vl   Qwen2.5-VL   } built so that a mistake in our own model code shows (below)
    --model tiny-qwen3-vl     Qwen3-VL    /

Each is its family's transformers class, built from the family's config class at the sizes its
description gives (src/models/families.py: tiny_text, tiny_vision; a few hundred thousand to a million
parameters), random-initialised from a seed, with a byte-level BPE tokenizer trained on the fly that
carries the family's added tokens (Qwen3-VL's `<think>` and `</think>` among them) and chat template.
It is written to disk as an ordinary model directory (config.json, model.safetensors,
generation_config.json, tokenizer files, preprocessor_config.json), so the real loading code path
reads it like a downloaded checkpoint. Building is deterministic: the cache key hashes the
configuration and the tokenizer corpus.

The tiny-<family> models are the ones the parity tests compare against transformers, so each is built
so that a wrong computation changes its output:
- untied output embeddings with logits of a few units (std 3 / sqrt(H) weights), and weights drawn
  with std 0.2: random tied embeddings make greedy decoding repeat the prompt's last token, and at
  transformers' std 0.02 every prompt continues alike, so two samplers would agree whatever they
  computed; here completions differ by prompt, image and step;
- every norm weight and every bias moved off its 1 / 0 start: a skipped norm or bias changes the output;
- each family's own features switched on at toy size (the family's tiny_vision: Qwen2.5-VL's window
  attention beside a full-attention block, Qwen3-VL's DeepStack layers; q/k norm and interleaved rotary
  sections come with the family);
- generation_config.json carries the sampling settings the family's Instruct release publishes (which
  neither sampler honours: src/models/generation.py).
`tiny` stays as the demo's results were measured on it (docs/DEMO.md).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from src.data.cache_lock import cache_lock
from src.models.families import FAMILIES, QWEN2_VL, QWEN_SPECIAL_TOKENS, Family, image_processor

BPE_VOCAB = 1024  # learned tokens before the added tokens
# Weights drawn with std 0.2 (transformers' default: 0.02) in the tiny-<family> models: at 0.02 the
# residual stream of a random tiny model is its last token's embedding, and every prompt continues alike.
SHARP_INITIALIZER_RANGE = 0.2


@dataclass(frozen=True)
class TinyModel:
    """One --model name of the tiny models."""

    name: str
    family: Family
    sharp: bool     # untied random output embeddings, norms and biases off 1 / 0, the release's sampling settings


TINY_MODELS = {tiny.name: tiny for tiny in (
    TinyModel("tiny", QWEN2_VL, sharp=False),
    *(TinyModel(f"tiny-{family.name.lower()}", family, sharp=True) for family in FAMILIES.values()),
)}


def is_tiny(name: str) -> bool:
    return name in TINY_MODELS


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


def train_tokenizer(corpus: list[str], family: Family = QWEN2_VL, vocab_size: int = BPE_VOCAB,
                    first_special_id: int | None = None):
    """A byte-level BPE with Qwen2's pre-tokenizer, wrapped as a `Qwen2Tokenizer` with the family's added
    tokens (the first 14 special, the later ones ordinary added tokens, as Qwen publishes them) and chat template.

    first_special_id: pad the learned vocabulary with unused entries so that the added tokens get the
    real ids (151643 for `<|endoftext|>`), for a model with the real vocabulary size.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

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
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, errors="replace")  # adds <|endoftext|> first
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False)
                          for token in family.added_tokens[len(QWEN_SPECIAL_TOKENS):]])
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
    tokenizer.chat_template = family.chat_template
    tokenizer.model_max_length = family.tiny_text["max_position_embeddings"]
    return tokenizer


def token_id_config(tokenizer) -> dict[str, int]:
    """The special token ids a Qwen VL config and generation config name, from `tokenizer`."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
           ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                bos=ids["<|endoftext|>"], eos=ids["<|im_end|>"], pad=ids["<|endoftext|>"])


def build_tiny_model(tokenizer, seed: int, tiny: TinyModel = TINY_MODELS["tiny"]):
    """A randomly initialised model of tiny.family whose token ids match `tokenizer`."""
    from transformers import GenerationConfig

    family = tiny.family
    ids = token_id_config(tokenizer)
    bos, eos, pad = ids.pop("bos"), ids.pop("eos"), ids.pop("pad")
    init = dict(initializer_range=SHARP_INITIALIZER_RANGE) if tiny.sharp else {}
    config = family.config_cls()(
        text_config=dict(family.tiny_text, vocab_size=len(tokenizer), bos_token_id=bos, eos_token_id=eos,
                         pad_token_id=pad, **init),
        vision_config=dict(family.tiny_vision, **init), tie_word_embeddings=not tiny.sharp, **ids,
    )
    with torch.random.fork_rng(devices=[]):  # seeded init that leaves the caller's random stream alone
        torch.manual_seed(seed)
        model = family.model_cls()(config)
        if tiny.sharp:
            sharpen(model)
    model.generation_config = GenerationConfig(bos_token_id=bos, pad_token_id=pad, eos_token_id=[eos, bos],
                                               **(family.sampling if tiny.sharp else {}))
    return model


@torch.no_grad()
def sharpen(model) -> None:
    """Untied output embeddings with logits of a few units, every norm weight and bias off its 1 / 0
    start (draws from the current random stream)."""
    head = model.lm_head.weight
    head.copy_(torch.randn(head.shape) * 3 * head.shape[1] ** -0.5)
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
            module.weight.add_(torch.randn(module.weight.shape) * 0.2)
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.nn.Parameter):
            bias.add_(torch.randn(bias.shape) * 0.1)


def cache_key(tiny: TinyModel, seed: int, corpus: list[str]) -> str:
    family = tiny.family
    parts = [seed, family.tiny_text, family.tiny_vision, family.tiny_pixels, BPE_VOCAB, family.added_tokens, corpus]
    if tiny.sharp:  # the demo model's key is the one it has always had
        parts += [family.model_type, family.chat_template, family.sampling, family.patch_size, family.image_mean,
                  SHARP_INITIALIZER_RANGE, "sharpen-1"]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    return Path(os.environ.get("RARL_CACHE", ".cache"))


def ensure_tiny(seed: int = 0, cache_dir: str | Path | None = None, name: str = "tiny") -> Path:
    """Build the tiny model `name` once (atomically: build in a temp dir, then rename) and return its directory.

    Concurrent callers (torchrun ranks) wait on a lock while the first one builds.
    """
    tiny = TINY_MODELS[name]
    corpus = tiny_corpus()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    label = "tiny-qwen2-vl" if name == "tiny" else name
    target = root / f"{label}-seed{seed}-{cache_key(tiny, seed, corpus)}"
    if (target / "config.json").is_file():
        return target
    with cache_lock(target):
        if (target / "config.json").is_file():  # another process built it while we waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root))
        try:
            tokenizer = train_tokenizer(corpus, tiny.family)
            build_tiny_model(tokenizer, seed, tiny).save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            image_processor(tiny.family, tiny.family.tiny_pixels).save_pretrained(staging)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
