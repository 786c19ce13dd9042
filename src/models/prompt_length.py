"""Refusing, before any weights load, a sample whose prompt the model cannot take whole.

A prompt is the chat template's text plus one image token per 2x2 group of the vision tower's patches
(14 px for Qwen2-VL and Qwen2.5-VL, 16 px for Qwen3-VL) of the resized image (`image_token_count`,
src/models/inputs.py). Nothing here truncates a prompt: a cut would drop image tokens and break the
vision alignment ("Image features and image tokens do not match"), or silently lose the question. So a
prompt and the completion tokens that may follow it must fit the model's positions,
min(max_position_embeddings, the tokenizer's model_max_length).

`PromptLimit.from_model` reads only config.json, the tokenizer and the image processor, never the
weights. `check` counts each sample's tokens without decoding its image (the size is in the file
header) and raises one DatasetError naming every sample that does not fit, or with skip_bad_rows
drops them with one warning that lists them all.
"""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from src.data.prompts import build_messages
from src.data.rows import SHOWN_REASONS, DatasetError
from src.data.sample import Sample
from src.files import file_key
from src.models.families import UnsupportedModel, checkpoint_family
from src.models.inputs import render_prompt
from src.models.loading import _offline_hint, base_model_name, load_image_processor, resolve_model_path

UNSET_MAX_LENGTH = 10**9  # transformers puts int(1e30) in model_max_length when the tokenizer does not say


@dataclass
class PromptLimit:
    """How many positions a model has, and how its tokenizer and image processor count a prompt."""

    model: str
    max_positions: int
    tokenizer: object
    image_processor: object

    @classmethod
    def from_model(cls, name: str) -> PromptLimit:
        """Read the limit of `name` (hub id, local model, adapter directory or a tiny model) without its weights.
        A model of an unsupported family is refused here, from its config.json alone."""
        from transformers import AutoConfig, AutoTokenizer

        has_adapter = (Path(name) / "adapter_config.json").is_file()
        path = resolve_model_path(base_model_name(name) if has_adapter else name)
        try:
            checkpoint_family(path)
            config = AutoConfig.from_pretrained(path)
            tokenizer = AutoTokenizer.from_pretrained(path)
            image_processor = load_image_processor(path)  # as load_policy: without torchvision too
        except UnsupportedModel:
            raise
        except (OSError, ValueError, json.JSONDecodeError) as error:
            if Path(path).is_dir():
                raise OSError(f"cannot read the config, tokenizer or image processor in {path}: {error}") from error
            raise _offline_hint(path, error) from error
        positions = getattr(config, "text_config", config).max_position_embeddings
        if tokenizer.model_max_length < UNSET_MAX_LENGTH:
            positions = min(positions, tokenizer.model_max_length)
        return cls(model=name, max_positions=positions, tokenizer=tokenizer, image_processor=image_processor)

    def text_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def image_tokens(self, width: int, height: int) -> int:
        """Image tokens of a width x height image: the processor's resize (aspect kept, max_pixels), 2x2 merged."""
        patches = self.image_processor.get_number_of_image_patches(height, width, {})
        return patches // self.image_processor.merge_size**2

    def prompt_tokens(self, questions: Sequence[str], system_prompt: str) -> list[int]:
        """Text tokens of each question's rendered chat, its one image placeholder not counted (each
        distinct question rendered and tokenized once)."""
        distinct = list(dict.fromkeys(questions))
        texts = [render_prompt(self.tokenizer, build_messages(question, system_prompt)) for question in distinct]
        counts = {question: len(ids) - 1
                  for question, ids in zip(distinct, self.tokenizer(texts, add_special_tokens=False)["input_ids"])}
        return [counts[question] for question in questions]

    def check(self, samples: list[Sample], system_prompts: Sequence[str], completion_tokens: Callable[[Sample], int],
              skip_bad_rows: bool = False) -> list[Sample]:
        """The samples whose prompt (under the longest of `system_prompts`) plus `completion_tokens(sample)`
        fit the model; the others raise one DatasetError, or with skip_bad_rows are dropped with a warning."""
        refused = self.refusals(samples, system_prompts, completion_tokens)
        if not refused:
            return samples
        lines = [f"{sample.dataset} sample {sample.id}{image_label(sample)}: {reason}" for sample, reason in refused]
        if not skip_bad_rows:
            more = len(lines) - SHOWN_REASONS
            raise DatasetError(f"{len(lines)} sample(s) do not fit the model: {'; '.join(lines[:SHOWN_REASONS])}"
                               + (f"; and {more} more" if more > 0 else "")
                               + ". Shorten them, or pass skip_bad_rows=True to leave them out.")
        warnings.warn(f"left out {len(lines)} sample(s) that do not fit the model: {'; '.join(lines)}", stacklevel=2)
        dropped = {id(sample) for sample, _ in refused}
        return [sample for sample in samples if id(sample) not in dropped]

    def refusals(self, samples: list[Sample], system_prompts: Sequence[str],
                 completion_tokens: Callable[[Sample], int]) -> list[tuple[Sample, str]]:
        """(sample, why) for each sample that does not fit: its image cannot be read or has an aspect
        ratio the processor refuses, or its tokens exceed the model's positions."""
        if not samples:
            return []
        # The system turn is its own segment between special tokens, so it adds the same count to every
        # question: the longest system prompt gives every sample's longest prompt.
        system = max(system_prompts, key=lambda prompt: self.prompt_tokens([samples[0].question], prompt)[0])
        text = self.prompt_tokens([sample.question for sample in samples], system)
        sizes: dict[str | bytes, tuple[int, int] | str] = {}
        refused = []
        for sample, tokens in zip(samples, text):
            if sample.image not in sizes:
                sizes[sample.image] = image_size(sample.image)
            size = sizes[sample.image]
            if isinstance(size, str):
                refused.append((sample, size))
                continue
            try:
                image = self.image_tokens(*size)
            except ValueError as error:  # the processor refuses an aspect ratio above 200
                refused.append((sample, f"its {size[0]}x{size[1]} image: {error}"))
                continue
            total = tokens + image + completion_tokens(sample)
            if total > self.max_positions:
                refused.append((sample, f"{tokens + image} prompt tokens ({image} of them for its {size[0]}x{size[1]} "
                                        f"image) + {completion_tokens(sample)} completion tokens = {total}, more than "
                                        f"the {self.max_positions} positions of {self.model}"))
        return refused


def image_size(source: str | bytes) -> tuple[int, int] | str:
    """(width, height) after EXIF rotation, read from the header alone; or why it cannot be read. A
    file's answer is kept for the process under its path, size and modification time."""
    key = file_key(source)
    if key is None:
        return read_image_size(source)
    if key not in _SIZES:
        _SIZES[key] = read_image_size(source)
    return _SIZES[key]


_SIZES: dict[tuple[str, int, int], tuple[int, int] | str] = {}


def read_image_size(source: str | bytes) -> tuple[int, int] | str:
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            width, height = image.size
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientations that swap the axes
                width, height = height, width
            return width, height
    except (OSError, ValueError) as error:
        return f"its image cannot be read ({error})"


def image_label(sample: Sample) -> str:
    return f" (image {sample.image})" if isinstance(sample.image, str) else ""
