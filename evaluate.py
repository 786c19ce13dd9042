"""Evaluate a checkpoint as the paper does: predictions, judge-free metrics, LLM judges, report.

    python evaluate.py --model runs/rarl/checkpoint-500 --data-root data \\
        --datasets silvar-med:test,vqa-rad:test,slake:test,vqa-med-2019:test,path-vqa:test \\
        --prompt both --judge gpt-4o-mini,gemini-1.5-flash --output-dir runs/eval-rarl

Everything lands under --output-dir (docs/EVALUATION.md describes each file):
    run.json                               the model and generation settings the predictions belong to
    predictions/DATASET-SPLIT-PROMPT.jsonl one record per question, appended per batch (resumable)
    judge_cache/JUDGE.jsonl                every judge reply, appended as it arrives (never paid twice)
    judgments/JUDGE.jsonl                  per record: status, scores, the judge's justification
    summary.json, report.md                all numbers; the paper's table layout
    human_sheet.csv                        with --export-human-sheet
A re-run with the same --output-dir generates and judges only what is missing.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

from src.data.loaders import load_dataset
from src.data.prompts import INFERENCE_PROMPTS, TRAINING_PROMPTS
from src.eval.files import write_atomic
from src.eval.human_sheet import export_human_sheet, read_human_sheet
from src.eval.judge_cache import JudgeCache
from src.eval.judge_client import JudgeFatalError, RetryPolicy, make_backend
from src.eval.judging import JudgeRun, judge_records
from src.eval.metrics import no_judge_metrics
from src.eval.predictions import GenerateFn, prediction_ids, run_predictions
from src.eval.report import render_report
from src.eval.summary import Group, build_summary
from src.models.generation import ENGINES
from src.models.prompt_length import PromptLimit
from src.rewards.bertscore import load_bertscorer

SYSTEM_PROMPTS = {**INFERENCE_PROMPTS, **TRAINING_PROMPTS}
PAPER_DATASETS = "silvar-med:test,vqa-rad:test,slake:test,vqa-med-2019:test,path-vqa:test"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="hub id or local base model, a PEFT adapter directory from train.py, or a full model")
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--datasets", default=PAPER_DATASETS, help="comma-separated NAME:SPLIT (default: Tables 3 and 6)")
    p.add_argument("--data-root", action="append", default=[],
                   help="NAME=PATH for one dataset (repeatable), or PATH: a folder with one subfolder per dataset name")
    p.add_argument("--prompt", choices=["both", *INFERENCE_PROMPTS, *TRAINING_PROMPTS], default="both",
                   help="system prompt: the paper's inference prompts of sec. 3.3 (reasoning, non-reasoning, or "
                        "both), or a training prompt of App. A (as the paper's Table 2 evaluates CV-Bench)")
    p.add_argument("--limit", type=int, help="only the first N questions of each dataset (quick runs)")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip unusable dataset rows instead of failing")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the default)")
    p.add_argument("--batch-size", type=int, default=8, help="questions per generation batch")
    p.add_argument("--rollout-engine", choices=ENGINES, default="engine",
                   help="sampler: 'engine' (static KV cache, src/models/engine.py) or 'hf' (transformers' generate, "
                        "the reference; greedy outputs are the same token for token)")
    p.add_argument("--device", help="default: cuda when available, else cpu")
    p.add_argument("--bertscore-model", help="default: roberta-large if cached locally, else the embedded MiniLM")
    p.add_argument("--judge", default="none",
                   help="'none', or comma-separated judge models: gpt-* and others via OpenAI chat completions "
                        "(OPENAI_API_KEY), gemini-* via Gemini generateContent (GEMINI_API_KEY or GOOGLE_API_KEY)")
    p.add_argument("--judge-base-url", action="append", default=[],
                   help="URL (all judges) or MODEL=URL: an OpenAI-compatible server such as vLLM or Ollama "
                        "(e.g. http://localhost:8000/v1), or a Gemini endpoint root ending in /v1beta")
    p.add_argument("--judge-concurrency", type=int, default=8, help="judge requests in flight at once")
    p.add_argument("--judge-max-attempts", type=int, default=6, help="tries per request on 429, 5xx and timeouts")
    p.add_argument("--judge-retry-delay", type=float, default=1.0, help="first backoff delay in seconds (doubles)")
    p.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per judge request")
    p.add_argument("--judge-parse-attempts", type=int, default=3, help="asks per prompt while the reply is unparseable")
    p.add_argument("--judge-json", action="store_true",
                   help="ask for JSON output (response_format json_object / responseMimeType application/json); "
                        "off by default, as in the paper")
    p.add_argument("--judge-max-tokens", type=int,
                   help="cap on each judge reply, thinking included (default: the provider's own limit)")
    p.add_argument("--export-human-sheet", action="store_true", help="write OUTPUT/human_sheet.csv for clinicians")
    p.add_argument("--import-human-sheet", type=Path, help="a filled sheet: adds the Human Evaluation column")
    return p.parse_args(argv)


def make_generate_fn(args: argparse.Namespace) -> GenerateFn:
    """Load the policy once and return the batched generator the prediction runner calls."""
    from src.models.generation import generate_completions
    from src.models.loading import load_policy

    policy = load_policy(args.model, device=args.device)

    def generate(samples, system_prompt):
        return generate_completions(policy, samples, system_prompt, max_new_tokens=args.max_new_tokens,
                                    temperature=args.temperature, batch_size=args.batch_size,
                                    engine_name=args.rollout_engine)

    return generate


def lazy_generate_fn(args: argparse.Namespace) -> GenerateFn:
    """A generator that loads the model on its first call: a resumed run with every prediction on
    disk (re-judging, importing a human sheet) never loads it."""
    loaded: list[GenerateFn] = []

    def generate(samples, system_prompt):
        if not loaded:
            loaded.append(make_generate_fn(args))
        return loaded[0](samples, system_prompt)

    return generate


def check_run_settings(output_dir: Path, run: dict) -> None:
    """Refuse to mix predictions of two models or generation settings in one output directory."""
    path = output_dir / "run.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != run:
            raise SystemExit(f"{output_dir} holds predictions made with {previous}, not {run}; "
                             "use another --output-dir")
    else:
        write_atomic(path, json.dumps(run, indent=2))


def data_root(values: list[str], name: str) -> Path | None:
    """The folder of dataset `name`: its NAME=PATH entry, else PARENT/name for a bare PARENT, else None."""
    named = dict(value.split("=", 1) for value in values if "=" in value)
    parents = [value for value in values if "=" not in value]
    if name in named:
        return Path(named[name])
    return Path(parents[0]) / name if parents else None


def judge_base_url(values: list[str], model: str) -> str | None:
    """The base URL for one judge: its MODEL=URL entry, else a bare URL given for all judges."""
    for value in values:
        key, sep, url = value.partition("=")
        if sep and "://" not in key and key == model:
            return url
    return next((value for value in values if "://" in value.partition("=")[0]), None)


def predict(args: argparse.Namespace, generate: GenerateFn) -> list[Group]:
    """Prediction records for every requested dataset and prompt, generating only what is missing.

    Every dataset is loaded (images decoded) and, if anything is left to generate, every prompt's length
    checked before the first generation, so a bad row of the last dataset stops the run before the model loads.
    """
    prompts = ["reasoning", "non-reasoning"] if args.prompt == "both" else [args.prompt]
    datasets = []
    for spec in args.datasets.split(","):  # every dataset is read (and its bad rows found) before any generation
        name, _, split = spec.strip().partition(":")
        split = split or "test"
        samples = load_dataset(name, data_root(args.data_root, name), split, args.skip_bad_rows)
        datasets.append((name, split, samples[: args.limit] if args.limit else samples))
    path = {(name, split, prompt): args.output_dir / "predictions" / f"{name}-{split}-{prompt}.jsonl"
            for name, split, _ in datasets for prompt in prompts}
    if any(not prediction_ids(path[name, split, prompt]) >= {sample.id for sample in samples}
           for name, split, samples in datasets for prompt in prompts):
        prompt_limit = PromptLimit.from_model(args.model)  # config and tokenizer: the weights load later, if at all
        datasets = [(name, split, prompt_limit.check(samples, [SYSTEM_PROMPTS[prompt] for prompt in prompts],
                                                     lambda sample: args.max_new_tokens, args.skip_bad_rows))
                    for name, split, samples in datasets]
    groups = []
    for name, split, samples in datasets:
        for prompt in prompts:
            records = run_predictions(samples, generate, SYSTEM_PROMPTS[prompt], prompt, split,
                                      path[name, split, prompt], args.batch_size)
            groups.append(Group(name, split, prompt, records))
    return groups


def judge(args: argparse.Namespace, groups: list[Group]) -> list[JudgeRun]:
    """Every record judged by every requested judge; verdicts written to OUTPUT/judgments/."""
    if args.judge == "none":
        return []
    records = [record for group in groups for record in group.records]
    retry = RetryPolicy(args.judge_max_attempts, args.judge_retry_delay, timeout=args.judge_timeout)
    runs = []
    for model in (m.strip() for m in args.judge.split(",")):
        backend = make_backend(model, judge_base_url(args.judge_base_url, model), args.judge_json, args.judge_max_tokens)
        file_name = model.replace("/", "__") + ".jsonl"
        cache = JudgeCache(args.output_dir / "judge_cache" / file_name)
        try:
            run = judge_records(records, backend, cache, retry, args.judge_concurrency, args.judge_parse_attempts)
        except JudgeFatalError as error:
            raise SystemExit(str(error)) from None
        lines = [json.dumps({key: r[key] for key in ("dataset", "split", "prompt", "id")} | asdict(verdict))
                 for r, verdict in zip(records, run.verdicts)]
        write_atomic(args.output_dir / "judgments" / file_name, "".join(line + "\n" for line in lines))
        runs.append(run)
    return runs


def main(argv: list[str] | None = None) -> dict:
    """Run the evaluation and return the summary it wrote."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    generation = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                  "engine": args.rollout_engine}
    check_run_settings(args.output_dir, {"model": args.model, "generation": generation})
    groups = predict(args, lazy_generate_fn(args))
    records = [record for group in groups for record in group.records]
    if args.export_human_sheet:
        export_human_sheet(records, args.output_dir / "human_sheet.csv")
    scorer = load_bertscorer(args.bertscore_model, device=args.device)
    metrics = [no_judge_metrics(group.records, scorer) for group in groups]
    judge_runs = judge(args, groups)
    sheet = read_human_sheet(args.import_human_sheet) if args.import_human_sheet else None
    run = {"model": args.model, "generation": generation, "bertscore_model": scorer.model_name}
    summary = build_summary(run, groups, metrics, judge_runs, sheet)
    write_atomic(args.output_dir / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    write_atomic(args.output_dir / "report.md", render_report(summary))
    return summary


if __name__ == "__main__":
    main()
