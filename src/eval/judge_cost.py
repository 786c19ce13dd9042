"""Approximate judge cost from token usage.

Prices in US dollars per million tokens (input, output), standard (non-batch) API tiers, taken from
the providers' public price pages as of 2024-10: platform.openai.com/pricing (gpt-4o-mini since its
July 2024 launch) and ai.google.dev/pricing (Gemini 1.5, prompts up to 128k tokens, after the
August/October 2024 reductions). Prices change: treat the figure as an estimate. A model missing here
(a local judge, say) has no cost estimate.
"""
from __future__ import annotations

PRICES_USD_PER_MILLION_TOKENS: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gemini-1.5-flash": (0.075, 0.30),
    "gemini-1.5-pro": (1.25, 5.00),
}


def judge_cost_usd(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """Dollar cost of the tokens, or None for a model without a known price.

    A dated snapshot ("gpt-4o-mini-2024-07-18", "gemini-1.5-flash-002") takes its family's price;
    the longest matching family name wins, so gpt-4o-mini is not priced as gpt-4o.
    """
    families = [name for name in PRICES_USD_PER_MILLION_TOKENS if model == name or model.startswith(name + "-")]
    if not families:
        return None
    price_in, price_out = PRICES_USD_PER_MILLION_TOKENS[max(families, key=len)]
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1e6
