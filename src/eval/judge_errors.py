"""Reading a judge provider's error answer, and deciding which answers end the whole run.

Error bodies, as the providers send them:
  OpenAI (and vLLM, Ollama): {"error": {"message", "type", "param", "code"}}, e.g. code
      "invalid_api_key" (401), "model_not_found" (404), "insufficient_quota" (429),
      "unsupported_parameter" / "unsupported_value" with the parameter in "param" (400);
  Gemini: {"error": {"code", "message", "status", "details": [...]}}, the details holding
      google.rpc.ErrorInfo {"reason": "API_KEY_INVALID"}, google.rpc.QuotaFailure {"violations":
      [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier", ...}]} and google.rpc.RetryInfo
      {"retryDelay": "57s"}.
A fatal answer is one every further request would get as well: a refused key (401, Gemini's 400
API_KEY_INVALID), no permission (403), an unknown or retired model (404), a parameter the model does
not accept (400), an exhausted quota or a location the API does not serve. One such answer stops
the run with the provider's words, the judge, and how to fix it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from src.eval.judge_models import CURRENT_JUDGES, LOCAL_JUDGE, provider, retirement

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
