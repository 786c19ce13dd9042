"""The paper's Tables 2, 3 and 6 with our numbers in a column beside each of the paper's.

Our numbers come from each run's evaluation summary (evaluate.py's summary.json):
- Table 2: accuracy per CV-Bench task (the option letter) and Total, every question pooled. A dataset
  without those tasks (the synthetic set at tiny scale) still has a Total: its answers exactly right.
- Tables 3 and 6: per dataset, Reasoning % and Final % of each judge the evaluation ran, in the order
  of its --judge list beside the paper's GPT-4o mini and Gemini 1.5 Flash, and of an imported human
  sheet beside the paper's Human Evaluation; then two judge-free columns the paper does not have, so
  that a run without a judge is still compared: the reasoning's BERTScore F1 against the reference
  reasoning, and the share of answers exactly right (closed and multiple choice: correct; open:
  exact match).
"""
from __future__ import annotations

from src.eval.report import DATASET_NAMES
from src.recipes.paper import CV_BENCH_TASKS, SCORERS, ChoiceRow, JudgeBlock, Table

DASH = "—"


def answers_right(metrics: dict) -> float | None:
    """The share of questions whose answer is exactly right, over every answer type."""
    parts = [(metrics[kind]["n"], metrics[kind][key])
             for kind, key in (("closed", "accuracy"), ("choice", "accuracy"), ("open", "exact_match")) if kind in metrics]
    total = sum(n for n, _ in parts)
    return sum(n * value for n, value in parts) / total if total else None


def find_group(summary: dict | None, dataset: str, prompt: str | None = None) -> dict | None:
    """The summary's group for `dataset` (under `prompt`, or its first prompt), None if absent."""
    for group in (summary or {}).get("groups", []):
        if group["dataset"] == dataset and (prompt is None or group["prompt"] == prompt):
            return group
    return None


def choice_row_numbers(group: dict | None) -> list[float | None]:
    """Ours for a Table 2 row as fractions: accuracy per CV-Bench task, then Total."""
    if group is None:
        return [None] * (len(CV_BENCH_TASKS) + 1)
    by_task = group["metrics"].get("choice", {}).get("by_task", {})
    return [by_task.get(task, {}).get("accuracy") for task in CV_BENCH_TASKS] + [answers_right(group["metrics"])]


def judge_row_numbers(group: dict | None) -> list[float | None]:
    """Ours for a Table 3/6 row as fractions: (Reasoning, Final) per scorer of SCORERS (our judges
    in --judge order, then the human sheet), then the judge-free pair."""
    if group is None:
        return [None] * (2 * len(SCORERS) + 2)
    judges = list(group["judges"].values())[:2]
    scorers = judges + [None] * (2 - len(judges)) + [group.get("human")]
    cells = [score.get(key) if score else None for score in scorers for key in ("reasoning", "final")]
    metrics = group["metrics"]
    return cells + [metrics.get("reasoning", {}).get("bertscore_f1"), answers_right(metrics)]


def paper_cell(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}%"


def our_cell(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.2f}%"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render_table(table: Table, summaries: dict[str, dict | None], stand_in: dict[str, str]) -> tuple[list[str], list[dict]]:
    """Markdown lines and JSON rows of one table. `summaries`: evaluation summary per training recipe
    (None: not run); `stand_in`: the dataset evaluated in place of each of the paper's."""
    if isinstance(table.rows[0], ChoiceRow):
        return _render_choice(table, summaries, stand_in)
    return _render_judged(table, summaries, stand_in)


def _render_choice(table: Table, summaries: dict, stand_in: dict[str, str]) -> tuple[list[str], list[dict]]:
    columns = [*CV_BENCH_TASKS, "Total"]
    lines = [f"### {table.name}: {table.caption}", "",
             _row(["Method", "Training samples", *(f"{c} {who}" for c in columns for who in ("(paper)", "(ours)"))]),
             _row(["---"] * (2 + 2 * len(columns)))]
    records = []
    for row in table.rows:
        ours = choice_row_numbers(find_group(summaries.get(row.train), stand_in.get("cv-bench", "cv-bench")))
        lines.append(_row([row.method, f"{row.samples:,}",
                           *(cell for paper, our in zip(row.paper, ours) for cell in (paper_cell(paper), our_cell(our)))]))
        records.append({"method": row.method, "samples": row.samples, "recipe": row.train,
                        "paper": dict(zip(columns, row.paper)), "ours": dict(zip(columns, ours))})
    return lines + [""], records


def _render_judged(table: Table, summaries: dict, stand_in: dict[str, str]) -> tuple[list[str], list[dict]]:
    header = ["Dataset"]
    for scorer in SCORERS:
        for column in ("Reasoning", "Final"):
            header += [f"{scorer} {column} (paper)", f"{scorer} {column} (ours)"]
    header += ["No judge: Reasoning BERTScore F1 (ours)", "No judge: answers exactly right (ours)"]
    lines = [f"### {table.name}: {table.caption}", "", _row(header), _row(["---"] * len(header))]
    records, notes = [], []
    for block in table.rows:
        assert isinstance(block, JudgeBlock)
        summary = summaries.get(block.train)
        lines.append(_row([f"**{block.title}**", *([""] * (len(header) - 1))]))
        for dataset, paper in block.paper.items():
            ours = judge_row_numbers(find_group(summary, stand_in.get(dataset, dataset), block.prompt))
            cells = [cell for p, o in zip(paper, ours) for cell in (paper_cell(p), our_cell(o))]
            lines.append(_row([DATASET_NAMES.get(dataset, dataset), *cells, *(our_cell(o) for o in ours[len(paper):])]))
            keys = [f"{scorer} {column}" for scorer in SCORERS for column in ("Reasoning", "Final")]
            ours_keys = keys + ["no judge: reasoning BERTScore F1", "no judge: answers right"]
            records.append({"block": block.title, "dataset": dataset, "recipe": block.train, "prompt": block.prompt,
                            "paper": dict(zip(keys, paper)), "ours": dict(zip(ours_keys, ours))})
        if summary is not None:
            judges = list(summary.get("judges", {}))[:2]
            named = ", ".join(f"`{judge}` in the {scorer} columns" for judge, scorer in zip(judges, SCORERS))
            notes.append(f"{block.title}: our judges: {named or 'none (--judge none)'}.")
    return lines + [""] + list(dict.fromkeys(notes)) + ([""] if notes else []), records
