"""Judge prediction records with one LLM judge: cache first, then concurrent requests for the rest.

Each distinct prompt is asked at most once (records with identical prompts share a reply) and only
when the cache lacks it. Every record ends in one of three states:
  ok           the reply parsed; prediction_score (and reasoning_score where a reference reasoning
               exists) are 0/1;
  unparseable  the judge answered, `parse_attempts` times, but never with readable scores;
  failed       no reply (HTTP error, timeouts after all retries); the error text says why.
Only "ok" records enter the percentages; the other two are counted and reported, never scored 0.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
from tqdm import tqdm

from src.eval.judge_cache import JudgeCache, cache_key
from src.eval.judge_client import Backend, JudgeRequestError, RetryPolicy, ask
from src.eval.judge_prompt import UnparseableReply, judge_prompt, parse_judgment


@dataclass(frozen=True)
class Verdict:
    """One record's judgment. Scores are None unless status is "ok" (reasoning: and a reference exists)."""

    status: str
    prediction_score: int | None = None
    reasoning_score: int | None = None
    evaluation: str = ""
    error: str = ""


@dataclass(frozen=True)
class JudgeRun:
    """Verdicts in record order, tokens of every reply they rest on, and replies received this run
    (0 when everything came from the cache)."""

    model: str
    verdicts: list[Verdict]
    prompt_tokens: int
    completion_tokens: int
    new_replies: int


def judge_records(
    records: list[dict],
    backend: Backend,
    cache: JudgeCache,
    retry: RetryPolicy,
    concurrency: int,
    parse_attempts: int,
) -> JudgeRun:
    """Judge every record (a line of predictions/*.jsonl) with `backend`; see the module docstring."""
    prompts = [judge_prompt(record) for record in records]
    keys = [cache_key(backend.model, prompt) for prompt in prompts]
    wanted = {key: (prompt, bool(record["reasoning_reference"]))
              for key, prompt, record in zip(keys, prompts, records) if cache.get(key) is None}
    errors, received = asyncio.run(_fill_cache(wanted, backend, cache, retry, concurrency, parse_attempts))
    verdicts = [_verdict(cache.get(key), errors.get(key, ""), bool(record["reasoning_reference"]))
                for key, record in zip(keys, records)]
    used = [cache.get(key) for key in set(keys) if cache.get(key) is not None]
    return JudgeRun(
        model=backend.model,
        verdicts=verdicts,
        prompt_tokens=sum(entry["prompt_tokens"] for entry in used),
        completion_tokens=sum(entry["completion_tokens"] for entry in used),
        new_replies=received,
    )


async def _fill_cache(
    wanted: dict[str, tuple[str, bool]],
    backend: Backend,
    cache: JudgeCache,
    retry: RetryPolicy,
    concurrency: int,
    parse_attempts: int,
) -> tuple[dict[str, str], int]:
    """Ask every wanted prompt, caching each reply as it arrives; returns (errors by key, replies received)."""
    errors: dict[str, str] = {}
    received = 0
    limit = asyncio.Semaphore(concurrency)

    async def judge(http: httpx.AsyncClient, key: str, prompt: str, require_reasoning: bool) -> None:
        nonlocal received
        async with limit:
            try:
                entry = await _ask_until_parseable(http, backend, prompt, require_reasoning, retry, parse_attempts)
            except JudgeRequestError as exc:
                errors[key] = str(exc)
                return
        received += entry["replies"]
        cache.put({"key": key, **entry})

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency)) as http:
        tasks = [asyncio.create_task(judge(http, key, *value)) for key, value in wanted.items()]
        for task in tqdm(asyncio.as_completed(tasks), total=len(tasks), desc=f"judge {backend.model}"):
            await task
    return errors, received


async def _ask_until_parseable(
    http: httpx.AsyncClient,
    backend: Backend,
    prompt: str,
    require_reasoning: bool,
    retry: RetryPolicy,
    parse_attempts: int,
) -> dict:
    """The cache entry for `prompt`: the first parseable reply, else the last one; tokens of all replies."""
    prompt_tokens = completion_tokens = 0
    for attempt in range(1, parse_attempts + 1):
        reply = await ask(http, backend, prompt, retry)
        prompt_tokens += reply.prompt_tokens
        completion_tokens += reply.completion_tokens
        try:
            parse_judgment(reply.text, require_reasoning)
            break
        except UnparseableReply:
            continue
    return {
        "model": backend.model,
        "prompt": prompt,
        "reply": reply.text,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "replies": attempt,
    }


def _verdict(entry: dict | None, error: str, require_reasoning: bool) -> Verdict:
    if entry is None:
        return Verdict(status="failed", error=error)
    try:
        judgment = parse_judgment(entry["reply"], require_reasoning)
    except UnparseableReply as exc:
        return Verdict(status="unparseable", error=str(exc))
    return Verdict(
        status="ok",
        prediction_score=judgment.prediction_score,
        reasoning_score=judgment.reasoning_score if require_reasoning else None,
        evaluation=judgment.evaluation,
    )
