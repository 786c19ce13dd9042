"""The step benchmark runs end to end on the tiny model; the random 2B build is Qwen2-VL-2B's architecture.

No speed is asserted: the machine is shared, and the figures live in docs/BENCHMARKS.md. What is asserted
is that the figures agree with each other and with the time the benchmark process took.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.bench_step import decode_bound
from benchmarks.qwen2_vl_2b import qwen2_vl_2b_config

REPO = Path(__file__).resolve().parents[1]


def meta_qwen2_vl_2b():
    """The random 2B architecture with parameters on the meta device: shapes and dtypes, no memory."""
    from transformers import Qwen2VLForConditionalGeneration

    with torch.device("meta"):
        return Qwen2VLForConditionalGeneration._from_config(qwen2_vl_2b_config(), dtype=torch.bfloat16)


def test_random_2b_has_qwen2_vl_2b_parameter_count():
    # text: embedding 151936 x 1536 = 233,373,696 (tied with lm_head, counted once)
    #   per layer: q 1536*1536+1536 = 2,360,832; k, v 1536*256+256 = 393,472 each; o 1536*1536 = 2,359,296;
    #   mlp 3*1536*8960 = 41,287,680; two RMSNorms 3,072 -> 46,797,824; x 28 = 1,310,339,072; final norm 1,536
    #   -> 1,543,714,304
    # vision: patch conv 1176*1280 = 1,505,280; per block: 2 LayerNorms 5,120, qkv 1280*3840+3840 = 4,919,040,
    #   proj 1,639,680, fc1 1280*5120+5120 = 6,558,720, fc2 5120*1280+1280 = 6,554,880 -> 19,677,440; x 32 =
    #   629,678,080; merger: LayerNorm 2,560 + 5120*5120+5120 = 26,219,520 + 5120*1536+1536 = 7,865,856
    #   -> 665,271,296
    # total 2,208,985,600, the parameter count of Qwen2-VL-2B-Instruct's safetensors
    model = meta_qwen2_vl_2b()
    assert sum(p.numel() for p in model.model.language_model.parameters()) == 1_543_714_304
    assert sum(p.numel() for p in model.model.visual.parameters()) == 665_271_296
    assert sum(p.numel() for p in model.parameters()) == 2_208_985_600


def test_decode_bound_of_qwen2_vl_2b():
    model = meta_qwen2_vl_2b()
    bound = decode_bound(model, rows=32, prompt_len=401, length=512, bandwidth=3.35e12)
    assert bound["weight_bytes"] == 1_543_714_304 * 2  # the language model in bf16; the vision tower is not read
    assert bound["kv_bytes_per_token"] == 28 * 2 * 2 * 128 * 2 == 28_672  # layers x (K, V) x KV heads x head_dim x bf16
    assert bound["mean_context"] == 401 + 511 / 2
    # (3,087,428,608 + 28,672 x 656.5 x 32 = 602,341,376) / 3.35e12 = 1.1014 ms
    assert bound["bound_seconds_per_step"] == pytest.approx((3_087_428_608 + 602_341_376) / 3.35e12, rel=1e-12)


def run_tiny(module: str, output: Path) -> tuple[subprocess.CompletedProcess, dict, float]:
    """One warm-up and one timed step of a benchmark on the tiny model: 1 prompt x 2 completions x 4 tokens.
    Returns the process, its JSON result and the process's wall time in seconds."""
    command = [sys.executable, "-m", module, "--model", "tiny", "--device", "cpu", "--prompts", "1", "--group-size",
               "2", "--length", "4", "--mini-batch-size", "1", "--repeats", "1", "--threads", "1", "--output", str(output)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads(output.read_text()), wall


def test_bench_step_runs_on_the_tiny_model(tmp_path):
    done, result, wall = run_tiny("benchmarks.bench_step", tmp_path / "bench.json")
    assert set(result["ours"]["phases"]) == {"generate", "score", "reference", "policy", "optimizer"}
    assert set(result["baseline"]["phases"]) == {"generate", "reference", "policy", "optimizer"}
    rows, prompt_len, length = result["settings"]["rows"], result["settings"]["prompt_tokens"], 4
    assert rows == 2
    tokens = {"generate": rows * length, "score": rows * length, "reference": rows * (prompt_len + length),
              "policy": rows * (prompt_len + length), "optimizer": None}
    for side in ("ours", "ours_hf", "baseline"):
        phases = result[side]["phases"]
        # one timed run: the step is the sum of its phases, and each rate is the phase's tokens over its time
        assert result[side]["step_seconds"] == pytest.approx(sum(p["seconds"] for p in phases.values()), rel=1e-12)
        for name, phase in phases.items():
            if tokens[name] is None:
                assert phase["tokens_per_s"] is None, (side, name)
            else:
                assert phase["tokens_per_s"] * phase["seconds"] == pytest.approx(tokens[name], rel=1e-12), (side, name)
            # the process's peak resident set in MiB: a process that imported torch holds hundreds of MiB, so a
            # figure outside this range is one in the wrong unit
            assert 100 < phase["peak_mib"] < 100_000, (side, name, phase["peak_mib"])
    # the timed steps ran inside the benchmark process, so together they took less than its wall time
    assert sum(result[side]["step_seconds"] for side in ("ours", "ours_hf", "baseline")) < wall
    bound = result["decode_bound"]
    assert bound["kv_bytes_per_token"] == 2 * 2 * 2 * 32 * 4  # tiny: 2 layers x (K, V) x 2 KV heads x 32 x fp32
    assert bound["mean_context"] == prompt_len + 1.5  # P + (L - 1) / 2 with L = 4
    assert bound["measured_seconds_per_step"] * length == pytest.approx(result["ours"]["phases"]["generate"]["seconds"],
                                                                         rel=1e-12)
    assert f"overhead (ours / baseline): {result['overhead_ratio']:.3f}" in done.stdout


@pytest.mark.slow
def test_bench_trl_runs_both_trainers_on_the_tiny_model(tmp_path):
    pytest.importorskip("trl")
    _, result, wall = run_tiny("benchmarks.bench_trl", tmp_path / "trl.json")
    assert len(result["ours_all"]) == len(result["trl_all"]) == 2  # warm-up + 1 timed step each
    assert result["trl_mean_completion_length"] == [4.0, 4.0]  # TRL also decoded exactly L tokens per completion
    # the reported step is the timed one, not the warm-up, and every step ran inside the process
    assert (result["ours_step_seconds"], result["trl_step_seconds"]) == (result["ours_all"][1], result["trl_all"][1])
    assert sum(result["ours_all"]) + sum(result["trl_all"]) < wall


def test_prefix_sharing_benchmark_on_the_tiny_model(tmp_path, capsys):
    """Both sides on the same rollout, a group split across mini-batches (G 3, mini-batches of 2); its last line."""
    from benchmarks import prefix_sharing

    start = time.perf_counter()
    result = prefix_sharing.main(["--model", "tiny", "--image-size", "112", "--length", "6", "--group-size", "3",
                                  "--mini-batch-size", "2", "--output", str(tmp_path / "sharing.json")])
    wall = time.perf_counter() - start
    last = capsys.readouterr().out.strip().splitlines()[-1]
    found = re.fullmatch(r"prefix sharing: update (\d+\.\d\d)x faster, peak memory (\d+\.\d\d)x lower, "
                         r"max \|d logp\| (\d\.\d\de[-+]\d\d)", last)
    assert found, last
    assert result["max_abs_logp_diff"] < 1e-5  # fp32
    # the line reports the measured figures, and every timed pass ran inside this call
    assert float(found.group(1)) == round(result["speedup"]["update"], 2)
    assert float(found.group(3)) == float(f"{result['max_abs_logp_diff']:.2e}")
    timed = [result[side][name]["seconds"] for side in ("shared", "unshared") for name in ("update", "reference")]
    assert sum(timed) < wall
    assert json.loads((tmp_path / "sharing.json").read_text())["line"] == last


@pytest.mark.benchmark
def test_full_memory_benchmark_runs_both_sides_on_the_tiny_model(tmp_path):
    """Its whole command (a subprocess: it sets glibc's allocation policy for its process). The memory figures
    come from the 2B-width run in docs/BENCHMARKS.md; here they must be there and agree with each other."""
    output = tmp_path / "full_memory.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.full_memory", "--model", "tiny", "--length", "4",
                           "--group-size", "2", "--output", str(output)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    for side in ("copies", "ours"):
        figures = result["sides"][side]
        assert figures["rows"] == 2 and figures["completion_tokens"] == 2 * 4  # every completion forced to L
        assert max(figures["weights_mib"], figures["after_step_mib"]) <= figures["step_peak_mib"]
    assert result["sides"]["ours"]["parameters"] == result["sides"]["copies"]["parameters"]
    # the full-size savings are parameter counts (test_random_2b_has_qwen2_vl_2b_parameter_count) times bytes
    assert result["full_size"]["reference_gib"] == 665_271_296 * 2 / 2**30
    assert result["full_size"]["checkpoint_gib"] == 1_543_714_304 * 4 / 2**30
    assert f"{result['full_size']['checkpoint_gib']:.2f} GiB" in done.stdout and "step peak" in done.stdout
