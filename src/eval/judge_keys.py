"""Judge API keys: read from the environment, checked before the first request, scrubbed from all text.

A key copied from a CRLF `.env` file ends in "\\r"; an HTTP library refuses such a header and echoes
it in its exception. So the key is stripped and must then be printable ASCII without spaces (what an
HTTP header carries), else the run stops naming the variable and the character's position, never
the key. `scrub` removes the key from any text this project writes, logs or raises, in every form a
server or library may echo it: whole, URL-encoded, masked the way providers print it ("sk-…****abcd")
or in part (any 8 or more consecutive characters of it).
"""
from __future__ import annotations

import os
import re
import unicodedata
from urllib.parse import quote, quote_plus

FRAGMENT = 8  # this many consecutive characters of a key are treated as the key
MASKED = re.compile(r"\S*\*{4,}\S*")  # a provider's masked echo, e.g. "sk-proj-********abcd"


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


def scrub(text: str, secret: str | None) -> str:
    """`text` with every form of `secret` replaced by "***"."""
    if not secret:
        return text
    for form in sorted({secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}, key=len, reverse=True):
        text = text.replace(form, "***")
    text = _drop_fragments(text, secret)
    return MASKED.sub("***", text)


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
