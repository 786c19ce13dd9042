"""The real job at real size on a CPU: train.py, --resume, evaluate.py and PEFT on a released architecture.

    python -m benchmarks.real_size                               # Qwen2-VL-2B, random weights, fp32: 15 min, 14 GB peak
    python -m benchmarks.real_size --model qwen3-vl-2b-random    # Qwen3-VL-2B's architecture: 8 min, 12.4 GB
    python -m benchmarks.real_size --model qwen2.5-vl-3b-random --dtype bfloat16   # Qwen2.5-VL-3B's: 15 min, 10.3 GB
    python -m benchmarks.real_size --model tiny-qwen3-vl         # the same phases on a tiny model (a test)
    python -m benchmarks.real_size --phases checks,peft          # again, from what an earlier run left in --work-dir

No real weights are needed: benchmarks/qwen2_vl_2b.py writes each family's released architecture with
random weights as an ordinary model directory (bf16, kept in --work-dir: 4.4 GB for Qwen2-VL-2B, 4.3 GB
for Qwen3-VL-2B, 7.6 GB for Qwen2.5-VL-3B), with the family's tokenizer and the released image
processor limits. The phases run the commands users run, each in its own process, so that its seconds
and peak resident memory are its own:

  build     the model directory (once; a later run reuses it)
  train     python train.py --method rarl: 2 steps of 1 prompt x G 2 x 16 completion tokens, on a 512 x 512
            image and a 640 x 480 one (324 and 391 image tokens at 28 px per token; Qwen3-VL: 256 and 300
            at 32 px), checkpoint-2
  resume    the same command with --resume --max-steps 3: one more step from checkpoint-2
  evaluate  python evaluate.py --judge none on 3 questions (512 x 512, 640 x 480, 480 x 640) in one batch
  checks    what breaks first at real size, asserted on checkpoint-3 loaded by our loader: each image's
            `<|image_pad|>` count is t*h*w/4 of its grid; the chunked lm_head's log-probs equal a plain
            log_softmax over the 151,936-token vocabulary (on a slice of positions); LoRA sits on exactly
            the language model's layers x {q, k, v, o} projections; a backward pass leaves the vision tower
            without gradient (its output never requires grad) and reaches every LoRA factor
  peft      peft.PeftModel.from_pretrained(base, checkpoint-3) gives our logits, and not the base model's

The run uses the CPU default, fp32: on 2 cores one Qwen2-VL-2B step measured 160 s in fp32 and 228 s
in bf16 (bf16 matmuls are not faster on that CPU), at 14.6 GB and 5.7 GB peak (docs/BENCHMARKS.md). The
schedule is constant without warm-up, so that every step updates the adapter (at the default LoRA
learning rate) and the PEFT comparison can tell the adapter from the base model. Writes
WORK/real_size.json and ends with a table of seconds and peak resident memory per phase.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# the --model names (benchmarks/qwen2_vl_2b.py: RANDOM_MODELS; src/models/tiny.py: TINY_MODELS), listed here
# so that this parent process, which only starts and times the phases, does not import torch
RANDOM_MODELS = ("qwen2-vl-2b-random", "qwen2.5-vl-3b-random", "qwen3-vl-2b-random")
TINY_MODELS = ("tiny", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-qwen3-vl")
PHASES = ("build", "train", "resume", "evaluate", "checks", "peft")
IN_PROCESS = ("checks", "peft")  # run by this module in a child process
GIB = 2**30
TRAIN_IMAGES = ((512, 512), (640, 480))               # (width, height)
TEST_IMAGES = ((512, 512), (640, 480), (480, 640))
# Qwen2-VL's and Qwen2.5-VL's processor: 512 x 512 -> 504 x 504 = 36 x 36 patches -> 324 tokens;
# 640 x 480 -> 644 x 476 = 46 x 34 patches -> 391 tokens (sides rounded to multiples of 28, t*h*w / 2**2).
# Qwen3-VL's (16 px patches, multiples of 32): 512 x 512 = 32 x 32 patches -> 256; 640 x 480 = 40 x 30 -> 300.
REAL_IMAGE_TOKENS = {28: {(512, 512): 324, (640, 480): 391, (480, 640): 391},
                     32: {(512, 512): 256, (640, 480): 300, (480, 640): 300}}
COMPLETION_TOKENS = 16
SLICE = 8  # completion positions whose full-vocabulary logits are compared


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def write_dataset(root: Path) -> None:
    """A reasoning set (silvar-med's schema, docs/DATA.md) with real-size images: 2 train, 3 test rows."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "test": []}
    questions = [("Is there a lesion?", "The organ shows one bright round lesion.", "yes", "CT"),
                 ("Where is the largest lesion?", "The largest lies in the upper left of the organ.", "upper left",
                  "MRI"),
                 ("Is the image abnormal?", "There is no visible lesion, so the organ looks normal.", "no", "X-ray")]
    for split, sizes in (("train", TRAIN_IMAGES), ("test", TEST_IMAGES)):
        for i, (width, height) in enumerate(sizes):
            name = f"{split}-{i}-{width}x{height}.png"
            noise_image(width, height, seed=len(rows["train"]) + i).save(root / "images" / name)
            question, reasoning, answer, modality = questions[i]
            rows[split].append(dict(id=f"{split}-{i}", image=name, question=question, reasoning=reasoning,
                                    answer=answer, modality=modality))
    for split, records in rows.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


class Work:
    """Where each phase reads and writes, under --work-dir, and the dtype every phase runs in."""

    def __init__(self, directory: Path, name: str, dtype: str = "auto"):
        self.dir, self.name, self.dtype = directory, name, dtype
        self.real_size = name in RANDOM_MODELS       # else a tiny model, which builds itself
        self.model = str(directory / f"model-{name}") if self.real_size else name
        self.data, self.run, self.eval = directory / "data", directory / "run", directory / "eval"
        self.result = directory / "real_size.json"
        self.peft_input = directory / "peft_input.pt"

    @property
    def checkpoint(self) -> Path:
        return self.run / "checkpoint-3"


def train_command(work: Work, steps: int, resume: bool) -> list[str]:
    return [sys.executable, "train.py", "--method", "rarl", "--model", work.model, "--dataset", "silvar-med",
            "--data-root", str(work.data), "--prompts-per-step", "1", "--group-size", "2",
            "--max-completion-length", str(COMPLETION_TOKENS), "--max-steps", str(steps), "--save-steps", "2",
            "--schedule", "constant", "--warmup-ratio", "0", "--device", "cpu", "--dtype", work.dtype,
            "--output-dir", str(work.run)] + (["--resume"] if resume else [])


def phase_command(phase: str, work: Work) -> list[str]:
    if phase == "build":
        return [sys.executable, "-m", "benchmarks.qwen2_vl_2b", "--model", work.name, "--save", work.model]
    if phase == "train":
        return train_command(work, steps=2, resume=False)
    if phase == "resume":
        return train_command(work, steps=3, resume=True)
    if phase == "evaluate":
        return [sys.executable, "evaluate.py", "--model", str(work.checkpoint), "--datasets", "silvar-med:test",
                "--data-root", f"silvar-med={work.data}", "--prompt", "reasoning", "--judge", "none",
                "--max-new-tokens", str(COMPLETION_TOKENS), "--batch-size", str(len(TEST_IMAGES)), "--device", "cpu",
                "--dtype", work.dtype, "--output-dir", str(work.eval)]
    return [sys.executable, "-m", "benchmarks.real_size", "--model", work.name, "--work-dir", str(work.dir),
            "--dtype", work.dtype, "--in-process", phase]


def run_child(command: list[str], log_path: Path) -> tuple[int, float, int, str]:
    """Run `command` from the repository root, echoing its output; (exit code, seconds, peak RSS bytes, output)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")  # nothing here needs the network
    start = time.perf_counter()
    output = bytearray()
    with open(log_path, "wb") as log:
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for chunk in iter(lambda: child.stdout.read1(1 << 16), b""):
            log.write(chunk)
            output += chunk
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage: its peak resident set
        child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, time.perf_counter() - start, usage.ru_maxrss * 1024, output.decode(errors="replace")


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def verify(phase: str, work: Work, output: str) -> dict:
    """What each command must have left behind; returns the figures it reports."""
    if phase == "build":
        assert (Path(work.model) / "model.safetensors").is_file(), "no model.safetensors written"
        return {}
    if phase in ("train", "resume"):
        steps = 2 if phase == "train" else 3
        lines = metrics(work.run)
        assert [m["step"] for m in lines] == list(range(1, steps + 1)), f"metrics.jsonl steps {[m['step'] for m in lines]}"
        assert (work.run / f"checkpoint-{steps}" / "adapter_model.safetensors").is_file(), f"no checkpoint-{steps}"
        if phase == "resume":
            assert "resumed from" in output and "checkpoint-2" in output, "train.py --resume did not resume"
        new = lines[steps - (2 if phase == "train" else 1):]
        return {"steps": [{k: round(m[k], 3) for k in m if k.startswith("time/") or k == "peak_memory_mb"}
                          | {k: float(f"{m[k]:.3g}") for k in ("rollout_logp_diff", "rollout_kl")} for m in new]}
    if phase == "evaluate":
        predictions = work.eval / "predictions" / "silvar-med-test-reasoning.jsonl"
        records = [json.loads(line) for line in predictions.read_text().splitlines()]
        assert len(records) == len(TEST_IMAGES), f"{len(records)} predictions"
        assert (work.eval / "summary.json").is_file(), "no summary.json"
        return {"predictions": len(records)}
    return json.loads((work.dir / f"{phase}.json").read_text())


def checks(work: Work) -> dict:
    """Load checkpoint-3 with our loader and assert what would break first at real size."""
    import torch
    from safetensors import safe_open

    from src.data.loaders import load_dataset
    from src.data.prompts import TRAINING_PROMPTS
    from src.grpo.config import config_from_dict
    from src.grpo.logprobs import linear_logprobs
    from src.grpo.trainer import prepare_weights
    from src.models.generation import prompt_batch
    from benchmarks.bench_step import with_completions
    from src.models.inputs import IMAGE_PAD, select_rows
    from src.models.loading import load_policy, resolve_dtype
    from src.models.lora import LoRALinear

    policy = load_policy(str(work.checkpoint), device=torch.device("cpu"), dtype=resolve_dtype(work.dtype, "cpu"))
    prepare_weights(policy, config_from_dict(json.loads((work.run / "config.json").read_text())))  # as train.py
    model, tokenizer = policy.model, policy.tokenizer
    layers = model.config.text_config.num_hidden_layers
    result: dict = {"layers": layers}

    # LoRA on exactly the language model's q, k, v, o of every layer, in the model and in the saved file
    wrapped = sorted(name for name, module in model.named_modules() if isinstance(module, LoRALinear))
    expected = sorted(f"model.language_model.layers.{i}.self_attn.{p}_proj" for i in range(layers) for p in "qkvo")
    assert wrapped == expected, f"LoRA on {len(wrapped)} modules, not the {len(expected)} language projections"
    with safe_open(str(work.checkpoint / "adapter_model.safetensors"), "pt") as saved:
        keys = sorted(saved.keys())
    assert keys == sorted(f"base_model.model.{name}.lora_{f}.weight" for name in expected for f in "AB"), keys[:4]
    result["lora_modules"] = len(wrapped)

    # image tokens: t*h*w / merge^2 per image, in one left-padded batch of both sizes
    samples = load_dataset("silvar-med", work.data, "train")
    system = TRAINING_PROMPTS[next(iter(TRAINING_PROMPTS))]
    batch = prompt_batch(policy, samples, [system] * len(samples))
    merge = policy.image_processor.merge_size
    pad = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    counts = [int((row == pad).sum()) for row in batch.input_ids]
    grids = [int(grid.prod()) // merge**2 for grid in batch.image_grid_thw]
    assert counts == grids, f"image tokens {counts}, grids say {grids}"
    if work.real_size:
        pixels_per_token = policy.image_processor.patch_size * merge
        assert counts == [REAL_IMAGE_TOKENS[pixels_per_token][size] for size in TRAIN_IMAGES], counts
    result["image_tokens"] = counts

    # one row (the non-square image) with 16 completion tokens, forward with gradient, no dropout
    row = select_rows(batch, [1])
    first_special = tokenizer.convert_tokens_to_ids("<|endoftext|>")  # 151643 at 2B; below it, ordinary tokens
    ids = torch.randint(0, first_special, (1, COMPLETION_TOKENS), generator=torch.Generator().manual_seed(0))  # [1, L]
    mask = torch.ones_like(ids, dtype=torch.bool)
    kwargs = with_completions(row, ids, mask)
    vision_output_requires_grad = []

    def record(_module, _inputs, output) -> None:  # a tensor, a tuple or a ModelOutput, by transformers version
        values = output.values() if hasattr(output, "values") else output if isinstance(output, tuple) else [output]
        vision_output_requires_grad.append(next(v for v in values if torch.is_tensor(v)).requires_grad)

    hook = model.model.visual.register_forward_hook(record)
    model.eval()
    prompt_len = row.input_ids.shape[1]                                             # P
    hidden = model.model(**kwargs, use_cache=False).last_hidden_state[:, prompt_len - 1:-1]  # [1, L, H]
    hook.remove()
    chunked = linear_logprobs(hidden, model.lm_head.weight, ids)                    # [1, L]
    logits = hidden[:, :SLICE] @ model.lm_head.weight.T                            # [1, S, V]
    plain = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, :SLICE, None]).squeeze(-1)  # [1, S]
    result["vocabulary"] = logits.shape[-1]
    result["chunked_vs_plain_max_abs_diff"] = float((chunked[:, :SLICE] - plain).detach().abs().max())
    torch.testing.assert_close(chunked[:, :SLICE], plain, rtol=0, atol=tolerance(work))

    # backward: every LoRA factor gets a gradient, nothing else does, the vision tower is never reached
    chunked.sum().backward()
    assert vision_output_requires_grad == [False], vision_output_requires_grad
    for name, parameter in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0), f"no gradient in {name}"
        else:
            assert parameter.grad is None, f"gradient in {name}"
    assert not any(p.requires_grad for p in model.model.visual.parameters()), "vision tower trainable"
    result["vision_grad"] = "none"

    torch.save({"kwargs": kwargs, "positions": (prompt_len - 1, prompt_len - 1 + SLICE), "ours": logits.detach()},
               work.peft_input)
    return result


def peft_parity(work: Work) -> dict:
    """checkpoint-3 through peft.PeftModel.from_pretrained on the same base, loaded by the family's
    transformers class: our logits, not the base's."""
    import torch
    from peft import PeftModel

    from src.models.families import checkpoint_family
    from src.models.loading import base_model_name, resolve_dtype, resolve_model_path

    saved = torch.load(work.peft_input, weights_only=False)
    base_path = resolve_model_path(base_model_name(str(work.checkpoint)))
    base = checkpoint_family(base_path).model_cls().from_pretrained(base_path, dtype=resolve_dtype(work.dtype, "cpu"))
    model = PeftModel.from_pretrained(base, str(work.checkpoint)).eval()
    start, end = saved["positions"]
    with torch.no_grad():
        theirs = model(**saved["kwargs"], use_cache=False).logits[:, start:end].float()  # [1, S, V]
        with model.disable_adapter():
            base_logits = model(**saved["kwargs"], use_cache=False).logits[:, start:end].float()
    ours = saved["ours"].float()
    difference, adapter_effect = float((theirs - ours).abs().max()), float((base_logits - ours).abs().max())
    result = {"peft_vs_ours_max_abs_diff": difference, "adapter_effect_max_abs": adapter_effect}
    torch.testing.assert_close(theirs, ours, rtol=0, atol=tolerance(work))
    assert adapter_effect > 100 * difference, f"the adapter changes logits by {adapter_effect:.2e} only"
    return result


def tolerance(work: Work) -> float:
    """How far two computations of the same logits may be apart: fp32 rounding, or in bf16 a GEMM of
    another shape rounding its bf16 outputs differently (an ulp of a logit of size ~4 is 0.03)."""
    import torch

    from src.models.loading import resolve_dtype

    return 1e-4 if resolve_dtype(work.dtype, "cpu") == torch.float32 else 6e-2


def print_table(result: dict) -> None:
    print(f"\n{'phase':<9} {'status':<8} {'seconds':>8} {'peak RSS GiB':>13}")
    for name in PHASES:
        phase = result["phases"].get(name)
        if phase is not None:
            print(f"{name:<9} {phase['status']:<8} {phase['seconds']:>8.1f} {phase['peak_rss_bytes'] / GIB:>13.2f}")
    phases = result["phases"]
    print(f"{'total':<9} {'':<8} {sum(p['seconds'] for p in phases.values()):>8.1f} "
          f"{max(p['peak_rss_bytes'] for p in phases.values()) / GIB:>13.2f}")
    for name in ("train", "resume"):
        for i, step in enumerate(phases.get(name, {}).get("figures", {}).get("steps", [])):
            print(f"  {name} step {i + 1}: " + ", ".join(f"{k} {v}" for k, v in step.items()))
    for name in IN_PROCESS:
        figures = phases.get(name, {}).get("figures")
        if figures:
            print(f"  {name}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in figures.items()))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*RANDOM_MODELS, *TINY_MODELS], default=RANDOM_MODELS[0],
                        help="a released architecture at random weights (benchmarks/qwen2_vl_2b.py), or a tiny model")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: runs/real-size-MODEL")
    parser.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                        help="every phase's dtype (auto: float32 on this CPU run); LoRA factors are float32")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated subset of {','.join(PHASES)}, in that order; a later phase reads "
                             "what the earlier ones left in --work-dir")
    parser.add_argument("--in-process", choices=IN_PROCESS, help=argparse.SUPPRESS)  # a phase's own process
    args = parser.parse_args(argv)
    args.work_dir = args.work_dir or REPO / "runs" / f"real-size-{args.model}"
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if unknown := set(args.phases) - set(PHASES):
        parser.error(f"unknown phases {sorted(unknown)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Work(args.work_dir.resolve(), args.model, args.dtype)
    if args.in_process:
        figures = checks(work) if args.in_process == "checks" else peft_parity(work)
        (work.dir / f"{args.in_process}.json").write_text(json.dumps(figures, indent=2) + "\n")
        return figures

    work.dir.mkdir(parents=True, exist_ok=True)
    (work.dir / "logs").mkdir(exist_ok=True)
    result = json.loads(work.result.read_text()) if work.result.is_file() else {"phases": {}}
    result["model"], result["dtype"] = args.model, args.dtype
    if "train" in args.phases:  # a fresh run: nothing of an earlier one may be resumed or counted
        for path in (work.data, work.run, work.eval):
            shutil.rmtree(path, ignore_errors=True)
        result["phases"] = {}
    if not work.data.is_dir():
        write_dataset(work.data)
    failed = []
    for phase in (p for p in PHASES if p in args.phases):
        if phase == "build" and not work.real_size:
            continue  # a tiny model builds itself (src/models/tiny.py)
        if phase == "build" and (Path(work.model) / "config.json").is_file():
            result["phases"][phase] = {"status": "cached", "seconds": 0.0, "peak_rss_bytes": 0}
            continue
        print(f"\n=== {phase}: {' '.join(phase_command(phase, work)[1:])}", flush=True)
        code, seconds, peak, output = run_child(phase_command(phase, work), work.dir / "logs" / f"{phase}.log")
        entry = {"status": "ok", "seconds": seconds, "peak_rss_bytes": peak}
        try:
            if code != 0:
                raise AssertionError(f"exit code {code} (log: {work.dir / 'logs' / f'{phase}.log'})")
            entry["figures"] = verify(phase, work, output)
        except (AssertionError, OSError, ValueError) as error:
            entry.update(status="FAILED", error=str(error))
            failed.append(phase)
        result["phases"][phase] = entry
        tmp = work.result.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, work.result)
        if failed:
            break  # every later phase reads this one's output
    print_table(result)
    if failed:
        raise SystemExit(f"phase {failed[0]} failed: {result['phases'][failed[0]]['error']}")
    return result


if __name__ == "__main__":
    main()
