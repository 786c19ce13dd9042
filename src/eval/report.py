"""What an evaluation hands to people: OUTPUT/summary.json, OUTPUT/report.md, and the human sheet.

The summary gathers everything an evaluation computed into one JSON-ready dict. Rates are fractions
in [0, 1] (the report prints them as percentages). A judge percentage counts every question the
judge answered: an unparseable, refused or truncated judgment is an answer a prediction's own text
can provoke, so it counts as not correct (0), never dropped, and is counted separately too; only a
failed judgment (no reply yet: a re-run asks again) is left out of the denominator, and listed.
Human percentages count the cells the reviewers filled. Predictions that carry verdict-shaped text
are counted per group and listed per judge.

The report renders the summary: the paper's table layout first, then the judge-free metrics. Table
3/6 layout: one row per dataset, Reasoning (%) and Final (%) per judge (and the Human Evaluation pair
when a scored sheet was imported), one block of rows per inference prompt. "—" marks a value that
does not exist (no reference reasoning, nothing scored).

The human sheet is a CSV for clinicians to score, read back into the summary. One row per prediction.
The reviewer fills reasoning_score and prediction_score with 1 (similar to the reference, the same
criterion the judge prompt states) or 0, or leaves a cell empty (not scored). Rows are keyed by
(dataset, split, prompt, id); the other columns are for reading only. Every text cell is written by a
model or a dataset, and a spreadsheet runs a cell that begins with "=", "+", "-" or "@" as a formula
(CSV injection: =HYPERLINK(...) sends data away when clicked), some after leading spaces, line breaks
or invisible characters, some in their full-width forms. So a cell whose first visible character is
one of those in any width, and one that begins with a tab, a carriage return or a "'", is written
with a "'" in front (OWASP's rule: the spreadsheet shows it as text); reading the sheet back removes
that "'", so the keys round-trip exactly.
"""
from __future__ import annotations

import csv
import io
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from src.eval.judge.judging import JudgeRun, Verdict, judge_cost_usd
from src.eval.metrics import mean
from src.files import write_atomic


# ---- the human sheet -------------------------------------------------------------------------

KEY_COLUMNS = ["dataset", "split", "prompt", "id"]
COLUMNS = [*KEY_COLUMNS, "image", "question", "reference_reasoning", "reference",
           "prediction_think", "prediction_answer", "reasoning_score", "prediction_score"]
SCORE_COLUMNS = ("reasoning_score", "prediction_score")
HumanScores = dict[tuple[str, str, str, str], dict[str, int | None]]


def export_human_sheet(records: list[dict], path: Path) -> None:
    """Write the sheet for `records`; refuses to overwrite a sheet that already holds scores."""
    if path.exists() and any(v is not None for row in read_human_sheet(path).values() for v in row.values()):
        raise FileExistsError(f"{path} already holds human scores; move it away before exporting again")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    for record in records:
        writer.writerow({column: as_text_cell(value) for column, value in {
            "dataset": record["dataset"], "split": record["split"], "prompt": record["prompt"], "id": record["id"],
            "image": record["image"] or "", "question": record["question"],
            "reference_reasoning": record["reasoning_reference"] or "",
            "reference": " | ".join([record["reference"], *record["alternatives"]]),
            "prediction_think": record["think"] or "", "prediction_answer": record["answer"],
            "reasoning_score": "", "prediction_score": "",
        }.items()})
    write_atomic(path, buffer.getvalue())


def read_human_sheet(path: Path) -> HumanScores:
    """Scores by (dataset, split, prompt, id): each 0, 1 or None (empty cell).

    Raises ValueError naming the file and row for a missing column, a duplicate key or a score
    other than 0, 1 or empty.
    """
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in (*KEY_COLUMNS, *SCORE_COLUMNS) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}")
        scores: HumanScores = {}
        for row in reader:
            where = f"{path}: row {reader.line_num} (id {row['id']!r})"
            key = tuple(from_text_cell(row[c]) for c in KEY_COLUMNS)
            if key in scores:
                raise ValueError(f"{where}: duplicate row for {key}")
            scores[key] = {column: _score(row[column], where, column) for column in SCORE_COLUMNS}
    return scores


FORMULA_STARTS = ("=", "+", "-", "@")
QUOTED_STARTS = ("\t", "\r", "'")  # OWASP's; "'" too, so that removing one "'" on reading is exact


def starts_like_formula(value: str) -> bool:
    """Whether a spreadsheet might run `value` as a formula: its first visible character, after any
    whitespace, line breaks, zero-width or other invisible characters and a byte-order mark, is one of
    FORMULA_STARTS in any width (the full-width ＝ ＋ － ＠ and the small forms read as = + - @ once
    NFKC-normalised, as some spreadsheets do), or it begins with a tab, a carriage return or a "'"."""
    if value.startswith(QUOTED_STARTS):
        return True
    first = next((c for c in value if not (c.isspace() or unicodedata.category(c) in ("Cc", "Cf"))), "")
    return unicodedata.normalize("NFKC", first).startswith(FORMULA_STARTS)


def as_text_cell(value: str) -> str:
    """`value` as a cell no spreadsheet runs as a formula: a "'" in front when it starts like one."""
    value = str(value)
    return f"'{value}" if starts_like_formula(value) else value


def from_text_cell(cell: str) -> str:
    """The value `as_text_cell` wrote (a cell a reviewer typed without the "'" reads as it is)."""
    return cell[1:] if cell.startswith("'") and starts_like_formula(cell[1:]) else cell


def _score(cell: str | None, where: str, column: str) -> int | None:
    text = (cell or "").strip()
    if text in ("", "0", "1"):
        return int(text) if text else None
    raise ValueError(f"{where}: {column} must be 0, 1 or empty, got {cell!r}")


# ---- the summary -----------------------------------------------------------------------------

NOT_CORRECT = ("unparseable", "refused", "truncated")  # answers without a readable verdict: scored 0
WITHOUT_VERDICT = (*NOT_CORRECT, "failed")              # every status but ok, counted per group and listed


@dataclass(frozen=True)
class Group:
    """The prediction records of one dataset split under one inference prompt."""

    dataset: str
    split: str
    prompt: str
    records: list[dict]


def judge_scores(records: list[dict], verdicts: list[Verdict]) -> dict:
    """Final = mean prediction_score, Reasoning = mean reasoning_score (records with a reference
    reasoning only; None where there are none), both over every verdict but the failed ones, an
    unparseable, refused or truncated one scoring 0. `scored` and `scored_reasoning` are those
    denominators; `judged` counts the ok verdicts."""
    answered = [(record, verdict) for record, verdict in zip(records, verdicts) if verdict.status != "failed"]
    final = [verdict.prediction_score if verdict.status == "ok" else 0 for _, verdict in answered]
    reasoning = [verdict.reasoning_score if verdict.status == "ok" else 0
                 for record, verdict in answered if record["reasoning_reference"]]
    return {
        "final": mean(final),
        "reasoning": mean(reasoning),
        "scored": len(final),
        "scored_reasoning": len(reasoning),
        "judged": sum(verdict.status == "ok" for _, verdict in answered),
        **{status: sum(v.status == status for v in verdicts) for status in WITHOUT_VERDICT},
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
    records without the judge's own verdict (status and why), and those whose prediction carries
    verdict-shaped text. The cost is unknown
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
        "without_verdict": problems,
        "verdict_in_prediction": flagged,
    }


# ---- the report ------------------------------------------------------------------------------

DATASET_NAMES = {
    "silvar-med": "Ours (reasoning set)", "vqa-rad": "VQA-RAD", "slake": "SLAKE", "vqa-med-2019": "VQA-Med 2019",
    "path-vqa": "Path-VQA", "cv-bench": "CV-Bench", "synthetic": "Synthetic",
}
PROMPT_TITLES = {"reasoning": "Reasoning prompting in inference", "non-reasoning": "Non-reasoning prompting in inference"}
CV_BENCH_TASKS = ("Count", "Relation", "Depth", "Distance")


def render_report(summary: dict) -> str:
    generation = summary["generation"]
    decoding = "greedy" if generation["temperature"] == 0 else f"sampling at temperature {generation['temperature']}"
    clinical = " Open answers also by the clinical score (docs/REWARDS.md)." if _clinical(summary) else ""
    lines = [f"# Evaluation of `{summary['model']}`", "",
             f"Generation: {decoding}, at most {generation['max_new_tokens']} new tokens. "
             f"BERTScore model: `{summary['bertscore_model']}`.{clinical}", ""]
    if summary["judges"] or _has_human(summary):
        lines += _paper_table(summary) + _judge_details(summary)
    lines += _metrics_table(summary) + _choice_table(summary)
    return "\n".join(lines) + "\n"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _dataset(group: dict) -> str:
    name = DATASET_NAMES.get(group["dataset"], group["dataset"])
    return name if group["split"] == "test" else f"{name} ({group['split']})"


def _has_human(summary: dict) -> bool:
    return any("human" in group for group in summary["groups"])


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _paper_table(summary: dict) -> list[str]:
    scorers = [*summary["judges"], *(["Human Evaluation"] if _has_human(summary) else [])]
    lines = ["## LLM-as-judge (layout of the paper's Tables 3 and 6)", "",
             _row(["Dataset", *(f"{s} {column}" for s in scorers for column in ("Reasoning (%)", "Final (%)"))]),
             _row(["---"] * (1 + 2 * len(scorers)))]
    for prompt in dict.fromkeys(group["prompt"] for group in summary["groups"]):
        lines.append(_row([f"**{PROMPT_TITLES.get(prompt, prompt)}**", *([""] * (2 * len(scorers)))]))
        for group in (g for g in summary["groups"] if g["prompt"] == prompt):
            scores = [*(group["judges"][judge] for judge in summary["judges"]),
                      *([group["human"]] if "human" in group else [])]
            lines.append(_row([_dataset(group), *(pct(s[key]) for s in scores for key in ("reasoning", "final"))]))
    return lines + [""]


def _judge_details(summary: dict) -> list[str]:
    lines = []
    for judge, totals in summary["judges"].items():
        lines += [f"### Judge `{judge}`", "",
                  f"Tokens: {totals['prompt_tokens']:,} prompt + {totals['completion_tokens']:,} completion"
                  f"{_without_usage(totals)}; cost {_cost(totals)}; replies received this run: "
                  f"{totals['new_replies']} (the rest came from the cache).", "",
                  f"Replies behind these verdicts: {totals['replies']}, of which unparseable: "
                  f"{totals['unparseable_replies']} ({pct(totals['unparseable_reply_rate'])}); "
                  f"JSON mode {'on' if totals['json_mode'] else 'off'}.",
                  "", "Scored: the questions behind Final (%) (Reasoning scored: behind Reasoning (%)): every one "
                      "the judge answered. An unparseable, refused or truncated answer counts as not correct: a "
                      "prediction's own text can provoke each. Failed questions got no reply; they are left out "
                      "and listed below, and a re-run asks them again.",
                  "", _row(["Dataset", "Prompt", "Scored", "Reasoning scored", "Judged", "Unparseable (0)",
                            "Refused (0)", "Truncated (0)", "Failed (left out)", "Verdict in prediction"]),
                  _row(["---"] * 10)]
        for group in summary["groups"]:
            s = group["judges"][judge]
            lines.append(_row([_dataset(group), group["prompt"],
                               *(str(s[key]) for key in ("scored", "scored_reasoning", "judged", "unparseable",
                                                         "refused", "truncated", "failed", "verdict_in_prediction"))]))
        lines.append("")
        for problem in totals["without_verdict"]:
            lines.append(f"- {problem['status']}: {problem['dataset']} {problem['prompt']} "
                         f"id {problem['id']}: {problem['error']}")
        lines += [""] if totals["without_verdict"] else []
        lines += _flagged(totals["verdict_in_prediction"])
    return lines


def _flagged(flagged: list[dict]) -> list[str]:
    """The predictions that carry verdict-shaped text: each judgment is the judge's own, but read them."""
    if not flagged:
        return []
    lines = [f"**{len(flagged)} prediction(s) carry text shaped like a judge's verdict** (a score written into the "
             "answer, which a judge may repeat): each verdict below is the judge's own, never the prediction's copy; "
             "read these before trusting their scores.", ""]
    lines += [f"- {f['dataset']} {f['prompt']} id {f['id']}: {f['status']}"
              + (f", prediction_score {f['prediction_score']}" if f["prediction_score"] is not None else "")
              for f in flagged]
    return lines + [""]


def _without_usage(totals: dict) -> str:
    n = totals["replies_without_usage"]
    return f" (and {n} repl{'y' if n == 1 else 'ies'} whose provider reported no usage)" if n else ""


def _cost(totals: dict) -> str:
    if totals["cost_usd"] is None:
        return "unknown (replies without usage)" if totals["replies_without_usage"] else "unknown (no price for this model)"
    if totals["local"]:
        return "no per-token charge (a local server; its GPU time is not counted)"
    return f"≈ ${totals['cost_usd']:.4f}"


def _clinical(summary: dict) -> bool:
    return summary.get("open_answer_score") == "clinical"


def _metrics_table(summary: dict) -> list[str]:
    clinical = _clinical(summary)
    header = ["Dataset", "Prompt", "n", "Format", "Closed acc. (n)", "Open recall", "Open EM", "Open BERTScore F1 (n)",
              *(["Open clinical"] if clinical else []), "Open side errors", "Choice acc. (n)",
              "Reasoning BERTScore F1 (n)"]
    lines = ["## Metrics without a judge", "", _row(header), _row(["---"] * len(header))]
    for group in summary["groups"]:
        m = group["metrics"]
        closed, open_, choice, reasoning = (m.get(k, {}) for k in ("closed", "open", "choice", "reasoning"))
        lines.append(_row([
            _dataset(group), group["prompt"], str(m["n"]), pct(m["format_rate"]),
            _with_n(closed, "accuracy"), pct(open_.get("token_recall")), pct(open_.get("exact_match")),
            _with_n(open_, "bertscore_f1", f1), *([f1(open_.get("clinical"))] if clinical else []),
            _side_errors(open_), _with_n(choice, "accuracy"), _with_n(reasoning, "bertscore_f1", f1),
        ]))
    return lines + [""]


def _side_errors(open_: dict) -> str:
    """The side-error rate over all open answers, with the count of errors and of the open questions
    that name a side or position: "2.50% (3 of 40)"."""
    if "side_error_rate" not in open_:
        return "—"
    return f"{pct(open_['side_error_rate'])} ({open_['side_errors']} of {open_['side_questions']})"


def _with_n(section: dict, key: str, fmt=None) -> str:
    """`section[key]` formatted (a percentage by default) with its count, or "—" for no section."""
    return f"{(fmt or pct)(section[key])} ({section['n']})" if section else "—"


def f1(value: float | None) -> str:
    """BERTScore F1 as the metric's authors print it: a number in [0, 1], four decimals."""
    return "—" if value is None else f"{value:.4f}"


def _choice_table(summary: dict) -> list[str]:
    groups = [g for g in summary["groups"] if g["metrics"].get("choice", {}).get("by_task")]
    if not groups:
        return []
    found = {task for g in groups for task in g["metrics"]["choice"]["by_task"]}
    tasks = [t for t in CV_BENCH_TASKS if t in found] + sorted(found - set(CV_BENCH_TASKS))
    lines = ["## Multiple choice per task (layout of the paper's Table 2; Total pools all questions)", "",
             _row(["Dataset", "Prompt", *(f"{t} Acc. (%)" for t in tasks), "Total Acc. (%)"]),
             _row(["---"] * (3 + len(tasks)))]
    for group in groups:
        choice = group["metrics"]["choice"]
        by_task = [pct(choice["by_task"].get(t, {}).get("accuracy")) for t in tasks]
        lines.append(_row([_dataset(group), group["prompt"], *by_task, pct(choice["accuracy"])]))
    return lines + [""]
