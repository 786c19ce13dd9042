"""Talking to an LLM judge: what this project knows about judge models, the API key, the provider's
error answers, and the HTTP clients that ask one prompt and return one reply.

Backends: OpenAI chat completions (or any OpenAI-compatible server such as vLLM or Ollama) and Google
Gemini generateContent. Each sends one user message and returns a `JudgeReply`: the reply text, the
tokens billed for it, and how the reply ended. A provider that declines (OpenAI `refusal`,
finish_reason content_filter; a Gemini candidate stopped for SAFETY and the like, or a prompt blocked
in promptFeedback; an HTTP 400 saying the prompt itself was flagged: `PROMPT_BLOCKED_CODES`) gives a
"refused" reply, and one cut by the token limit (finish_reason length,
Gemini MAX_TOKENS) a "truncated" one: both keep the provider's reason and the billed tokens. Gemini
"thought" parts are not reply text, but their thoughtsTokenCount is billed output. A reply without
usage has no token counts (None), which makes the cost unknown.

`ask` retries what is worth retrying (HTTP 408, 429, 5xx, timeouts, connection errors) with
exponential backoff and jitter, honouring Retry-After and Gemini's RetryInfo.retryDelay. Each attempt
has one deadline for all of it (connecting, sending, waiting and reading: a server that trickles a
byte a second cannot hold a request open), and a reply is read to at most MAX_REPLY_BYTES after
decompression, counted while it inflates (`CappedInflater`: a 50 KB gzip body that expands to 50 MB
stops at the cap, having produced no more than the cap and one byte), so the judge cache, which stores
each reply, and the memory that reads it stay bounded. An answer every request would get raises
JudgeFatalError; any other failure, or one still failing after the last attempt, JudgeRequestError.

Model facts. The paper's judges (gpt-4o-mini, gemini-1.5-flash) stay accepted by name; when a
provider answers that a model is gone, the run stops naming the current replacement (CURRENT_JUDGES).
Scores from another judge are not comparable with the paper's, and a provider's model can change or
disappear: a local open-weights judge with pinned weights is the only one whose scores stay
reproducible (docs/EVALUATION.md).

Keys come from the environment only and travel only in headers (OpenAI's `Authorization: Bearer`,
Gemini's `x-goog-api-key`, never the `?key=` query string); a judge URL that holds credentials
(http://user:password@host) is refused (`check_url`). A key copied from a CRLF `.env` file ends in
"\\r"; an HTTP library refuses such a header and echoes it in its exception. So the key is stripped
and must then be printable ASCII without spaces (what an HTTP header carries), else the run stops
naming the variable and the character's position, never the key. `scrub` removes the key from any
text this project writes, logs or raises, the judge's reply text included, in every form a server or
library may echo it: whole (a Bearer header's value), URL-encoded, JSON-escaped, in base64 (also
inside a longer encoded text such as a Basic header's base64("user:key")), masked the way providers
print it ("sk-…****abcd") or in part (any 8 or more consecutive characters of it or of its base64);
and credentials written into a URL from any text, whoever the secret belongs to. `LogScrubber` does
the same to the log lines of httpx, which prints every request's URL at INFO. `check_url` refuses to
send the key in clear: over plain http only to this machine (a local vLLM or Ollama), elsewhere only
over https, unless the user says the network is trusted.

Provider error bodies, as the providers send them:
  OpenAI (and vLLM, Ollama): {"error": {"message", "type", "param", "code"}}, e.g. code
      "invalid_api_key" (401), "model_not_found" (404), "insufficient_quota" (429),
      "unsupported_parameter" / "unsupported_value" with the parameter in "param" (400);
  Gemini: {"error": {"code", "message", "status", "details": [...]}}, the details holding
      google.rpc.ErrorInfo {"reason": "API_KEY_INVALID"}, google.rpc.QuotaFailure {"violations":
      [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier", ...}]} and google.rpc.RetryInfo
      {"retryDelay": "57s"}.
A fatal answer is one every further request would get as well: a refused key (401, Gemini's 400
API_KEY_INVALID), no permission (403), an unknown or retired model (404), a parameter the model does
not accept (400; OpenAI's "Invalid parameter: 'response_format' of type 'json_schema' is not
supported with this model" for --judge-json among them), an exhausted quota or a location the API
does not serve. One such answer stops the run with the provider's words, the judge, and how to fix it.
"""
from __future__ import annotations

import asyncio
import base64
import email.utils
import ipaddress
import json
import logging
import os
import random
import re
import time
import unicodedata
import zlib
from dataclasses import dataclass, field, replace
from typing import Protocol
from urllib.parse import quote, quote_plus, urlparse, urlsplit

import httpx

from src.eval.judge.prompt import VERDICT_SCHEMA

log = logging.getLogger(__name__)


# ---- judge models ---------------------------------------------------------------------------

# The current pair this project documents and prices (judging.PRICES_USD_PER_MILLION_TOKENS), and the local judge.
CURRENT_JUDGES = {"openai": "gpt-5-mini", "gemini": "gemini-3-flash-preview"}
LOCAL_JUDGE = "Qwen/Qwen2.5-7B-Instruct"

# Retirements announced on the providers' deprecation pages, by model family (dated snapshots included).
RETIRED = {
    "gemini-1.5-flash": "no longer served by Google",
    "gemini-1.5-pro": "no longer served by Google",
    "gemini-2.0-flash": "shut down by Google on 2026-06-01",
    "gemini-2.5-flash": "shut down by Google in 2026",
    "gpt-4o-mini": "API shutdown announced by OpenAI for 2027-01-14",
    "gpt-4o": "API shutdown announced by OpenAI for 2027-01-14",
}

# OpenAI reasoning models (o1, o3, o4-mini, the gpt-5 family) accept only their default temperature
# and take max_completion_tokens (max_tokens is refused).
REASONING_MODEL = re.compile(r"(o\d|gpt-5)([.-]|$)")


def provider(model: str) -> str:
    """'gemini' for gemini-* names, else 'openai' (OpenAI or any OpenAI-compatible server)."""
    return "gemini" if model.startswith("gemini") else "openai"


def family(model: str, names) -> str | None:
    """The longest of `names` that `model` is, or is a dated/versioned snapshot of."""
    matches = [name for name in names if model == name or model.startswith(name + "-")]
    return max(matches, key=len) if matches else None


def retirement(model: str) -> str | None:
    """What the provider announced about this model's retirement, or None."""
    name = family(model, RETIRED)
    return None if name is None else f"{name}: {RETIRED[name]}"


def is_reasoning_model(model: str) -> bool:
    return REASONING_MODEL.match(model) is not None


def is_local(base_url: str | None) -> bool:
    """Whether a judge URL points at this machine or a private network (no per-token charge)."""
    host = urlparse(base_url).hostname if base_url else None
    if host is None:
        return False
    if is_loopback(host):
        return True
    try:
        return ipaddress.ip_address(host).is_private
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine: localhost, 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- API keys -------------------------------------------------------------------------------

FRAGMENT = 8  # this many consecutive characters of a key are treated as the key
MASKED = re.compile(r"\S*\*{4,}\S*")  # a provider's masked echo, e.g. "sk-proj-********abcd"
URL_CREDENTIALS = re.compile(r"(?<=://)[^\s/@]+@")  # the user:password@ of scheme://user:password@host
ALLOW_HTTP_FLAG = "--judge-allow-plain-http"


class JudgeKeyError(ValueError):
    """A key variable that is set but cannot be sent; the message never holds the key."""


def read_key(names: tuple[str, ...]) -> tuple[str, str] | None:
    """(variable name, stripped key) from the first of `names` that is set and not blank, or None."""
    for name in names:
        key = os.environ.get(name, "").strip()
        if key:
            for position, char in enumerate(key, start=1):
                if not "!" <= char <= "~":
                    what = unicodedata.name(char, f"control character U+{ord(char):04X}")
                    raise JudgeKeyError(f"{name} holds a character an HTTP header cannot carry ({what} at position "
                                    f"{position} of {len(key)}): copy the key again")
            return name, key
    return None


def scrub(text: str, *secrets: str | None) -> str:
    """`text` with every form of each secret (`secret_forms`), any run of FRAGMENT or more characters of
    the secret or of its base64 forms, a provider's masked echo of a key, and any credentials written
    in a URL, replaced by "***"."""
    text = URL_CREDENTIALS.sub("***@", text)
    for secret in filter(None, secrets):
        for form in sorted(secret_forms(secret), key=len, reverse=True):
            text = text.replace(form, "***")
        for whole in (secret, *_base64_forms(secret)):
            text = _drop_fragments(text, whole)
    return MASKED.sub("***", text) if any(secrets) else text


def secret_forms(secret: str) -> set[str]:
    """The forms a secret takes in the text a server or library may echo: whole (a `Bearer` header's
    value, Gemini's x-goog-api-key); URL-encoded three ways; escaped in a JSON string (with "/" as
    "\\/" too, as some encoders write it); and in base64, standard and URL-safe, at each of the three
    alignments it can have inside a longer encoded text, as in a Basic Authorization header's
    base64("user:secret")."""
    escaped = json.dumps(secret)[1:-1]
    return {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), escaped, escaped.replace("/", "\\/"),
            *_base64_forms(secret)}


def _base64_forms(secret: str) -> set[str]:
    """The base64 characters that encode only the secret's own bits, at each byte offset mod 3 the
    secret can start at in an encoded text; forms shorter than FRAGMENT are left out (too common)."""
    data, forms = secret.encode(), set()
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + data).decode()
        core = encoded[-(-8 * offset // 6):8 * (offset + len(data)) // 6]  # characters 6i..6i+6 within the secret
        forms |= {core, core.translate(_URL_SAFE)}
    return {form for form in forms if len(form) >= FRAGMENT}


_URL_SAFE = str.maketrans("+/", "-_")


class LogScrubber(logging.Filter):
    """Scrubs each log record of a logger (httpx's request lines) before any handler sees it."""

    def __init__(self):
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub(record.getMessage(), *self.secrets), None
        return True


LOG_SCRUBBER = LogScrubber()
logging.getLogger("httpx").addFilter(LOG_SCRUBBER)  # its INFO line per request holds the URL; httpcore logs no URL


def check_url(base_url: str, key_names: tuple[str, ...], key_name: str | None, allow_plain_http: bool) -> None:
    """Refuse (ValueError) a judge URL that is not http(s) with a host, one that holds credentials
    (user:password@host: they come from the environment only), and one that would carry the key in
    clear: plain http goes only to loopback (localhost, 127.0.0.0/8, ::1: this machine)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"judge URL {scrub(base_url)} is not an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"judge URL {scrub(base_url)} holds credentials before its host; credentials come from the "
                         f"environment only (a URL is logged and saved): remove them from the URL and put the "
                         f"server's key in {' or '.join(key_names)}, which is sent in a header")
    if parts.scheme == "https" or is_loopback(parts.hostname) or allow_plain_http or key_name is None:
        return
    raise ValueError(f"{key_name} would cross the network in clear to {parts.hostname} over plain http: use an https "
                     f"URL, or pass {ALLOW_HTTP_FLAG} if the network between is trusted")


def _drop_fragments(text: str, secret: str) -> str:
    """Replace every maximal run of FRAGMENT or more characters that is also a run of `secret`."""
    pieces = {secret[i:i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1)}
    if not pieces:
        return text
    pattern = re.compile("|".join(map(re.escape, sorted(pieces))))
    out, done = [], 0
    while (found := pattern.search(text, done)) is not None:
        start, end = found.start(), found.end()
        while end < len(text) and text[start:end + 1] in secret:
            end += 1
        out += [text[done:start], "***"]
        done = end
    return "".join(out) + text[done:]


# ---- provider errors ------------------------------------------------------------------------

DURATION = re.compile(r"(\d+(?:\.\d+)?)s")                      # google.protobuf.Duration in JSON: "57s", "0.5s"
GEMINI_UNKNOWN_FIELD = re.compile(r'Unknown name "(\w+)"')      # Gemini's 400 for a field it does not take


@dataclass(frozen=True)
class ProviderError:
    """The parts of an error answer this project acts on."""

    status: int
    message: str                    # the provider's own words (or the start of a body it could not read)
    code: str = ""                  # OpenAI error.code (or type); Gemini error.status
    reason: str = ""                # Gemini ErrorInfo.reason
    param: str | None = None        # the request parameter the error is about
    retry_delay: float | None = None  # seconds, from Gemini's RetryInfo
    quota_ids: tuple[str, ...] = ()   # Gemini QuotaFailure violations


def read_error(status: int, text: str) -> ProviderError:
    """Parse an error body in either provider's format; a body that is not JSON becomes the message."""
    try:
        body = json.loads(text)
    except ValueError:
        return ProviderError(status, text[:300].strip())
    error = body.get("error", body) if isinstance(body, dict) else {}
    if not isinstance(error, dict):                      # {"error": "some text"}
        return ProviderError(status, str(error)[:300])
    details = [d for d in error.get("details") or [] if isinstance(d, dict)]
    delay = next((DURATION.fullmatch(str(d.get("retryDelay", ""))) for d in details if "retryDelay" in d), None)
    message = str(error.get("message") or text[:300]).strip()
    unknown_field = GEMINI_UNKNOWN_FIELD.search(message)
    code = error.get("code")  # OpenAI: a string such as "invalid_api_key"; Gemini and vLLM: the HTTP status
    return ProviderError(
        status=status,
        message=message,
        code=code if isinstance(code, str) else str(error.get("status") or error.get("type") or ""),
        reason=next((str(d["reason"]) for d in details if "reason" in d), ""),
        param=error.get("param") or (unknown_field.group(1) if unknown_field else None),
        retry_delay=float(delay.group(1)) if delay else None,
        quota_ids=tuple(str(v.get("quotaId", "")) for d in details for v in d.get("violations") or []
                        if isinstance(v, dict)),
    )


def fatal_advice(error: ProviderError, model: str, key_name: str | None, base_url: str | None) -> str | None:
    """How to fix an answer that every request would get, or None for an answer about one request."""
    status, text = error.status, error.message.lower()
    if status == 401 or error.reason == "API_KEY_INVALID" or "api key not valid" in text:
        if key_name is None:
            wanted = "GEMINI_API_KEY" if provider(model) == "gemini" else "OPENAI_API_KEY"
            return f"The server wants an API key and none was sent: set it in {wanted}."
        return f"The API key in {key_name} was refused: set a current key for this provider in {key_name}."
    if status == 403:
        return ("The key has no access to this model or API (its project, billing or region): enable the API "
                "and billing for the key's project, or use a key that has access.")
    if status == 404:
        return model_gone_advice(model, base_url)
    if status == 400 and ("response_format" in str(error.param or "") or "'response_format'" in error.message):
        return (f"{model} does not give structured output as --judge-json asks for it (response_format json_schema): "
                "run without --judge-json, or use a judge that supports structured output (docs/EVALUATION.md).")
    if status == 400 and (error.code in ("unsupported_parameter", "unsupported_value") or
                          GEMINI_UNKNOWN_FIELD.search(error.message)):
        name = error.param or "(unnamed)"
        return (f"{model} does not accept the request parameter '{name}' as this project sends it. Use a judge "
                "listed in docs/EVALUATION.md, or report the model name so its parameters can be added.")
    if status == 400 and error.code == "FAILED_PRECONDITION":
        return "The provider will not serve this request from this project or region: see its message above."
    if status == 429 and ("insufficient_quota" in (error.code, error.reason) or
                          any("PerDay" in quota for quota in error.quota_ids)):
        return ("The account's quota is used up (billing, or a daily limit): add credit or raise the limit, "
                "or wait for the daily reset, then re-run.")
    return None


def model_gone_advice(model: str, base_url: str | None) -> str:
    """What to do when the provider says it has no such model."""
    replacement = CURRENT_JUDGES[provider(model)]
    retired = retirement(model)
    said = f"{retired}. " if retired else f"The provider does not serve {model} (a typo, or a retired model). "
    advice = (f"{said}A current replacement is {replacement} (--judge {replacement}); its scores are not comparable "
              f"with {model}'s. For scores that stay reproducible use a local open-weights judge such as "
              f"{LOCAL_JUDGE} behind vLLM or Ollama (docs/EVALUATION.md).")
    if base_url:
        advice += (f" If the model name is right, check --judge-base-url {base_url} and that the server has the model "
                   f"(ollama pull {model}, or vllm serve {model}).")
    return advice


# ---- requests and replies -------------------------------------------------------------------

MAX_REPLY_BYTES = 2**20  # a verdict is a few hundred bytes; a reasoning judge's reply a few tens of KB
OPENAI_BASE_URL = "https://api.openai.com/v1"
GEMINI_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
JSON_MODE_INSTRUCTION = "Reply with the JSON object only."  # OpenAI's JSON mode requires the word JSON in the prompt
# VERDICT_SCHEMA in Gemini's OpenAPI subset: upper-case types, no integer enums, the order given explicitly.
GEMINI_VERDICT_SCHEMA = {
    "type": "OBJECT",
    "properties": {key: {"type": value["type"].upper()} for key, value in VERDICT_SCHEMA["properties"].items()},
    "required": VERDICT_SCHEMA["required"],
    "propertyOrdering": list(VERDICT_SCHEMA["properties"]),
}
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
    and in max_tokens, which every compatible server reads, elsewhere. JSON mode asks for structured
    output: response_format {"type": "json_schema"} with the verdict's schema, strict (vLLM and Ollama
    read the same field).
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
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "verdict", "strict": True, "schema": VERDICT_SCHEMA}}
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
    in JSON mode, structured output: responseMimeType application/json and the verdict's schema as a
    responseSchema (Gemini's OpenAPI subset, its fields in the schema's order).
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
            config.update(responseMimeType="application/json", responseSchema=GEMINI_VERDICT_SCHEMA)
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
    checked here (see API keys above). A key is required for the providers' own URLs and optional for a
    `base_url` (a local server needs none); a `base_url` may not hold credentials, and the key goes
    over plain http only to this machine, unless `allow_plain_http` (`check_url`). A model its
    provider has retired is still accepted, with a warning: the provider's answer decides.
    """
    kind = provider(model)
    names = KEY_NAMES[kind]
    found = read_key(names)
    if found is None and base_url is None:
        raise ValueError(f"judge {model!r} needs an API key in {' or '.join(names)}")
    key_name, secret = found if found else (None, None)
    if base_url is not None:
        check_url(base_url, names, key_name, allow_plain_http)
    if secret:
        LOG_SCRUBBER.secrets.add(secret)
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
# HTTP 400 error codes that mean the provider's filter blocked this prompt: OpenAI's "invalid_prompt"
# ("Invalid prompt: your prompt was flagged as potentially violating our usage policy"), Azure OpenAI's
# "content_filter". The prompt holds the prediction, whose text can provoke them: such an answer is the
# judge declining this prediction ("refused": cached, counted as not correct), not a failed request,
# which would leave the percentages and be asked again on every re-run.
PROMPT_BLOCKED_CODES = {"invalid_prompt", "content_filter"}


async def ask(http: httpx.AsyncClient, backend: Backend, prompt: str, retry: RetryPolicy,
              stop: asyncio.Event | None = None) -> JudgeReply:
    """Send `prompt` to the judge, retrying transient failures; see the module docstring.

    `stop`, once set, ends the retries before the next attempt is sent (JudgeStopped).
    """
    url, headers, body = backend.request(prompt)
    # make_backend refuses a URL password, but a Backend built by hand may carry one
    secrets = (backend.secret, urlsplit(url).password)
    problem = ""
    for attempt in range(retry.max_attempts):
        if stop is not None and stop.is_set():
            raise JudgeStopped
        wait = retry.backoff(attempt)
        try:
            status, response_headers, text = await _post(http, url, headers, body, retry.timeout)
        except UnreadableReply as exc:  # the same prompt would get the same reply: not retried
            raise JudgeRequestError(scrub(f"{backend.model}: {exc}", *secrets)) from None
        except asyncio.TimeoutError:
            problem = f"no complete reply within {retry.timeout:g} s (--judge-timeout)"
        except httpx.TransportError as exc:   # connection errors
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if status == 200:
                return _reply(backend, text, secrets)
            error = read_error(status, text)
            if status == 400 and error.code in PROMPT_BLOCKED_CODES:
                reason = scrub(f"prompt blocked: HTTP 400 {error.code}: {error.message}", *secrets)
                return JudgeReply("", 0, 0, "refused", reason)  # a rejected request is not billed
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


class UnreadableReply(Exception):
    """A reply body this client does not read: larger than MAX_REPLY_BYTES once decompressed, in a
    content-encoding it did not ask for, or with a damaged gzip stream."""


ACCEPT_ENCODING = "gzip"  # the one compression CappedInflater reads; sent, so that no other is chosen


class CappedInflater:
    """A reply body decoded chunk by chunk (Content-Encoding identity or gzip) to at most `cap` bytes.

    zlib inflates each network chunk only as far as `max_length` allows and keeps the rest of its
    input as `unconsumed_tail`; asking for the room left plus one byte at a time means that a body
    which would expand past the cap (a gzip bomb: 50 KB that inflate to 50 MB) raises UnreadableReply
    having produced at most cap + 1 bytes in all, however large one compressed chunk expands.
    """

    def __init__(self, encoding: str, cap: int, status: int):
        self.encoding = encoding.strip().lower()
        if self.encoding not in ("", "identity", "gzip", "x-gzip"):
            raise UnreadableReply(f"the reply (HTTP {status}) is in content-encoding {encoding!r}, which was not "
                                  f"asked for (Accept-Encoding: {ACCEPT_ENCODING}); not read")
        self.inflate = None if self.encoding in ("", "identity") else zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.cap, self.status, self.produced = cap, status, 0

    def feed(self, chunk: bytes) -> bytes:
        """The decoded bytes of the next chunk of the body."""
        if self.inflate is None:
            return self._counted(chunk)
        out = bytearray()
        while chunk and not self.inflate.eof:   # after the gzip member ends, the rest is ignored
            try:
                piece = self.inflate.decompress(chunk, self.cap - self.produced + 1)
            except zlib.error as exc:
                raise UnreadableReply(f"the reply (HTTP {self.status}) is not a valid gzip stream ({exc}); "
                                      "not read") from None
            out += self._counted(piece)
            chunk = self.inflate.unconsumed_tail
        return bytes(out)

    def flush(self) -> bytes:
        return b"" if self.inflate is None else self._counted(self.inflate.flush())

    def _counted(self, piece: bytes) -> bytes:
        self.produced += len(piece)
        if self.produced > self.cap:
            once = "" if self.inflate is None else f" once decompressed (content-encoding {self.encoding})"
            raise UnreadableReply(f"the reply (HTTP {self.status}) is larger than {self.cap // 1024} KiB{once}; "
                                  "stopped reading it")
        return piece


async def _post(http: httpx.AsyncClient, url: str, headers: dict, body: dict,
                timeout: float) -> tuple[int, httpx.Headers, str]:
    """(status, headers, body text) of one POST, all of it within `timeout` seconds (asyncio.TimeoutError
    past that), the body decoded to at most MAX_REPLY_BYTES (UnreadableReply past that)."""
    async def exchange() -> tuple[int, httpx.Headers, str]:
        async with http.stream("POST", url, headers={**headers, "Accept-Encoding": ACCEPT_ENCODING}, json=body,
                               timeout=timeout) as response:
            decoder = CappedInflater(response.headers.get("content-encoding", ""), MAX_REPLY_BYTES,
                                     response.status_code)
            data = bytearray()
            async for chunk in response.aiter_raw():  # as received: httpx would inflate each chunk whole
                data += decoder.feed(chunk)
            data += decoder.flush()
            return response.status_code, response.headers, data.decode(response.encoding or "utf-8", errors="replace")

    return await asyncio.wait_for(exchange(), timeout)


def _reply(backend: Backend, text: str, secrets: tuple[str | None, ...]) -> JudgeReply:
    """The reply in a 200 response body, its text and stop reason scrubbed of the key (a server can
    quote it, and both are cached and written to the judgments)."""
    try:
        reply = backend.reply(json.loads(text))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        message = f"{backend.model}: unexpected response shape ({type(exc).__name__}: {exc}): {text[:300]}"
        raise JudgeRequestError(scrub(message, *secrets)) from None
    return replace(reply, text=scrub(reply.text, *secrets), stop_reason=scrub(reply.stop_reason, *secrets))


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
