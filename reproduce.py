"""Run the paper's Tables 2, 3 and 6 from recipes/ and print them with the paper's numbers beside ours.

    python reproduce.py --output-dir runs/paper                      # every table, real model and data
    python reproduce.py --output-dir runs/paper --tables 6 --judge llama3 --judge-base-url http://localhost:8000/v1
    python reproduce.py --output-dir runs/paper-tiny --tiny          # the same runs on the embedded default

Each training recipe (recipes/tableN/RUN.yaml) runs once through train.py and is scored once through
evaluate.py with its table's evaluation recipe (recipes/tableN/evaluate.yaml); the table rows and the
paper's numbers are in src/recipes/paper.py. Under --output-dir, per run:
    tableN/RUN/train.yaml, eval.yaml   the recipes as run (with --tiny's and the command line's changes)
    tableN/RUN/train/                  train.py's output (config.json, metrics.jsonl, checkpoints)
    tableN/RUN/eval/                   evaluate.py's output (summary.json, report.md, predictions)
and tables.md / tables.json for all of them. Every stage resumes: re-running skips what is on disk.
Every recipe the selected tables run is read and checked (as its stage will read it, with --tiny's
and the command line's changes) before the first stage starts, every name included (datasets and
their folders, BERTScore model, LoRA targets, judges and their keys); an error names the recipe file.

--tiny runs the same recipes on `--model tiny --dataset synthetic` on the CPU, a few steps each, every
dataset replaced by the synthetic test set: it tests the pipeline end to end, not the method. The
datasets published on the Hugging Face Hub are fetched from it, the others read from the folders the
recipes name (data/vqa-med-2019, data/cv-bench-train; docs/RECIPES.md); --judge and --judge-base-url
replace the recipes' judges (the paper's GPT-4o mini and Gemini 1.5 Flash are retired).
"""
from __future__ import annotations

from src.cli.threads import configure_cpu_threads

configure_cpu_threads()  # before torch loads its OpenMP runtime: see docs/CPU.md

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

import evaluate  # noqa: E402
import train  # noqa: E402
from src.cli.checks import check_evaluation_names, check_training_names  # noqa: E402
from src.cli.config_file import config_values, load_file, with_changes  # noqa: E402
from src.cli.errors import run_main  # noqa: E402
from src.cli.help import HelpFormatter  # noqa: E402
from src.errors import UserError  # noqa: E402
from src.eval.judge.client import scrub  # noqa: E402
from src.eval.pipeline import judge_backends  # noqa: E402
from src.files import write_atomic  # noqa: E402
from src.recipes.paper import DATASETS, TABLES, Table, render_table  # noqa: E402

RECIPES = Path(__file__).resolve().parent / "recipes"   # the paper's; --recipes points at an edited copy

# --tiny: every recipe at the embedded default's scale (changes on top of the recipe, as flags would be).
TINY_TRAIN = {"model": "tiny", "dataset": "synthetic", "data_root": None, "split": "train", "device": "cpu",
              "gradient_checkpointing": False, "max_steps": 2, "save_steps": 2, "prompts_per_step": 2,
              "mini_batch_size": 4, "group_size": 2, "max_completion_length": 16}
TINY_EVALUATE = {"datasets": "synthetic:test", "data_root": [], "limit": 4, "max_new_tokens": 16, "batch_size": 4,
                 "device": "cpu", "judge": "none"}
TINY_STAND_IN = {name: "synthetic" for name in (*DATASETS, "cv-bench")}


def show(program: str, argv: list[str]) -> None:
    print(f"\n$ python {program} " + scrub(" ".join(argv)), flush=True)  # no user:password@ of a judge URL


def write_recipe(path: Path, recipe: dict) -> Path:
    write_atomic(path, yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_training(recipes: Path, name: str, out: Path, changes: dict) -> Path:
    """Train RECIPES/<name>.yaml (resuming whatever is on disk); returns its final checkpoint."""
    recipe = write_recipe(out / name / "train.yaml", with_changes(load_file(recipes / f"{name}.yaml"), changes))
    argv = ["--config", str(recipe), "--output-dir", str(out / name / "train"), "--resume"]
    show("train.py", argv)
    return Path(train.main(argv))


def run_evaluation(recipes: Path, name: str, evaluation: str, model: Path, out: Path, changes: dict) -> dict:
    """Evaluate `model` with RECIPES/<evaluation>.yaml. Judge URLs go on the command line, not into the
    recipe copy under --output-dir: a URL may carry credentials, which no result file holds."""
    recipe = with_changes(load_file(recipes / f"{evaluation}.yaml"), changes)
    urls = [url for key in ("judge_base_url", "judge-base-url") for url in _as_list(recipe.pop(key, None))]
    path = write_recipe(out / name / "eval.yaml", recipe)
    argv = ["--config", str(path), "--model", str(model), "--output-dir", str(out / name / "eval"),
            *(part for url in urls for part in ("--judge-base-url", url))]
    show("evaluate.py", argv)
    return evaluate.main(argv)


def _as_list(value) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def runs_of(table: Table) -> list[str]:
    names = [row.train for row in table.rows if row.train is not None]
    return list(dict.fromkeys(names))


def check_recipes(recipes: Path, tables: list[str], train_changes: dict, eval_changes: dict) -> None:
    """Read and check every recipe the tables run, with the changes each stage applies, before any stage:
    a mistake in the last table's recipe stops the run before the first trains, naming the recipe. Each
    value is checked as its stage would check it: range and choices, settings across fields, and every
    value that names something (datasets and their folders, the BERTScore model, LoRA targets against
    the model, judges and their keys: src/cli/checks.py)."""
    train_parser, eval_parser = train.build_parser(), evaluate.build_parser()
    for key in tables:
        table = TABLES[key]
        for name in runs_of(table):
            path = recipes / f"{name}.yaml"
            args = train_parser.parse_args([])
            vars(args).update(config_values(train_parser, with_changes(load_file(path), train_changes), path))
            with naming(path):
                check_training_names(train.config_from_args(args))  # ValueError: TrainConfig's checks across fields
        path = recipes / f"{table.evaluate}.yaml"
        args = eval_parser.parse_args([])
        vars(args).update(config_values(eval_parser, with_changes(load_file(path), eval_changes), path))
        with naming(path):
            check_evaluation_names(args)
            judge_backends(args)  # each judge's API key, as evaluate.py checks it


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """A refused value inside, as a UserError that names the recipe file first."""
    try:
        yield
    except ValueError as error:  # UserError, or TrainConfig's checks across settings
        raise UserError(f"{path}: {error}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--output-dir", type=Path, required=True, help="where every run and the tables go")
    p.add_argument("--recipes", type=Path, default=RECIPES, help="a recipe set laid out as recipes/ (default: the "
                                                                "paper's, recipes/)")
    p.add_argument("--tables", nargs="+", choices=list(TABLES), default=list(TABLES), help="which of the paper's tables")
    p.add_argument("--tiny", action="store_true", help="the embedded default (tiny model, synthetic data, CPU), a "
                                                       "few steps per run: tests the pipeline, not the method")
    p.add_argument("--judge", help="replace the recipes' judges: 'none' or comma-separated judge models")
    p.add_argument("--judge-base-url", action="append", default=[], help="as evaluate.py's (repeatable)")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Run the selected tables' recipes and write OUTPUT/tables.md and tables.json; returns the latter."""
    args = build_parser().parse_args(argv)
    train_changes = dict(TINY_TRAIN) if args.tiny else {}
    eval_changes = dict(TINY_EVALUATE) if args.tiny else {}
    if args.judge is not None:
        eval_changes["judge"] = args.judge
    if args.judge_base_url:
        eval_changes["judge_base_url"] = args.judge_base_url
    missing = [f"{name}.yaml" for key in args.tables for table in [TABLES[key]]
               for name in (*runs_of(table), table.evaluate) if not (args.recipes / f"{name}.yaml").is_file()]
    if missing:
        raise UserError(f"--recipes {args.recipes}: missing {', '.join(missing)}")
    check_recipes(args.recipes, args.tables, train_changes, eval_changes)
    stand_in = TINY_STAND_IN if args.tiny else {}
    markdown = ["# The paper's tables, reproduced", "",
                "Tiny scale (--tiny): the embedded tiny model and the synthetic set stand in for Qwen2-VL-2B and "
                "every dataset; the numbers test the pipeline, not the method." if args.tiny else
                f"Recipes: {args.recipes} (docs/RECIPES.md). Paper: the RARL paper's tables, copied.", ""]
    numbers = {}
    finals: dict[str, Path] = {}
    for key in args.tables:
        table = TABLES[key]
        summaries = {}
        for name in runs_of(table):
            if name not in finals:
                finals[name] = run_training(args.recipes, name, args.output_dir, train_changes)
            summaries[name] = run_evaluation(args.recipes, name, table.evaluate, finals[name], args.output_dir,
                                             eval_changes)
        lines, rows = render_table(table, summaries, stand_in)
        markdown += lines
        numbers[table.name] = rows
    write_atomic(args.output_dir / "tables.md", "\n".join(markdown) + "\n")
    write_atomic(args.output_dir / "tables.json", json.dumps(numbers, indent=2))
    print("\n" + "\n".join(markdown))
    return numbers


if __name__ == "__main__":
    run_main(main)
