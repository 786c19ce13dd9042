"""Which runs make the paper's Tables 2, 3 and 6, and the numbers the paper reports for them.

Each row names the training recipe (recipes/NAME.yaml) and the evaluation recipe it is scored with;
reproduce.py trains and evaluates each once and src/recipes/tables.py puts our numbers beside these.
Percentages are copied from the paper's tables; None is a cell the paper leaves empty ("—": no
reference reasoning outside its own test set, no human evaluation outside it).
"""
from __future__ import annotations

from dataclasses import dataclass

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
