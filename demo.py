"""The embedded default end to end on a CPU: warm start, RL, evaluation before and after, curves.

    python demo.py --output-dir runs/demo                                  # the README's first command
    python demo.py --output-dir runs/table --seeds 0 1 2 3 4 --methods rarl grpo  # rarl vs grpo, 5 seeds
    python demo.py --output-dir runs/open --seeds 0 1 2 --open-answer-scores bertscore clinical  # open-answer rewards

A random tiny model cannot produce the <think>/<answer> format by chance, so RL starts from a warm
start made by the same command: a short supervised run (sft-full) that learns the format and part of
the answers. Both train on the first 616 training questions; the other 600 are a validation split that
chooses the RL checkpoint (as the paper keeps a checkpoint every 100 steps "to capture peak
performance"), so the test set is read once per model and never chooses anything. Each stage is the
project's own command, run in-process and printed as a command line:

    1. python train.py --method sft-full --split "train[:616]" ...        warm start (full fine-tuning)
    2. python evaluate.py --model WARM_START --datasets synthetic:test ...  held-out test set, before RL
    3. python train.py --method rarl --model WARM_START ...                RL with LoRA, a checkpoint every 25 steps
                                                                           (per method and open-answer score)
    4. python evaluate.py --model CHECKPOINT --datasets "synthetic:train[616:]" ...   each checkpoint on validation
    5. python evaluate.py --model CHOSEN ...                               the test set, after RL (and the last
                                                                           checkpoint's, to show what choosing did)
    6. curves.png from the RL run's metrics.jsonl; summary.md / summary.json over all seeds

Every stage resumes: re-running the command skips what is already on disk.
"""
from __future__ import annotations

from src.cli.threads import configure_cpu_threads

configure_cpu_threads()  # before torch loads its OpenMP runtime: see docs/CPU.md

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import evaluate  # noqa: E402
import train  # noqa: E402
from src.cli.checks import number  # noqa: E402
from src.cli.errors import run_main  # noqa: E402
from src.cli.help import HelpFormatter  # noqa: E402
from src.files import write_atomic  # noqa: E402
from src.grpo.run_log import plot_curves, plot_validation, read_metrics  # noqa: E402
from src.rewards.open_answers import METHODS as OPEN_ANSWER_SCORES  # noqa: E402

# The settings of each stage, as the command-line flags they are (docs/DEMO.md has the runs behind
# them), not tuned per method: rarl and grpo get the same budget.
COMMON = ["--dataset", "synthetic", "--device", "cpu", "--no-gradient-checkpointing"]
WARM_START = ["--method", "sft-full", "--model", "tiny", "--prompts-per-step", "16", "--mini-batch-size", "16",
              "--learning-rate", "2e-3", "--schedule", "constant", "--warmup-ratio", "0"]
RL = ["--prompts-per-step", "8", "--group-size", "8", "--mini-batch-size", "64", "--max-completion-length", "64",
      "--learning-rate", "1e-3", "--lora-r", "16", "--lora-alpha", "32",
      "--lora-targets", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
      "--beta", "0.04", "--schedule", "constant", "--warmup-ratio", "0"]
WARM_START_STEPS, RL_STEPS, SAVE_EVERY = 600, 150, 25
TRAIN_SPLIT, VALIDATION_SPLIT = "train[:616]", "train[616:]"  # of the 1,216 synthetic training questions
WARM = "warm start (sft-full)"  # the warm start's row in every table
EVALUATION = ["--prompt", "explanation", "--max-new-tokens", "64", "--batch-size", "50", "--judge", "none",
              "--open-answer-score", "clinical"]
# The paper's Table 3 reports the final answer and the reasoning; so does the demo, offline: answers
# right over all questions (closed: exact, open: exact match), and the reasoning's BERTScore F1 against
# the reference reasoning (the paper's judge scores are what `evaluate.py --judge` adds on real data).
ROWS = (("format_rate", "Format", "%"), ("closed", "Closed acc.", "%"), ("open", "Open exact match", "%"),
        ("final", "All answers", "%"), ("reasoning", "Reasoning F1 x100", ""))
# The open answers scored three ways (every model, whichever reward trained it), and the share of them
# naming a side or position that contradicts the reference (a wrong quadrant in the synthetic set).
OPEN_ROWS = (("open", "Exact match", "%"), ("open_bertscore", "BERTScore x100", ""),
             ("open_clinical", "Clinical x100", ""), ("side_error_rate", "Side errors", "%"))


def show(argv: list[str], program: str) -> None:
    print(f"\n$ python {program} " + " ".join(argv), flush=True)


def run_train(argv: list[str]) -> Path:
    show(argv, "train.py")
    return Path(train.main(argv + ["--resume"]))


def run_evaluate(model: Path, output_dir: Path, questions: int | None, split: str = "test") -> dict:
    """evaluate.py on the split, or on its first `questions` questions (--questions: a quick pipeline run)."""
    argv = ["--model", str(model), "--output-dir", str(output_dir), "--datasets", f"synthetic:{split}", *EVALUATION]
    if questions:
        argv += ["--limit", str(questions)]
    show(argv, "evaluate.py")
    summary = evaluate.main(argv)
    metrics = summary["groups"][0]["metrics"]
    closed, open_ = metrics["closed"], metrics["open"]
    right = closed["accuracy"] * closed["n"] + open_["exact_match"] * open_["n"]
    by_kind = {**{kind: m["accuracy"] for kind, m in closed["by_task"].items()},     # presence, side, ...
               **{kind: m["exact_match"] for kind, m in open_["by_task"].items()}}   # count, location
    return {"n": metrics["n"], "format_rate": metrics["format_rate"], "closed": closed["accuracy"],
            "open": open_["exact_match"], "final": right / (closed["n"] + open_["n"]),
            "reasoning": metrics["reasoning"]["bertscore_f1"], "open_n": open_["n"],
            "open_bertscore": open_["bertscore_f1"], "open_clinical": open_["clinical"],
            "side_error_rate": open_["side_error_rate"], "by_kind": dict(sorted(by_kind.items()))}


def rl_runs(methods: Sequence[str], scores: Sequence[str]) -> list[tuple[str, str, str]]:
    """(run name, method, open-answer score) of each RL run; the name is the method's alone for the
    paper's bertscore, else "method-score" (rarl-clinical)."""
    return [(method if score == "bertscore" else f"{method}-{score}", method, score)
            for method in methods for score in scores]


def run_seed(seed: int, methods: list[str], out: Path, warm_steps: int, rl_steps: int,
             questions: int | None = None, scores: Sequence[str] = ("bertscore",)) -> dict[str, dict]:
    """Warm start, then each RL method from it under each open-answer score; test metrics of every model."""
    seed_dir = out / f"seed-{seed}"
    steps = ["--max-steps", str(warm_steps), "--save-steps", str(warm_steps)]
    warm = run_train(COMMON + WARM_START + steps + ["--split", TRAIN_SPLIT, "--seed", str(seed),
                                                    "--output-dir", str(seed_dir / "warm-start")])
    results = {WARM: run_evaluate(warm, seed_dir / "eval-warm-start", questions)}
    validation = run_evaluate(warm, seed_dir / "validation-warm-start", questions, VALIDATION_SPLIT)
    results[WARM]["validation"] = {0: validation["final"]}
    for name, method, score in rl_runs(methods, scores):
        run_dir = seed_dir / name
        save_every = min(SAVE_EVERY, rl_steps)
        steps = ["--max-steps", str(rl_steps), "--save-steps", str(save_every), "--open-answer-score", score]
        final = run_train(COMMON + RL + steps + ["--method", method, "--model", str(warm), "--split", TRAIN_SPLIT,
                                                  "--seed", str(seed), "--output-dir", str(run_dir)])
        plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", title=f"{name}, seed {seed}")
        saved = sorted({*range(save_every, rl_steps + 1, save_every), rl_steps})
        chosen, validation = choose_checkpoint(run_dir, saved, seed_dir / f"validation-{name}", questions)
        result = run_evaluate(run_dir / f"checkpoint-{chosen}", seed_dir / f"eval-{name}", questions)
        last = result if chosen == rl_steps else run_evaluate(final, seed_dir / f"eval-{name}-last", questions)
        result.update(step=chosen, validation=validation, last={k: last[k] for k, _, _ in ROWS},
                      rise=reward_rise(run_dir / "metrics.jsonl"))
        results[f"{name} (RL from the warm start)"] = result
    return results


def choose_checkpoint(run_dir: Path, steps: list[int], eval_dir: Path,
                      questions: int | None) -> tuple[int, dict[int, float]]:
    """The step whose checkpoint answers most validation questions right (the earliest of ties), and
    each checkpoint's share right. Only RL checkpoints compete: the warm start is what RL is compared to."""
    validation = {step: run_evaluate(run_dir / f"checkpoint-{step}", eval_dir / f"checkpoint-{step}", questions,
                                     VALIDATION_SPLIT)["final"] for step in steps}
    return best_step(validation), validation


def best_step(validation: dict[int, float]) -> int:
    """The step with the highest validation score; the earliest of ties (the least drift from the warm start)."""
    return max(validation, key=lambda step: (validation[step], -step))


def reward_rise(metrics_path: Path, window: int = 20) -> dict[str, float]:
    """Mean of each reward over the last `window` steps minus its mean over the first `window`."""
    records = read_metrics(metrics_path)
    window = max(1, min(window, len(records) // 2))
    keys = [k for k in records[0] if k == "reward" or k.startswith("reward/")]
    first, last = records[:window], records[-window:]

    def mean(rows, key):
        values = [r[key] for r in rows if key in r]
        return sum(values) / len(values) if values else float("nan")

    return {k: mean(last, k) - mean(first, k) for k in keys}


def summarise(per_seed: dict[int, dict[str, dict]]) -> tuple[dict, str]:
    """Mean and spread (population std) over seeds, as JSON and as a Markdown table (paper's Table 3 layout)."""
    models = list(next(iter(per_seed.values())))
    table = {}
    for model in models:
        table[model] = {}
        for key, _, _ in ROWS:
            values = [per_seed[s][model][key] for s in per_seed]
            table[model][key] = {"mean": statistics.fmean(values),
                                 "std": statistics.pstdev(values) if len(values) > 1 else 0.0, "values": values}
    seeds, questions = ", ".join(str(s) for s in per_seed), next(iter(per_seed.values()))[models[0]]["n"]
    lines = [f"Held-out synthetic test set ({questions} questions), greedy decoding, seeds {seeds}: "
             "mean ± std over seeds.",
             "", "| Model | " + " | ".join(label for _, label, _ in ROWS) + " |", "|---" * (len(ROWS) + 1) + "|"]
    for model, cells in table.items():
        lines.append(f"| {model} | " + " | ".join(
            f"{100 * cells[k]['mean']:.1f}{unit} ± {100 * cells[k]['std']:.1f}" for k, _, unit in ROWS) + " |")
    kinds = sorted({kind for results in per_seed.values() for result in results.values()
                    for kind in result.get("by_kind", {})})
    if kinds:
        lines += ["", "By question kind (closed: accuracy; open: exact match), mean over seeds:", "",
                  "| Model | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
        for model in models:
            means = [statistics.fmean(per_seed[s][model]["by_kind"][kind] for s in per_seed) for kind in kinds]
            lines.append(f"| {model} | " + " | ".join(f"{100 * m:.1f}%" for m in means) + " |")
    return table, "\n".join(lines + open_lines(per_seed) + gain_lines(per_seed)) + "\n"


def open_lines(per_seed: dict[int, dict[str, dict]]) -> list[str]:
    """The open answers of each model scored three ways, and their side errors: mean over seeds."""
    results = [result for results in per_seed.values() for result in results.values()]
    if not all("open_clinical" in result for result in results):
        return []
    models = list(next(iter(per_seed.values())))
    lines = ["", f"Open answers ({results[0]['open_n']} questions), mean over seeds; side errors: answers whose side "
             "or position contradicts the reference:", "",
             "| Model | " + " | ".join(label for _, label, _ in OPEN_ROWS) + " |", "|---" * (len(OPEN_ROWS) + 1) + "|"]
    for model in models:
        means = [statistics.fmean(per_seed[s][model][key] for s in per_seed) for key, _, _ in OPEN_ROWS]
        lines.append(f"| {model} | " + " | ".join(f"{100 * m:.1f}{unit}" for m, (_, _, unit) in zip(means, OPEN_ROWS))
                     + " |")
    return lines


def gain_lines(per_seed: dict[int, dict[str, dict]]) -> list[str]:
    """Per seed, each RL model's "All answers" minus its warm start's, in points: the checkpoint chosen
    on validation (its step) and the last one; then the mean and the worst seed."""
    models = [model for model, result in next(iter(per_seed.values())).items() if "last" in result]  # RL runs
    if not models:
        return []
    lines = ["", "All answers, RL minus its warm start, in points (checkpoint chosen on validation / last checkpoint):", "",
             "| Model | " + " | ".join(f"seed {s}" for s in per_seed) + " | mean | worst |", "|---" * (len(per_seed) + 3) + "|"]
    for model in models:
        chosen = [100 * (per_seed[s][model]["final"] - per_seed[s][WARM]["final"]) for s in per_seed]
        last = [100 * (per_seed[s][model]["last"]["final"] - per_seed[s][WARM]["final"]) for s in per_seed]
        cells = [f"{c:+.1f} (step {per_seed[s][model]['step']}) / {l:+.1f}" for s, c, l in zip(per_seed, chosen, last)]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {statistics.fmean(chosen):+.1f} / {statistics.fmean(last):+.1f}"
                     f" | {min(chosen):+.1f} / {min(last):+.1f} |")
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/demo"), help="where every stage's output goes")
    parser.add_argument("--seeds", type=number(int, min=0), nargs="+", default=[0],
                        help="one warm start and RL run per seed")
    parser.add_argument("--methods", nargs="+", default=["rarl"], choices=["rarl", "grpo"],
                        help="RL methods, each run from the same warm start")
    parser.add_argument("--warm-start-steps", type=number(int, min=1), default=WARM_START_STEPS,
                        help="supervised warm-start steps")
    parser.add_argument("--open-answer-scores", nargs="+", default=["bertscore"], choices=OPEN_ANSWER_SCORES,
                        help="how open answers earn the accuracy reward; one RL run per method and score "
                             "(run folders: rarl, rarl-clinical)")
    parser.add_argument("--rl-steps", type=number(int, min=1), default=RL_STEPS, help="RL steps per run")
    parser.add_argument("--questions", type=number(int, min=1), default=None,
                        help="evaluate on the first N questions of the test and validation splits (default: all; "
                             "a smaller number makes a quick pipeline run, not a measurement)")
    args = parser.parse_args(argv)
    per_seed = {seed: run_seed(seed, args.methods, args.output_dir, args.warm_start_steps, args.rl_steps,
                               args.questions, args.open_answer_scores) for seed in args.seeds}
    table, markdown = summarise(per_seed)
    write_atomic(args.output_dir / "summary.json", json.dumps({"per_seed": per_seed, "table": table}, indent=2))
    write_atomic(args.output_dir / "summary.md", markdown)
    curves, chosen = {}, {}  # per RL run: validation score by step (0: its warm start), the step chosen
    for seed, results in per_seed.items():
        for model, result in results.items():
            if "last" in result:
                label = f"{model.split()[0]}, seed {seed}"
                curves[label], chosen[label] = {**results[WARM]["validation"], **result["validation"]}, result["step"]
    plot_validation(curves, chosen, args.output_dir / "validation.png",
                    f"synthetic:{VALIDATION_SPLIT}, answers right at each checkpoint (* the one chosen)")
    print("\n" + markdown)
    for seed, results in per_seed.items():
        for model, result in results.items():
            if "rise" in result:
                rises = ", ".join(f"{k} {v:+.3f}" for k, v in result["rise"].items())
                print(f"seed {seed}, {model}: reward change over training (mean of the last steps - the first): {rises}")
    print(f"\ncurves: {sorted(str(p) for p in args.output_dir.glob('seed-*/*/curves.png'))}, "
          f"{args.output_dir / 'validation.png'}")
    return table


if __name__ == "__main__":
    run_main(main)
