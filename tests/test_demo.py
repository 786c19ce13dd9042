"""demo.py's pipeline on a tiny budget (the full run takes minutes; docs/DEMO.md has its figures)."""
from __future__ import annotations

import json

import pytest

from src.grpo.run_log import moving_average


def test_moving_average_is_a_trailing_mean_that_keeps_every_point():
    # window 2: [1], [1, 3] -> 2, [3, 5] -> 4, [5, 7] -> 6
    assert moving_average([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]


def test_summary_reports_mean_and_spread_over_seeds():
    import demo

    per_seed = {s: {"warm": {"n": 1000, "format_rate": f, "closed": c, "open": o, "final": a, "reasoning": r}}
                for s, (f, c, o, a, r) in enumerate([(1.0, 0.5, 0.2, 0.38, 0.91), (1.0, 0.7, 0.4, 0.58, 0.93)])}
    table, markdown = demo.summarise(per_seed)
    assert table["warm"]["closed"]["mean"] == pytest.approx(0.6)
    assert table["warm"]["closed"]["std"] == pytest.approx(0.1)  # population std of 0.5 and 0.7
    assert "| warm | 100.0% ± 0.0 | 60.0% ± 10.0 | 30.0% ± 10.0 | 48.0% ± 10.0 | 92.0 ± 1.0 |" in markdown
    assert markdown.startswith("Held-out synthetic test set (1000 questions), greedy decoding, seeds 0, 1:")
    assert "RL minus its warm start" not in markdown  # no RL run, no gain table


def test_the_best_validation_step_wins_and_ties_go_to_the_earliest():
    import demo

    assert demo.best_step({25: 0.60, 50: 0.64, 75: 0.62, 100: 0.64}) == 50
    assert demo.best_step({25: 0.70, 50: 0.64}) == 25


def test_summary_reports_each_seeds_gain_the_chosen_step_and_the_worst_seed():
    import demo

    def metrics(final):
        return {"n": 1000, "format_rate": 1.0, "closed": 0.7, "open": 0.4, "final": final, "reasoning": 0.9}

    warm, rl = "warm start (sft-full)", "rarl (RL from the warm start)"
    per_seed = {0: {warm: metrics(0.60), rl: {**metrics(0.64), "step": 75, "last": metrics(0.58)}},
                1: {warm: metrics(0.62), rl: {**metrics(0.63), "step": 150, "last": metrics(0.63)}}}
    _, markdown = demo.summarise(per_seed)
    # seed 0: +4.0 chosen at step 75, -2.0 last; seed 1: +1.0 / +1.0; mean +2.5 / -0.5; worst +1.0 / -2.0
    assert f"| {rl} | +4.0 (step 75) / -2.0 | +1.0 (step 150) / +1.0 | +2.5 / -0.5 | +1.0 / -2.0 |" in markdown


@pytest.mark.slow
def test_demo_runs_every_stage_and_writes_its_report(tmp_path):
    import demo

    budget = ["--warm-start-steps", "3", "--rl-steps", "2", "--questions", "40", "--methods", "rarl",
              "--open-answer-scores", "bertscore", "clinical"]
    table = demo.main(["--output-dir", str(tmp_path), *budget])
    assert list(table) == ["warm start (sft-full)", "rarl (RL from the warm start)",
                           "rarl-clinical (RL from the warm start)"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["per_seed"]["0"]) == set(table)
    assert (tmp_path / "validation.png").stat().st_size > 10_000
    for run, score in (("rarl", "bertscore"), ("rarl-clinical", "clinical")):
        assert (tmp_path / "seed-0" / run / "curves.png").stat().st_size > 10_000
        assert (tmp_path / "seed-0" / run / "checkpoint-2" / "adapter_config.json").is_file()
        config = json.loads((tmp_path / "seed-0" / run / "config.json").read_text())
        assert config["reward"]["open_answer_score"] == score
        metrics = json.loads((tmp_path / "seed-0" / f"eval-{run}" / "summary.json").read_text())["groups"][0]["metrics"]
        closed, open_ = metrics["closed"], metrics["open"]
        assert metrics["n"] == closed["n"] + open_["n"] == 40  # --questions 40
        right = closed["accuracy"] * closed["n"] + open_["exact_match"] * open_["n"]
        row = table[f"{run} (RL from the warm start)"]
        assert row["final"]["mean"] == pytest.approx(right / 40)
        assert row["reasoning"]["mean"] == pytest.approx(metrics["reasoning"]["bertscore_f1"])
        result = summary["per_seed"]["0"][f"{run} (RL from the warm start)"]
        assert result["open_clinical"] == pytest.approx(open_["clinical"])  # every model is scored both ways
        assert result["side_error_rate"] == pytest.approx(open_["side_error_rate"])
    markdown = (tmp_path / "summary.md").read_text()
    assert "| Model | Format | Closed acc. | Open exact match |" in markdown
    assert "| Model | Exact match | BERTScore x100 | Clinical x100 | Side errors |" in markdown
    # re-running finds every stage on disk and returns the same table
    assert demo.main(["--output-dir", str(tmp_path), *budget]) == table


def test_rl_runs_are_named_by_method_and_by_a_score_other_than_the_papers():
    import demo

    assert demo.rl_runs(["rarl", "grpo"], ["bertscore", "clinical"]) == [
        ("rarl", "rarl", "bertscore"), ("rarl-clinical", "rarl", "clinical"),
        ("grpo", "grpo", "bertscore"), ("grpo-clinical", "grpo", "clinical")]


def test_summary_scores_each_models_open_answers_three_ways():
    import demo

    def metrics(clinical, side):
        return {"n": 1000, "format_rate": 1.0, "closed": 0.7, "open": 0.4, "final": 0.6, "reasoning": 0.9,
                "open_n": 400, "open_bertscore": 0.8, "open_clinical": clinical, "side_error_rate": side}

    per_seed = {0: {"warm": metrics(0.50, 0.30), "rarl-clinical": metrics(0.60, 0.20)},
                1: {"warm": metrics(0.40, 0.10), "rarl-clinical": metrics(0.70, 0.00)}}
    _, markdown = demo.summarise(per_seed)
    assert "Open answers (400 questions)" in markdown
    assert "| warm | 40.0% | 80.0 | 45.0 | 20.0% |" in markdown
    assert "| rarl-clinical | 40.0% | 80.0 | 65.0 | 10.0% |" in markdown


@pytest.mark.demo
def test_demo_rl_raises_closed_accuracy_and_every_reward_without_losing_answers(tmp_path):
    """The README's first command at its full budget (seed 0; 6 minutes on a 2-core Xeon, 11 on an EPYC).

    It asserts what held on the 16 runs measured (seeds 0-4 x 1 and 2 threads on one 2-core Xeon, seeds
    0 and 1 on a 2-core AMD EPYC, seeds 0-2 on the EPYC with the shared-prefix forward, and seed 0 on a
    Xeon with the shared-prefix sums in a fixed order; torch 2.13 CPU; docs/DEMO.md), each with a margin below the worst
    run: format 99.1% to 100% after RL (warm starts 67.8% to 100%); closed accuracy rose on 15 of the 16
    by +0.7 to +16.3 points and fell by 0.8 on one (seed 2; seed 0, which this runs, gained +7.8 and +3.5
    on the EPYC and +16.3 on the Xeon; asserted: not below the warm start); all answers right moved by
    -0.3 to +15.8 (asserted: not more than 2 points below it, a loss RL at these settings has not shown);
    the sampled total reward rose by +0.24 to +0.65 and its format, accuracy and reasoning parts each by
    at least +0.057."""
    import demo

    table = demo.main(["--output-dir", str(tmp_path)])
    warm, rl = table["warm start (sft-full)"], table["rarl (RL from the warm start)"]
    assert rl["format_rate"]["mean"] >= 0.98  # 99.1% to 100%; warm starts ranged 67.8% to 100%
    assert rl["final"]["mean"] > warm["final"]["mean"] - 0.02  # EPYC -0.3 points; Xeon +1.5 or more
    assert rl["closed"]["mean"] >= warm["closed"]["mean"]
    result = json.loads((tmp_path / "summary.json").read_text())["per_seed"]["0"]["rarl (RL from the warm start)"]
    assert result["step"] in (25, 50, 75, 100, 125, 150)  # chosen on validation among the saved checkpoints
    rise = result["rise"]  # on the sampled training completions: last 20 steps minus the first 20
    assert rise["reward"] > 0.15
    assert min(rise["reward/format"], rise["reward/accuracy"], rise["reward/reasoning"]) > 0.02
    assert (tmp_path / "seed-0" / "rarl" / "curves.png").stat().st_size > 10_000
