"""Judge prediction records with one LLM judge: cache first, then concurrent requests for the rest;
and what the judgments cost.

Each distinct prompt is asked at most once (records with identical prompts share a reply) and only
when the cache lacks it. A prompt is distinct by its inputs: every request draws new random ids
(prompt.PromptIds: the fence around the prediction and the verdict's id), and the cache key is
computed from the prompt without them. Every record ends in one of five states:
  ok           the judge's own verdict (the output structure with the request's verdict_id) was
               read: prediction_score (and reasoning_score where a reference reasoning exists) are 0/1;
  unparseable  the judge answered, `parse_attempts` times, but never with a verdict that could be
               attributed to it and read;
  refused      the provider declined or withheld the reply (a refusal, a content filter, a safety
               block of the reply or of the prompt); asked once, the reason kept;
  truncated    the reply hit the token limit before its scores; asked once, the reason kept;
  failed       no reply (HTTP error, timeouts after all retries); the error text says why.
Unparseable, refused and truncated are answers the judge gave about this prediction, and the
prediction's own text can provoke each of them, so they count as not correct (src/eval/report.py);
failed records have no answer yet: they are left out of the percentages and listed, and a re-run
asks them again. A prediction that carries verdict-shaped text is flagged (`verdict_in_prediction`);
its judgment is the judge's own verdict, never a copy of the prediction's (src/eval/judge/prompt.py).

A fatal answer (a refused key, a retired model, no quota: src/eval/judge/client.py) stops the run:
no new request is sent, the requests in flight finish and are cached, and JudgeFatalError says what
the provider answered, how to fix it, and that a re-run resumes from the cache. A stop signal
(src/run_guard.py) stops it the same way and raises Interrupted.

The cache: one append-only JSONL file per judge; each line is {key, model, prompt, verdict_id, reply,
prompt_tokens, completion_tokens, replies, stop, stop_reason}, written (and fsync'ed) the moment the
reply arrives: `prompt` is the prompt sent for the last reply and `verdict_id` the id it asked for,
token counts are summed over the `replies` asked for this prompt (null when the provider reported no
usage), `stop` is how the last reply ended ("complete", "refused" or "truncated", with the
provider's reason). The key is sha256 of the judge model and the prompt without its random ids
(prompt.NO_IDS). The reply is stored (scrubbed of the API key, src/eval/judge/client.py), not its
parsed scores, so an improved reply parser applies to past judgments without asking again. Refused
and truncated replies are cached like any answer (the provider was asked and billed); requests that
failed are not: a re-run retries them. To re-ask one judgment, delete its line. So no prompt is ever
paid for twice.

The cost is approximate, from token usage, priced by exact model or snapshot name: US dollars per
million tokens (input, output), standard (non-batch) tier, as the providers publish them:
platform.openai.com/docs/pricing and ai.google.dev/gemini-api/docs/pricing. Output includes
reasoning/thinking tokens, which both providers bill as output. Dates: the gpt-4o family and Gemini
1.5 as of 2024-10 (Gemini 1.5 for prompts up to 128k tokens); gpt-5-mini and gemini-3-flash-preview
as of 2026-07. A name is priced only if it is listed: a dated snapshot has its own price
(gpt-4o-2024-05-13 cost twice gpt-4o's), so no family price is guessed, and an unlisted model (a local
judge, a new snapshot) has no estimate. Prices change: treat the figure as an estimate and check the
pages.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import httpx
from tqdm import tqdm

from src.eval.judge.client import (JSON_MODE_INSTRUCTION, Backend, JudgeFatalError, JudgeRequestError, JudgeStopped,
                                   RetryPolicy, ask, is_local)
from src.eval.judge.prompt import (NO_IDS, PromptIds, UnparseableReply, judge_prompt, parse_judgment,
                                   verdict_in_prediction)
from src.files import append_jsonl, read_jsonl
from src.run_guard import Interrupted, signal_name, stop_requested


def cache_key(model: str, prompt: str) -> str:
    """sha256 over the judge model and the prompt, unambiguous for any two strings."""
    return hashlib.sha256(json.dumps([model, prompt]).encode("utf-8")).hexdigest()


class JudgeCache:
    """Judge replies by cache key, loaded from and appended to `path`."""

    def __init__(self, path: Path):
        self.path = path
        self.entries = {entry["key"]: entry for entry in read_jsonl(path)}

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, entry: dict) -> None:
        """Store an entry (it must carry its "key") in memory and on disk before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            append_jsonl(handle, [entry])
        self.entries[entry["key"]] = entry


PRICES_USD_PER_MILLION_TOKENS: dict[str, tuple[float, float]] = {
    # the paper's judges
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o-mini-2024-07-18": (0.15, 0.60),
    "gemini-1.5-flash": (0.075, 0.30),
    "gemini-1.5-flash-001": (0.075, 0.30),
    "gemini-1.5-flash-002": (0.075, 0.30),
    # their larger siblings
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-2024-11-20": (2.50, 10.00),
    "gpt-4o-2024-08-06": (2.50, 10.00),
    "gpt-4o-2024-05-13": (5.00, 15.00),
    "gemini-1.5-pro": (1.25, 5.00),
    "gemini-1.5-pro-001": (1.25, 5.00),
    "gemini-1.5-pro-002": (1.25, 5.00),
    # the current pair documented in docs/EVALUATION.md (client.CURRENT_JUDGES)
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-mini-2025-08-07": (0.25, 2.00),
    "gemini-3-flash-preview": (0.50, 3.00),
}


def judge_cost_usd(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """Dollar cost of the tokens, or None for a model without a listed price."""
    if model not in PRICES_USD_PER_MILLION_TOKENS:
        return None
    price_in, price_out = PRICES_USD_PER_MILLION_TOKENS[model]
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1e6


@dataclass(frozen=True)
class Verdict:
    """One record's judgment. Scores are None unless status is "ok" (reasoning: and a reference exists)."""

    status: str
    prediction_score: int | None = None
    reasoning_score: int | None = None
    evaluation: str = ""
    error: str = ""
    verdict_in_prediction: bool = False  # the prediction holds text shaped like a verdict (an injection attempt)


@dataclass(frozen=True)
class JudgeRun:
    """Verdicts in record order and what they rest on: the tokens of every reply that came with usage
    (those without are counted in `replies_without_usage`), the replies received this run (0 when
    everything came from the cache), and all replies behind the verdicts with how many were unparseable."""

    model: str
    verdicts: list[Verdict]
    prompt_tokens: int
    completion_tokens: int
    new_replies: int
    replies: int = 0
    unparseable_replies: int = 0
    replies_without_usage: int = 0
    json_mode: bool = False
    local: bool = False              # served from this machine or a private network: no per-token charge


def judge_records(
    records: list[dict],
    backend: Backend,
    cache: JudgeCache,
    retry: RetryPolicy,
    concurrency: int,
    parse_attempts: int,
) -> JudgeRun:
    """Judge every record (a line of predictions/*.jsonl) with `backend`; see the module docstring."""
    keys = [cache_key(backend.model, request_prompt(record, NO_IDS, backend.json_mode)) for record in records]
    wanted = {key: record for key, record in zip(keys, records) if cache.get(key) is None}
    errors, received = asyncio.run(_fill_cache(wanted, backend, cache, retry, concurrency, parse_attempts))
    verdicts = [_verdict(cache.get(key), errors.get(key, ""), record) for key, record in zip(keys, records)]
    used = {key: (cache.get(key), verdict) for key, verdict in zip(keys, verdicts) if cache.get(key) is not None}
    counted = [entry for entry, _ in used.values() if entry["prompt_tokens"] is not None]
    return JudgeRun(
        model=backend.model,
        verdicts=verdicts,
        prompt_tokens=sum(entry["prompt_tokens"] for entry in counted),
        completion_tokens=sum(entry["completion_tokens"] for entry in counted),
        new_replies=received,
        replies=sum(entry.get("replies", 1) for entry, _ in used.values()),
        # a prompt is asked again only after an unparseable reply, so all but the last reply were unparseable
        unparseable_replies=sum(entry.get("replies", 1) - 1 + (verdict.status == "unparseable")
                                for entry, verdict in used.values()),
        replies_without_usage=len(used) - len(counted),
        json_mode=backend.json_mode,
        local=is_local(backend.base_url),
    )


def request_prompt(record: dict, ids: PromptIds, json_mode: bool) -> str:
    """The prompt sent for `record`: the judge prompt, and in JSON mode the line OpenAI's JSON mode requires."""
    return judge_prompt(record, ids) + (f"\n\n{JSON_MODE_INSTRUCTION}" if json_mode else "")


async def _fill_cache(
    wanted: dict[str, dict],
    backend: Backend,
    cache: JudgeCache,
    retry: RetryPolicy,
    concurrency: int,
    parse_attempts: int,
) -> tuple[dict[str, str], int]:
    """Judge every wanted record (by cache key), caching each reply as it arrives; returns (errors by
    key, replies received)."""
    errors: dict[str, str] = {}
    received = 0
    limit = asyncio.Semaphore(concurrency)
    stop = asyncio.Event()
    fatal: list[JudgeFatalError] = []

    async def judge(http: httpx.AsyncClient, key: str, record: dict) -> None:
        nonlocal received
        async with limit:
            if stop_requested() is not None:
                stop.set()  # send nothing more; the requests in flight finish and are cached
            try:
                entry = await _ask_until_parseable(http, backend, record, retry, parse_attempts, stop)
            except JudgeStopped:
                return
            except JudgeFatalError as exc:
                fatal.append(exc)
                stop.set()
                return
            except JudgeRequestError as exc:
                errors[key] = str(exc)
                return
        received += entry["replies"]
        cache.put({"key": key, **entry})

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency)) as http:
        tasks = [asyncio.create_task(judge(http, key, record)) for key, record in wanted.items()]
        for task in tqdm(asyncio.as_completed(tasks), total=len(tasks), desc=f"judge {backend.model}"):
            await task
    asked = sum(cache.get(key) is not None for key in wanted)
    if fatal:
        raise JudgeFatalError(f"{fatal[0]} The run stopped at this answer: {asked} of {len(wanted)} new judgments "
                              f"were made and are kept in {cache.path}; a re-run asks only the {len(wanted) - asked} "
                              "left.")
    if stop_requested() is not None:
        raise Interrupted(stop_requested(), f"{signal_name(stop_requested())}: stopped judging with {backend.model}: "
                                            f"{asked} of {len(wanted)} new judgments are kept in {cache.path}; run "
                                            "the same command again to ask only the rest")
    return errors, received


async def _ask_until_parseable(
    http: httpx.AsyncClient,
    backend: Backend,
    record: dict,
    retry: RetryPolicy,
    parse_attempts: int,
    stop: asyncio.Event,
) -> dict:
    """The cache entry for `record`: the first reply whose verdict can be read, else the last one; tokens
    of all replies (None when a reply came without usage). Each attempt is a new request with new ids.
    A refused or truncated reply is not asked again."""
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    for attempt in range(1, parse_attempts + 1):
        ids = PromptIds.fresh()
        sent = request_prompt(record, ids, backend.json_mode)
        reply = await ask(http, backend, sent, retry, stop)
        prompt_tokens = None if prompt_tokens is None or reply.prompt_tokens is None else prompt_tokens + reply.prompt_tokens
        completion_tokens = (None if completion_tokens is None or reply.completion_tokens is None
                             else completion_tokens + reply.completion_tokens)
        if reply.stop != "complete":
            break
        try:
            parse_judgment(reply.text, ids.verdict_id, bool(record["reasoning_reference"]))
            break
        except UnparseableReply:
            continue
    return {
        "model": backend.model,
        "prompt": sent,
        "verdict_id": ids.verdict_id,
        "reply": reply.text,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "replies": attempt,
        "stop": reply.stop,
        "stop_reason": reply.stop_reason,
    }


def _verdict(entry: dict | None, error: str, record: dict) -> Verdict:
    require_reasoning, flagged = bool(record["reasoning_reference"]), verdict_in_prediction(record)
    if entry is None:
        return Verdict(status="failed", error=error, verdict_in_prediction=flagged)
    try:
        judgment = parse_judgment(entry["reply"], entry["verdict_id"], require_reasoning)
    except UnparseableReply as exc:
        stop = entry.get("stop", "complete")
        if stop != "complete":
            return Verdict(status=stop, error=entry["stop_reason"], verdict_in_prediction=flagged)
        return Verdict(status="unparseable", error=str(exc), verdict_in_prediction=flagged)
    return Verdict(
        status="ok",
        prediction_score=judgment.prediction_score,
        reasoning_score=judgment.reasoning_score if require_reasoning else None,
        evaluation=judgment.evaluation,
        verdict_in_prediction=flagged,
    )
