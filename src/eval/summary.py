"""Gather everything an evaluation computed into one JSON-ready summary (OUTPUT/summary.json).

Rates are fractions in [0, 1] (the report prints them as percentages). Judge and human percentages
count only what was actually scored: a failed, unparseable, refused or truncated judgment, or an
empty human cell, is left out of the denominator and counted separately, never scored as 0.
Predictions that carry verdict-shaped text are counted per group and listed per judge.
"""
from __future__ import annotations

from dataclasses import dataclass

from src.eval.human_sheet import HumanScores
from src.eval.judge.judging import JudgeRun, Verdict, judge_cost_usd
from src.eval.metrics import mean


NOT_SCORED = ("unparseable", "refused", "truncated", "failed")  # the verdicts counted but never scored


@dataclass(frozen=True)
class Group:
    """The prediction records of one dataset split under one inference prompt."""

    dataset: str
    split: str
    prompt: str
    records: list[dict]


def judge_scores(records: list[dict], verdicts: list[Verdict]) -> dict:
    """Final = mean prediction_score, Reasoning = mean reasoning_score (records with a reference
    reasoning only; None where there are none), both over the "ok" verdicts."""
    ok = [(record, verdict) for record, verdict in zip(records, verdicts) if verdict.status == "ok"]
    reasoning = [verdict.reasoning_score for record, verdict in ok if record["reasoning_reference"]]
    return {
        "final": mean([verdict.prediction_score for _, verdict in ok]),
        "reasoning": mean(reasoning),
        "judged": len(ok),
        "judged_reasoning": len(reasoning),
        **{status: sum(v.status == status for v in verdicts) for status in NOT_SCORED},
        "verdict_in_prediction": sum(v.verdict_in_prediction for v in verdicts),
    }


def human_scores(records: list[dict], sheet: HumanScores) -> dict:
    """Mean human scores over the cells the reviewers filled, with how many they filled."""
    rows = [sheet.get((r["dataset"], r["split"], r["prompt"], r["id"]), {}) for r in records]
    final = [row["prediction_score"] for row in rows if row.get("prediction_score") is not None]
    reasoning = [row["reasoning_score"] for row in rows if row.get("reasoning_score") is not None]
    return {"final": mean(final), "reasoning": mean(reasoning), "scored": len(final), "scored_reasoning": len(reasoning)}


def build_summary(
    run: dict,
    groups: list[Group],
    metrics: list[dict],
    judge_runs: list[JudgeRun],
    sheet: HumanScores | None,
) -> dict:
    """The summary: run settings, then per group its metrics, judge and human scores, then per judge
    its token usage, cost and every record it could not score."""
    offsets = [sum(len(g.records) for g in groups[:i]) for i in range(len(groups) + 1)]
    summary_groups = []
    for i, (group, group_metrics) in enumerate(zip(groups, metrics)):
        entry = {"dataset": group.dataset, "split": group.split, "prompt": group.prompt, "metrics": group_metrics,
                 "judges": {jr.model: judge_scores(group.records, jr.verdicts[offsets[i]:offsets[i + 1]])
                            for jr in judge_runs}}
        if sheet is not None:
            entry["human"] = human_scores(group.records, sheet)
        summary_groups.append(entry)
    records = [record for group in groups for record in group.records]
    return {**run, "groups": summary_groups, "judges": {jr.model: _judge_totals(jr, records) for jr in judge_runs}}


def _judge_totals(judge_run: JudgeRun, records: list[dict]) -> dict:
    """Token usage and cost; every reply behind the verdicts and the share that was unparseable; the
    records not scored, and those whose prediction carries verdict-shaped text. The cost is unknown
    (None) when any reply came without usage or the model has no price, and 0 for a judge on this
    machine or a private network (no per-token charge)."""
    problems = [{"dataset": r["dataset"], "split": r["split"], "prompt": r["prompt"], "id": r["id"],
                 "status": v.status, "error": v.error}
                for r, v in zip(records, judge_run.verdicts) if v.status != "ok"]
    flagged = [{"dataset": r["dataset"], "split": r["split"], "prompt": r["prompt"], "id": r["id"],
                "status": v.status, "prediction_score": v.prediction_score}
               for r, v in zip(records, judge_run.verdicts) if v.verdict_in_prediction]
    if judge_run.replies_without_usage:
        cost = None
    elif judge_run.local:
        cost = 0.0
    else:
        cost = judge_cost_usd(judge_run.model, judge_run.prompt_tokens, judge_run.completion_tokens)
    return {
        "prompt_tokens": judge_run.prompt_tokens,
        "completion_tokens": judge_run.completion_tokens,
        "replies_without_usage": judge_run.replies_without_usage,
        "cost_usd": cost,
        "local": judge_run.local,
        "new_replies": judge_run.new_replies,
        "replies": judge_run.replies,
        "unparseable_replies": judge_run.unparseable_replies,
        "unparseable_reply_rate": judge_run.unparseable_replies / judge_run.replies if judge_run.replies else None,
        "json_mode": judge_run.json_mode,
        "not_scored": problems,
        "verdict_in_prediction": flagged,
    }
