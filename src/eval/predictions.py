"""Generate predictions batch by batch into a JSONL file that a restarted run resumes.

One file per dataset and inference prompt (predictions/DATASET-PROMPT.jsonl). Each batch's records
are appended and fsync'ed as soon as it is generated; on restart the ids already in the file are
skipped, and a line torn by a crash is cut off (src/files.py). Metrics, judges and reports read
only these records, so everything after generation can be recomputed without the model. A stop
signal (src/run_guard.py) ends the loop after the batch in progress is appended.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from tqdm import tqdm

from src.data.sample import Sample
from src.files import append_jsonl, read_jsonl
from src.rewards.answers import parse_completion
from src.run_guard import Interrupted, signal_name, stop_requested

GenerateFn = Callable[[list[Sample], str], list[str]]
"""(samples, system prompt text) -> one full completion text per sample, in order."""


def prediction_record(sample: Sample, split: str, prompt_name: str, completion: str) -> dict:
    """The JSON record of one prediction: the sample's reference fields, the completion and its parts."""
    parsed = parse_completion(completion)
    return {
        "id": sample.id,
        "dataset": sample.dataset,
        "split": split,
        "prompt": prompt_name,
        "question": sample.question,
        "image": sample.image if isinstance(sample.image, str) else None,  # bytes stay in the dataset
        "reference": sample.answer,
        "alternatives": list(sample.alternatives),
        "answer_type": sample.answer_type,
        "choices": list(sample.choices),
        "task": sample.task,
        "modality": sample.modality,
        "reasoning_reference": sample.reasoning,
        "completion": completion,
        "think": parsed.think,
        "answer": parsed.answer_text,
    }


def record_sample(record: dict) -> Sample:
    """The Sample a record was made from, without its image (enough for the answer matchers)."""
    return Sample(
        id=record["id"],
        dataset=record["dataset"],
        image=record["image"] or "",
        question=record["question"],
        answer=record["reference"],
        answer_type=record["answer_type"],
        reasoning=record["reasoning_reference"],
        choices=tuple(record["choices"]),
        alternatives=tuple(record["alternatives"]),
        modality=record["modality"],
        task=record["task"],
    )


def prediction_ids(path: Path) -> set[str]:
    """The ids of the samples `path` already holds a prediction for."""
    return {record["id"] for record in read_jsonl(path)}


def run_predictions(
    samples: list[Sample],
    generate: GenerateFn,
    system_prompt: str,
    prompt_name: str,
    split: str,
    path: Path,
    batch_size: int,
) -> list[dict]:
    """Records for all `samples` (in their order), generating only those missing from `path`."""
    ids = [sample.id for sample in samples]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{path}: sample id {duplicate!r} occurs more than once; ids must be unique to resume")
    records = {record["id"]: record for record in read_jsonl(path)}
    todo = [sample for sample in samples if sample.id not in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle, tqdm(total=len(todo), desc=path.stem) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            completions = generate(batch, system_prompt)
            if len(completions) != len(batch):
                raise ValueError(f"{path}: generator returned {len(completions)} completions for {len(batch)} samples")
            new = [prediction_record(s, split, prompt_name, c) for s, c in zip(batch, completions)]
            append_jsonl(handle, new)
            records.update((record["id"], record) for record in new)
            bar.update(len(batch))
            if stop_requested() is not None:
                raise Interrupted(stop_requested(), f"{signal_name(stop_requested())}: stopped after "
                                                    f"{start + len(batch)} of {len(todo)} new predictions, appended "
                                                    f"to {path}; run the same command again to continue")
    return [records[sample.id] for sample in samples]
