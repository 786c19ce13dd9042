"""A trained adapter merged into its base: a standalone Hugging Face model directory.

    OUT/config.json, generation_config.json          the base's, with the export's dtype
    OUT/model.safetensors                            or model-0000K-of-0000N.safetensors + index
    OUT/tokenizer*.json, vocab.json, merges.txt,     copied from the base model's directory, as
        preprocessor_config.json, chat_template.*    released (LICENSE too; README.md is not theirs)

Each adapted weight becomes W0 + (alpha / r) B A, computed in fp32 and then cast to the base's dtype
(bf16 for the Instruct releases), under the base's own parameter names, so the family's transformers
class (`Qwen2VLForConditionalGeneration`, `Qwen2_5_VLForConditionalGeneration`,
`Qwen3VLForConditionalGeneration`: src/models/families.py) and serving engines (vLLM, SGLang, TGI) load
it like the base model, with nothing from this project. The base's generation_config.json is kept.
A full fine-tuned checkpoint (grpo-full, sft-full) is re-saved the same way. The directory is written to OUT.tmp and renamed when complete.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from src.models.loading import base_model_name, load_policy, resolve_model_path
from src.models.lora import merge_and_unload

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
WRITTEN_BY_SAVE = ("config.json", "generation_config.json", "model.safetensors.index.json")
NOT_COPIED = ("README.md", "adapter_config.json")


def base_directory(source: str) -> Path | None:
    """The local directory of the model an adapter (or a full checkpoint) is built on: for a hub id,
    its snapshot in the local cache; None when there is none."""
    name = base_model_name(source)
    path = Path(resolve_model_path(name))
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: the tokenizer and processor are saved from memory instead
        return None


def base_dtype(directory: Path | None) -> torch.dtype:
    """The dtype the base was released in (its config's `dtype` / `torch_dtype`), bf16 if unknown."""
    path = directory / "config.json" if directory is not None else None
    config = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    name = config.get("dtype") or config.get("torch_dtype") or "bfloat16"
    return getattr(torch, name)


def export_merged(source: str, out: str | Path, dtype: torch.dtype | None = None,
                  max_shard_size: str = "5GB") -> Path:
    """Merge `source` (an adapter directory, or a full model) into a standalone model at `out`."""
    out = Path(out)
    base_dir = base_directory(source)
    dtype = dtype or base_dtype(base_dir)
    policy = load_policy(source, device=torch.device("cpu"), dtype=torch.float32)  # merge in fp32
    merge_and_unload(policy.model)
    policy.model.to(dtype)
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if base_dir is not None:
        for file in sorted(base_dir.iterdir()):
            if file.is_file() and file.name not in WRITTEN_BY_SAVE + NOT_COPIED and not file.name.endswith(WEIGHT_SUFFIXES):
                shutil.copy2(file, staging / file.name)
    if not (staging / "tokenizer_config.json").is_file():
        policy.tokenizer.save_pretrained(staging)
    if not (staging / "preprocessor_config.json").is_file():
        policy.image_processor.save_pretrained(staging)
    policy.model.save_pretrained(staging, max_shard_size=max_shard_size)
    staging.rename(out)
    return out
