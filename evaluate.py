"""Evaluate a checkpoint as the paper does: predictions, judge-free metrics, LLM judges, report.

    python evaluate.py --model runs/rarl/checkpoint-500 --data-root data \\
        --datasets silvar-med:test,vqa-rad:test,slake:test,vqa-med-2019:test,path-vqa:test \\
        --prompt both --judge gpt-4o-mini,gemini-1.5-flash --output-dir runs/eval-rarl
    python evaluate.py --config recipes/table6/evaluate.yaml --model runs/rarl/checkpoint-500 --output-dir runs/eval-rarl

Everything lands under --output-dir (docs/EVALUATION.md describes each file):
    run.json                               the model and generation settings the predictions belong to
    predictions/DATASET-SPLIT-PROMPT.jsonl one record per question, appended per batch (resumable)
    judge_cache/JUDGE.jsonl                every judge reply, appended as it arrives (never paid twice)
    judgments/JUDGE.jsonl                  per record: status, scores, the judge's justification
    summary.json, report.md                all numbers; the paper's table layout
    human_sheet.csv                        with --export-human-sheet
A re-run with the same --output-dir generates and judges only what is missing. Every flag may also be
set in a YAML or TOML file given with --config (command-line flags override it). Everything cheap
(dataset names, splits and rows, the BERTScore model, judge names and keys, output folder, the model's
whereabouts) is checked before any weights load.
One run at a time holds --output-dir; SIGINT or SIGTERM stops after the batch or judge requests in
progress, keeping everything done, and exits (143 for SIGTERM, 130 for Ctrl-C): run again to go on.
"""
from __future__ import annotations

from src.cli.threads import configure_cpu_threads

configure_cpu_threads()  # before torch loads its OpenMP runtime: see docs/CPU.md

import argparse  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

from src.checks import check_writable  # noqa: E402
from src.cli.checks import check_evaluation_names, number  # noqa: E402
from src.cli.config_file import add_config_option, parse_args as parse_with_config  # noqa: E402
from src.cli.errors import run_main  # noqa: E402
from src.cli.help import HelpFormatter  # noqa: E402
from src.data.prompts import INFERENCE_PROMPTS, TRAINING_PROMPTS  # noqa: E402
from src.eval.pipeline import run_evaluation  # noqa: E402
from src.grpo.config import MAX_BATCH, MAX_NEW_TOKENS  # noqa: E402
from src.models.generation import ENGINES  # noqa: E402
from src.models.loading import DTYPES  # noqa: E402
from src.rewards.open_answers import METHODS as OPEN_ANSWER_SCORES  # noqa: E402
from src.run_guard import hold_folder, stop_signals  # noqa: E402

PAPER_DATASETS = "silvar-med:test,vqa-rad:test,slake:test,vqa-med-2019:test,path-vqa:test"
MAX_JUDGE_CONCURRENCY = 1024  # requests in flight (each an open connection)
MAX_ATTEMPTS = 100            # asks of one prompt


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_option(p)
    p.add_argument("--model", required=True,
                   help="hub id or local base model, a PEFT adapter directory from train.py, or a full model")
    p.add_argument("--output-dir", type=Path, required=True, help="where predictions, judgments and reports go")
    p.add_argument("--datasets", default=PAPER_DATASETS,
                   help="comma-separated NAME:SPLIT (default: the five test sets of Tables 3 and 6)")
    p.add_argument("--data-root", action="append", default=[],
                   help="NAME=PATH for one dataset (repeatable), or PATH: a folder with one subfolder per dataset name")
    p.add_argument("--prompt", choices=["both", *INFERENCE_PROMPTS, *TRAINING_PROMPTS], default="both",
                   help="system prompt: the paper's inference prompts of sec. 3.3 (reasoning, non-reasoning, or "
                        "both), or a training prompt of App. A (as the paper's Table 2 evaluates CV-Bench)")
    p.add_argument("--limit", type=number(int, min=1), help="only the first N questions of each dataset (quick runs)")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip unusable dataset rows instead of failing")
    p.add_argument("--max-new-tokens", type=number(int, min=1, max=MAX_NEW_TOKENS), default=512,
                   help="longest completion, in tokens")
    p.add_argument("--temperature", type=number(float, min=0), default=0.0, help="sampling temperature; 0 = greedy")
    p.add_argument("--batch-size", type=number(int, min=1, max=MAX_BATCH), default=8,
                   help="questions per generation batch")
    p.add_argument("--rollout-engine", choices=ENGINES, default="engine",
                   help="sampler: 'engine' (static KV cache, src/models/engine.py) or 'hf' (transformers' generate, "
                        "the reference; greedy outputs are the same token for token)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="the weights' dtype: auto (bfloat16 on CUDA, float32 on CPU), bfloat16 or float32; run.json "
                        "records what it resolved to, and an output folder keeps one dtype")
    p.add_argument("--bertscore-model", help="roberta-large or all-MiniLM-L6-v2 (default: roberta-large if cached "
                                             "locally, else the embedded MiniLM)")
    p.add_argument("--open-answer-score", choices=OPEN_ANSWER_SCORES, default="bertscore",
                   help="open answers are scored by exact match and BERTScore F1 (the paper's), and with 'clinical' "
                        "also by the clinical score (docs/REWARDS.md); the side-error rate is always reported")
    p.add_argument("--judge", default="none",
                   help="'none', or comma-separated judge models: gpt-* and others via OpenAI chat completions "
                        "(OPENAI_API_KEY), gemini-* via Gemini generateContent (GEMINI_API_KEY or GOOGLE_API_KEY)")
    p.add_argument("--judge-base-url", action="append", default=[],
                   help="URL (all judges) or MODEL=URL: an OpenAI-compatible server such as vLLM or Ollama "
                        "(e.g. http://localhost:8000/v1), or a Gemini endpoint root ending in /v1beta")
    p.add_argument("--judge-allow-plain-http", action="store_true",
                   help="send the API key over plain http to another machine (a network you trust); without it "
                        "a key goes over http only to this machine, elsewhere only over https")
    p.add_argument("--judge-concurrency", type=number(int, min=1, max=MAX_JUDGE_CONCURRENCY), default=8,
                   help="judge requests in flight at once")
    p.add_argument("--judge-max-attempts", type=number(int, min=1, max=MAX_ATTEMPTS), default=6,
                   help="tries per request on 429, 5xx and timeouts")
    p.add_argument("--judge-retry-delay", type=number(float, min=0), default=1.0,
                   help="first backoff delay in seconds (doubles)")
    p.add_argument("--judge-timeout", type=number(float, gt=0), default=60.0,
                   help="seconds per judge request, all of it: connecting, waiting and reading the reply")
    p.add_argument("--judge-parse-attempts", type=number(int, min=1, max=MAX_ATTEMPTS), default=3,
                   help="asks per prompt while the reply is unparseable")
    p.add_argument("--judge-json", action="store_true",
                   help="ask for JSON output (response_format json_object / responseMimeType application/json); "
                        "off by default, as in the paper")
    p.add_argument("--judge-max-tokens", type=number(int, min=1, max=MAX_NEW_TOKENS),
                   help="cap on each judge reply, thinking included (default: the provider's own limit)")
    p.add_argument("--export-human-sheet", action="store_true", help="write OUTPUT/human_sheet.csv for clinicians")
    p.add_argument("--import-human-sheet", type=Path, help="a filled sheet: adds the Human Evaluation column")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse_with_config(build_parser(), argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the evaluation and return the summary it wrote."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    check_evaluation_names(args)
    check_writable(args.output_dir)
    with hold_folder(args.output_dir), stop_signals():
        return run_evaluation(args)


if __name__ == "__main__":
    run_main(main)
