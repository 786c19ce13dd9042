"""Train a Qwen2-VL policy with SFT, GRPO, RARL or full-fine-tuning GRPO.

    python train.py --method rarl --samples 716      # Silvar-Med, fetched from the Hugging Face Hub
    python train.py --method rarl --samples 716 --data-root data/silvar-med
    python train.py --config recipes/table6/rarl.yaml --output-dir runs/rarl
    python train.py --method rarl --model tiny --dataset synthetic --max-steps 4 --save-steps 2 --output-dir OUT

Every flag is listed below and may also be set in a YAML or TOML file given with --config (a run's
config.json is one; command-line flags override the file). The resolved config is printed and saved
to OUTPUT/config.json, metrics go to OUTPUT/metrics.jsonl (one line per step; --report-to tensorboard
adds OUTPUT/tensorboard/), checkpoints to OUTPUT/checkpoint-STEP/. `--resume` continues from the
latest checkpoint. A dataset without --data-root is fetched from the Hugging Face Hub into HF_HOME
(docs/DATA.md; --data-revision pins its commit, which config.json records). Everything cheap (data
files and rows, output folder, resume settings, the model's whereabouts, every name: dataset, BERTScore
model, LoRA targets against the model's layers) is checked before any weights load. One run at a time
holds --output-dir; SIGINT or SIGTERM finishes the current step, saves a checkpoint of it and exits
(143 for SIGTERM, 130 for Ctrl-C): add --resume to go on.

On several GPUs, launch the same command with `torchrun --nproc_per_node N train.py ...`: data-parallel
over the step's prompts, see docs/DISTRIBUTED.md.
"""
from __future__ import annotations

from src.cli.threads import configure_cpu_threads

configure_cpu_threads()  # before torch loads its OpenMP runtime: see docs/CPU.md

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import os  # noqa: E402
import types  # noqa: E402
import typing  # noqa: E402
from pathlib import Path  # noqa: E402

from src.checks import check_installed, check_writable  # noqa: E402
from src.cli.checks import BOUNDS, check_training_names, number  # noqa: E402
from src.cli.config_file import add_config_option, parse_args  # noqa: E402
from src.cli.errors import run_main  # noqa: E402
from src.cli.help import HelpFormatter, escape  # noqa: E402
from src.errors import UserError  # noqa: E402
from src.grpo.checkpoint import latest_checkpoint  # noqa: E402
from src.grpo.config import SECTIONS, TrainConfig, section_class  # noqa: E402
from src.grpo.distributed import close_distributed, is_main  # noqa: E402
from src.grpo.trainer import check_same_settings, train  # noqa: E402
from src.run_guard import hold_folder  # noqa: E402


def cli_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser(description: str = __doc__) -> argparse.ArgumentParser:
    """One flag per field of the config dataclasses (src/grpo/config.py), grouped by section, with its
    help, choices and numeric range; `--config FILE` reads any of them from a file."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_config_option(parser, note="; a run's config.json is one")
    for section in dataclasses.fields(TrainConfig):
        group = parser.add_argument_group(section.name)
        cls = section_class(section.name)
        hints = typing.get_type_hints(cls)  # the fields' annotations as types
        for f in dataclasses.fields(cls):
            kind = base_type(hints[f.name])
            kwargs = dict(default=f.default, help=escape(f.metadata["help"]), dest=f"{section.name}.{f.name}")
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]  # listed in --help as {a,b,c}
            elif kind is not bool:
                kwargs["metavar"] = f.name.upper()
            if kind is bool:
                group.add_argument(cli_name(f.name), action=argparse.BooleanOptionalAction, **kwargs)
            elif kind is tuple:
                group.add_argument(cli_name(f.name), nargs="+", type=str, **kwargs)
            elif kind in (int, float):  # finite, and within the field's range
                bounds = {key: f.metadata[key] for key in BOUNDS if key in f.metadata}
                group.add_argument(cli_name(f.name), type=number(kind, **bounds), **kwargs)
            else:
                group.add_argument(cli_name(f.name), type=kind, **kwargs)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, dict] = {name: {} for name in SECTIONS}
    for key, value in vars(args).items():
        if key == "config":  # the file the values came from, not a setting
            continue
        section, name = key.split(".", 1)
        values[section][name] = tuple(value) if isinstance(value, list) else value
    return TrainConfig(**{name: section_class(name)(**kw) for name, kw in values.items()})


def base_type(annotation) -> type:
    """int | None -> int, tuple[str, ...] -> tuple, for argparse's `type=`."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return tuple
    if origin in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def check_before_loading(cfg: TrainConfig) -> None:
    """What can be refused in milliseconds once the output folder is ours: the folder's earlier run, and
    every value that names something (dataset, BERTScore model, model, LoRA targets; src/cli/checks.py).
    Then setup() reads the dataset (files, rows, images), still before any weights load."""
    out = Path(cfg.run.output_dir)
    if cfg.run.resume:
        if latest_checkpoint(out) is not None:
            try:
                check_same_settings(out / "config.json", cfg)
            except ValueError as error:
                raise UserError(str(error)) from None
    elif latest_checkpoint(out) is not None:
        raise UserError(f"--output-dir {out} holds checkpoints of an earlier run: add --resume to continue it, "
                        "or choose another --output-dir")
    if cfg.run.report_to == "tensorboard":
        check_installed("tensorboard", "--report-to tensorboard", "tensorboard")
    check_training_names(cfg)


def parse_config(argv: list[str] | None) -> TrainConfig:
    """The run's config from the command line and --config; a value the config refuses is a UserError."""
    args = parse_args(build_parser(), argv)
    try:
        return config_from_args(args)
    except UserError:
        raise
    except ValueError as error:  # TrainConfig's checks across settings
        raise UserError(str(error)) from None


def main(argv: list[str] | None = None) -> Path:
    cfg = parse_config(argv).resolved()  # --dtype auto: the dtype it is on this device
    check_writable(cfg.run.output_dir)
    # rank 0 holds the folder for every rank of a torchrun launch (RANK is set before any process group)
    held = hold_folder(Path(cfg.run.output_dir)) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext()
    with held:
        check_before_loading(cfg)
        final = train(cfg)
    if is_main():
        print(f"final checkpoint: {final}")
    close_distributed()
    return final


if __name__ == "__main__":
    run_main(main)
