"""Hand-written LoRA (Hu et al. 2021), the only adapter code on the training path.

    y = W0 x + (alpha / r) * B A dropout(x)        A: [r, in] Kaiming-uniform, B: [out, r] zeros

With B = 0 the wrapped layer computes exactly W0 x, so a freshly injected model *is* the base model.
`disabled_adapters(model)` switches every adapter off at once: that is the frozen reference policy
of GRPO's KL term (eq. 3), with no second copy of the weights in memory.

Names follow PEFT so that adapters saved here (`save_adapter`, end of the module) load in `peft.PeftModel`:
the wrapped linear keeps its weights under `base_layer`, the factors are `lora_A` / `lora_B`.

Precision: the factors are fp32 whatever the base's dtype, as PEFT keeps them
(`autocast_adapter_dtype`). AdamW moves a LoRA weight by about lr = 1e-5 per step, and bf16 keeps
8 significant bits: at |w| ~ 1e-2 its spacing is ~6e-5, so a bf16 factor would round most updates
away and stop learning (on a 1536 x 1536 layer, 10 steps at 1e-5 changed 16% of a bf16 lora_A's
entries against 100% in fp32). The side path casts its input up to fp32 and adds its fp32 delta to
the base output before rounding once to the base's dtype; merging computes W0 + s B A in fp32 too.
"""
from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
ADAPTER_DTYPE = torch.float32  # the factors' dtype under any base (see the module docstring)


@dataclass(frozen=True)
class LoRAConfig:
    """The adapter's shape. The paper (sec. 2.3) uses r=8, alpha=16 on the attention projections."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = DEFAULT_TARGETS

    @property
    def scale(self) -> float:
        return self.alpha / self.r


class LoRALinear(nn.Module):
    """nn.Linear plus a low-rank update in fp32; `merge()` folds B A into W0, `unmerge()` takes it out again."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base_layer
        self.r, self.scale = r, alpha / r
        factory = dict(device=base_layer.weight.device, dtype=ADAPTER_DTYPE)  # fp32 under a bf16 base too
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, **factory)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, **factory)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # as PEFT and loralib: A Kaiming-uniform (a=sqrt(5), nn.Linear's default), B zero, so B A = 0
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """s B A in fp32: [out, r] @ [r, in] -> [out, in]."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)                                             # [..., out], the base's dtype
        if self.merged or self.disabled:
            return y
        x = self.lora_dropout(x.to(self.lora_A.weight.dtype))              # [..., in] fp32
        delta = self.lora_B(self.lora_A(x)) * self.scale                   # [..., out] fp32
        return (y + delta).to(y.dtype)  # one rounding to the base's dtype, after the sum

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- round(W0 + s B A), the sum in fp32. In bf16 that rounding is what a merged model
        serves: updates smaller than W0's bf16 spacing are lost (src/models/export.py merges so)."""
        if not self.merged:
            weight = self.base_layer.weight
            weight.copy_(weight.float() + self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 <- round(W0 - s B A): exact in fp32 up to rounding; in bf16 the last bits of W0 drift
        (copy the weights back instead where they must be bit for bit, as bench_step does)."""
        if self.merged:
            weight = self.base_layer.weight
            weight.copy_(weight.float() - self.delta_weight())
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, scale={self.scale}"


def inject_lora(model: nn.Module, config: LoRAConfig, within: str = "model.language_model") -> list[str]:
    """Wrap every nn.Linear named like one of `config.targets` under the submodule `within`.

    Only the language model is adapted (the paper freezes the vision tower); returns the wrapped names.
    A target that names no nn.Linear there (a typo such as "k_prj") is refused before anything is
    wrapped: an adapter on fewer layers than asked for would train silently.
    """
    root = model.get_submodule(within)
    linear = {name: module for name, module in root.named_modules() if isinstance(module, nn.Linear)}
    leaves = {name.rsplit(".", 1)[-1] for name in linear}
    missing = [target for target in config.targets if target not in leaves]
    if missing or not config.targets:
        raise ValueError(f"LoRA targets {missing or list(config.targets)} name no nn.Linear under {within!r}; "
                         f"its linear layers: {', '.join(sorted(leaves))}")
    wrapped = []
    for name, module in linear.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in config.targets:
            parent = root.get_submodule(name.rsplit(".", 1)[0]) if "." in name else root
            setattr(parent, leaf, LoRALinear(module, config.r, config.alpha, config.dropout))
            wrapped.append(f"{within}.{name}")
    return wrapped


def lora_layers(model: nn.Module) -> Iterator[LoRALinear]:
    return (m for m in model.modules() if isinstance(m, LoRALinear))


def mark_only_lora_as_trainable(model: nn.Module) -> int:
    """Freeze everything but the LoRA factors; returns the number of trainable parameters."""
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_A." in name or ".lora_B." in name)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights only, under the model's own parameter names."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


@contextlib.contextmanager
def disabled_adapters(model: nn.Module) -> Iterator[None]:
    """Run the base model: the frozen reference policy pi_ref, without a second copy of the weights."""
    layers: Sequence[LoRALinear] = list(lora_layers(model))
    if any(layer.merged for layer in layers):
        raise RuntimeError("adapters are merged into the weights; unmerge before disabling them")
    for layer in layers:
        layer.disabled = True
    try:
        yield
    finally:
        for layer in layers:
            layer.disabled = False


def merge_and_unload(model: nn.Module) -> int:
    """Fold every adapter into its base weights for good and put the plain nn.Linear back.

    Used when a run starts from an adapter but trains something else on top (a fresh adapter, or
    the full model): the starting adapter becomes part of the base. Returns the number unloaded.
    """
    count = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            module.merge()
            parent_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module.base_layer)
            count += 1
    return count


@contextlib.contextmanager
def swapped_adapters(model: nn.Module, state: dict[str, torch.Tensor]) -> Iterator[None]:
    """Run with other LoRA weights (e.g. the adapter a run started from), then put the current ones back.

    This is the reference policy when training continues an existing adapter: pi_ref is the policy
    the run started from, and only the adapter's few weights are kept twice, not the model.
    """
    current = {k: v.detach().clone() for k, v in lora_state_dict(model).items()}
    model.load_state_dict(state, strict=False)
    try:
        yield
    finally:
        model.load_state_dict(current, strict=False)


# ----------------------------------------------------------------------------------------------------
# Adapters on disk in PEFT's format, so `peft.PeftModel.from_pretrained(base, dir)` loads what we train.
#
# A PEFT LoRA directory holds
# - adapter_config.json: peft_type LORA, r, lora_alpha, lora_dropout, target_modules, base model id;
# - adapter_model.safetensors: the factors under PEFT's names, which are the model's own parameter
#   names prefixed with "base_model.model." (the PeftModel wrapper and its LoraModel), with the adapter
#   name ("default") left out: `...q_proj.lora_A.weight`.
# Our LoRALinear uses the same `lora_A` / `lora_B` / `base_layer` names, so the mapping is the prefix.
# The factors are saved as they train, in fp32 whatever the base's dtype (PEFT loads them so too, with its
# default autocast_adapter_dtype); a file in another dtype loads into the fp32 factors.
# ----------------------------------------------------------------------------------------------------

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
