"""benchmarks/gpu_check.py: every phase runs at toy size on a CPU, and one phase's failure never hides the others.

The GPU figures themselves come from a lent GPU (docs/BENCHMARKS.md); here the script must get there
in one try: its phases, their isolation and time limits, and the JSON it leaves.
"""
from __future__ import annotations

import importlib.util
import json
import re
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
                             out_dir=tmp_path, scratch=tmp_path)


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


def test_the_time_limit_ends_a_phase_even_inside_a_graph_capture(tmp_path, monkeypatch):
    """The engine decodes eagerly after any Exception from a CUDA graph capture: a phase's time limit that
    struck during the capture must end the phase, not become one more capture failure."""
    from src.models import engine

    class SlowCapture:  # the capture's warm-up runs the step once: here it runs past the phase's limit
        def __init__(self, step):
            step()

    monkeypatch.setattr(engine, "CapturedStep", SlowCapture)

    def decodes(_ctx, figures):
        figures["decoding"] = engine.capture_or_eager(lambda: time.sleep(30))[1]

    start = time.monotonic()
    entry = gpu_check.run_phase(context(tmp_path), gpu_check.Phase("capture", 0.25, decodes), time.monotonic() + 1000)
    assert entry["status"] == "timeout" and entry["figures"] == {}
    assert time.monotonic() - start < 5  # stopped at its own limit, not after the step's 30 s


def test_every_phase_is_run_and_written_after_a_failure_and_figures_reach_disk_as_measured(tmp_path, monkeypatch):
    def fails(_ctx, _figures):
        raise RuntimeError("no GPU here")

    def missing(_ctx, _figures):
        raise gpu_check.Skip("trl not installed")

    def exits(_ctx, figures):
        figures["before"] = 1
        raise SystemExit("this benchmark needs TRL")  # what a benchmark's command line does: not fatal here

    def measures(_ctx, figures):
        figures["first"] = 2.5
        on_disk = json.loads((tmp_path / "out" / "gpu_check.json").read_text())  # already there, mid-phase
        assert on_disk["phases"]["d"] == {"status": "running", "limit_seconds": 10, "seconds": 0.0,
                                          "figures": {"first": 2.5}}
        print("a line for the log")
        figures["summary"] = "fine"

    monkeypatch.setattr(gpu_check, "PHASES", [gpu_check.Phase("a", 10, fails), gpu_check.Phase("b", 10, missing),
                                              gpu_check.Phase("c", 10, exits), gpu_check.Phase("d", 10, measures)])
    gpu_check.main(["--device", "cpu", "--output-dir", str(tmp_path / "out")])
    written = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [(name, p["status"]) for name, p in written["phases"].items()] == [
        ("a", "failed"), ("b", "skipped"), ("c", "failed"), ("d", "ok")]
    assert written["phases"]["b"]["reason"] == "trl not installed"
    assert written["phases"]["c"]["reason"] == "SystemExit: this benchmark needs TRL"
    assert written["phases"]["c"]["figures"] == {"before": 1}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_check.json", "gpu_check.log", "summary.md"]
    assert "a line for the log" in (tmp_path / "out" / "gpu_check.log").read_text()
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert re.search(r"^d +ok ", summary, re.M) and "- first: 2.5" in summary


def test_bench_trl_without_trl_is_an_import_error_to_the_check_and_an_exit_message_to_its_command(monkeypatch):
    from benchmarks import bench_trl

    monkeypatch.setitem(sys.modules, "trl", None)  # "import trl" raises ImportError
    with pytest.raises(ImportError, match="needs TRL"):
        bench_trl.import_trl()
    with pytest.raises(SystemExit, match="needs TRL"):
        bench_trl.main(["--model", "tiny", "--device", "cpu"])


def test_the_bf16_reduction_verdict_takes_the_smaller_gap_unless_it_is_measurably_slower():
    def settings(gap_on, gap_off, seconds_on, seconds_off):
        return {True: {"rollout_logp_diff": gap_on, "generate_seconds": seconds_on},
                False: {"rollout_logp_diff": gap_off, "generate_seconds": seconds_off}}

    assert gpu_check.reduction_verdict(settings(2e-3, 1e-3, 1.00, 1.02), noise=0.03) is False  # 2% slower: noise
    assert gpu_check.reduction_verdict(settings(2e-3, 1e-3, 1.00, 1.10), noise=0.03) is True   # 10% slower
    assert gpu_check.reduction_verdict(settings(1e-3, 2e-3, 1.10, 1.00), noise=0.03) is False  # the default, slower
    assert gpu_check.reduction_verdict(settings(1e-3, 2e-3, 1.00, 1.00), noise=0.0) is True


def test_bandwidth_by_device_name():
    assert gpu_check.bandwidth_of("NVIDIA H200") == 4.8e12
    assert gpu_check.bandwidth_of("NVIDIA H100 80GB HBM3") == 3.35e12
    assert gpu_check.bandwidth_of("NVIDIA H100 PCIe") == 2.0e12
    assert gpu_check.bandwidth_of("Some Future GPU") is None


@pytest.mark.benchmark
def test_gpu_check_runs_every_phase_at_toy_size_on_cpu(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--tiny", "--output-dir",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "summary.md"]
    phases = json.loads((out / "gpu_check.json").read_text())["phases"]
    assert list(phases) == ["environment", "correctness", "bf16-reduction", "processor", "step", "prefix-sharing",
                            "evaluate", "qwen2.5-vl", "qwen3-vl", "torchrun", "trl", "step-hf-static"]
    for name in ("environment", "correctness", "bf16-reduction", "processor", "step", "prefix-sharing", "evaluate",
                 "qwen2.5-vl", "qwen3-vl", "torchrun", "step-hf-static"):
        assert phases[name]["status"] == "ok", (name, phases[name].get("reason"))
    assert phases["environment"]["figures"]["torch"] == torch.__version__
    correctness = phases["correctness"]["figures"]
    assert correctness["base_dtype"] == "torch.bfloat16" and correctness["lora_dtypes"] == ["torch.float32"]
    assert correctness["lora_moved_fraction"]["B"] == 1.0 and correctness["sampler"] == "eager"
    # bf16 on the tiny model; exactly 0 where the CPU's bf16 kernels give the shared-prefix forward the engine's
    # arithmetic bit for bit (tests/test_precision.py)
    assert 0 <= correctness["rollout_logp_diff"] < 0.05 and correctness["rollout_kl"] < 1e-3
    assert correctness["graph_vs_eager"] == "not run: no CUDA graphs on cpu"
    assert set(correctness["engine_vs_hf"]) == {"equal", "first_difference", "tokens"}  # bf16: reported, not asserted
    reduction = phases["bf16-reduction"]["figures"]
    assert [len(reduction[f"allowed_{allowed}_runs"]) for allowed in (True, False)] == [2, 2]
    assert all(run["tokens"] == 2 * 8 and run["decoding"] == "eager"  # B 1 x G 2, every completion forced to 8
               for allowed in (True, False) for run in reduction[f"allowed_{allowed}_runs"])
    # a CUDA matmul flag: on a CPU both settings compute the same thing, from the same seed; bf16 rounding alone
    # (0 to 4e-4 on the tiny model), not the 2.6e-3 of a forward that would let the banned end tokens back in
    assert reduction["allowed"]["rollout_logp_diff"] == reduction["not_allowed"]["rollout_logp_diff"] < 1e-3
    assert reduction["verdict"].startswith("none: the flag acts on CUDA matmuls only")
    processor = phases["processor"]["figures"]
    assert processor["equal"] == {key: True for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw",
                                                        "mm_token_type_ids")}
    # the real 2B processor: 512 x 512 -> 324 tokens, 640 x 480 and 480 x 640 -> 391, 1000 x 300 -> 1008 x 308 =
    # 72 x 22 patches -> 396, 100 x 80 -> 112 x 84 = 8 x 6 -> 12
    assert processor["image_tokens"] == [324, 391, 391, 396, 12]
    step = phases["step"]["figures"]
    assert step["settings"]["rows"] == 2 and step["decoding"] == "eager"
    assert step["ours_step_seconds"] + step["baseline_step_seconds"] < phases["step"]["seconds"]  # timed inside it
    assert step["settings"]["dtype"] == "float32"  # auto on a CPU
    assert {"ours_run0", "ours_hf_run0", "baseline_run0", "ours_run1"} <= set(step)  # each run, as it ended
    # the engine against HF generate, both sides timed in the same process
    assert step["engine_generate_speedup"] == pytest.approx(
        step["ours_hf_phases"]["generate"]["seconds"] / step["ours_phases"]["generate"]["seconds"])
    assert phases["step-hf-static"]["figures"]["engine_step_speedup"] == pytest.approx(
        phases["step-hf-static"]["figures"]["ours_hf_step_seconds"] / phases["step-hf-static"]["figures"]["ours_step_seconds"])
    sharing = phases["prefix-sharing"]["figures"]
    assert sharing["settings"]["group_size"] == 2 and sharing["settings"]["dtype"] == "float32"
    assert sharing["max_abs_logp_diff"] < 1e-4
    timed = sharing["shared"]["update"]["seconds"] + sharing["unshared"]["update"]["seconds"]
    assert timed < phases["prefix-sharing"]["seconds"]  # both sides timed inside the phase
    assert {"unshared_update_run0", "shared_update_run0"} <= set(sharing)  # each side, as it ended
    assert sharing["summary"].startswith("prefix sharing: update ")
    evaluate = phases["evaluate"]["figures"]
    assert evaluate["questions"] == 2 and evaluate["generated_tokens"] == 2 * 4 and evaluate["tokens_per_s"] > 0
    torchrun = phases["torchrun"]["figures"]
    assert torchrun["collectives"] == {"backend": "gloo", "world_size": 1, "ok": True}
    has_trl = all(importlib.util.find_spec(name) for name in ("trl", "peft", "datasets"))
    assert phases["trl"]["status"] == ("ok" if has_trl else "skipped")
    assert done.stdout.rstrip().splitlines()[-1].startswith("total")
    log = (out / "gpu_check.log").read_text()
    assert "=== correctness" in log and "--- " in log and "train.py" in log  # the children's output too


@pytest.mark.benchmark
@pytest.mark.parametrize("name", list(gpu_check.FAMILY_CHECKS))
def test_the_family_phase_at_toy_size(tmp_path, name):
    """The phase each other family gets on a GPU (its real-size architecture in bf16), on its tiny model
    (a benchmark test, as the toy-size run of the whole check is)."""
    figures: dict = {}
    gpu_check.family(context(tmp_path), figures, name)
    assert figures["model"] == gpu_check.FAMILY_CHECKS[name][1] and figures["rows"] == 4
    assert 0 <= figures["rollout_logp_diff"] < 0.05              # bf16: a few roundings of a log-prob
    assert figures["shared_vs_unshared_max_abs_logp_diff"] < 0.1
    assert figures["engine_vs_hf"]["tokens"] > 0 and figures["decode_ms_per_token"] > 0
    assert figures["summary"].startswith(f"{figures['model']} bf16:")
