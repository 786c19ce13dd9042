"""HTTP clients for LLM judges: OpenAI chat completions and Google Gemini generateContent.

Both send one user message at temperature 0 and return the reply text with its token usage.
`ask` retries what is worth retrying (HTTP 429, 5xx, timeouts, connection errors) with exponential
backoff and jitter, honouring Retry-After; anything else, or a request still failing after the last
attempt, raises JudgeRequestError. API keys travel only in headers (Gemini's `x-goog-api-key`, not
the `?key=` query string) and are scrubbed from every error message this module produces.
"""
from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Protocol

import httpx

log = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"
GEMINI_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"


@dataclass(frozen=True)
class JudgeReply:
    """The judge's text and the tokens the provider billed for it."""

    text: str
    prompt_tokens: int
    completion_tokens: int


class JudgeRequestError(Exception):
    """A judge request that did not produce a reply; the message never contains an API key."""


class Backend(Protocol):
    model: str
    secret: str | None

    def request(self, prompt: str) -> tuple[str, dict, dict]:
        """(url, headers, JSON body) of the request that asks `prompt`."""

    def reply(self, body: dict) -> JudgeReply:
        """The reply in a successful response body."""


@dataclass(frozen=True)
class OpenAIChat:
    """POST {base_url}/chat/completions: OpenAI, or any OpenAI-compatible server (vLLM, Ollama)."""

    model: str
    secret: str | None = field(repr=False)  # never in a repr, a log line or a traceback
    base_url: str = OPENAI_BASE_URL

    def request(self, prompt: str) -> tuple[str, dict, dict]:
        headers = {"Authorization": f"Bearer {self.secret}"} if self.secret else {}
        body = {"model": self.model, "temperature": 0, "messages": [{"role": "user", "content": prompt}]}
        return f"{self.base_url.rstrip('/')}/chat/completions", headers, body

    def reply(self, body: dict) -> JudgeReply:
        usage = body.get("usage") or {}
        return JudgeReply(
            text=body["choices"][0]["message"]["content"] or "",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
        )


@dataclass(frozen=True)
class GeminiGenerate:
    """POST {base_url}/models/{model}:generateContent with the key in the x-goog-api-key header."""

    model: str
    secret: str | None = field(repr=False)  # never in a repr, a log line or a traceback
    base_url: str = GEMINI_BASE_URL

    def request(self, prompt: str) -> tuple[str, dict, dict]:
        headers = {"x-goog-api-key": self.secret} if self.secret else {}
        body = {
            "contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "generationConfig": {"temperature": 0},
        }
        return f"{self.base_url.rstrip('/')}/models/{self.model}:generateContent", headers, body

    def reply(self, body: dict) -> JudgeReply:
        usage = body.get("usageMetadata") or {}
        parts = body["candidates"][0]["content"]["parts"]
        return JudgeReply(
            text="".join(part.get("text", "") for part in parts),
            prompt_tokens=int(usage.get("promptTokenCount", 0)),
            completion_tokens=int(usage.get("candidatesTokenCount", 0)),
        )


def make_backend(model: str, base_url: str | None = None) -> Backend:
    """The backend a judge name implies: gemini-* → Gemini, anything else → OpenAI chat completions.

    Keys come from the environment: OPENAI_API_KEY; GEMINI_API_KEY, else GOOGLE_API_KEY. A key is
    required for the providers' own URLs and optional for a `base_url` (a local server needs none).
    """
    if model.startswith("gemini"):
        backend, names = GeminiGenerate, ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    else:
        backend, names = OpenAIChat, ("OPENAI_API_KEY",)
    secret = next((os.environ[name] for name in names if os.environ.get(name)), None)
    if secret is None and base_url is None:
        raise ValueError(f"judge {model!r} needs an API key in {' or '.join(names)}")
    return backend(model, secret, base_url) if base_url else backend(model, secret)


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


async def ask(http: httpx.AsyncClient, backend: Backend, prompt: str, retry: RetryPolicy) -> JudgeReply:
    """Send `prompt` to the judge, retrying transient failures; raise JudgeRequestError otherwise."""
    url, headers, body = backend.request(prompt)
    problem = ""
    for attempt in range(retry.max_attempts):
        wait = retry.backoff(attempt)
        try:
            response = await http.post(url, headers=headers, json=body, timeout=retry.timeout)
        except httpx.TransportError as exc:   # timeouts and connection errors
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code == 200:
                try:
                    return backend.reply(response.json())
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    raise JudgeRequestError(_scrub(
                        f"{backend.model}: unexpected response shape ({type(exc).__name__}: {exc}): "
                        f"{response.text[:300]}", backend.secret)) from None
            problem = f"HTTP {response.status_code}: {response.text[:300]}"
            if response.status_code not in RETRYABLE_STATUS:
                raise JudgeRequestError(_scrub(f"{backend.model}: {problem}", backend.secret))
            retry_after = _retry_after(response.headers.get("retry-after"), retry.max_delay)
            wait = wait if retry_after is None else retry_after
        if attempt + 1 < retry.max_attempts:
            log.warning("%s", _scrub(f"judge {backend.model}: {problem}; retry in {wait:.2f}s", backend.secret))
            await asyncio.sleep(wait)
    raise JudgeRequestError(_scrub(
        f"{backend.model}: gave up after {retry.max_attempts} attempts; last error {problem}", backend.secret))


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


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text
