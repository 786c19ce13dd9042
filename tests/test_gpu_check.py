"""benchmarks/gpu_check.py: every phase runs at toy size on a CPU, and one phase's failure never hides the others.

The GPU figures themselves come from a lent GPU (docs/BENCHMARKS.md); here the script must get there
in one try: its phases, their isolation and time limits, and the JSON it leaves.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[1]


def context(tmp_path) -> gpu_check.Context:
    return gpu_check.Context(args=gpu_check.parse_args(["--device", "cpu", "--tiny"]), device=torch.device("cpu"),
                             out_dir=tmp_path)


def test_a_failing_or_slow_phase_is_recorded_and_keeps_its_partial_figures(tmp_path):
    ctx = context(tmp_path)

    def fails(_ctx, figures):
        figures["measured"] = 1.5
        raise ValueError("broken here")

    def hangs(_ctx, figures):
        figures["started"] = True
        time.sleep(30)

    far = time.monotonic() + 1000
    failed = gpu_check.run_phase(ctx, gpu_check.Phase("fails", 10, fails), far)
    assert failed["status"] == "failed" and "ValueError: broken here" in failed["reason"]
    assert failed["figures"] == {"measured": 1.5}
    start = time.monotonic()
    slow = gpu_check.run_phase(ctx, gpu_check.Phase("hangs", 1, hangs), far)
    assert slow["status"] == "timeout" and slow["figures"] == {"started": True}
    assert time.monotonic() - start < 5  # stopped at its own 1 s limit, not after 30 s
    late = gpu_check.run_phase(ctx, gpu_check.Phase("late", 10, fails), time.monotonic() + 30)
    assert late["status"] == "skipped" and "left" in late["reason"]  # under a minute of the budget left


def test_every_phase_is_run_and_written_after_a_failure(tmp_path, monkeypatch):
    def fails(_ctx, _figures):
        raise RuntimeError("no GPU here")

    def missing(_ctx, _figures):
        raise gpu_check.Skip("trl not installed")

    def works(_ctx, figures):
        figures["summary"] = "fine"

    monkeypatch.setattr(gpu_check, "PHASES", [gpu_check.Phase("a", 10, fails), gpu_check.Phase("b", 10, missing),
                                              gpu_check.Phase("c", 10, works)])
    output = tmp_path / "check.json"
    gpu_check.main(["--device", "cpu", "--output", str(output)])
    written = json.loads(output.read_text())
    assert [(name, p["status"]) for name, p in written["phases"].items()] == [
        ("a", "failed"), ("b", "skipped"), ("c", "ok")]
    assert written["phases"]["b"]["reason"] == "trl not installed"


def test_bandwidth_by_device_name():
    assert gpu_check.bandwidth_of("NVIDIA H200") == 4.8e12
    assert gpu_check.bandwidth_of("NVIDIA H100 80GB HBM3") == 3.35e12
    assert gpu_check.bandwidth_of("NVIDIA H100 PCIe") == 2.0e12
    assert gpu_check.bandwidth_of("Some Future GPU") is None


@pytest.mark.slow
def test_gpu_check_runs_every_phase_at_toy_size_on_cpu(tmp_path):
    output = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--tiny", "--output",
                           str(output)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    phases = json.loads(output.read_text())["phases"]
    assert list(phases) == ["environment", "processor", "step", "evaluate", "torchrun", "trl", "step-hf-static"]
    for name in ("environment", "processor", "step", "evaluate", "torchrun", "step-hf-static"):
        assert phases[name]["status"] == "ok", (name, phases[name].get("reason"))
    assert phases["environment"]["figures"]["torch"] == torch.__version__
    processor = phases["processor"]["figures"]
    assert processor["equal"] == {key: True for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw",
                                                        "mm_token_type_ids")}
    # the real 2B processor: 512 x 512 -> 324 tokens, 640 x 480 and 480 x 640 -> 391, 1000 x 300 -> 1008 x 308 =
    # 72 x 22 patches -> 396, 100 x 80 -> 112 x 84 = 8 x 6 -> 12
    assert processor["image_tokens"] == [324, 391, 391, 396, 12]
    step = phases["step"]["figures"]
    assert step["settings"]["rows"] == 2 and step["ours_step_seconds"] > 0
    assert step["overhead_ratio"] == step["ours_step_seconds"] / step["baseline_step_seconds"]
    # the engine against HF generate, both sides timed in the same process
    assert step["engine_generate_speedup"] == pytest.approx(
        step["ours_hf_phases"]["generate"]["seconds"] / step["ours_phases"]["generate"]["seconds"])
    assert phases["step-hf-static"]["figures"]["engine_step_speedup"] == pytest.approx(
        phases["step-hf-static"]["figures"]["ours_hf_step_seconds"] / phases["step-hf-static"]["figures"]["ours_step_seconds"])
    evaluate = phases["evaluate"]["figures"]
    assert evaluate["questions"] == 2 and evaluate["tokens_per_s"] > 0
    torchrun = phases["torchrun"]["figures"]
    assert torchrun["collectives"] == {"backend": "gloo", "world_size": 1, "ok": True}
    has_trl = all(importlib.util.find_spec(name) for name in ("trl", "peft", "datasets"))
    assert phases["trl"]["status"] == ("ok" if has_trl else "skipped")
    assert done.stdout.rstrip().splitlines()[-1].startswith("total")
