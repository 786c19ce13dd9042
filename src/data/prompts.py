"""The paper's prompts as Qwen2-VL chat messages, and prompting diversity (sec. 3.3, App. A).

Every prompt becomes the SYSTEM message; the USER message holds the image, then the question:
    [{"role": "system", "content": PROMPT},
     {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
which the chat template (src/models/inputs.py) renders as
    <|im_start|>system\\nPROMPT<|im_end|>\\n<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>QUESTION<|im_end|>\\n<|im_start|>assistant\\n

Training prompts (App. A) are the text before "User:" in the paper, verbatim, including its "askes"
typo in the open-ended prompt; the paper's lines are only unwrapped. The "User: question Assistant:"
scaffolding that follows in the paper is what the chat template's user and assistant turns provide.
The explanation-required prompt ends in the paper with "Assistant: Let me solve this step by step.",
a prefix of the assistant's reply. It is left out: a chat template cannot end on a half-written
assistant turn, every completion would then start mid-sentence and be scored without it, and the
instruction already asks to "Think through the problem step by step"; the three prompts thus differ
only in their instruction.

Inference prompts (sec. 3.3) are the paper's text verbatim. Unlike the training prompts they do not
name the <think>/<answer> tags.
"""
from __future__ import annotations

import random

TRAINING_PROMPTS = {
    "explanation": (
        "You are a Medical Assistant. Carefully analyze the medical image and the User's question. Think through "
        "the problem step by step using clinical reasoning and relevant visual cues. Present your thinking process "
        "clearly within <think> </think> tags, and then provide a well-justified answer within <answer> </answer> tags."
    ),
    "short": (
        "You are a Medical Assistant. Read the User's question and the associated medical image. Provide your "
        "thinking within <think> </think> tags and a concise factual answer within <answer> </answer> tags."
    ),
    "open-ended": (
        "You are a Medical Assistant. The User askes a question based on the provided medical image. Consider all "
        "visual and contextual details. Share your reasoning freely within <think> </think> tags, and conclude with "
        "your best judgment within <answer> </answer> tags."
    ),
}

INFERENCE_PROMPTS = {
    "reasoning": (
        "A conversation between a User and a Medical Assistant. The User asks a question about the image, and the "
        "Assistant solves it. The Assistant first thinks through the reasoning process step-by-step, then provides "
        "the answer to the User."
    ),
    "non-reasoning": "A conversation between a User and a Medical Assistant. The Assistant provides the answer to the User.",
}


def build_messages(question: str, system_prompt: str) -> list[dict]:
    """The chat messages for one question about one image: the prompt as system turn, then image and question."""
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
    ]


def assign_training_prompts(n: int, diverse: bool, seed: int) -> list[str]:
    """The training prompt name for each of n examples.

    With prompting diversity (RARL's, TrainConfig.prompt_diversity) each example draws one of the three
    prompts uniformly (seeded, so a run is reproducible); without it every example trains on "explanation".
    """
    if not diverse:
        return ["explanation"] * n
    rng = random.Random(seed)
    names = list(TRAINING_PROMPTS)
    return [rng.choice(names) for _ in range(n)]
