"""Prompts render to the exact chat string the model sees; prompt assignment is seeded."""
from collections import Counter

import jinja2

from src.data.prompts import INFERENCE_PROMPTS, TRAINING_PROMPTS, assign_training_prompts, build_messages
from src.models.inputs import QWEN2_VL_CHAT_TEMPLATE


def render(messages):
    return jinja2.Environment().from_string(QWEN2_VL_CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True)


def test_training_prompt_renders_to_the_exact_chat_string():
    text = render(build_messages("Is there a lesion?", TRAINING_PROMPTS["short"]))
    assert text == (
        "<|im_start|>system\n"
        "You are a Medical Assistant. Read the User's question and the associated medical image. Provide your "
        "thinking within <think> </think> tags and a concise factual answer within <answer> </answer> tags."
        "<|im_end|>\n"
        "<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Is there a lesion?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_inference_prompt_renders_to_the_exact_chat_string():
    text = render(build_messages("How many lesions are in the organ?", INFERENCE_PROMPTS["non-reasoning"]))
    assert text == (
        "<|im_start|>system\n"
        "A conversation between a User and a Medical Assistant. The Assistant provides the answer to the User."
        "<|im_end|>\n"
        "<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>How many lesions are in the organ?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_prompts_are_the_papers_instructions_without_the_dialogue_scaffolding():
    assert set(TRAINING_PROMPTS) == {"explanation", "short", "open-ended"}
    assert set(INFERENCE_PROMPTS) == {"reasoning", "non-reasoning"}
    for prompt in TRAINING_PROMPTS.values():
        assert prompt.startswith("You are a Medical Assistant.") and prompt.endswith("</answer> tags.")
        assert "User:" not in prompt and "Assistant:" not in prompt and "  " not in prompt
    assert "The User askes a question" in TRAINING_PROMPTS["open-ended"]  # the paper's wording, kept verbatim
    assert INFERENCE_PROMPTS["reasoning"].endswith("step-by-step, then provides the answer to the User.")


def test_rarl_draws_all_three_prompts_deterministically():
    names = assign_training_prompts(300, method_config("rarl").prompt_diversity, seed=1)
    assert names == assign_training_prompts(300, True, seed=1)
    assert names != assign_training_prompts(300, True, seed=2)
    counts = Counter(names)
    assert set(counts) == set(TRAINING_PROMPTS)
    assert all(70 <= count <= 130 for count in counts.values())  # 100 expected each; sd ~8.2, so > 3.6 sd slack


def test_other_methods_always_use_the_explanation_prompt():
    for method in ("sft", "sft-full", "grpo", "grpo-full"):
        assert assign_training_prompts(5, method_config(method).prompt_diversity, seed=1) == ["explanation"] * 5


def method_config(method: str):
    from src.grpo.config import RunConfig, TrainConfig

    return TrainConfig(run=RunConfig(method=method))
