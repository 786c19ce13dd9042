"""OUTPUT/report.md from the summary: the paper's table layout first, then the judge-free metrics.

Table 3/6 layout: one row per dataset, Reasoning (%) and Final (%) per judge (and the Human
Evaluation pair when a scored sheet was imported), one block of rows per inference prompt. "—" marks
a value that does not exist (no reference reasoning, nothing scored).
"""
from __future__ import annotations

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
                  "", _row(["Dataset", "Prompt", "Judged", "Reasoning judged", "Unparseable", "Refused", "Truncated",
                            "Failed", "Verdict in prediction"]),
                  _row(["---"] * 9)]
        for group in summary["groups"]:
            s = group["judges"][judge]
            lines.append(_row([_dataset(group), group["prompt"], str(s["judged"]), str(s["judged_reasoning"]),
                               *(str(s[status]) for status in ("unparseable", "refused", "truncated", "failed",
                                                               "verdict_in_prediction"))]))
        lines.append("")
        for problem in totals["not_scored"]:
            lines.append(f"- {problem['status']}: {problem['dataset']} {problem['prompt']} "
                         f"id {problem['id']}: {problem['error']}")
        lines += [""] if totals["not_scored"] else []
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
