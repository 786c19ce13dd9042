"""Train a Qwen2-VL policy with SFT, GRPO, RARL or full-fine-tuning GRPO.

    python train.py --method rarl --samples 716 --data-root data/silvar-med
    python train.py --config recipes/table6/rarl.yaml --output-dir runs/rarl
    python train.py --method rarl --model tiny --dataset synthetic --max-steps 4 --save-steps 2 --output-dir OUT

Every flag is listed below and may also be set in a YAML or TOML file given with --config (a run's
config.json is one; command-line flags override the file). The resolved config is printed and saved
to OUTPUT/config.json, metrics go to OUTPUT/metrics.jsonl (one line per step; --report-to tensorboard
adds OUTPUT/tensorboard/), checkpoints to OUTPUT/checkpoint-STEP/. `--resume` continues from the
latest checkpoint. Everything cheap (data files and rows, output folder, resume settings, the model's
whereabouts) is checked before any weights load. One run at a time holds --output-dir; SIGINT or
SIGTERM finishes the current step, saves a checkpoint of it and exits (143 for SIGTERM, 130 for
Ctrl-C): add --resume to go on.

On several GPUs, launch the same command with `torchrun --nproc_per_node N train.py ...`: data-parallel
over the step's prompts, see docs/DISTRIBUTED.md.
"""
from __future__ import annotations

from src.cli.threads import configure_cpu_threads

configure_cpu_threads()  # before torch loads its OpenMP runtime: see docs/CPU.md

import contextlib  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

from src.checks import check_installed, check_writable  # noqa: E402
from src.cli.config_file import parse_args  # noqa: E402
from src.cli.errors import run_main  # noqa: E402
from src.errors import UserError  # noqa: E402
from src.grpo.checkpoint import latest_checkpoint  # noqa: E402
from src.grpo.config import TrainConfig, build_parser, config_from_args  # noqa: E402
from src.grpo.distributed import close_distributed, is_main  # noqa: E402
from src.grpo.trainer import check_same_settings, train  # noqa: E402
from src.run_guard import hold_folder  # noqa: E402


def check_before_loading(cfg: TrainConfig) -> None:
    """What can be refused in milliseconds once the output folder is ours. Then setup() reads the dataset
    (files, rows, images) and checks where the model is, still before any weights load."""
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


def parse_config(argv: list[str] | None) -> TrainConfig:
    """The run's config from the command line and --config; a value the config refuses is a UserError."""
    args = parse_args(build_parser(__doc__), argv)
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
