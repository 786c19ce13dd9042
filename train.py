"""Train a Qwen2-VL policy with SFT, GRPO, RARL or full-fine-tuning GRPO.

    python train.py --method rarl --samples 716 --data-root data/silvar-med
    python train.py --method rarl --model tiny --dataset synthetic --samples 32 --max-steps 4 --save-steps 2 --output-dir OUT

Every flag is listed by `python train.py --help`; the resolved config is printed and saved to
OUTPUT/config.json, metrics go to OUTPUT/metrics.jsonl (one line per step), checkpoints to
OUTPUT/checkpoint-STEP/. `--resume` continues from the latest checkpoint.

On several GPUs, launch the same command with `torchrun --nproc_per_node N train.py ...`: data-parallel
over the step's prompts, see docs/DISTRIBUTED.md.
"""
from __future__ import annotations

from pathlib import Path

from src.grpo.config import build_parser, config_from_args
from src.grpo.distributed import close_distributed, is_main
from src.grpo.trainer import train


def main(argv: list[str] | None = None) -> Path:
    parser = build_parser(__doc__.split("\n\n")[0])
    cfg = config_from_args(parser.parse_args(argv))
    final = train(cfg)
    if is_main():
        print(f"final checkpoint: {final}")
    close_distributed()
    return final


if __name__ == "__main__":
    main()
