"""RARL rewards (paper sec. 2.2.2): format, length, accuracy, reasoning, and their weighted total.

No re-exports here on purpose: `src.rewards.answers` (pure text) stays importable without loading
torch and transformers, which only `src.rewards.bertscore` needs.
"""
