"""The evaluation, in the paper's order: predictions, judge-free metrics, LLM judges, summary and report.

    run_evaluation(args)                    evaluate.py's flags, parsed; returns the summary
      load_eval_sets                        every dataset read (rows and images) before any model loads,
                                            fetched from the Hub where no folder is given
      judge_backends                        every judge's API key checked before anything is generated
      predict -> predictions/*.jsonl        only what is missing is generated (src/eval/predictions.py)
      no_judge_metrics                      src/eval/metrics.py
      judge -> judge_cache/, judgments/     only what is missing is asked (src/eval/judge/)
      build_summary, render_report          summary.json, report.md (src/eval/report.py)

Every file lands under --output-dir (docs/EVALUATION.md describes each). A re-run with the same
folder generates and judges only what is missing; run.json refuses to mix predictions of two models,
generation settings or dataset commits in one folder. The model loads on the first generation, so a resumed run with
every prediction on disk never loads it.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from src.checks import check_model_source, phase
from src.data.hub import NOT_ON_HUB, parse_revisions
from src.data.loaders import DataSource, locate_dataset, read_dataset, split_rows
from src.data.prompts import INFERENCE_PROMPTS, TRAINING_PROMPTS
from src.data.sample import Sample
from src.errors import UserError
from src.eval.judge.client import Backend, JudgeFatalError, RetryPolicy, make_backend
from src.eval.judge.judging import JudgeCache, JudgeRun, judge_records
from src.eval.metrics import no_judge_metrics
from src.eval.predictions import GenerateFn, prediction_ids, run_predictions
from src.eval.report import (Group, HumanScores, build_summary, export_human_sheet, read_human_sheet,
                             render_report)
from src.files import changed_settings, write_atomic
from src.models.loading import resolve_dtype
from src.models.prompt_length import PromptLimit
from src.rewards.bertscore import load_bertscorer

SYSTEM_PROMPTS = {**INFERENCE_PROMPTS, **TRAINING_PROMPTS}
PAPER_TEST_SETS = "silvar-med:test,vqa-rad:test,slake:test,vqa-med-2019:test,path-vqa:test"
"""The five test sets of the paper's Tables 3 and 6: evaluate.py's datasets when --datasets is not given."""


def run_evaluation(args: argparse.Namespace) -> dict:
    """The whole evaluation for evaluate.py's parsed flags, in an output folder this run holds; returns
    the summary it wrote. Datasets, judge keys and the human sheet are checked before any model loads."""
    sets, sources = load_eval_sets(args)
    backends = judge_backends(args)
    sheet = human_sheet(args.import_human_sheet)
    generation = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                  "engine": args.rollout_engine, "dtype": str(resolve_dtype(args.dtype, args.device)).removeprefix("torch.")}
    data = {source.name: source.describe() for source in sources if source.describe() is not None}
    check_run_settings(args.output_dir, {"model": args.model, "generation": generation, "data": data})
    groups = predict(args, sets, lazy_generate_fn(args))
    records = [record for group in groups for record in group.records]
    if args.export_human_sheet:
        export_human_sheet(records, args.output_dir / "human_sheet.csv")
    with phase("BERTScore model"):
        scorer = load_bertscorer(args.bertscore_model, device=args.device)
    metrics = [no_judge_metrics(group.records, scorer, args.open_answer_score) for group in groups]
    judge_runs = judge(args, backends, groups)
    run = {"model": args.model, "generation": generation, "data": data, "bertscore_model": scorer.model_name,
           "open_answer_score": args.open_answer_score}
    summary = build_summary(run, groups, metrics, judge_runs, sheet)
    write_atomic(args.output_dir / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    write_atomic(args.output_dir / "report.md", render_report(summary))
    return summary


def load_eval_sets(args: argparse.Namespace) -> tuple[list[tuple[str, str, list[Sample]]], list[DataSource]]:
    """(name, split, samples) of every requested dataset, all read before any model loads, and where each
    was read from. A dataset without a folder is fetched from the Hub (at its --data-revision). Without
    --datasets: the paper's five test sets, VQA-Med 2019 left out with one line when it has no folder."""
    requested, left_out = requested_sets(args)
    revisions = parse_revisions(args.data_revision)
    unknown = sorted(set(revisions) - {name for _, name, _, _ in requested + left_out})
    if unknown:
        raise UserError(f"--data-revision names {', '.join(unknown)}, which --datasets does not evaluate")
    for _, name, split, _ in left_out:
        print(f"{name}:{split} skipped: it has no copy on the Hugging Face Hub; give its folder with "
              f"--data-root {name}=FOLDER to evaluate it too (docs/DATA.md)", file=sys.stderr, flush=True)
    sets, sources = [], []
    for _, name, split, root in requested:
        with phase(f"dataset {name}:{split}"):
            source = locate_dataset(name, root, split, revisions.get(name))
            samples = read_dataset(source, split, args.skip_bad_rows)
        sets.append((name, split, samples[: args.limit] if args.limit else samples))
        sources.append(source)
    return sets, sources


Requested = tuple[str, str, str, Path | None]  # (as given in --datasets, name, split, folder or None)


def requested_sets(args: argparse.Namespace) -> tuple[list[Requested], list[Requested]]:
    """The datasets to evaluate, and those left out: each NAME[:SPLIT] of --datasets (split test by
    default); without --datasets the paper's five test sets, less any the Hub has no copy of and that
    has no --data-root folder (left out, which load_eval_sets says)."""
    requested, left_out = [], []
    for spec in (args.datasets or PAPER_TEST_SETS).split(","):
        name, _, split = spec.strip().partition(":")
        root = data_root(args.data_root, name)
        entry = (spec.strip(), name, split or "test", root)
        (left_out if args.datasets is None and name in NOT_ON_HUB and root is None else requested).append(entry)
    return requested, left_out


def data_root(values: list[str], name: str) -> Path | None:
    """The folder of dataset `name`: its NAME=PATH entry, else PARENT/name for a bare PARENT, else None."""
    named = dict(value.split("=", 1) for value in values if "=" in value)
    parents = [value for value in values if "=" not in value]
    if name in named:
        return Path(named[name])
    return Path(parents[0]) / name if parents else None


def check_run_settings(output_dir: Path, run: dict) -> None:
    """Refuse to mix predictions of two models, generation settings or dataset commits in one output
    directory; a dataset the folder has not seen yet is added to its run.json."""
    path = output_dir / "run.json"
    changed = changed_settings(path, run)
    if changed:
        raise UserError(f"{output_dir} holds predictions made with other settings ({'; '.join(changed)}); "
                        "use another --output-dir")
    saved = json.loads(path.read_text()) if path.exists() else {}
    merged = {**run, **saved, "data": {**run.get("data", {}), **saved.get("data", {})}}
    if merged != saved:
        write_atomic(path, json.dumps(merged, indent=2))


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


def file_part(split: str) -> str:
    """A split as a file name part: "train[616:]" -> "train-616-end", "train[:616]" -> "train-0-616"."""
    name, rows = split_rows(split)
    if rows == slice(None):
        return name
    return f"{name}-{rows.start or 0}-{'end' if rows.stop is None else rows.stop}"


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


def judge_base_url(values: list[str], model: str) -> str | None:
    """The base URL for one judge: its MODEL=URL entry, else a bare URL given for all judges."""
    for value in values:
        key, sep, url = value.partition("=")
        if sep and "://" not in key and key == model:
            return url
    return next((value for value in values if "://" in value.partition("=")[0]), None)


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
