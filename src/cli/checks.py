"""What the entry points check before any work: numbers as they are parsed, and every value that names
something before the first stage or step.

`number` is the argparse type of every numeric flag: its range is checked as the command line or a
--config file is parsed, so a value out of range never reaches a stage.

The `check_*` functions check each value that names something (a dataset and its split and folder, a
BERTScore model, LoRA's target layers, a judge and its key) in milliseconds, from names, files and the
model's config alone (no weights): train.py and evaluate.py call them before anything loads, and
reproduce.py calls them for every stage of every table before the first one starts, so a typo in the
last stage's recipe cannot let the first one train. Each raises a UserError naming the flag, what it
was given and what it may be. The checks of the model's whereabouts and the output folder are in
src/checks.py.
"""
from __future__ import annotations

import argparse
import functools
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from src.errors import UserError

if TYPE_CHECKING:
    from src.grpo.config import TrainConfig

BOUNDS = ("min", "gt", "max", "lt")
"""Range keys of a numeric flag: min <= value, gt < value, value <= max, value < lt."""

INT_LIMIT = 2**63
"""Every integer flag is below this (int64, what torch and numpy hold), whatever its own range."""


def number(kind: type, min: float | None = None, gt: float | None = None, max: float | None = None,
           lt: float | None = None) -> Callable[[str], int | float]:
    """The argparse `type=` of a numeric flag: `kind` (int or float) within the given bounds, finite.

    A value that does not parse is argparse's "invalid int value"; one out of range says which bound
    it breaks. Integers are below 2**63 in any case (INT_LIMIT). --config values go through the same
    function (src/cli/config_file.py).
    """
    def parse(text: str) -> int | float:
        value = kind(text)  # int() refuses more than 4,300 digits: argparse's "invalid int value"
        if kind is float and not math.isfinite(value):  # (an int is finite, and too large for isfinite's float)
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        for bound, broken, words in ((min, lambda b: value < b, "at least"), (gt, lambda b: value <= b, "more than"),
                                     (max, lambda b: value > b, "at most"), (lt, lambda b: value >= b, "less than")):
            if bound is not None and broken(bound):
                shown = bound if isinstance(bound, int) else f"{bound:g}"
                raise argparse.ArgumentTypeError(f"must be {words} {shown}, got {_shown(text)}")
        if kind is int and abs(value) >= INT_LIMIT:
            raise argparse.ArgumentTypeError(f"must be less than 2**63 in size, got {_shown(text)}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'x'"
    return parse


def _shown(text: str, limit: int = 40) -> str:
    """A value as an error message shows it: a long one cut, with its length."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# ---- values that name something ----------------------------------------------------------------

def check_dataset(name: str, split: str, root: str | Path | None, flag: str) -> None:
    """`name` is a dataset this project reads, `split` one of its splits (or a [start:stop] slice of one),
    and its folder, when given, is there (without one it must be on the Hub; the synthetic set needs
    none): what load_dataset would refuse before reading a row."""
    from src.data.loaders import canonical_split, dataset_spec, split_rows
    from src.data.rows import DatasetError

    try:
        split_name, _ = split_rows(split)
        dataset_spec(name)
        canonical_split(name, split_name)
    except DatasetError as error:
        raise DatasetError(f"{flag}: {error}") from None
    if root is None and name != "synthetic":  # fetched from the Hub when the run reads it (src/data/hub.py)
        from src.data.hub import HUB_DATASETS, NOT_ON_HUB

        if name in NOT_ON_HUB:
            raise DatasetError(f"{name}: {NOT_ON_HUB[name]}")
        hub = HUB_DATASETS[name]
        if canonical_split(name, split_name) not in hub.splits:
            raise DatasetError(f"{flag}: {name} has no split {split_name!r} on the Hub ({hub.repo}); its splits: "
                               f"{', '.join(hub.splits)}")
    if root is not None and not Path(root).is_dir():
        raise DatasetError(f"{name}: data folder not found: {root}")


def check_bertscore_model(name: str | None, flag: str = "--bertscore-model") -> None:
    """`name` is a BERTScore model with a known layer (the command line cannot give another model's
    layer); roberta-large with HF_HUB_OFFLINE set must already be in the local cache."""
    if name is None:
        return
    from src.data.hub import offline
    from src.rewards.bertscore import LAYERS, MINILM, ROBERTA_LARGE

    names = (*LAYERS, MINILM.split("/")[-1])
    if name not in names:
        raise UserError(f"{flag} {name}: not a BERTScore model with a known layer; choose one of {', '.join(names)}")
    if name == ROBERTA_LARGE and offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(ROBERTA_LARGE, "config.json"), str):
            raise UserError(f"{flag} {name}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                            f"download it (hf download {name}) or leave {flag} unset for the "
                            "embedded MiniLM")


def check_training_names(cfg: TrainConfig) -> None:
    """Every value of a training config that names something: the dataset, split and folder, the
    BERTScore model, the model, and LoRA's targets and rank and the completion length against the
    model's architecture (read from its config; no weights load)."""
    from src.checks import check_model_source

    check_dataset(cfg.data.dataset, cfg.data.split, cfg.data.data_root, "--dataset")
    check_bertscore_model(cfg.reward.bertscore_model)
    check_model_source(cfg.model.model)
    layers, positions = model_shape(cfg.model.model)
    if cfg.uses_lora:
        check_lora(cfg.model.lora_targets, cfg.model.lora_r, layers)
    if not cfg.is_sft and cfg.rollout.max_completion_length >= positions:
        raise UserError(f"--max-completion-length {cfg.rollout.max_completion_length}: {cfg.model.model} has "
                        f"{positions} positions, which must hold the prompt too")


def check_lora(targets: tuple[str, ...], r: int, layers: dict[str, int]) -> None:
    """Each of `targets` names linear layers of the language model (`layers`: leaf name -> the
    smallest side of the layers of that name), and `r` is at most that side: B A has rank <= min(in, out)."""
    unknown = [target for target in targets if target not in layers]
    if unknown or not targets:
        what = f"{', '.join(unknown)} {'is not a linear layer' if len(unknown) == 1 else 'are not linear layers'}" \
            if unknown else "no layer given: LoRA needs at least one linear layer"
        raise UserError(f"--lora-targets: {what} of the language model; its linear layers: {', '.join(sorted(layers))}")
    narrow = min(targets, key=lambda target: layers[target])
    if r > layers[narrow]:
        raise UserError(f"--lora-r {r}: more than the {layers[narrow]} of {narrow}'s smaller side, the highest rank "
                        "its update B A can have")


@functools.lru_cache(maxsize=8)
def model_shape(model: str) -> tuple[dict[str, int], int]:
    """({leaf name: smallest side} of the nn.Linear layers under model.language_model, which LoRA may
    target, and the language model's positions) of a model, an adapter's base or "tiny": the model is
    built from its config on the meta device, which allocates no weights."""
    import torch
    from transformers import AutoConfig

    from src.models.families import family_named
    from src.models.loading import base_model_name, resolve_model_path

    path = resolve_model_path(base_model_name(model))
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise UserError(f"--model {model}: cannot read its config ({path}): {error}") from None
    family = family_named(config.model_type, f"--model {model}")
    with torch.device("meta"):
        built = family.model_cls()._from_config(config)
    layers: dict[str, int] = {}
    for name, module in built.model.language_model.named_modules():
        if isinstance(module, torch.nn.Linear):
            leaf, side = name.rsplit(".", 1)[-1], min(module.in_features, module.out_features)
            layers[leaf] = min(side, layers.get(leaf, side))
    return layers, getattr(config, "text_config", config).max_position_embeddings


OPENAI_NAMES = re.compile(r"gpt-|chatgpt-|o\d|ft:")
"""How OpenAI's own model names begin (gpt-4o-mini, o3-mini, chatgpt-4o-latest, ft:gpt-4o-mini:org::id)."""
KNOWN_JUDGES = ("gpt-4", "gpt-4-turbo", "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-5",
                "gpt-5-mini", "gpt-5-nano", "o1", "o3", "o3-mini", "o4-mini", "gemini-1.5-flash", "gemini-1.5-pro",
                "gemini-2.0-flash", "gemini-2.0-flash-lite", "gemini-2.5-flash", "gemini-2.5-flash-lite",
                "gemini-2.5-pro", "gemini-3-flash-preview", "gemini-3-pro-preview")
"""Judge models a name one letter away from is taken for a misspelling of."""
SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{2,4}|latest|preview|exp)([\w.-]*)")
"""The suffix of a dated or versioned release of a model: gpt-4o-mini-2024-07-18, gemini-1.5-flash-002."""


def check_judge_names(judges: str, base_urls: list[str], flag: str = "--judge") -> None:
    """Each judge of a comma-separated `judges` is named once, and one sent to OpenAI's or Google's own
    endpoint (no --judge-base-url for it) is named as that provider names its models, and is not one
    letter away from a model it serves (gpt-4o-mni). A judge behind --judge-base-url may have any name:
    its server decides. Its API key is checked by the evaluation itself (src/eval/pipeline.py:
    judge_backends), before anything is generated."""
    if judges == "none":
        return
    from src.eval.pipeline import judge_base_url

    names = [name.strip() for name in judges.split(",")]
    if "" in names or len(set(names)) < len(names):
        raise UserError(f"{flag} {judges}: expected distinct comma-separated judge names, or 'none'")
    for name in names:
        if judge_base_url(base_urls, name) is not None:
            continue
        if not (name.startswith("gemini-") or OPENAI_NAMES.match(name)):
            raise UserError(f"{flag} {name}: not an OpenAI model name (gpt-*, o1 ... o4-*, chatgpt-*, ft:*) nor a "
                            "Gemini one (gemini-*); a model on another server needs --judge-base-url")
        if not any(name == known or name.startswith(known) and SNAPSHOT.fullmatch(name[len(known):])
                   for known in KNOWN_JUDGES):
            meant = next((known for known in KNOWN_JUDGES if _one_letter_apart(name, known)), None)
            if meant is not None:
                raise UserError(f"{flag} {name}: not a model this project knows, and one letter away from {meant}: "
                                f"did you mean {meant}?")


def check_evaluation_names(args: argparse.Namespace) -> None:
    """Every value of evaluate.py's flags that names something: each NAME:SPLIT of --datasets with its
    folder, the BERTScore model and the judges (their keys: src/eval/pipeline.py, judge_backends)."""
    from src.eval.pipeline import requested_sets

    for spec, name, split, root in requested_sets(args)[0]:  # those left out are said so by the evaluation
        check_dataset(name, split, root, f"--datasets {spec}")
    check_bertscore_model(args.bertscore_model)
    check_judge_names(args.judge, args.judge_base_url)


def _one_letter_apart(a: str, b: str) -> bool:
    """Whether one letter inserted, deleted or replaced turns `a` into `b` (not a digit: gemini-2.5 and
    gemini-1.5 are both models)."""
    if len(a) < len(b):
        a, b = b, a
    start = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(b))
    if len(a) == len(b) + 1:
        return a[start].isalpha() and a[start + 1:] == b[start:]
    return len(a) == len(b) and start < len(a) and a[start].isalpha() and b[start].isalpha() \
        and a[start + 1:] == b[start + 1:]
