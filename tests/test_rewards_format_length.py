"""Format reward: a table of completions with the reward each must get. Length reward: the cap."""
import pytest

from src.rewards.total import format_reward, length_reward

HUGE = "lesion " * 15_000  # 105,000 characters
GARBAGE = bytes(range(256)).decode("latin-1")


@pytest.mark.parametrize("completion, expected", [
    # exact form: 1.0
    ("<think>x</think><answer>y</answer>", 1.0),
    ("  <think>\nlook at the left lobe\n</think>\n\n<answer> yes </answer>\n", 1.0),
    ("<think>x</think><answer>a <b>bold</b> answer</answer>", 1.0),  # other markup is just text
    # some tags, wrong form: 0.1
    ("<think>x</think>", 0.1),  # no answer
    ("<answer>y</answer>", 0.1),  # no think
    ("<answer>y</answer><think>x</think>", 0.1),  # answer before think
    ("<think>x</think><answer></answer>", 0.1),  # empty answer
    ("<think>x</think><answer>  \n </answer>", 0.1),  # blank answer
    ("<think></think><answer>y</answer>", 0.1),  # empty think
    ("<think>x<think>z</think></think><answer>y</answer>", 0.1),  # nested think
    ("<think>x</think><answer><think>z</think>y</answer>", 0.1),  # think inside answer
    ("<think>a</think><think>b</think><answer>y</answer>", 0.1),  # repeated think
    ("<think>x</think><answer>y</answer><answer>z</answer>", 0.1),  # repeated answer
    ("<think>x</think><answer>y", 0.1),  # unclosed answer
    ("<think>x<answer>y</answer>", 0.1),  # unclosed think
    ("</think>", 0.1),  # a lone closing tag still counts as a tag
    ("Sure! <think>x</think><answer>y</answer>", 0.1),  # text before
    ("<think>x</think> so <answer>y</answer>", 0.1),  # text between
    ("<think>x</think><answer>y</answer> Done.", 0.1),  # text after
    ("<think>x</think>" + " " * 100_000 + "<answer>", 0.1),
    # no tag at all: 0.0
    ("yes", 0.0),
    ("", 0.0),
    ("<Think>x</Think><Answer>y</Answer>", 0.0),  # tags are case-sensitive
    ("<thinking>x</thinking>", 0.0),
    (HUGE, 0.0),
    (GARBAGE, 0.0),
])
def test_format_reward(completion, expected):
    assert format_reward(completion) == expected


@pytest.mark.parametrize("num_tokens, expected", [
    (0, 0.0), (1, 0.001), (250, 0.25), (999, 0.999), (1000, 1.0), (1001, 1.0), (5000, 1.0),
])
def test_length_reward_is_capped_linear(num_tokens, expected):
    assert length_reward(num_tokens) == expected  # n / 1000 is the double nearest to the decimal


def test_length_reward_rejects_negative_counts():
    with pytest.raises(ValueError, match="-3"):
        length_reward(-3)
