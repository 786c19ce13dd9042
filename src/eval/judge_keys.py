"""Judge API keys: read from the environment, checked before the first request, sent only where
they are safe, scrubbed from all text.

A key copied from a CRLF `.env` file ends in "\\r"; an HTTP library refuses such a header and echoes
it in its exception. So the key is stripped and must then be printable ASCII without spaces (what an
HTTP header carries), else the run stops naming the variable and the character's position, never
the key. `scrub` removes the key from any text this project writes, logs or raises, in every form a
server or library may echo it: whole, URL-encoded, masked the way providers print it ("sk-…****abcd")
or in part (any 8 or more consecutive characters of it); and credentials written into a URL
(http://user:password@host) from any text, whoever the secret belongs to. `LogScrubber` does the
same to the log lines of httpx, which prints every request's URL at INFO.

`check_transport` refuses to send a credential (a key, or a password in the URL) in clear: over plain
http only to this machine (a local vLLM or Ollama), elsewhere only over https, unless the user says
the network is trusted.
"""
from __future__ import annotations

import logging
import os
import re
import unicodedata
from urllib.parse import quote, quote_plus, urlsplit

from src.eval.judge_models import is_loopback

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
    """`text` with every form of each secret, and any credentials written in a URL, replaced by "***"."""
    text = URL_CREDENTIALS.sub("***@", text)
    for secret in filter(None, secrets):
        for form in sorted({secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}, key=len, reverse=True):
            text = text.replace(form, "***")
        text = _drop_fragments(text, secret)
    return MASKED.sub("***", text) if any(secrets) else text


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


def check_transport(base_url: str, key_name: str | None, allow_plain_http: bool) -> None:
    """Refuse (ValueError) to send a credential over plain http to another machine, or to a URL that is
    neither http nor https. Loopback (localhost, 127.0.0.0/8, ::1) is this machine: plain http is fine."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"judge URL {scrub(base_url)} is not an http(s) URL with a host")
    if parts.scheme == "https" or is_loopback(parts.hostname) or allow_plain_http:
        return
    sent = [name for name in (key_name, "the password in the URL" if parts.password else None) if name]
    if sent:
        raise ValueError(f"{' and '.join(sent)} would cross the network in clear to {parts.hostname} over plain http: "
                         f"use an https URL, or pass {ALLOW_HTTP_FLAG} if the network between is trusted")


def _drop_fragments(text: str, secret: str) -> str:
    """Replace every maximal run of FRAGMENT or more characters that is also a run of `secret`."""
    starts = {secret[i:i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1)}
    out, i = [], 0
    while i < len(text):
        if text[i:i + FRAGMENT] in starts:
            end = i + FRAGMENT
            while end < len(text) and text[i:end + 1] in secret:
                end += 1
            out.append("***")
            i = end
        else:
            out.append(text[i])
            i += 1
    return "".join(out)
