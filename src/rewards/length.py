"""Length reward (RARL sec. 2.2.2): longer completions earn up to 1.0, reached at 1,000 tokens."""
from __future__ import annotations


def length_reward(num_tokens: int) -> float:
    """min(0.001 x num_tokens, 1.0), num_tokens counted by the policy's tokenizer (the completion
    length the training loop already has). Computed as num_tokens / 1000 so 999 gives exactly 0.999.
    """
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    return min(num_tokens / 1000, 1.0)
