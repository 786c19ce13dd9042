"""Does RL in bf16 learn like RL in fp32? The same tiny-model GRPO run in both dtypes, seed by seed.

    python -m benchmarks.bf16_learning --seeds 0 1 2 --output-dir runs/bf16-learning

A random tiny model cannot write the <think>/<answer> format, so RL starts from one warm start (the
demo's supervised full fine-tuning, fp32, --warm-start-steps steps), shared by every run. From it, for
each seed, `train.py --method grpo` runs --rl-steps steps with the demo's RL settings (LoRA r 16 on
every linear layer of the language model, lr 1e-3, beta 0.04) twice: --dtype float32 and --dtype
bfloat16, the same seed, so the same data order and LoRA initialisation (the sampled tokens part ways
as soon as the two dtypes' logits round differently). Reported per run, from metrics.jsonl: the mean
reward over the first and the last --window steps and their difference (the rise), the mean
rollout_logp_diff and rollout_kl (how far the sampler's log-probs are from the update's forward), and
the seconds per step. Everything is train.py's own command line, run in-process; a re-run resumes.
Writes OUTPUT/bf16_learning.json and prints a table.
"""
from __future__ import annotations

from src.cli.threads import configure_cpu_threads

configure_cpu_threads()  # before torch loads its OpenMP runtime: see docs/CPU.md

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
from pathlib import Path  # noqa: E402

import train  # noqa: E402
from src.files import write_atomic  # noqa: E402
from src.grpo.run_log import read_metrics  # noqa: E402

COMMON = ["--dataset", "synthetic", "--device", "cpu", "--no-gradient-checkpointing", "--split", "train[:616]"]
WARM_START = ["--method", "sft-full", "--model", "tiny", "--prompts-per-step", "16", "--mini-batch-size", "16",
              "--learning-rate", "2e-3", "--schedule", "constant", "--warmup-ratio", "0", "--dtype", "float32"]
RL = ["--method", "grpo", "--prompts-per-step", "4", "--group-size", "8", "--mini-batch-size", "32",
      "--max-completion-length", "64", "--learning-rate", "1e-3", "--lora-r", "16", "--lora-alpha", "32",
      "--lora-targets", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
      "--beta", "0.04", "--schedule", "constant", "--warmup-ratio", "0"]
DTYPES = ("float32", "bfloat16")


def run_train(argv: list[str]) -> Path:
    print("\n$ python train.py " + " ".join(argv), flush=True)
    return Path(train.main(argv + ["--resume"]))


def summarise(metrics: list[dict], window: int) -> dict:
    def mean(rows, key):
        return statistics.fmean(row[key] for row in rows)

    first, last = metrics[:window], metrics[-window:]
    return {"reward_first": mean(first, "reward"), "reward_last": mean(last, "reward"),
            "rise": mean(last, "reward") - mean(first, "reward"),
            "format_first": mean(first, "reward/format"), "format_last": mean(last, "reward/format"),
            "rollout_logp_diff": mean(metrics, "rollout_logp_diff"), "rollout_kl": mean(metrics, "rollout_kl"),
            "seconds_per_step": statistics.median(sum(v for k, v in row.items() if k.startswith("time/"))
                                                  for row in metrics)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("runs/bf16-learning"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--warm-start-steps", type=int, default=150)
    parser.add_argument("--rl-steps", type=int, default=40)
    parser.add_argument("--window", type=int, default=10, help="steps averaged at the start and at the end")
    args = parser.parse_args(argv)
    out = args.output_dir
    warm = run_train(COMMON + WARM_START + ["--max-steps", str(args.warm_start_steps), "--save-steps",
                                            str(args.warm_start_steps), "--seed", "0",
                                            "--output-dir", str(out / "warm-start")])
    runs: dict[str, dict[str, dict]] = {}
    for seed in args.seeds:
        for dtype in DTYPES:
            run_dir = out / f"seed-{seed}-{dtype}"
            run_train(COMMON + RL + ["--model", str(warm), "--max-steps", str(args.rl_steps), "--save-steps",
                                     str(args.rl_steps), "--seed", str(seed), "--dtype", dtype,
                                     "--output-dir", str(run_dir)])
            runs.setdefault(str(seed), {})[dtype] = summarise(read_metrics(run_dir / "metrics.jsonl"), args.window)
    result = {"settings": vars(args) | {"output_dir": str(out)}, "runs": runs}
    write_atomic(out / "bf16_learning.json", json.dumps(result, indent=2) + "\n")
    print(f"\n{'seed':<5} {'dtype':<9} {'reward first':>12} {'last':>6} {'rise':>7} {'format':>13} "
          f"{'logp diff':>10} {'rollout kl':>10} {'s/step':>7}")
    for seed, by_dtype in runs.items():
        for dtype, r in by_dtype.items():
            print(f"{seed:<5} {dtype:<9} {r['reward_first']:>12.3f} {r['reward_last']:>6.3f} {r['rise']:>+7.3f} "
                  f"{r['format_first']:>6.2f}->{r['format_last']:<5.2f} {r['rollout_logp_diff']:>10.2e} "
                  f"{r['rollout_kl']:>10.2e} {r['seconds_per_step']:>7.2f}")
    return result


if __name__ == "__main__":
    main()
