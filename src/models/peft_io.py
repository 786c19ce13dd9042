"""Adapters on disk in PEFT's format, so `peft.PeftModel.from_pretrained(base, dir)` loads what we train.

A PEFT LoRA directory holds
- adapter_config.json: peft_type LORA, r, lora_alpha, lora_dropout, target_modules, base model id;
- adapter_model.safetensors: the factors under PEFT's names, which are the model's own parameter
  names prefixed with "base_model.model." (the PeftModel wrapper and its LoraModel), with the adapter
  name ("default") left out: `...q_proj.lora_A.weight`.
Our LoRALinear uses the same `lora_A` / `lora_B` / `base_layer` names, so the mapping is the prefix.
The factors are saved as they train, in fp32 whatever the base's dtype (PEFT loads them so too, with its
default autocast_adapter_dtype); a file in another dtype loads into the fp32 factors.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from src.models.lora import LoRAConfig, inject_lora, lora_layers, lora_state_dict

PEFT_PREFIX = "base_model.model."
# PEFT matches a string target_modules as a regex against full module names: this one selects the
# language model's attention projections and nothing in the vision tower, exactly like inject_lora.
LANGUAGE_MODEL_PATTERN = r".*language_model.*\.({})"


def save_adapter(model: torch.nn.Module, directory: str | Path, config: LoRAConfig, base_model: str) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {PEFT_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in lora_state_dict(model).items()}
    save_file(tensors, directory / "adapter_model.safetensors", metadata={"format": "pt"})
    peft_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": LANGUAGE_MODEL_PATTERN.format("|".join(config.targets)),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
    }
    (directory / "adapter_config.json").write_text(json.dumps(peft_config, indent=2) + "\n")


def read_adapter_config(directory: str | Path) -> LoRAConfig:
    raw = json.loads((Path(directory) / "adapter_config.json").read_text())
    if raw.get("peft_type") != "LORA" or raw.get("use_dora") or raw.get("use_rslora"):
        raise ValueError(f"{directory}: only plain LoRA adapters are supported (got {raw.get('peft_type')})")
    targets = raw["target_modules"]
    if isinstance(targets, str):  # our regex form: ".*language_model.*\.(q_proj|k_proj)"
        targets = targets.rsplit("(", 1)[-1].rstrip(")").split("|")
    return LoRAConfig(r=raw["r"], alpha=float(raw["lora_alpha"]), dropout=raw.get("lora_dropout", 0.0),
                      targets=tuple(targets))


def load_adapter(model: torch.nn.Module, directory: str | Path) -> LoRAConfig:
    """Load a PEFT LoRA directory into `model`, injecting LoRA layers first if it has none."""
    config = read_adapter_config(directory)
    if not any(True for _ in lora_layers(model)):
        inject_lora(model, config)
    tensors = load_file(str(Path(directory) / "adapter_model.safetensors"))
    state = {}
    for key, value in tensors.items():
        if not key.startswith(PEFT_PREFIX):
            raise ValueError(f"{directory}: unexpected adapter key {key!r}")
        state[key[len(PEFT_PREFIX):].replace(".default.", ".")] = value  # some PEFT versions keep the name
    expected = set(lora_state_dict(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
        raise ValueError(f"{directory}: adapter does not fit the model (missing {missing}, unexpected {extra})")
    model.load_state_dict(state, strict=False)
    return config
