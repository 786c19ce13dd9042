"""Open answers scored as a clinician would: domain cases, hand-computed scores, and the issue's targets
measured on the real open answers of VQA-RAD's test set (tests/fixtures/vqa_rad_open_test.json, CC0)."""
from __future__ import annotations

import dataclasses

import pytest

from src.data.sample import Sample
from src.rewards.open_answers import (AXES, MAX_NUMBER_DIGITS, NUMBER_AXIS, TERMS, Axis, ClinicalRules, _number,
                                      baseline, contradiction, names_position, open_answer_scores, read_answer,
                                      rescale, side_error)
from src.rewards.total import accuracy_rewards
from tests.test_rewards_total import CountingScorer

GARBAGE = bytes(range(256)).decode("latin-1")


@pytest.fixture(scope="module")
def scorer():
    from src.rewards.bertscore import MINILM, load_bertscorer

    return load_bertscorer(MINILM, device="cpu")


def clinical(scorer, candidate: str, *references: str, rules: ClinicalRules | None = None) -> float:
    extra = {"rules": rules} if rules else {}
    return open_answer_scores([candidate], [list(references)], scorer, "clinical", **extra)[0]


def f1(scorer, a: str, b: str) -> float:
    return scorer.score([a], [b])[0]


# ---- reading: what counts as the same answer, and what contradicts (no model needed) -------------

@pytest.mark.parametrize("a, b", [
    ("CT", "computed tomography"), ("MRI", "MR"), ("MRI", "magnetic resonance imaging"), ("X-ray", "radiograph"),
    ("XR - plain film", "x-ray"), ("ultrasound", "US"), ("Chest X-ray", "CXR"),   # equivalent clinical terms
    ("2", "two"), ("3rd ventricle", "third ventricle"), ("0", "none"),            # number words
    ("lungs", "lung"), ("opacities", "opacity"), ("masses", "mass"),              # singular / plural
    ("the liver", "liver"), ("A bullous lesion", "bullous lesion"),               # articles
    ("Left.", "left"), ("LEFT", "left"), ("It is on the left.", "Left"),          # punctuation, case, lead-ins
    ("It's the right lung", "right lung"), ("On the patient's left", "left"),
    ("Axial plane", "transverse"), ("Right side", "right"), ("R frontal lobe", "right frontal lobe"),
    ("T2-weighted MRI", "MRI - T2 weighted"), ("upper left", "left upper"), ("Posteroanterior", "PA"),
    ("both lungs", "bilateral lungs"), ("left and right lungs", "bilateral lungs"), ("5mm", "5 mm"),
    ("CT w/ contrast", "ct with contrast"), ("3.40 cm", "3.4 cm"), ("IVC", "inferior vena cava"),
])
def test_equivalent_forms_read_as_the_same_answer(a, b):
    assert read_answer(a).whole.key == read_answer(b).whole.key


@pytest.mark.parametrize("a, b", [("left lung", "lung"), ("ct", "ct with contrast"), ("PA", "AP"),
                                  ("3rd ventricle", "4th ventricle"), ("Posterior-Anterior", "Anterior-Posterior")])
def test_different_answers_read_differently(a, b):
    assert read_answer(a).whole.key != read_answer(b).whole.key


@pytest.mark.parametrize("a, b, axis", [
    ("Left Lung", "Right Lung", "side"), ("left", "bilateral", "side"),
    ("right effusion", "bilateral effusions", "side"),
    ("Left Lung, Right", "Right Lung", "side"),          # parts pooled: left and right together read as bilateral
    ("Upper Right Lobe", "Left Lobe", "side"), ("right upper lobe", "right lower lobe", "vertical"),
    ("superior", "inferior", "vertical"), ("upper pole", "inferior pole", "vertical"), ("IVC", "SVC", "vertical"),
    ("anterior mediastinum", "posterior mediastinum", "front-back"), ("medial", "lateral", "medial-lateral"),
    ("proximal aspect of the appendix", "distal appendix", "proximal-distal"), ("AP", "PA", "projection"),
    ("Large Bowel", "Small Bowel", "size"), ("enlarged", "small", "size"),
    ("CT", "MRI", "modality"), ("x-ray", "ultrasound", "modality"), ("axial", "coronal", "plane"),
    ("T1", "T2", "weighting"),
    ("right temporal lobe", "right frontal lobe", "brain lobe"),
    ("2", "3", "number"), ("two lesions", "one lesion", "number"), ("3.4 cm", "3.5 cm", "number"),
    ("3rd ventricle", "4th ventricle", "number"),
])
def test_contradictions_name_their_axis(a, b, axis):
    assert contradiction(read_answer(a).whole, read_answer(b).whole) == axis
    assert contradiction(read_answer(b).whole, read_answer(a).whole) == axis


@pytest.mark.parametrize("a, b", [
    ("lung", "right lung"),                                # leaving the side out is no contradiction (halved below)
    ("left lung and right lung", "bilateral lungs"), ("right upper lobe", "upper lobe of the right lung"),
    ("2.5cm x 1.7cm x 1.6cm", "2.5 x 1.7 x 1.6 cm"), ("lateral ventricles", "The lateral ventricles"),
    ("CT with contrast", "CT"), ("mid left subclavian vein", "left subclavian vein"),
])
def test_no_contradiction(a, b):
    assert contradiction(read_answer(a).whole, read_answer(b).whole) is None


def test_side_errors_are_contradictions_of_side_or_position_against_every_reference():
    assert side_error("Left Lung", ["Right Lung"]) and side_error("lower right", ["upper right"])
    assert side_error("It is on the left.", ["right", "right side"])
    assert not side_error("left", ["right", "left"])       # one reference agrees
    assert not side_error("lung", ["right lung"])          # silent about the side
    assert not side_error("CT", ["MRI"])                   # wrong, but not a side or position
    assert not side_error("", ["left"]) and not side_error("left", [])
    assert names_position(["Right upper lobe"]) and names_position(["liver", "AP"])
    assert not names_position(["liver", "CT"])


# ---- scores, computed by hand from the scorer's own F1 ------------------------------------------

def test_equivalent_answers_score_one_where_bertscore_hesitates(scorer):
    pairs = [("computed tomography", "CT"), ("XR", "Plain film x-ray"), ("It is the left lung.", "Left Lung"),
             ("two", "2"), ("Lung and spinal cord", "Lung, Spinal Cord"), ("heart and liver", "Liver, Heart")]
    assert [clinical(scorer, c, r) for c, r in pairs] == [1.0] * len(pairs)
    assert f1(scorer, "computed tomography", "CT") < 0.5 and f1(scorer, "XR", "Plain film x-ray") < 0.5


def test_contradictions_score_zero_where_bertscore_pays_most(scorer):
    pairs = [("Left Lung", "Right Lung"), ("Large Bowel", "Small Bowel"), ("Upper Right Lobe", "Left Lobe"),
             ("lower left", "upper left"), ("three", "two"), ("Left Lung, Right", "Right Lung")]
    assert [clinical(scorer, c, r) for c, r in pairs] == [0.0] * len(pairs)
    assert min(f1(scorer, c, r) for c, r in pairs[:4]) > 0.75


def test_other_answers_get_bertscore_rescaled_by_the_scorers_unrelated_answer_baseline(scorer):
    b = baseline(scorer)
    assert 0.0 < b < 0.5                                   # MiniLM: unrelated medical answers score ~0.13
    for candidate, reference in [("gallstones", "gallbladder"), ("pulmonary nodules", "nodular opacities")]:
        expected = max(0.0, (f1(scorer, candidate, reference) - b) / (1 - b))
        assert clinical(scorer, candidate, reference) == pytest.approx(expected, abs=1e-6)
    # texts are compared as read: "The Gallstones." is scored as "gallstones"
    assert clinical(scorer, "The Gallstones.", "gallbladder") == pytest.approx(clinical(scorer, "gallstones",
                                                                                         "gallbladder"), abs=1e-6)


def test_leaving_out_the_side_the_reference_names_halves_the_score(scorer):
    expected = 0.5 * rescale(f1(scorer, "lung", "right lung"), baseline(scorer))
    assert clinical(scorer, "lung", "right lung") == pytest.approx(expected, abs=1e-6)
    assert clinical(scorer, "lung", "right lung") < 0.5    # less than a coin-flip guess of the side earns on average
    # naming a side the reference does not name costs nothing beyond the wording
    assert clinical(scorer, "right lung", "lung") == pytest.approx(2 * expected, abs=1e-6)


def test_multi_part_answers_are_sets_with_partial_credit(scorer):
    b = baseline(scorer)
    s = rescale(f1(scorer, "lung", "spinal cord"), b)      # the one part score that is not 0 or 1
    # "Lung" for {lung, spinal cord}: precision 1, recall (1 + s) / 2
    precision, recall = 1.0, (1 + s) / 2
    assert clinical(scorer, "Lung", "Lung, Spinal Cord") == pytest.approx(2 * precision * recall / (precision + recall),
                                                                          abs=1e-6)
    # one part too many: precision (1 + 1 + best of spleen's two scores) / 3, recall 1
    extra = max(rescale(f1(scorer, "spleen", "liver"), b), rescale(f1(scorer, "spleen", "heart"), b))
    precision = (2 + extra) / 3
    assert clinical(scorer, "Liver, Heart, Spleen", "liver and heart") == pytest.approx(
        2 * precision / (precision + 1), abs=1e-6)
    # the parts in another order are the same answer; a side contradicted in any part, pooled, scores 0
    assert clinical(scorer, "right kidney, liver", "liver, right kidney") == 1.0
    assert clinical(scorer, "left kidney, liver", "liver, right kidney") == 0.0


def test_the_best_reference_counts_and_empty_or_odd_answers_score_zero_without_raising(scorer):
    assert clinical(scorer, "left", "right", "left") == 1.0
    assert clinical(scorer, "", "left") == 0.0 and clinical(scorer, "   ", "left") == 0.0
    assert open_answer_scores(["left"], [[]], scorer, "clinical") == [0.0]
    assert len(read_answer(", ".join(f"organ {i}" for i in range(1000))).parts) == 16  # MAX_PARTS
    for odd in (GARBAGE, "lesion " * 15_000, ", ".join(f"organ {i}" for i in range(1000)), "?!", "左肺"):
        for method in ("bertscore", "clinical"):
            score = open_answer_scores([odd], [["left lung"]], scorer, method)[0]
            assert 0.0 <= score <= 1.0


def test_bertscore_method_is_the_best_f1_over_references(scorer):
    scores = open_answer_scores(["left lung", ""], [["right lung", "lung"], ["lung"]], scorer, "bertscore")
    assert scores == [pytest.approx(max(f1(scorer, "left lung", "right lung"), f1(scorer, "left lung", "lung"))), 0.0]


def test_one_scorer_call_per_batch_after_the_baseline(scorer):
    counting = CountingScorer(scorer)
    batch = (["left lung", "gallstones", "CT", "Lung"], [["right lung"], ["gallbladder"], ["MRI"], ["Lung, Heart"]])
    open_answer_scores(*batch, counting, "clinical")
    assert counting.calls == 2                             # the baseline (once per scorer), then the batch
    open_answer_scores(*batch, counting, "clinical")
    assert counting.calls == 3
    open_answer_scores(["left", "two"], [["left"], ["2"]], counting, "clinical")
    assert counting.calls == 3                             # nothing left for BERTScore: no call at all


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown open-answer score 'exact'"):
        open_answer_scores(["a"], [["a"]], None, "exact")
    with pytest.raises(ValueError, match="2 candidates but 1 reference lists"):
        open_answer_scores(["a", "b"], [["a"]], None, "clinical")


def test_rules_extend_with_terms_and_axes(scorer):
    rules = ClinicalRules(terms={**TERMS, "pet": ("positron emission tomography",)},
                          axes=AXES + (Axis("contrast phase", {"arterial": ("arterial",), "venous": ("venous",
                                                                                                     "portal")}),))
    assert clinical(scorer, "PET", "positron emission tomography", rules=rules) == 1.0
    assert clinical(scorer, "PET", "positron emission tomography") < 1.0
    assert clinical(scorer, "arterial phase", "portal venous phase", rules=rules) == 0.0
    assert clinical(scorer, "arterial phase", "portal venous phase") > 0.0


def test_accuracy_reward_scores_open_answers_by_the_chosen_method(scorer):
    sample = Sample(id="s", dataset="t", image="i", question="Which lung?", answer="Right lung", answer_type="open")
    completions = ["<think>x</think><answer>Left lung</answer>", "<think>x</think><answer>The right lung.</answer>"]
    bert = accuracy_rewards(completions, [sample] * 2, scorer)
    assert bert[0] > 0.85 and bert[1] < 1.0
    assert accuracy_rewards(completions, [sample] * 2, scorer, "clinical") == [0.0, 1.0]


# ---- the issue's targets on real answers ----------------------------------------------------------

def test_on_real_vqa_rad_open_answers_clinical_meets_the_issues_targets(scorer):
    """Pairs built from the 179 open answers of VQA-RAD's test set (benchmarks/open_answers.py says how):
    wrong answers and side/position-flipped ones average <= 0.2, paraphrases >= 0.85, where BERTScore
    pays the side errors 0.79 on average (docs/REWARDS.md has every figure)."""
    from benchmarks.open_answers import FIXTURE, build_pairs, read_open_questions

    name, rows = read_open_questions(FIXTURE)
    assert (name, len(rows)) == ("VQA-RAD test", 179)
    pairs = build_pairs(rows)
    side = pairs["side"] + pairs["side-flipped"]
    assert len(pairs["wrong"]) > 1000 and len(side) > 30 and len(pairs["equivalent"]) >= 10

    def mean(group, method="clinical"):
        scores = open_answer_scores([c for c, _ in group], [[r] for _, r in group], scorer, method)
        return sum(scores) / len(scores)

    assert mean(pairs["wrong"]) <= 0.2
    assert mean(side) <= 0.2 < 0.7 <= mean(side, "bertscore")
    assert mean(pairs["paraphrase"]) >= 0.85
    assert mean(pairs["equivalent"]) == 1.0


def test_train_passes_the_open_answer_score_to_the_accuracy_reward(tmp_path, monkeypatch):
    from src.grpo import step, trainer
    from src.grpo.config import RewardConfig
    from tests.test_trainer import tiny_config

    cfg = dataclasses.replace(tiny_config(tmp_path), reward=RewardConfig(open_answer_score="clinical"))
    run = trainer.setup(cfg)
    seen, real = [], step.score_completions
    monkeypatch.setattr(step, "score_completions", lambda *args: seen.append(args[-1]) or real(*args))
    step.grpo_step(run, run.samples[:2], ["explanation", "explanation"])
    assert seen == ["clinical"]


def test_numbers_of_any_length_read_without_converting_them():
    assert [_number(w) for w in ("007", "3.40", "00.50", "10.0", "3rd")] == ["7", "3.4", "0.5", "10", "3rd"]
    longest = "1" + "0" * (MAX_NUMBER_DIGITS - 1)
    assert _number(longest) == longest and _number(longest + "0") is None   # past the limit: a word
    huge = "9" * 5_000                                                       # int() refuses past 4,300 digits
    assert _number(huge) is None and read_answer(huge).whole.key == (huge,)
    assert NUMBER_AXIS not in read_answer(f"{huge} mm").whole.values
    assert side_error(f"left {huge}", ["right lung"]) and not side_error(huge, ["right lung"])
