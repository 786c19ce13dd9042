"""Loading a policy of a supported family: weights, tokenizer and image processor, from a hub id or a local directory.

`load_policy` accepts
- "tiny", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-qwen3-vl": the embedded test models (built once
  into the cache, see src/models/tiny.py);
- a hub id such as "Qwen/Qwen2-VL-2B-Instruct" (the default), "Qwen/Qwen2.5-VL-3B-Instruct" or
  "Qwen/Qwen3-VL-2B-Instruct", or a local copy of one;
- a directory saved by train.py: a PEFT-format adapter (adapter_config.json) whose base model is read
  from the adapter's config, or a full fine-tuned model (config.json).
Weights load in the dtype asked for (`--dtype`: auto is bf16 on GPU, fp32 on CPU), with transformers'
attention set by `attention_implementation`: flash_attention_2 where flash-attn can run, else sdpa.
The family (src/models/families.py) is read from config.json's model_type before any weights load, and
picks the transformers class; any other model_type is refused with one line naming the supported ones.
The image processor is loaded on its own: `AutoProcessor` would pull in the video processor, which
needs torchvision.
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from src.models.families import check_architecture, checkpoint_family

DEFAULT_MODEL = "Qwen/Qwen2-VL-2B-Instruct"


@dataclass
class Policy:
    """The model being trained or evaluated, with what it takes to build its inputs."""

    model: torch.nn.Module
    tokenizer: object
    image_processor: object
    name: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DTYPES = ("auto", "bfloat16", "float32")  # what --dtype accepts


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def resolve_dtype(name: str | None, device: torch.device | str | None = None) -> torch.dtype:
    """A --dtype value as a torch dtype: "auto" (or None) is bf16 on CUDA and fp32 elsewhere (bf16
    also runs on a CPU, slowly where it lacks bf16 instructions, when asked for by name)."""
    if name in (None, "auto"):
        return default_dtype(torch.device(device) if device is not None else default_device())
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {DTYPES}")
    return getattr(torch, name)


FLASH_DTYPES = (torch.bfloat16, torch.float16)  # the only dtypes flash-attn's kernels take


def attention_implementation(device: torch.device, dtype: torch.dtype) -> str:
    """transformers' attention for a model of `dtype` on `device`: flash_attention_2 where flash-attn can
    run, that is a CUDA device of compute capability 8.0 or later, bf16 or fp16 weights, and a flash-attn
    that imports (a build against another torch or CUDA fails here with an undefined symbol, and is
    named in a warning); sdpa otherwise. transformers loads fp32 weights with flash_attention_2 after a
    warning, and flash-attn then refuses the first prompt's fp32 q/k/v in the vision tower.

    It reaches the vision tower, transformers' generate (`--rollout-engine hf`) and the unshared training
    forward (`--no-prefix-sharing`); the rollout engine and the shared-prefix forward call torch's SDPA
    with their own boolean masks whatever this says.
    """
    if device.type != "cuda" or dtype not in FLASH_DTYPES or torch.cuda.get_device_capability(device)[0] < 8:
        return "sdpa"
    try:
        from flash_attn import flash_attn_func, flash_attn_varlen_func  # noqa: F401 - what transformers calls
    except Exception as error:  # noqa: BLE001 - a broken build fails in many ways (undefined symbol, OSError, ...)
        if not (isinstance(error, ModuleNotFoundError) and error.name == "flash_attn"):  # installed, but broken
            warnings.warn(f"flash-attn does not import ({type(error).__name__}: {error}); using sdpa", stacklevel=2)
        return "sdpa"
    return "flash_attention_2"


def resolve_model_path(name: str) -> str:
    """A tiny model's name ('tiny', 'tiny-qwen3-vl', ...) -> its cached directory; anything else unchanged."""
    from src.models.tiny import ensure_tiny, is_tiny

    return str(ensure_tiny(name=name)) if is_tiny(name) else name


def _offline_hint(name: str, error: Exception) -> OSError:
    return OSError(
        f"could not load the model {name!r} ({type(error).__name__}: {error}). "
        "If this machine has no network access, download the model elsewhere, e.g. "
        f"`hf download {name} --local-dir /path/to/{name.split('/')[-1]}`, copy it here "
        "and pass that directory as --model /path/to/... (or set HF_HOME to a cache that holds it)."
    )


def load_base(name: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Policy:
    """Weights + tokenizer + image processor of a base (or full fine-tuned) model of a supported family."""
    from transformers import AutoTokenizer

    device = torch.device(device) if device is not None else default_device()  # evaluate.py passes "cpu"
    dtype = dtype or default_dtype(device)
    path = resolve_model_path(name)
    try:
        family = checkpoint_family(path)  # config.json alone: an unsupported model is refused before its weights
        model = family.model_cls().from_pretrained(
            path, dtype=dtype, attn_implementation=attention_implementation(device, dtype)
        )
        tokenizer = AutoTokenizer.from_pretrained(path)
        image_processor = load_image_processor(path)
    except OSError as error:
        if Path(path).is_dir():
            raise OSError(f"cannot load a model from {path}: {error}") from error
        raise _offline_hint(name, error) from error
    check_architecture(model, family)
    model.to(device)
    tokenizer.padding_side = "left"  # decoder-only batches: pad on the left so generation continues the text
    return Policy(model=model, tokenizer=tokenizer, image_processor=image_processor, name=name)


def load_image_processor(path: str):
    """The model's image processor as `AutoImageProcessor` picks it: the torchvision backend when
    torchvision is installed, else the PIL one. In some transformers 5.x releases (5.17 among them)
    `AutoImageProcessor` itself needs torchvision; the PIL class is then loaded directly, with the same
    preprocessor_config.json."""
    try:
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(path)
    except ImportError:  # transformers' placeholder for a class whose backend (torchvision) is missing
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil.from_pretrained(path)


def base_model_name(name: str) -> str:
    """The base model behind `name`, as a checkpoint records it: the base an adapter directory's config
    names; a local directory as an absolute path (so that an adapter trained on it loads from any
    working directory); a hub id or a tiny model's name unchanged."""
    from src.models.tiny import is_tiny

    adapter_config = Path(name) / "adapter_config.json"
    if adapter_config.is_file():
        return json.loads(adapter_config.read_text())["base_model_name_or_path"]
    if not is_tiny(name) and Path(name).is_dir():
        return str(Path(name).resolve())
    return name


def is_hub_id(name: str) -> bool:
    """'name' or 'owner/name', as the hub spells repositories; a path with more parts is local."""
    return re.fullmatch(r"[\w-][\w.-]*(/[\w-][\w.-]*)?", name) is not None


def load_policy(name: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Policy:
    """A model to train or evaluate: base, full fine-tune, or base + our LoRA adapter from a PEFT directory."""
    adapter_config = Path(name) / "adapter_config.json"
    if not adapter_config.is_file():
        return load_base(name, device, dtype)
    from src.models.lora import load_adapter

    base = base_model_name(name)
    if not Path(base).is_dir() and not is_hub_id(base):  # a tiny model's name reads as a hub id
        raise FileNotFoundError(f"adapter {name}: its base model {base} (base_model_name_or_path in "
                                f"adapter_config.json) is not a directory here (working directory {Path.cwd()}); "
                                "put the base model there or edit that field")
    policy = load_base(base, device, dtype)
    load_adapter(policy.model, name)
    policy.name = name
    return policy


def freeze_vision(model: torch.nn.Module) -> None:
    """The paper trains the language side only: the vision tower and its merger stay frozen."""
    model.model.visual.requires_grad_(False)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute activations in backward; works with LoRA (frozen base) as well as full fine-tuning.

    With the whole base frozen, the embeddings' output does not require grad, and re-entrant
    checkpointing then fails with "element 0 of tensors does not require grad". Non-re-entrant
    checkpointing does not have that problem; making the input embeddings require grad as well keeps
    it working if a re-entrant variant is ever selected.
    """
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.config.use_cache = False
