"""The paper's Tables 2, 3 and 6: which runs make them, the numbers the paper reports, and tables that
put our numbers in a column beside each of the paper's.

Each row names the training recipe (recipes/NAME.yaml) and the evaluation recipe it is scored with;
reproduce.py trains and evaluates each once and `render_table` puts our numbers beside the paper's.
Percentages are copied from the paper's tables; None is a cell the paper leaves empty ("—": no
reference reasoning outside its own test set, no human evaluation outside it).

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

from dataclasses import dataclass

from src.eval.report import DATASET_NAMES

CV_BENCH_TASKS = ("Count", "Relation", "Depth", "Distance")   # CV-Bench's task names; the paper writes "Relationship"
SCORERS = ("GPT-4o mini", "Gemini 1.5 Flash", "Human Evaluation")
DATASETS = ("silvar-med", "vqa-rad", "slake", "vqa-med-2019", "path-vqa")  # Tables 3 and 6, top to bottom


@dataclass(frozen=True)
class ChoiceRow:
    """A row of Table 2: accuracy per CV-Bench task and in total."""

    method: str
    samples: int
    train: str | None             # recipes/<train>.yaml; None: a row from the literature, not run here
    paper: tuple[float, ...]      # Count, Relation, Depth, Distance, Total (%)


@dataclass(frozen=True)
class JudgeBlock:
    """A block of Table 3 or 6: one model under one inference prompt, a row per dataset with
    (Reasoning %, Final %) per scorer of SCORERS."""

    title: str
    train: str
    prompt: str
    paper: dict[str, tuple[float | None, ...]]   # dataset -> 6 cells: (R, F) x SCORERS


@dataclass(frozen=True)
class Table:
    name: str
    caption: str
    evaluate: str                 # recipes/<evaluate>.yaml, the evaluation every run of the table gets
    rows: tuple                   # ChoiceRow for Table 2, JudgeBlock for Tables 3 and 6


def _final_only(gpt: float, gemini: float) -> tuple[float | None, ...]:
    return (None, gpt, None, gemini, None, None)


TABLE_2 = Table(
    "Table 2", "Training strategies on CV-Bench under varying sample sizes (accuracy, %)", "table2/evaluate",
    (
        ChoiceRow("RL only (w/o LoRA) [32]", 15_000, None, (69.54, 61.84, 66.50, 65.50, 66.03)),
        ChoiceRow("SFT", 500, "table2/sft-500", (59.26, 52.61, 34.34, 38.33, 47.19)),
        ChoiceRow("SFT", 1_000, "table2/sft-1000", (59.90, 51.54, 46.67, 46.00, 51.67)),
        ChoiceRow("SFT", 5_000, "table2/sft-5000", (60.27, 65.54, 45.67, 42.83, 54.28)),
        ChoiceRow("RL w/ LoRA", 500, "table2/grpo-lora-500", (58.74, 54.19, 38.00, 41.23, 48.04)),
        ChoiceRow("RL w/ LoRA", 1_000, "table2/grpo-lora-1000", (60.30, 57.23, 48.33, 47.47, 53.33)),
        ChoiceRow("RL w/ LoRA", 5_000, "table2/grpo-lora-5000", (63.89, 68.61, 52.84, 50.83, 59.04)),
        ChoiceRow("RL only (w/o LoRA)", 5_000, "table2/grpo-full-5000", (64.43, 65.65, 50.35, 55.71, 59.29)),
    ),
)

TABLE_3 = Table(
    "Table 3", "Medical VQA with different fine-tuning methods (LLM-as-judge, %)", "table3/evaluate",
    (
        JudgeBlock("SFT", "table3/sft", "reasoning", {
            "silvar-med": (67.57, 64.86, 65.54, 62.21, 63.52, 60.81),
            "vqa-rad": _final_only(26.16, 22.37), "slake": _final_only(43.14, 42.89),
            "vqa-med-2019": _final_only(13.80, 11.43), "path-vqa": _final_only(9.09, 8.88)}),
        JudgeBlock("RL + LoRA", "table3/grpo-lora", "reasoning", {
            "silvar-med": (68.91, 61.49, 66.89, 60.81, 64.86, 62.84),
            "vqa-rad": _final_only(43.90, 42.13), "slake": _final_only(51.64, 52.02),
            "vqa-med-2019": _final_only(49.80, 49.20), "path-vqa": _final_only(24.26, 23.05)}),
    ),
)

TABLE_6 = Table(
    "Table 6", "RARL with prompting diversity, reasoning vs non-reasoning inference prompt (LLM-as-judge, %)",
    "table6/evaluate",
    (
        JudgeBlock("RARL, reasoning prompting in inference", "table6/rarl", "reasoning", {
            "silvar-med": (70.27, 64.86, 68.92, 64.86, 70.94, 65.54),
            "vqa-rad": _final_only(45.73, 44.00), "slake": _final_only(56.38, 54.71),
            "vqa-med-2019": _final_only(51.18, 50.47), "path-vqa": _final_only(25.33, 24.78)}),
        JudgeBlock("RARL, non-reasoning prompting in inference", "table6/rarl", "non-reasoning", {
            "silvar-med": (67.56, 61.49, 65.54, 61.49, 65.64, 60.81),
            "vqa-rad": _final_only(40.54, 40.21), "slake": _final_only(52.67, 52.55),
            "vqa-med-2019": _final_only(47.99, 46.31), "path-vqa": _final_only(24.00, 23.72)}),
    ),
)

TABLES = {"2": TABLE_2, "3": TABLE_3, "6": TABLE_6}

# ---- our numbers beside the paper's ----------------------------------------------------------

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
