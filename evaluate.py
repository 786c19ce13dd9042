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
(datasets, output folder, judge keys, the model's whereabouts) is checked before any weights load.
One run at a time holds --output-dir; SIGINT or SIGTERM stops after the batch or judge requests in
progress, keeping everything done, and exits (143 for SIGTERM, 130 for Ctrl-C): run again to go on.
"""
from __future__ import annotations

from src.cli.threads import configure_cpu_threads

configure_cpu_threads()  # before torch loads its OpenMP runtime: see docs/CPU.md

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

from src.checks import check_model_source, check_writable, phase  # noqa: E402
from src.cli.checks import number  # noqa: E402
from src.cli.config_file import add_config_option, parse_args as parse_with_config  # noqa: E402
from src.cli.errors import run_main  # noqa: E402
from src.cli.help import HelpFormatter  # noqa: E402
from src.data.loaders import load_dataset, split_rows  # noqa: E402
from src.data.prompts import INFERENCE_PROMPTS, TRAINING_PROMPTS  # noqa: E402
from src.data.sample import Sample  # noqa: E402
from src.errors import UserError  # noqa: E402
from src.eval.judge.client import Backend, JudgeFatalError, RetryPolicy, make_backend  # noqa: E402
from src.eval.judge.judging import JudgeCache, JudgeRun, judge_records  # noqa: E402
from src.eval.metrics import no_judge_metrics  # noqa: E402
from src.eval.predictions import GenerateFn, prediction_ids, run_predictions  # noqa: E402
from src.eval.report import (Group, HumanScores, build_summary, export_human_sheet, read_human_sheet,  # noqa: E402
                             render_report)
from src.files import changed_settings, write_atomic  # noqa: E402
from src.models.generation import ENGINES  # noqa: E402
from src.models.loading import DTYPES, resolve_dtype  # noqa: E402
from src.models.prompt_length import PromptLimit  # noqa: E402
from src.rewards.bertscore import load_bertscorer  # noqa: E402
from src.rewards.open_answers import METHODS as OPEN_ANSWER_SCORES  # noqa: E402
from src.run_guard import hold_folder, stop_signals  # noqa: E402

SYSTEM_PROMPTS = {**INFERENCE_PROMPTS, **TRAINING_PROMPTS}
PAPER_DATASETS = "silvar-med:test,vqa-rad:test,slake:test,vqa-med-2019:test,path-vqa:test"


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
    p.add_argument("--max-new-tokens", type=number(int, min=1), default=512, help="longest completion, in tokens")
    p.add_argument("--temperature", type=number(float, min=0), default=0.0, help="sampling temperature; 0 = greedy")
    p.add_argument("--batch-size", type=number(int, min=1), default=8, help="questions per generation batch")
    p.add_argument("--rollout-engine", choices=ENGINES, default="engine",
                   help="sampler: 'engine' (static KV cache, src/models/engine.py) or 'hf' (transformers' generate, "
                        "the reference; greedy outputs are the same token for token)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="the weights' dtype: auto (bfloat16 on CUDA, float32 on CPU), bfloat16 or float32; run.json "
                        "records what it resolved to, and an output folder keeps one dtype")
    p.add_argument("--bertscore-model", help="default: roberta-large if cached locally, else the embedded MiniLM")
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
    p.add_argument("--judge-concurrency", type=number(int, min=1), default=8, help="judge requests in flight at once")
    p.add_argument("--judge-max-attempts", type=number(int, min=1), default=6,
                   help="tries per request on 429, 5xx and timeouts")
    p.add_argument("--judge-retry-delay", type=number(float, min=0), default=1.0,
                   help="first backoff delay in seconds (doubles)")
    p.add_argument("--judge-timeout", type=number(float, gt=0), default=60.0,
                   help="seconds per judge request, all of it: connecting, waiting and reading the reply")
    p.add_argument("--judge-parse-attempts", type=number(int, min=1), default=3,
                   help="asks per prompt while the reply is unparseable")
    p.add_argument("--judge-json", action="store_true",
                   help="ask for JSON output (response_format json_object / responseMimeType application/json); "
                        "off by default, as in the paper")
    p.add_argument("--judge-max-tokens", type=number(int, min=1),
                   help="cap on each judge reply, thinking included (default: the provider's own limit)")
    p.add_argument("--export-human-sheet", action="store_true", help="write OUTPUT/human_sheet.csv for clinicians")
    p.add_argument("--import-human-sheet", type=Path, help="a filled sheet: adds the Human Evaluation column")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse_with_config(build_parser(), argv)


def make_generate_fn(args: argparse.Namespace) -> GenerateFn:
    """Load the policy once and return the batched generator the prediction runner calls."""
    from src.models.generation import generate_completions
    from src.models.loading import load_policy

    import torch

    with phase(f"model {args.model}"):  # predict() checked the model source before anything was generated
        policy = load_policy(args.model, device=torch.device(args.device) if args.device else None,
                             dtype=resolve_dtype(args.dtype, args.device))

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
    changed = changed_settings(path, run)
    if changed:
        raise UserError(f"{output_dir} holds predictions made with other settings ({'; '.join(changed)}); "
                        "use another --output-dir")
    if not path.exists():
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


def load_eval_sets(args: argparse.Namespace) -> list[tuple[str, str, list[Sample]]]:
    """(name, split, samples) of every requested dataset, all read before any model loads."""
    sets = []
    for spec in args.datasets.split(","):
        name, _, split = spec.strip().partition(":")
        split = split or "test"
        with phase(f"dataset {name}:{split}"):
            samples = load_dataset(name, data_root(args.data_root, name), split, args.skip_bad_rows)
        sets.append((name, split, samples[: args.limit] if args.limit else samples))
    return sets


def file_part(split: str) -> str:
    """A split as a file name part: "train[616:]" -> "train-616-end", "train[:616]" -> "train-0-616"."""
    name, rows = split_rows(split)
    if rows == slice(None):
        return name
    return f"{name}-{rows.start or 0}-{'end' if rows.stop is None else rows.stop}"


def predict(args: argparse.Namespace, datasets: list[tuple[str, str, list[Sample]]],
            generate: GenerateFn) -> list[Group]:
    """Prediction records for every dataset and prompt, generating only what is missing (a progress
    bar per dataset and prompt).

    If anything is left to generate, every prompt's length is checked before the first generation, so
    a too-long prompt of the last dataset stops the run before the model loads.
    """
    prompts = ["reasoning", "non-reasoning"] if args.prompt == "both" else [args.prompt]
    path = {(name, split, prompt): args.output_dir / "predictions" / f"{name}-{file_part(split)}-{prompt}.jsonl"
            for name, split, _ in datasets for prompt in prompts}
    if any(not prediction_ids(path[name, split, prompt]) >= {sample.id for sample in samples}
           for name, split, samples in datasets for prompt in prompts):
        check_model_source(args.model)
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


def judge_backends(args: argparse.Namespace) -> list[Backend]:
    """One backend per requested judge, its API key checked now rather than after generation."""
    if args.judge == "none":
        return []
    backends = []
    for model in (m.strip() for m in args.judge.split(",")):
        try:
            backends.append(make_backend(model, judge_base_url(args.judge_base_url, model), args.judge_json,
                                         args.judge_max_tokens, args.judge_allow_plain_http))
        except ValueError as error:  # a missing or unusable API key, a key that would travel in clear
            raise UserError(f"--judge {model}: {error}") from None
    return backends


def judge(args: argparse.Namespace, backends: list[Backend], groups: list[Group]) -> list[JudgeRun]:
    """Every record judged by every requested judge; verdicts written to OUTPUT/judgments/."""
    records = [record for group in groups for record in group.records]
    retry = RetryPolicy(args.judge_max_attempts, args.judge_retry_delay, timeout=args.judge_timeout)
    runs = []
    for backend in backends:
        file_name = backend.model.replace("/", "__") + ".jsonl"
        cache = JudgeCache(args.output_dir / "judge_cache" / file_name)
        try:
            run = judge_records(records, backend, cache, retry, args.judge_concurrency, args.judge_parse_attempts)
        except JudgeFatalError as error:  # a key refused, a model gone: asking again cannot help
            raise UserError(str(error)) from None
        lines = [json.dumps({key: r[key] for key in ("dataset", "split", "prompt", "id")} | asdict(verdict))
                 for r, verdict in zip(records, run.verdicts)]
        write_atomic(args.output_dir / "judgments" / file_name, "".join(line + "\n" for line in lines))
        runs.append(run)
    return runs


def human_sheet(path: Path | None) -> HumanScores | None:
    if path is None:
        return None
    if not path.is_file():
        raise UserError(f"--import-human-sheet {path}: no such file")
    return read_human_sheet(path)


def main(argv: list[str] | None = None) -> dict:
    """Run the evaluation and return the summary it wrote."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    check_writable(args.output_dir)
    with hold_folder(args.output_dir), stop_signals():
        return run_evaluation(args)


def run_evaluation(args: argparse.Namespace) -> dict:
    """main() once the output folder is this run's."""
    sets = load_eval_sets(args)
    backends = judge_backends(args)
    sheet = human_sheet(args.import_human_sheet)
    generation = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                  "engine": args.rollout_engine, "dtype": str(resolve_dtype(args.dtype, args.device)).removeprefix("torch.")}
    check_run_settings(args.output_dir, {"model": args.model, "generation": generation})
    groups = predict(args, sets, lazy_generate_fn(args))
    records = [record for group in groups for record in group.records]
    if args.export_human_sheet:
        export_human_sheet(records, args.output_dir / "human_sheet.csv")
    with phase("BERTScore model"):
        scorer = load_bertscorer(args.bertscore_model, device=args.device)
    metrics = [no_judge_metrics(group.records, scorer, args.open_answer_score) for group in groups]
    judge_runs = judge(args, backends, groups)
    run = {"model": args.model, "generation": generation, "bertscore_model": scorer.model_name,
           "open_answer_score": args.open_answer_score}
    summary = build_summary(run, groups, metrics, judge_runs, sheet)
    write_atomic(args.output_dir / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    write_atomic(args.output_dir / "report.md", render_report(summary))
    return summary


if __name__ == "__main__":
    run_main(main)
