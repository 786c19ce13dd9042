"""RARL rewards (paper sec. 2.2.2):

    total.py         the format, length, accuracy and reasoning rewards and their weighted total
                     (score_completions, which the trainer calls once per step);
    answers.py       a completion's think and answer parts; closed and multiple-choice matching;
    open_answers.py  open answers by BERTScore F1 (the paper's) or the clinical score;
    bertscore.py     BERTScore F1, batched.

No re-exports here on purpose: `src.rewards.answers` (pure text) stays importable without loading
torch and transformers, which only `src.rewards.bertscore` needs.
"""
