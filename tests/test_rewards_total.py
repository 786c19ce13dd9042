"""Accuracy and reasoning rewards, the weighted total, and batched == per-item."""
import math

import pytest

from src.data.sample import Sample
from src.rewards.answers import parse_completion
from src.rewards.total import (RewardWeights, accuracy_rewards, format_reward, length_reward, reasoning_rewards,
                               score_completions)

HUGE = "lesion " * 15_000  # 105,000 characters
GARBAGE = bytes(range(256)).decode("latin-1")
REASONING = "The left lung shows a round opacity, which suggests a nodule."


def sample(answer, answer_type="closed", reasoning=None, alternatives=(), choices=()):
    return Sample(id=f"{answer_type}:{answer}", dataset="test", image="img.jpg", question="q?", answer=answer,
                  answer_type=answer_type, reasoning=reasoning, alternatives=alternatives, choices=choices)


class CountingScorer:
    """Wraps the real scorer and counts calls: each batched reward must call it once."""

    def __init__(self, scorer):
        self.scorer, self.calls = scorer, 0

    def score(self, candidates, references):
        self.calls += 1
        return self.scorer.score(candidates, references)


@pytest.fixture(scope="module")
def scorer():
    from src.rewards.bertscore import MINILM, load_bertscorer

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        return load_bertscorer(MINILM, device="cpu")


YES = sample("yes", reasoning=REASONING)
LEFT = sample("left")
CHOICE = sample("(B)", "choice", choices=("left", "right"))
OPEN = sample("pleural effusion", "open", reasoning=REASONING)
VQA_MED = sample("ct", "open", alternatives=("computed tomography",))


@pytest.mark.parametrize("completion, item, expected", [
    ("<think>x</think><answer>Yes, there is.</answer>", YES, 1.0),
    ("<think>x</think><answer>No.</answer>", YES, 0.0),
    ("<think>x</think><answer>yes and no</answer>", YES, 0.0),
    ("Yes.", YES, 1.0),  # no tags: the whole completion is the answer
    ("<think>no doubt</think> yes", YES, 0.0),  # no answer tag: think text counts too, says both
    ("<answer>Left.</answer>", LEFT, 1.0),
    ("<answer>left side</answer>", LEFT, 0.0),
    ("<answer>(B) right</answer>", CHOICE, 1.0),
    ("<answer>right</answer>", CHOICE, 1.0),
    ("<answer>(A)</answer>", CHOICE, 0.0),
])
def test_accuracy_closed_and_choice(completion, item, expected):
    assert accuracy_rewards([completion], [item], None) == [expected]  # no scorer needed for these


def test_accuracy_open_is_bertscore_max_over_references(scorer):
    [identical] = accuracy_rewards(["<think>x</think><answer>pleural effusion</answer>"], [OPEN], scorer)
    assert identical > 0.999
    # The alternative "computed tomography" is matched exactly, the answer "ct" is not: max wins.
    by_reference = scorer.score(["computed tomography"] * 2, ["ct", "computed tomography"])
    assert by_reference[0] < 0.999 < by_reference[1]
    assert accuracy_rewards(["<answer>computed tomography</answer>"], [VQA_MED], scorer) == pytest.approx(
        [by_reference[1]], abs=1e-6)
    assert accuracy_rewards(["<answer></answer>"], [OPEN], scorer) == [0.0]


def test_accuracy_errors_name_the_problem():
    with pytest.raises(ValueError, match="open questions need a BertScorer"):
        accuracy_rewards(["x"], [OPEN], None)
    with pytest.raises(ValueError, match="sample closed:yes: unknown answer_type 'free'"):
        accuracy_rewards(["x"], [Sample(id="closed:yes", dataset="t", image="i", question="q", answer="yes",
                                        answer_type="free")], None)


def test_reasoning_reward(scorer):
    samples = [OPEN, OPEN, OPEN, LEFT, sample("left", reasoning="  ")]
    rewards = reasoning_rewards([REASONING, "The heart is enlarged.", None, REASONING, REASONING], samples, scorer)
    assert rewards[0] > 0.999
    assert rewards[1] < 0.9
    assert rewards[2] == 0.0  # annotated, but no think block
    assert rewards[3] is None  # no annotation: excluded
    assert rewards[4] is None


BATCH = [
    ("<think>" + REASONING + "</think><answer>yes</answer>", YES, 120),
    ("<think>The heart.</think><answer>pleural effusion</answer>", OPEN, 40),
    ("<answer>effusion</answer>", OPEN, 7),
    ("computed tomography", VQA_MED, 3),
    ("<answer>(B)</answer>", CHOICE, 5),
    ("", LEFT, 0),
    (HUGE, OPEN, 5000),
    (GARBAGE, YES, 300),
]


def test_batched_equals_per_item_with_one_scorer_call_each(scorer):
    completions, samples, num_tokens = (list(column) for column in zip(*BATCH))
    counting = CountingScorer(scorer)
    batched_accuracy = accuracy_rewards(completions, samples, counting)
    assert counting.calls == 1
    thinks = [parse_completion(completion).think for completion in completions]
    batched_reasoning = reasoning_rewards(thinks, samples, counting)
    assert counting.calls == 2
    # BERTScore alone vs in a padded batch differs by float32 summation order only (~1e-7).
    per_item_accuracy = [accuracy_rewards([c], [s], scorer)[0] for c, s in zip(completions, samples)]
    assert batched_accuracy == pytest.approx(per_item_accuracy, abs=1e-6)
    per_item = [reasoning_rewards([t], [s], scorer)[0] for t, s in zip(thinks, samples)]
    assert [r is None for r in batched_reasoning] == [r is None for r in per_item]
    assert [r for r in batched_reasoning if r is not None] == pytest.approx([r for r in per_item if r is not None],
                                                                          abs=1e-6)

    breakdown = score_completions(completions, samples, num_tokens, CountingScorer(scorer), RewardWeights(), True)
    assert breakdown.components["format"] == [format_reward(c) for c in completions]  # exact
    assert breakdown.components["length"] == [length_reward(n) for n in num_tokens]  # exact
    assert breakdown.components["accuracy"] == pytest.approx(batched_accuracy, abs=1e-6)
    assert [r is None for r in breakdown.components["reasoning"]] == [r is None for r in per_item]
    for values in breakdown.components.values():
        assert all(v is None or 0.0 <= v <= 1.0 for v in values)


def test_weighted_total_by_hand(scorer):
    weights = RewardWeights(format=2.0, length=0.5, accuracy=3.0, reasoning=0.5)
    completions = ["<think>look</think><answer>Left</answer>", "<think>" + REASONING + "</think><answer>no</answer>"]
    breakdown = score_completions(completions, [LEFT, YES], [250, 1000], scorer, weights, use_reasoning=True)
    # LEFT has no reasoning: 2 * 1.0 + 0.5 * 0.25 + 3 * 1.0 = 5.125 (reasoning excluded)
    assert breakdown.total[0] == 5.125
    # YES, answered "no": 2 * 1.0 + 0.5 * 1.0 + 3 * 0.0 + 0.5 * r, with r ~ 1 (think == reasoning)
    r = breakdown.components["reasoning"][1]
    assert r > 0.999
    assert breakdown.total[1] == pytest.approx(2.5 + 0.5 * r, abs=1e-12)
    assert breakdown.components["reasoning"][0] is None
    # means over the computed values: format (1 + 1) / 2, length (0.25 + 1) / 2, accuracy (1 + 0) / 2,
    # reasoning over the one annotated sample only
    assert breakdown.means() == pytest.approx(
        {"reward/format": 1.0, "reward/length": 0.625, "reward/accuracy": 0.5, "reward/reasoning": r}, abs=1e-12)


def test_plain_grpo_never_computes_reasoning():
    # Closed questions and use_reasoning=False: the scorer is never needed, so None is enough.
    breakdown = score_completions(["<think>t</think><answer>yes</answer>"], [YES], [10], None,
                                  RewardWeights(), use_reasoning=False)
    assert breakdown.components["reasoning"] == [None]
    assert breakdown.total == [1.0 + 0.01 + 1.0]
    means = breakdown.means()
    assert "reward/reasoning" not in means  # none computed: left out, not a fake 0
    assert all(not math.isnan(value) for value in means.values())


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="2 completions, 1 samples, 1 token counts"):
        score_completions(["a", "b"], [YES], [1], None, RewardWeights(), use_reasoning=False)
