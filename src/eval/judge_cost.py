"""Approximate judge cost from token usage, priced by exact model or snapshot name.

US dollars per million tokens (input, output), standard (non-batch) tier, as the providers publish
them: platform.openai.com/docs/pricing and ai.google.dev/gemini-api/docs/pricing. Output includes
reasoning/thinking tokens, which both providers bill as output. Dates: the gpt-4o family and
Gemini 1.5 as of 2024-10 (Gemini 1.5 for prompts up to 128k tokens); gpt-5-mini and
gemini-3-flash-preview as of 2026-07. A name is priced only if it is listed here: a dated snapshot
has its own price (gpt-4o-2024-05-13 cost twice gpt-4o's), so no family price is guessed, and an
unlisted model (a local judge, a new snapshot) has no estimate. Prices change: treat the figure as
an estimate and check the pages.
"""
from __future__ import annotations

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
    # the current pair documented in docs/EVALUATION.md (src/eval/judge_models.py)
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
