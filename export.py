"""Merge a trained adapter into its base model: a standalone Hugging Face model directory.

    python export.py --model runs/rarl/checkpoint-500 --output-dir models/rarl-merged

The result (config, safetensors shards, tokenizer and processor files) loads with
`Qwen2VLForConditionalGeneration.from_pretrained(OUT)` and in serving engines such as vLLM, without
this project; its logits equal those of base + adapter (tested). The weights are saved in the base
model's dtype unless --dtype says otherwise. A full fine-tuned checkpoint is re-saved the same way.
"""
from __future__ import annotations

from src.cli.threads import configure_cpu_threads

configure_cpu_threads()  # before torch loads its OpenMP runtime: see docs/CPU.md

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

from src.checks import check_model_source, check_writable, phase  # noqa: E402
from src.cli.config_file import add_config_option, parse_args  # noqa: E402
from src.cli.errors import run_main  # noqa: E402
from src.cli.help import HelpFormatter  # noqa: E402
from src.errors import UserError  # noqa: E402

DTYPES = ("auto", "bfloat16", "float16", "float32")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_option(p)
    p.add_argument("--model", required=True, help="an adapter directory written by train.py (or a full model)")
    p.add_argument("--output-dir", type=Path, required=True, help="the new model directory (must not exist yet)")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="weights' dtype; auto = the base model's")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors file, e.g. 2GB")
    return p


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(build_parser(), argv)
    if args.output_dir.exists() and any(args.output_dir.iterdir()):
        raise UserError(f"--output-dir {args.output_dir}: exists and is not empty; choose a new directory")
    check_writable(args.output_dir)
    check_model_source(args.model)
    import torch

    from src.models.export import export_merged

    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    if args.output_dir.exists():
        args.output_dir.rmdir()  # empty: the export is renamed into its place
    with phase(f"merging {args.model} into {args.output_dir}"):
        out = export_merged(args.model, args.output_dir, dtype=dtype, max_shard_size=args.max_shard_size)
    print(f"standalone model: {out}")
    return out


if __name__ == "__main__":
    run_main(main)
