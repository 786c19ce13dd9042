"""HTTP clients for LLM judges: OpenAI chat completions (or any OpenAI-compatible server such as vLLM
or Ollama) and Google Gemini generateContent.

Each sends one user message and returns a `JudgeReply`: the reply text, the tokens billed for it, and
how the reply ended. A provider that declines (OpenAI `refusal`, finish_reason content_filter; a
Gemini candidate stopped for SAFETY and the like, or a prompt blocked in promptFeedback) gives a
"refused" reply, and one cut by the token limit (finish_reason length, Gemini MAX_TOKENS) a
"truncated" one: both keep the provider's reason and the billed tokens. Gemini "thought" parts are
not reply text, but their thoughtsTokenCount is billed output. A reply without usage has no token
counts (None), which makes the cost unknown.

`ask` retries what is worth retrying (HTTP 408, 429, 5xx, timeouts, connection errors) with
exponential backoff and jitter, honouring Retry-After and Gemini's RetryInfo.retryDelay. Each attempt
has one deadline for all of it (connecting, sending, waiting and reading: a server that trickles a
byte a second cannot hold a request open), and a reply is read to at most MAX_REPLY_BYTES, so the
judge cache, which stores each reply, stays bounded. An answer every request would get (a refused
key, a retired model; src/eval/judge_errors.py) raises JudgeFatalError; any other failure, or one
still failing after the last attempt, JudgeRequestError.
Keys travel only in headers (Gemini's `x-goog-api-key`, never the `?key=` query string), are checked
before the first request, go to another machine only over https (plain http only to this machine,
unless the user allows it: `check_transport`), and are scrubbed from every message this module
produces and every log line httpx writes, credentials written into a URL included (judge_keys.py).
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from src.eval.judge_errors import fatal_advice, read_error
from src.eval.judge_keys import LOG_SCRUBBER, check_transport, read_key, scrub
from src.eval.judge_models import is_reasoning_model, provider, retirement

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 2**20  # a verdict is a few hundred bytes; a reasoning judge's reply a few tens of KB
OPENAI_BASE_URL = "https://api.openai.com/v1"
GEMINI_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
JSON_MODE_INSTRUCTION = "Reply with the JSON object only."  # OpenAI's JSON mode requires the word JSON in the prompt
KEY_NAMES = {"openai": ("OPENAI_API_KEY",), "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY")}


@dataclass(frozen=True)
class JudgeReply:
    """The judge's text, the tokens the provider billed for it, and how the reply ended."""

    text: str
    prompt_tokens: int | None          # None: the provider reported no usage
    completion_tokens: int | None      # billed output, thinking tokens included
    stop: str = "complete"             # "complete", "refused" or "truncated"
    stop_reason: str = ""              # the provider's words for a stop other than "complete"


class JudgeRequestError(Exception):
    """A judge request that did not produce a reply; the message never contains an API key."""


class JudgeFatalError(Exception):
    """An answer every further request would get (bad key, retired model, no quota): stop the run."""


class JudgeStopped(Exception):
    """The run stopped (a fatal answer elsewhere) before this request was sent."""


class Backend(Protocol):
    model: str
    secret: str | None
    key_name: str | None
    base_url: str

    def request(self, prompt: str) -> tuple[str, dict, dict]:
        """(url, headers, JSON body) of the request that asks `prompt`."""

    def reply(self, body: dict) -> JudgeReply:
        """The reply in a successful response body."""


@dataclass(frozen=True)
class OpenAIChat:
    """POST {base_url}/chat/completions: OpenAI, or any OpenAI-compatible server (vLLM, Ollama).

    Temperature 0, except for OpenAI's reasoning models, which accept only their default and get
    none. A token limit goes in max_completion_tokens for OpenAI itself and for reasoning models,
    and in max_tokens, which every compatible server reads, elsewhere. JSON mode sends
    response_format {"type": "json_object"}.
    """

    model: str
    secret: str | None = field(repr=False)  # never in a repr, a log line or a traceback
    base_url: str = OPENAI_BASE_URL
    key_name: str | None = None
    json_mode: bool = False
    max_tokens: int | None = None

    def request(self, prompt: str) -> tuple[str, dict, dict]:
        headers = {"Authorization": f"Bearer {self.secret}"} if self.secret else {}
        body: dict = {"model": self.model, "messages": [{"role": "user", "content": prompt}]}
        reasoning = is_reasoning_model(self.model)
        if not reasoning:
            body["temperature"] = 0
        if self.max_tokens is not None:
            official = self.base_url.rstrip("/") == OPENAI_BASE_URL
            body["max_completion_tokens" if reasoning or official else "max_tokens"] = self.max_tokens
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        return f"{self.base_url.rstrip('/')}/chat/completions", headers, body

    def reply(self, body: dict) -> JudgeReply:
        choice = body["choices"][0]
        message = choice.get("message") or {}
        usage = body.get("usage")
        prompt_tokens, completion_tokens = (None, None) if not isinstance(usage, dict) else (
            int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        text, finish = message.get("content") or "", choice.get("finish_reason")
        if message.get("refusal"):
            stop, reason = "refused", f"refusal: {message['refusal']}"
        elif finish == "content_filter":
            stop, reason = "refused", "finish_reason content_filter"
        elif finish == "length":
            stop, reason = "truncated", "finish_reason length (the token limit)"
        else:
            stop, reason = "complete", ""
        return JudgeReply(text, prompt_tokens, completion_tokens, stop, reason)


@dataclass(frozen=True)
class GeminiGenerate:
    """POST {base_url}/models/{model}:generateContent with the key in the x-goog-api-key header.

    generationConfig: temperature 0; maxOutputTokens for a token limit (thinking counts against it);
    responseMimeType application/json in JSON mode.
    """

    model: str
    secret: str | None = field(repr=False)  # never in a repr, a log line or a traceback
    base_url: str = GEMINI_BASE_URL
    key_name: str | None = None
    json_mode: bool = False
    max_tokens: int | None = None

    def request(self, prompt: str) -> tuple[str, dict, dict]:
        headers = {"x-goog-api-key": self.secret} if self.secret else {}
        config: dict = {"temperature": 0}
        if self.max_tokens is not None:
            config["maxOutputTokens"] = self.max_tokens
        if self.json_mode:
            config["responseMimeType"] = "application/json"
        body = {"contents": [{"role": "user", "parts": [{"text": prompt}]}], "generationConfig": config}
        return f"{self.base_url.rstrip('/')}/models/{self.model}:generateContent", headers, body

    def reply(self, body: dict) -> JudgeReply:
        usage = body.get("usageMetadata")
        prompt_tokens, completion_tokens = (None, None) if not isinstance(usage, dict) else (
            int(usage.get("promptTokenCount") or 0),
            int(usage.get("candidatesTokenCount") or 0) + int(usage.get("thoughtsTokenCount") or 0))
        blocked = (body.get("promptFeedback") or {}).get("blockReason")
        if blocked:
            return JudgeReply("", prompt_tokens, completion_tokens, "refused", f"prompt blocked: {blocked}")
        candidate = body["candidates"][0]
        parts = (candidate.get("content") or {}).get("parts") or []
        text = "".join(part.get("text", "") for part in parts if not part.get("thought"))
        finish = candidate.get("finishReason", "STOP")
        if finish == "STOP":
            return JudgeReply(text, prompt_tokens, completion_tokens)
        if finish == "MAX_TOKENS":
            return JudgeReply(text, prompt_tokens, completion_tokens, "truncated", "finishReason MAX_TOKENS")
        flagged = [r.get("category", "") for r in candidate.get("safetyRatings") or [] if r.get("blocked")]
        reason = f"finishReason {finish}" + (f" ({', '.join(flagged)})" if flagged else "")
        return JudgeReply(text, prompt_tokens, completion_tokens, "refused", reason)


def make_backend(model: str, base_url: str | None = None, json_mode: bool = False,
                 max_tokens: int | None = None, allow_plain_http: bool = False) -> Backend:
    """The backend a judge name implies: gemini-* → Gemini, anything else → OpenAI chat completions.

    Keys come from the environment: OPENAI_API_KEY; GEMINI_API_KEY, else GOOGLE_API_KEY; stripped and
    checked here (judge_keys.py). A key is required for the providers' own URLs and optional for a
    `base_url` (a local server needs none); a key or a password in `base_url` is sent over plain
    http only to this machine, unless `allow_plain_http` (judge_keys.check_transport). A model its
    provider has retired is still accepted, with a warning: the provider's answer decides.
    """
    kind = provider(model)
    names = KEY_NAMES[kind]
    found = read_key(names)
    if found is None and base_url is None:
        raise ValueError(f"judge {model!r} needs an API key in {' or '.join(names)}")
    key_name, secret = found if found else (None, None)
    if base_url is not None:
        check_transport(base_url, key_name, allow_plain_http)
    LOG_SCRUBBER.secrets.update(filter(None, (secret, urlsplit(base_url or "").password)))
    if retirement(model):
        log.warning("judge %s: %s; the run stops if the provider no longer serves it", model, retirement(model))
    backend = GeminiGenerate if kind == "gemini" else OpenAIChat
    url = base_url or (GEMINI_BASE_URL if kind == "gemini" else OPENAI_BASE_URL)
    return backend(model, secret, url, key_name, json_mode, max_tokens)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: attempt k (from 0) waits base_delay * 2**k, capped, with jitter."""

    max_attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 60.0
    timeout: float = 60.0

    def backoff(self, attempt: int) -> float:
        """Equal jitter: half the exponential delay fixed, half uniform, so clients spread out."""
        delay = min(self.max_delay, self.base_delay * 2**attempt)
        return delay / 2 + random.uniform(0, delay / 2)


RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


async def ask(http: httpx.AsyncClient, backend: Backend, prompt: str, retry: RetryPolicy,
              stop: asyncio.Event | None = None) -> JudgeReply:
    """Send `prompt` to the judge, retrying transient failures; see the module docstring.

    `stop`, once set, ends the retries before the next attempt is sent (JudgeStopped).
    """
    url, headers, body = backend.request(prompt)
    secrets = (backend.secret, urlsplit(url).password)
    problem = ""
    for attempt in range(retry.max_attempts):
        if stop is not None and stop.is_set():
            raise JudgeStopped
        wait = retry.backoff(attempt)
        try:
            status, response_headers, text = await _post(http, url, headers, body, retry.timeout)
        except ReplyTooLarge as exc:  # the same prompt would get the same reply: not retried
            raise JudgeRequestError(scrub(f"{backend.model}: {exc}", *secrets)) from None
        except asyncio.TimeoutError:
            problem = f"no complete reply within {retry.timeout:g} s (--judge-timeout)"
        except httpx.TransportError as exc:   # connection errors
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if status == 200:
                return _reply(backend, text, secrets)
            error = read_error(status, text)
            problem = f"HTTP {status}: {error.message}"
            advice = fatal_advice(error, backend.model, backend.key_name,
                                  None if backend.base_url in (OPENAI_BASE_URL, GEMINI_BASE_URL) else backend.base_url)
            if advice:
                raise JudgeFatalError(scrub(f"judge {backend.model}: {problem.rstrip('.')}. {advice}", *secrets))
            if status not in RETRYABLE_STATUS:
                raise JudgeRequestError(scrub(f"{backend.model}: {problem}", *secrets))
            delay = _retry_after(response_headers.get("retry-after"), retry.max_delay)
            delay = delay if delay is not None or error.retry_delay is None else min(error.retry_delay, retry.max_delay)
            wait = wait if delay is None else delay
        if attempt + 1 < retry.max_attempts:
            log.warning("%s", scrub(f"judge {backend.model}: {problem}; retry in {wait:.2f}s", *secrets))
            await asyncio.sleep(wait)
    raise JudgeRequestError(scrub(
        f"{backend.model}: gave up after {retry.max_attempts} attempts; last error {problem}", *secrets))


class ReplyTooLarge(Exception):
    """A reply body beyond MAX_REPLY_BYTES."""


async def _post(http: httpx.AsyncClient, url: str, headers: dict, body: dict,
                timeout: float) -> tuple[int, httpx.Headers, str]:
    """(status, headers, body text) of one POST, all of it within `timeout` seconds (asyncio.TimeoutError
    past that), the body read to at most MAX_REPLY_BYTES (ReplyTooLarge past that)."""
    async def exchange() -> tuple[int, httpx.Headers, str]:
        async with http.stream("POST", url, headers=headers, json=body, timeout=timeout) as response:
            data = bytearray()
            async for chunk in response.aiter_bytes():  # decoded: a compressed reply is capped as it unpacks
                data += chunk
                if len(data) > MAX_REPLY_BYTES:
                    raise ReplyTooLarge(f"the reply (HTTP {response.status_code}) is larger than "
                                        f"{MAX_REPLY_BYTES // 1024} KiB; stopped reading it")
            return response.status_code, response.headers, data.decode(response.encoding or "utf-8", errors="replace")

    return await asyncio.wait_for(exchange(), timeout)


def _reply(backend: Backend, text: str, secrets: tuple[str | None, ...]) -> JudgeReply:
    try:
        return backend.reply(json.loads(text))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        message = f"{backend.model}: unexpected response shape ({type(exc).__name__}: {exc}): {text[:300]}"
    raise JudgeRequestError(scrub(message, *secrets))


def _retry_after(value: str | None, cap: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP-date), capped; None if absent."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), cap)
