"""Evaluate a checkpoint as the paper does: predictions, judge-free metrics, LLM judges, report.

    python evaluate.py --judge gpt-4o-mini       # the base model on the paper's test sets, fetched from the Hub
    python evaluate.py --model runs/rarl/checkpoint-500 --data-root data \\
        --datasets silvar-med:test,vqa-rad:test,slake:test,vqa-med-2019:test,path-vqa:test \\
        --prompt both --judge gpt-4o-mini,gemini-1.5-flash --output-dir runs/eval-rarl
    python evaluate.py --config recipes/table6/evaluate.yaml --model runs/rarl/checkpoint-500 --output-dir runs/eval-rarl

Without --model it evaluates Qwen/Qwen2-VL-2B-Instruct, the base model train.py starts from (the paper's
zero-shot row); without --datasets the five test sets of the paper's Tables 3 and 6, each fetched from
the Hugging Face Hub unless --data-root gives its folder (VQA-Med 2019, which is not on the Hub, is left
out without one); without --output-dir it writes to runs/eval-MODEL. Everything lands under
--output-dir (docs/EVALUATION.md describes each file):
    run.json                               the model, generation settings and dataset commits the
                                           predictions belong to
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
import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from src.checks import check_writable  # noqa: E402
from src.cli.checks import check_evaluation_names, number  # noqa: E402
from src.cli.config_file import add_config_option, parse_args as parse_with_config  # noqa: E402
from src.cli.errors import run_main  # noqa: E402
from src.cli.help import HelpFormatter  # noqa: E402
from src.data.hub import REVISION_HELP  # noqa: E402
from src.data.prompts import INFERENCE_PROMPTS, TRAINING_PROMPTS  # noqa: E402
from src.eval.pipeline import PAPER_TEST_SETS, run_evaluation  # noqa: E402
from src.grpo.config import MAX_BATCH, MAX_NEW_TOKENS  # noqa: E402
from src.models.generation import ENGINES  # noqa: E402
from src.models.loading import DEFAULT_MODEL, DTYPES  # noqa: E402
from src.rewards.open_answers import METHODS as OPEN_ANSWER_SCORES  # noqa: E402
from src.run_guard import hold_folder, stop_signals  # noqa: E402

MAX_JUDGE_CONCURRENCY = 1024  # requests in flight (each an open connection)
MAX_ATTEMPTS = 100            # asks of one prompt


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_option(p)
    p.add_argument("--model", help="hub id or local base model, a PEFT adapter directory from train.py, or a full "
                                   f"model (default: {DEFAULT_MODEL}, the base model train.py starts from)")
    p.add_argument("--output-dir", type=Path, help="where predictions, judgments and reports go (default: "
                                                   "runs/eval-MODEL, named after --model)")
    p.add_argument("--datasets", help=f"comma-separated NAME:SPLIT (default: the five test sets of Tables 3 and 6, "
                                      f"{PAPER_TEST_SETS}, vqa-med-2019 left out when it has no --data-root)")
    p.add_argument("--data-root", action="append", default=[],
                   help="NAME=PATH for one dataset (repeatable), or PATH: a folder with one subfolder per dataset "
                        "name; a dataset without one is fetched from the Hugging Face Hub into HF_HOME")
    p.add_argument("--data-revision", action="append", default=[], help=REVISION_HELP + "; repeatable, and "
                   "run.json records the commit each dataset came from")
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
                   help="asks per prompt while the reply holds no verdict of the judge's own (each with new "
                        "random ids); one still unparseable counts as not correct")
    p.add_argument("--judge-json", action="store_true",
                   help="ask for structured output, the verdict's JSON schema (response_format json_schema / "
                        "responseSchema); off by default, as in the paper")
    p.add_argument("--judge-max-tokens", type=number(int, min=1, max=MAX_NEW_TOKENS),
                   help="cap on each judge reply, thinking included (default: the provider's own limit)")
    p.add_argument("--export-human-sheet", action="store_true", help="write OUTPUT/human_sheet.csv for clinicians")
    p.add_argument("--import-human-sheet", type=Path, help="a filled sheet: adds the Human Evaluation column")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, with --model and --output-dir filled in when not given (each says so in one line)."""
    args = parse_with_config(build_parser(), argv)
    if args.model is None:
        args.model = DEFAULT_MODEL
        print(f"no --model: evaluating the base model {DEFAULT_MODEL}, where train.py starts (the paper's zero-shot "
              "row)", file=sys.stderr)
    if args.output_dir is None:
        args.output_dir = default_output_dir(args.model)
        print(f"no --output-dir: writing to {args.output_dir}", file=sys.stderr)
    return args


def default_output_dir(model: str) -> Path:
    """runs/eval-MODEL: the model's last two path parts (Qwen/Qwen2-VL-2B-Instruct -> Qwen-Qwen2-VL-2B-Instruct,
    runs/rarl/checkpoint-500 -> rarl-checkpoint-500), in characters safe in a folder name."""
    name = "-".join(part for part in Path(model).parts[-2:] if part not in ("/", "..", "."))
    return Path("runs") / f"eval-{re.sub(r'[^A-Za-z0-9._-]+', '_', name) or 'model'}"


def main(argv: list[str] | None = None) -> dict:
    """Run the evaluation and return the summary it wrote."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # huggingface_hub's client: a line per file fetched
    args = parse_args(argv)
    check_evaluation_names(args)
    check_writable(args.output_dir)
    with hold_folder(args.output_dir), stop_signals():
        return run_evaluation(args)


if __name__ == "__main__":
    run_main(main)
