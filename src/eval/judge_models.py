"""What this project knows about judge models: the request parameters each accepts, and retirements.

The paper's judges (gpt-4o-mini, gemini-1.5-flash) stay accepted by name; when a provider answers
that a model is gone, the run stops naming the current replacement below. Scores from another judge
are not comparable with the paper's, and a provider's model can change or disappear: a local
open-weights judge with pinned weights is the only one whose scores stay reproducible (docs/EVALUATION.md).
"""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlparse

# The current pair this project documents and prices (src/eval/judge_cost.py), and the local judge.
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
