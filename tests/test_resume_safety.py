"""Resume when files are damaged or hostile or the run is stopped: cut log lines, corrupt checkpoints, a
checkpoint that would run code, SIGTERM, a full disk. Every failure names its file (and line), nothing already
on disk changes, and what can be rebuilt is rebuilt bit-identically."""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from src import files
from src.files import WriteError, read_jsonl, write_atomic
from src.grpo import checkpoint as checkpoint_module
from src.grpo import trainer
from src.grpo.checkpoint import (
    CheckpointError, checkpoint_problem, load_checkpoint, resume_checkpoint, rng_state, set_rng_state,
)
from src.grpo.run_log import MetricsLog, RunLogError, read_metrics
from src.run_guard import Interrupted
from tests.test_trainer import tiny_config

ROWS = 8  # completions.jsonl lines per step in tiny_config: 2 prompts x group of 4


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path: equal snapshots mean nothing changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def lines(n_steps: int, rows: int = 1, first: int = 1) -> list[str]:
    return [json.dumps({"step": step, "row": row, "loss": 0.1 * step})
            for step in range(first, first + n_steps) for row in range(rows)]


def write_lines(path: Path, text_lines: list[str], tail: str = "") -> bytes:
    data = "".join(line + "\n" for line in text_lines) + tail
    path.write_text(data)
    return data.encode()


# ---- the run logs ------------------------------------------------------------------------------------

def test_lines_after_the_checkpoint_are_cut_off_even_a_torn_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    kept = lines(4)
    write_lines(path, kept + lines(1, first=5), tail='{"step": 6, "lo')  # crash while writing step 6
    MetricsLog(path, resume_step=4)
    assert path.read_text() == "".join(line + "\n" for line in kept)


def test_a_torn_line_of_unknown_step_after_the_checkpoint_steps_is_cut_off(tmp_path):
    path = tmp_path / "completions.jsonl"
    kept = lines(2, rows=3)
    write_lines(path, kept, tail='{"st')  # cut before its step: steps 1 and 2 are whole, so it is step 3's
    MetricsLog(path, resume_step=2, rows_per_step=3)
    assert path.read_text() == "".join(line + "\n" for line in kept)


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_lines(path, lines(1), tail=lines(1, first=2)[0])
    MetricsLog(path, resume_step=2)
    assert read_metrics(path) == [json.loads(line) for line in lines(2)]
    assert path.read_text().endswith("\n")


@pytest.mark.parametrize("damage, line, what", [
    ("cut middle line", 3, "line 3 is not a JSON record; it should hold row 1 of 1 of step 3"),
    ("missing line", 3, "line 3 holds step 4 where row 1 of 1 of step 3 belongs"),
    ("repeated line", 3, "line 3 holds step 2 where row 1 of 1 of step 3 belongs"),
    ("not utf-8", 2, "line 2 is not a JSON record"),
])
def test_a_damaged_line_of_a_checkpointed_step_stops_naming_file_and_line(tmp_path, damage, line, what):
    path = tmp_path / "metrics.jsonl"
    text = lines(6)
    if damage == "cut middle line":
        text[2] = text[2][:9]
    elif damage == "missing line":
        del text[2]
    elif damage == "repeated line":
        text.insert(2, text[1])
    before = write_lines(path, text)
    if damage == "not utf-8":
        raw = before.split(b"\n")
        raw[1] = raw[1].replace(b'"loss"', b'"l\xff\xfess"')
        before = b"\n".join(raw)
        path.write_bytes(before)
    with pytest.raises(RunLogError) as error:
        MetricsLog(path, resume_step=4)
    assert f"{path}, {what}" in str(error.value)
    assert "delete the checkpoints of step" in str(error.value)
    assert path.read_bytes() == before


def test_a_cut_last_row_of_the_checkpoint_step_stops_naming_the_line(tmp_path):
    path = tmp_path / "completions.jsonl"
    text = lines(2, rows=4)
    before = write_lines(path, text[:-1], tail=text[-1][:20])  # the finished run's very last row is cut
    with pytest.raises(RunLogError, match=rf"{path}, line 8 is cut short; it should hold row 4 of 4 of step 2"):
        MetricsLog(path, resume_step=2, rows_per_step=4)
    assert path.read_bytes() == before
    path.write_bytes(before[: before.rindex(b"\n") + 1])  # the row lost whole
    with pytest.raises(RunLogError, match=rf"{path} ends after line 7 with row 3 of 4 of step 2"):
        MetricsLog(path, resume_step=2, rows_per_step=4)


def test_a_fresh_run_starts_its_logs_empty(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_lines(path, lines(3))
    MetricsLog(path, resume_step=0)
    assert path.read_bytes() == b""


# ---- resume end to end on the tiny model ---------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 4-step rarl run (checkpoints at steps 2 and 4), trained once for the module."""
    cfg = tiny_config(tmp_path_factory.mktemp("finished"))
    trainer.train(cfg)
    return cfg


def copy_run(cfg, tmp_path):
    """A copy of the run in `tmp_path` and the config that resumes it."""
    out = tmp_path / "run"
    shutil.copytree(cfg.run.output_dir, out)
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=str(out), resume=True)), out


def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(trainer, "setup", refuse)


@pytest.mark.parametrize("log, line", [("metrics.jsonl", 3), ("completions.jsonl", 4 * ROWS)])
def test_resume_of_a_finished_run_with_a_cut_line_stops_before_the_model_and_changes_nothing(
        finished_run, tmp_path, monkeypatch, log, line):
    cfg, out = copy_run(finished_run, tmp_path)
    text = (out / log).read_text().splitlines()
    text[line - 1] = text[line - 1][:25]  # cut mid-JSON
    (out / log).write_text("".join(t + "\n" for t in text[:-1]) + text[-1] + ("\n" if line < len(text) else ""))
    before = snapshot(out)
    no_model(monkeypatch)
    with pytest.raises(RunLogError, match=rf"{out / log}, line {line} is (cut short|not a JSON record)"):
        trainer.train(cfg)
    assert snapshot(out) == before


def test_resume_rebuilds_torn_lines_after_the_checkpoint_bit_identically(finished_run, tmp_path):
    """A crash in step 4 after checkpoint 2: step 3 logged, step 4 half-written, both logs torn."""
    cfg, out = copy_run(finished_run, tmp_path)
    shutil.rmtree(out / "checkpoint-4")
    for log, rows in (("metrics.jsonl", 1), ("completions.jsonl", ROWS)):
        text = (out / log).read_text().splitlines()
        whole = 3 * rows + rows // 2  # steps 1-3, and half of step 4's rows (completions), then a torn one
        (out / log).write_text("".join(t + "\n" for t in text[:whole]) + text[whole][:30])
    trainer.train(cfg)
    straight = Path(finished_run.run.output_dir)
    assert read_metrics(out / "completions.jsonl") == read_metrics(straight / "completions.jsonl")
    a, b = read_metrics(straight / "metrics.jsonl"), read_metrics(out / "metrics.jsonl")
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], str):
                assert x[key] == y[key], (x["step"], key)
            elif not key.startswith("time/") and key != "peak_memory_mb":  # the clock and the process differ
                assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-9), (x["step"], key)
    assert_same_weights(straight / "checkpoint-4", out / "checkpoint-4")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-6, atol=1e-8) for k in wa)


def test_sigterm_finishes_the_step_saves_it_and_the_resumed_run_ends_as_if_never_stopped(
        finished_run, tmp_path, monkeypatch):
    """A scheduler's preemption during step 3, between the checkpoints of steps 2 and 4 (Ctrl-C takes the
    same path: tests/test_evaluate.py)."""
    cfg, number = tiny_config(tmp_path), signal.SIGTERM
    out, real_step, steps = Path(cfg.run.output_dir), trainer.grpo_step, []

    def step_that_gets_the_signal(run, samples, names):
        steps.append(len(steps) + 1)
        if len(steps) == 3:
            os.kill(os.getpid(), number)
        return real_step(run, samples, names)

    monkeypatch.setattr(trainer, "grpo_step", step_that_gets_the_signal)
    name = signal.Signals(number).name
    with pytest.raises(Interrupted, match=rf"^{name}: stopped after step 3 of 4, saved as {out / 'checkpoint-3'}; "
                                          "continue with the same command and --resume") as stop:
        trainer.train(cfg)
    assert stop.value.exit_status == 128 + number and steps == [1, 2, 3]
    assert signal.getsignal(number) is signal.SIG_DFL  # the handler lives as long as the run
    assert checkpoint_problem(out / "checkpoint-3") is None
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    monkeypatch.undo()
    assert trainer.train(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=True))) == \
        out / "checkpoint-4"
    straight = Path(finished_run.run.output_dir)
    assert_same_weights(straight / "checkpoint-4", out / "checkpoint-4")
    assert read_metrics(out / "completions.jsonl") == read_metrics(straight / "completions.jsonl")


# ---- damaged checkpoints --------------------------------------------------------------------------------

def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "random bytes":
        path.write_bytes(os.urandom(len(data)))
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("file, how, reason", [
    ("adapter_model.safetensors", "random bytes", "is cut short or not a safetensors file"),
    ("adapter_model.safetensors", "truncated", "is cut short or not a safetensors file"),
    ("trainer_state.pt", "random bytes", "is cut short or not a file torch.save wrote"),
    ("trainer_state.pt", "truncated", "is cut short or not a file torch.save wrote"),
    ("trainer_state.pt", "empty", "is cut short or not a file torch.save wrote"),
    ("adapter_config.json", "truncated", "is not valid JSON"),
])
def test_a_damaged_checkpoint_file_is_named(finished_run, tmp_path, file, how, reason):
    _, out = copy_run(finished_run, tmp_path)
    damage(out / "checkpoint-4" / file, how)
    assert checkpoint_problem(out / "checkpoint-4").startswith(f"{out / 'checkpoint-4' / file} {reason}")
    assert checkpoint_problem(out / "checkpoint-2") is None
    with pytest.warns(UserWarning, match=rf"skipped checkpoint-4 \({out / 'checkpoint-4' / file} {reason}"):
        assert resume_checkpoint(out) == out / "checkpoint-2"


def test_resume_falls_back_to_the_previous_checkpoint_and_rebuilds_the_damaged_one(finished_run, tmp_path):
    cfg, out = copy_run(finished_run, tmp_path)
    damage(out / "checkpoint-4" / "adapter_model.safetensors", "truncated")
    with pytest.warns(UserWarning, match=r"skipped checkpoint-4 .*; resuming from .*checkpoint-2"):
        final = trainer.train(cfg)
    assert final == out / "checkpoint-4" and checkpoint_problem(final) is None
    straight = Path(finished_run.run.output_dir)
    assert_same_weights(straight / "checkpoint-4", final)
    assert read_metrics(out / "completions.jsonl") == read_metrics(straight / "completions.jsonl")


def test_resume_stops_when_no_checkpoint_reads_and_changes_nothing(finished_run, tmp_path, monkeypatch):
    cfg, out = copy_run(finished_run, tmp_path)
    damage(out / "checkpoint-4" / "trainer_state.pt", "truncated")
    damage(out / "checkpoint-2" / "adapter_model.safetensors", "random bytes")
    before = snapshot(out)
    no_model(monkeypatch)
    with pytest.raises(CheckpointError) as error:
        trainer.train(cfg)
    message = str(error.value)
    assert str(out / "checkpoint-4" / "trainer_state.pt") in message
    assert str(out / "checkpoint-2" / "adapter_model.safetensors") in message
    assert snapshot(out) == before


class RunsCode:
    """What a run folder from someone else could hide in trainer_state.pt: a pickle that calls os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(state_path: Path, marker: Path) -> None:
    state = torch.load(state_path, weights_only=True)
    state["optimizer"] = RunsCode(marker)  # a valid archive holding the right step: only the pickle is wrong
    torch.save(state, state_path)


def test_a_trainer_state_that_would_run_code_is_refused_and_never_run(finished_run, tmp_path, monkeypatch):
    cfg, out = copy_run(finished_run, tmp_path)
    marker = tmp_path / "code-ran"
    for step in (2, 4):
        plant(out / f"checkpoint-{step}" / "trainer_state.pt", marker)
    state_path = out / "checkpoint-4" / "trainer_state.pt"
    problem = checkpoint_problem(out / "checkpoint-4")
    assert problem.startswith(f"{state_path} cannot be read as tensors and plain values (") and "system" in problem
    assert "weights_only` set to `False`" not in problem  # torch's advice to load it unsafely is not passed on
    no_model(monkeypatch)
    with pytest.raises(CheckpointError, match="no checkpoint in .* can be read: checkpoint-4 .*; checkpoint-2 "):
        trainer.train(cfg)
    assert not marker.exists()


def test_loading_a_damaged_or_planted_checkpoint_names_the_file(finished_run, tmp_path):
    _, out = copy_run(finished_run, tmp_path)
    damage(out / "checkpoint-4" / "trainer_state.pt", "random bytes")
    plant(out / "checkpoint-2" / "trainer_state.pt", tmp_path / "code-ran")
    run = trainer.setup(tiny_config(tmp_path / "fresh", run=dict(method="sft")))  # sft: no BERTScore model
    state_path = out / "checkpoint-4" / "trainer_state.pt"
    with pytest.raises(CheckpointError, match=rf"{state_path} is cut short or not a file torch.save wrote"):
        load_checkpoint(out / "checkpoint-4", run.policy, True, run.optimizer, run.scheduler)
    with pytest.raises(CheckpointError, match="cannot be read as tensors and plain values"):
        load_checkpoint(out / "checkpoint-2", run.policy, True, run.optimizer, run.scheduler)
    assert not (tmp_path / "code-ran").exists()


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves numpy's second gaussian cached: part of the state
    torch.save(rng_state(torch.device("cpu")), tmp_path / "rng.pt")

    def draws():
        return random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()

    expected = draws()
    draws()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), torch.device("cpu"))
    assert draws() == expected


def test_only_the_model_devices_generator_is_saved_so_a_resume_may_use_fewer_gpus(monkeypatch):
    """rng_state(device) holds the generator of the device the model samples on (cuda:1 under --device
    cuda:1 without torchrun, while the current device stays cuda:0), not every visible device's (which
    a resume on fewer GPUs could not restore); set_rng_state gives it back to that device."""
    states = {"cuda:0": torch.zeros(16, dtype=torch.uint8), "cuda:1": torch.arange(16, dtype=torch.uint8)}
    restored = []

    def named(device) -> str:  # torch.cuda's default, "cuda", is the current device: cuda:0 here
        device = torch.device(device)
        return f"cuda:{0 if device.index is None else device.index}"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[named(device)])
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device="cuda": restored.append((named(device), state)))
    for name in ("get_rng_state_all", "set_rng_state_all"):
        monkeypatch.setattr(torch.cuda, name, lambda *args: pytest.fail(f"{name} used"))
    state = rng_state(torch.device("cuda", 1))
    assert torch.equal(state["cuda"], states["cuda:1"])
    set_rng_state(state, torch.device("cuda", 1))
    assert len(restored) == 1 and restored[0][0] == "cuda:1" and torch.equal(restored[0][1], states["cuda:1"])
    assert "cuda" not in rng_state(torch.device("cpu"))  # a CPU run has no CUDA generator to keep
    set_rng_state(state, torch.device("cpu"))           # nor to restore
    assert len(restored) == 1


# ---- a full disk ------------------------------------------------------------------------------------------

TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"  # torch.save's words


def full_disk_on(step: int, monkeypatch, how: str):
    """Make the checkpoint of `step` fail as a full disk does: torch.save's RuntimeError (no errno, the disk
    then has no space left) or safetensors' / Python's ENOSPC."""
    real_torch_save, real_save_adapter = torch.save, checkpoint_module.save_adapter

    def torch_save(obj, path, *args, **kwargs):
        if f"checkpoint-{step}.tmp" in str(path):
            Path(path).write_bytes(b"PK\x03\x04 partial")
            raise RuntimeError(TORCH_FULL_DISK)
        return real_torch_save(obj, path, *args, **kwargs)

    def save_adapter(model, directory, *args, **kwargs):
        if f"checkpoint-{step}.tmp" in str(directory):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save_adapter(model, directory, *args, **kwargs)

    if how == "torch.save":
        monkeypatch.setattr(checkpoint_module.torch, "save", torch_save)
        monkeypatch.setattr(files, "free_bytes", lambda path: 0)
    else:
        monkeypatch.setattr(checkpoint_module, "save_adapter", save_adapter)


@pytest.mark.parametrize("how, file", [("torch.save", "checkpoint-4.tmp/trainer_state.pt"),
                                       ("ENOSPC", "checkpoint-4.tmp")])
def test_a_full_disk_while_saving_names_the_path_and_the_previous_checkpoint_stays(
        finished_run, tmp_path, monkeypatch, how, file):
    cfg = tiny_config(tmp_path)
    out = Path(cfg.run.output_dir)
    full_disk_on(4, monkeypatch, how)
    with pytest.raises(WriteError) as error:
        trainer.train(cfg)
    message = str(error.value)
    assert message.startswith(f"disk full: cannot write {out / file} (")
    assert "checkpoint-4 was not written; checkpoint-2 stays the latest checkpoint" in message
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "completions.jsonl", "config.json",
                                                     "metrics.jsonl"]
    monkeypatch.undo()
    resumed = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=True))
    assert trainer.train(resumed) == out / "checkpoint-4"  # space freed: the run goes on and ends as it would have
    straight = Path(finished_run.run.output_dir)
    assert_same_weights(straight / "checkpoint-4", out / "checkpoint-4")
    assert read_metrics(out / "completions.jsonl") == read_metrics(straight / "completions.jsonl")


def test_a_real_full_disk_on_a_small_tmpfs(tmp_path, monkeypatch):
    """The same on a real 1 MiB filesystem, with torch's and safetensors' own errors (needs root to mount)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        cfg = tiny_config(mount, optim=dict(max_steps=4))
        out = Path(cfg.run.output_dir)
        real_save = trainer.save_checkpoint

        def fill_disk_then_save(output_dir, step, *args, **kwargs):
            if step == 4:  # everything up to here fitted; now leave 4 KiB free
                with open(mount / "filler", "wb") as filler:
                    filler.write(b"\0" * (shutil.disk_usage(mount).free - 4096))
            return real_save(output_dir, step, *args, **kwargs)

        monkeypatch.setattr(trainer, "save_checkpoint", fill_disk_then_save)
        with pytest.raises(WriteError, match=rf"^disk full: cannot write {out}/checkpoint-4\.tmp.*checkpoint-2 stays "
                                             "the latest checkpoint"):
            trainer.train(cfg)
        assert not (out / "checkpoint-4.tmp").exists() and checkpoint_problem(out / "checkpoint-2") is None
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_while_logging_or_writing_a_result_names_the_file_and_keeps_the_old_content(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path / "metrics.jsonl", resume_step=0)
    log.write([{"step": 1}])
    result = tmp_path / "summary.json"
    write_atomic(result, "old")
    real_open = Path.open

    def full_open(self, *args, **kwargs):
        handle = real_open(self, *args, **kwargs)

        def write(data):
            raise OSError(errno.ENOSPC, "No space left on device")

        handle.write = write
        return handle

    monkeypatch.setattr(Path, "open", full_open)
    with pytest.raises(WriteError, match=rf"^disk full: cannot write {tmp_path / 'metrics.jsonl'} "):
        log.write([{"step": 2}])
    monkeypatch.undo()
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(WriteError, match=rf"^disk full: cannot write {result} "):
        write_atomic(result, "new")
    assert result.read_text() == "old" and not list(tmp_path.glob("*.tmp"))
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1}]


def test_a_predictions_line_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "\xff"}\n{"id": "c"}\n')
    with pytest.raises(ValueError, match=rf"{path}: line 2 is not valid JSON \(not UTF-8\)"):
        read_jsonl(path)
