"""The command line: --help of every entry point, --config files, user errors (one line, status 2)
against bugs (a traceback), cheap checks before any model loads, and the CPU thread policy."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest

import demo
import evaluate
import export
import predict
import reproduce
import train
from src import run_guard
from src.cli import threads
from src.cli.checks import check_judge_names
from src.cli.config_file import parse_args, with_changes
from src.cli.errors import run_main
from src.data.rows import DatasetError
from src.errors import UserError
from src.eval import pipeline
from src.grpo import trainer
from src.grpo.checkpoint import CheckpointError
from src.grpo.config import SECTIONS, TrainConfig
from src.grpo.run_log import RunLogError
from src.run_guard import FolderInUse, Interrupted

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"train.py": train, "evaluate.py": evaluate, "predict.py": predict, "export.py": export,
                "reproduce.py": reproduce, "demo.py": demo}


def help_text(module, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as stop:
        module.main(["--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("program", list(ENTRY_POINTS))
def test_help_of_every_entry_point_reads_cleanly(program, capsys, monkeypatch):
    text = help_text(ENTRY_POINTS[program], capsys, monkeypatch)
    assert text.startswith("usage:")
    assert "option_strings" not in text and "%(" not in text       # no argparse internals, no unformatted %
    flat = " ".join(text.split())                                    # help lines joined: defaults span line breaks
    assert not re.search(r"\(default: [^)]*\)\s*\(default:", flat), "a default stated twice"
    options = re.findall(r"^\s+(--[\w-]+)", text.split("\noptions:", 1)[1], flags=re.MULTILINE)
    assert len(options) == len(set(options)) and "--help" not in options[1:]
    if program != "demo.py":
        assert "--config" in options or program == "reproduce.py"


def test_train_help_lists_choices_and_percent_signs(capsys, monkeypatch):
    flat = " ".join(help_text(train, capsys, monkeypatch).split())
    assert "--method {sft,sft-full,grpo,rarl,grpo-full}" in flat
    assert "--report-to {none,tensorboard}" in flat
    assert "(less memory, ~30% slower) (default: True)" in flat
    assert "--device DEVICE cpu or cuda (default: cuda when available) --report-to" in flat
    assert "(default: q_proj k_proj v_proj o_proj)" in flat


def non_default(f: dataclasses.Field):
    """A value of the field's type that is not its default (choices: another choice)."""
    if "choices" in f.metadata:
        return next(c for c in f.metadata["choices"] if c != f.default)
    hint = f.type if not isinstance(f.type, str) else eval(f.type, vars(typing), {})  # noqa: S307
    if typing.get_origin(hint) is tuple:
        return ("alpha", "beta")
    kind = next((a for a in typing.get_args(hint) if a is not type(None)), hint)   # int | None -> int
    return {bool: not f.default, int: 7 if f.default != 7 else 8, float: 0.375, str: "somewhere"}[kind]


def test_every_train_flag_can_come_from_a_config_file_and_the_command_line_wins(tmp_path):
    wanted = {section: {f.name: non_default(f) for f in dataclasses.fields(cls)} for section, cls in
              typing.get_type_hints(TrainConfig).items()}
    nested = {section: {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
              for section, values in wanted.items()}
    (tmp_path / "nested.yaml").write_text(json.dumps(nested))       # JSON is YAML: a run's config.json loads
    cfg = train.config_from_args(parse_args(train.build_parser("t"), ["--config", str(tmp_path / "nested.yaml")]))
    assert cfg.to_dict() == {section: dict(values) for section, values in wanted.items()}
    assert set(SECTIONS) == set(wanted)

    flat = {name: value for values in nested.values() for name, value in values.items() if name != "model"}
    flat["model"] = "tiny"   # flat keys: a flag name; "model" here is --model
    toml = "\n".join(f"{k} = {json.dumps(v)}" for k, v in flat.items())
    (tmp_path / "flat.toml").write_text(toml)
    argv = ["--config", str(tmp_path / "flat.toml"), "--seed", "42", "--no-resume", "--lora-targets", "q_proj"]
    cfg = train.config_from_args(parse_args(train.build_parser("t"), argv))
    assert (cfg.run.seed, cfg.run.resume, cfg.model.lora_targets) == (42, False, ("q_proj",))  # command line wins
    assert (cfg.model.model, cfg.optim.learning_rate, cfg.run.method) == ("tiny", 0.375, wanted["run"]["method"])

    saved = tmp_path / "config.json"                                 # and a saved config reproduces itself
    saved.write_text(cfg.to_json())
    assert train.config_from_args(parse_args(train.build_parser("t"), ["--config", str(saved)])) == cfg


def test_evaluate_config_file_with_lists_and_required_flags(tmp_path):
    recipe = tmp_path / "eval.yaml"
    recipe.write_text("model: tiny\noutput-dir: out\ndata_root: [a, vqa-rad=b]\njudge_base_url: [http://x/v1]\n"
                      "export_human_sheet: true\nlimit: 3\n")
    args = evaluate.parse_args(["--config", str(recipe), "--data-root", "c"])
    assert (args.model, args.output_dir, args.limit, args.export_human_sheet) == ("tiny", Path("out"), 3, True)
    assert args.data_root == ["c"] and args.judge_base_url == ["http://x/v1"]   # a repeated flag replaces the list
    recipe.write_text("datasets: synthetic:test\n")   # --model and --output-dir have defaults
    args = evaluate.parse_args(["--config", str(recipe)])
    assert (args.model, args.output_dir) == ("Qwen/Qwen2-VL-2B-Instruct", Path("runs/eval-Qwen-Qwen2-VL-2B-Instruct"))


@pytest.mark.parametrize("content, message", [
    ("metod: rarl\n", r"unknown setting 'metod'"),
    ("method: ppo\n", r"method: 'ppo' is not one of sft, sft-full, grpo, rarl, grpo-full"),
    ("lora_r: eight\n", r"lora_r: 'eight' is not a valid int"),
    ("resume: yes please\n", r"resume: expected true or false"),
    ("seed: [1, 2]\n", r"seed: expected one value, got a list"),
    ("run:\n  lora_r: 8\n", r"'lora_r' does not belong to section 'run'"),
    ("method: [rarl\n", r"not valid YAML"),
    ("- a list\n", r"expected a mapping of settings"),
])
def test_config_file_mistakes_name_the_file_and_the_setting(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as error:
        parse_args(train.build_parser("t"), ["--config", str(path)])
    assert str(path) in str(error.value)
    with pytest.raises(UserError, match="no such file"):
        parse_args(train.build_parser("t"), ["--config", str(tmp_path / "missing.yaml")])


@pytest.mark.parametrize("program, argv, message", [
    (train, ["--save-steps", "0"], "argument --save-steps: must be at least 1, got 0"),
    (train, ["--group-size", "1"], "argument --group-size: must be at least 2, got 1"),
    (train, ["--prompts-per-step", "0"], "argument --prompts-per-step: must be at least 1, got 0"),
    (train, ["--max-completion-length", "0"], "argument --max-completion-length: must be at least 1, got 0"),
    (train, ["--temperature", "-1"], "argument --temperature: must be more than 0, got -1"),
    (train, ["--samples", "-5"], "argument --samples: must be at least 1, got -5"),
    (train, ["--learning-rate", "nan"], "argument --learning-rate: must be a finite number, got nan"),
    (train, ["--epsilon-low", "1"], "argument --epsilon-low: must be less than 1, got 1"),
    (evaluate, ["--limit", "0"], "argument --limit: must be at least 1, got 0"),
    (evaluate, ["--limit", "-1"], "argument --limit: must be at least 1, got -1"),
    (evaluate, ["--judge-concurrency", "0"], "argument --judge-concurrency: must be at least 1, got 0"),
    (evaluate, ["--judge-parse-attempts", "0"], "argument --judge-parse-attempts: must be at least 1, got 0"),
    (evaluate, ["--judge-timeout", "inf"], "argument --judge-timeout: must be a finite number, got inf"),
    (predict, ["--max-new-tokens", "0"], "argument --max-new-tokens: must be at least 1, got 0"),
    (train, ["--seed", "99999999999999999999"], "argument --seed: must be at most 4294967295, got "
                                                 "99999999999999999999"),
    (train, ["--group-size", "100000000000"], "argument --group-size: must be at most 1024, got 100000000000"),
    (train, ["--lora-r", "100000000000"], "argument --lora-r: must be at most 4096, got 100000000000"),
    (train, ["--prompts-per-step", "100000000000"], "argument --prompts-per-step: must be at most 65536, got "
                                                       "100000000000"),
    (train, ["--max-completion-length", "100000000000"], "argument --max-completion-length: must be at "
                                                            "most 131072, got 100000000000"),
    (train, ["--max-steps", "1" + "0" * 400], "argument --max-steps: must be at most 1000000000, got "
                                               "1000000000000000000000000000000000000000... (401 characters)"),
    (evaluate, ["--batch-size", "100000000000"], "argument --batch-size: must be at most 65536, got 100000000000"),
    (evaluate, ["--limit", "1" + "0" * 30], "argument --limit: must be less than 2**63 in size, got 1" + "0" * 30),
    (evaluate, ["--judge-concurrency", "100000000000"], "argument --judge-concurrency: must be at most 1024, "
                                                         "got 100000000000"),
])
def test_numbers_out_of_range_are_refused_as_the_command_line_is_parsed(capsys, monkeypatch, program, argv, message):
    monkeypatch.setattr(trainer, "setup", lambda cfg, source: pytest.fail("setup reached"))
    required = {evaluate: ["--model", "tiny", "--output-dir", "out"], predict: ["--model", "tiny", "--image", "x.png",
                                                                              "--question", "Is it?"]}
    with pytest.raises(SystemExit) as stop:
        program.main(required.get(program, []) + argv)
    assert stop.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(f"error: {message}")


def test_every_numeric_train_setting_is_range_checked():
    """Every int and float flag parses through src/cli/checks.number (finite, within its field's range);
    only the reward weights may take any finite value."""
    fields = {f.name: f for cls in typing.get_type_hints(TrainConfig).values() for f in dataclasses.fields(cls)}
    actions = train.build_parser("t")._actions
    types = {action.dest.split(".", 1)[1]: action.type for action in actions if "." in action.dest}
    numeric = sorted(name for name, kind in types.items() if getattr(kind, "__name__", "") in ("int", "float"))
    assert numeric and not any(types[name] in (int, float) for name in numeric)
    for name in (name for name in numeric if types[name].__name__ == "float"):
        with pytest.raises(argparse.ArgumentTypeError, match="must be a finite number"):
            types[name]("nan")
    unbounded = [name for name in numeric if not set(fields[name].metadata) & {"min", "gt", "max", "lt"}]
    assert unbounded == ["accuracy_weight", "format_weight", "length_weight", "reasoning_weight"]


@pytest.mark.parametrize("content, message", [
    ("save_steps: 0\n", r"save_steps: must be at least 1, got 0"),
    ("learning_rate: .nan\n", r"learning_rate: must be a finite number, got nan"),
    ("model: tiny\nseed: 1\nmodel:\n  lora_r: 8\n", r"line 3: 'model' is given twice \(first on line 1\); YAML "
                                                      r"would keep only the last"),
    ("optim:\n  epochs: 2\n  epochs: 3\n", r"line 3: 'epochs' is given twice"),
    ("learning_rate: 1.0e-5\nlearning-rate: 2.0e-5\n",
     r"'learning_rate' and 'learning-rate' both set --learning-rate; only one may"),
    ("seed: 1\nrun:\n  seed: 2\n", r"'seed' and 'run.seed' both set --seed"),
    ("optim:\n  max-steps: 2\nmax_steps: 3\n", r"'optim.max-steps' and 'max_steps' both set --max-steps"),
    ("group_size: 100000000000000000000000000\n", r"group_size: must be at most 1024, got 1000"),
    ("group_size: 1.0e+26\n", r"group_size: 1e\+26 is not a valid int"),
    pytest.param("seed: " + "9" * 5_000 + "\n", r"not valid YAML: Exceeds the limit \(4300 digits\)", id="5000 digits"),
])
def test_config_files_go_through_the_same_checks_and_may_not_repeat_a_setting(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as error:
        train.parse_config(["--config", str(path)])
    assert str(path) in str(error.value)
    for toml, toml_message in [("seed = 1\nseed = 2\n", "not valid TOML: Cannot overwrite a value"),
                               ("learning_rate = 1e-5\nlearning-rate = 2e-5\n", "'learning_rate' and 'learning-rate' "
                                                                                "both set --learning-rate"),
                               ("seed = 1\n[run]\nseed = 2\n", "'seed' and 'run.seed' both set --seed"),
                               ("seed = " + "9" * 5_000 + "\n", r"not valid TOML: Exceeds the limit")]:
        (tmp_path / "bad.toml").write_text(toml)
        with pytest.raises(UserError, match=f"bad.toml: {toml_message}"):
            train.parse_config(["--config", str(tmp_path / "bad.toml")])


def test_changes_replace_a_files_setting_under_any_spelling_and_in_any_place():
    raw = {"data-root": "data", "run": {"seed": 1, "save_steps": 5}, "model": {"lora_r": 8}, "lora-alpha": 16}
    assert with_changes(raw, {"data_root": None, "seed": 2, "model": "tiny"}) == {
        "run": {"save_steps": 5}, "model": {"lora_r": 8, "model": "tiny"}, "lora-alpha": 16, "data_root": None,
        "seed": 2}


def test_a_setting_the_config_refuses_across_fields_is_one_line():
    with pytest.raises(UserError, match="--lora-dropout 0.1 with --method rarl: RL runs without dropout"):
        train.parse_config(["--lora-dropout", "0.1"])


@pytest.mark.parametrize("error, status, line", [
    (UserError("--data-root: give the folder"), 2, "error: --data-root: give the folder"),
    (CheckpointError("runs/x/checkpoint-4/trainer_state.pt is cut short"), 2,
     "error: runs/x/checkpoint-4/trainer_state.pt is cut short"),
    (RunLogError("runs/x/metrics.jsonl, line 3 is cut short"), 2, "error: runs/x/metrics.jsonl, line 3 is cut short"),
    (FolderInUse("--output-dir runs/x is in use by another run (pid 7)"), 2,
     "error: --output-dir runs/x is in use by another run (pid 7)"),
    (Interrupted(signal.SIGTERM, "SIGTERM: stopped after step 3"), 143, "stopped: SIGTERM: stopped after step 3"),
    (KeyboardInterrupt(), 130, "interrupted: stopped at once; files already written are kept"),
])
def test_known_errors_and_ctrl_c_are_one_line_with_their_status(capsys, error, status, line):
    def fail():
        raise error

    with pytest.raises(SystemExit) as stop:
        run_main(fail)
    assert stop.value.code == status and capsys.readouterr().err.strip() == line


def test_a_bug_keeps_its_traceback():
    def bug():
        raise KeyError("a bug")

    with pytest.raises(KeyError):     # not swallowed: the interpreter prints its traceback
        run_main(bug)


HOLD = "import sys, time; from pathlib import Path; from src.run_guard import hold_folder; " \
       "held = hold_folder(Path(sys.argv[1])); held.__enter__(); print('held', flush=True); time.sleep(60)"


def test_a_second_run_on_an_output_folder_is_refused_at_once_naming_the_holder(tmp_path, monkeypatch):
    """Two train.py (or evaluate.py) on one --output-dir: the second stops before reading anything; once
    the first is gone (even killed with SIGKILL, its lock file left behind) the folder is free again."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    monkeypatch.setattr(trainer, "setup", lambda cfg, source: pytest.fail("setup reached"))
    monkeypatch.setattr(pipeline, "load_eval_sets", lambda args: pytest.fail("datasets read"))
    try:
        assert holder.stdout.readline().strip() == "held"
        in_use = rf"--output-dir {out} is in use by another run \(pid {holder.pid}\); wait for it to end, or choose"
        with pytest.raises(FolderInUse, match=in_use):
            train.main(["--model", "tiny", "--dataset", "synthetic", "--output-dir", str(out)])
        with pytest.raises(FolderInUse, match=in_use):
            evaluate.main(["--model", "tiny", "--datasets", "synthetic:test", "--output-dir", str(out)])
    finally:
        holder.kill()
        holder.wait()
    assert (out / ".lock").exists()                   # SIGKILL left the file; the kernel dropped the lock
    monkeypatch.setattr(trainer, "setup", lambda cfg, source: (_ for _ in ()).throw(RuntimeError("reached setup")))
    with pytest.raises(RuntimeError, match="reached setup"):
        train.main(["--model", "tiny", "--dataset", "synthetic", "--output-dir", str(out)])
    assert not (out / ".lock").exists()               # a run removes its lock file when it ends


@pytest.mark.parametrize("plant, kind", [(lambda p: p.mkdir(), "a directory"), (os.mkfifo, "a pipe, socket or device"),
                                         (lambda p: p.symlink_to(p.parent.parent / "victim"), "a symbolic link")])
def test_a_lock_file_that_is_not_a_regular_file_is_refused_and_never_followed(tmp_path, monkeypatch, plant, kind):
    monkeypatch.setattr(pipeline, "load_eval_sets", lambda args: pytest.fail("datasets read"))
    out, victim = tmp_path / "out", tmp_path / "victim"
    victim.write_text("someone's file")
    out.mkdir()
    plant(out / ".lock")
    with pytest.raises(UserError, match=rf"^--output-dir {out}: {out / '.lock'} is {kind}, not a lock file; remove it"):
        evaluate.main(["--model", "tiny", "--datasets", "synthetic:test", "--output-dir", str(out)])
    assert victim.read_text() == "someone's file"                  # not truncated through the link


def test_a_full_disk_is_one_line_wherever_the_write_was(tmp_path, monkeypatch, capsys):
    """The lock file on a full disk is a WriteError like any result file; a library's own ENOSPC (no
    WriteError to name the file) is still one line and status 2."""
    monkeypatch.setattr(pipeline, "load_eval_sets", lambda args: pytest.fail("datasets read"))
    def full(descriptor, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_guard.os, "write", full)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        run_main(lambda: evaluate.main(["--model", "tiny", "--datasets", "synthetic:test", "--output-dir", str(out)]))
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: disk full: cannot write {out / '.lock'} ([Errno 28] No space")
    assert not out.exists()                                       # the folder it created is gone again
    with pytest.raises(SystemExit) as stop:
        run_main(lambda: open(tmp_path / "x", "w") and (_ for _ in ()).throw(
            OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))))
    assert stop.value.code == 2 and capsys.readouterr().err == (
        f"error: disk full: cannot write {tmp_path / 'x'} (No space left on device); files already written are kept: "
        "free some space and run again\n")


def test_evaluate_on_a_real_full_disk_says_disk_full(tmp_path, monkeypatch, capsys):
    """A 1 MiB tmpfs filled to the last byte (needs root to mount)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    monkeypatch.setattr(pipeline, "load_eval_sets", lambda args: pytest.fail("datasets read"))
    try:
        with open(mount / "filler", "wb") as filler:
            filler.write(b"\0" * shutil.disk_usage(mount).free)
        with pytest.raises(SystemExit) as stop:
            run_main(lambda: evaluate.main(["--model", "tiny", "--datasets", "synthetic:test",
                                            "--output-dir", str(mount / "eval")]))
        assert stop.value.code == 2
        assert capsys.readouterr().err.startswith(f"error: disk full: cannot write {mount}/eval")
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_bare_train_command_offline_names_what_to_fetch_before_anything_loads(tmp_path):
    """`python train.py` with no arguments and HF_HUB_OFFLINE=1 (conftest) on an empty Hub cache: names
    are checked before anything is fetched, so the default model, not in this cache, is named first, in
    one line, before any download or load (the dataset's own line, with its `hf download` command, is
    tests/test_hub_datasets.py's)."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run([sys.executable, str(REPO / "train.py")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --model Qwen/Qwen2-VL-2B-Instruct: not in the local Hugging Face cache and HF_HUB_OFFLINE "
                      "is set; download it (hf download Qwen/Qwen2-VL-2B-Instruct) or pass a local "
                      "directory"]
    assert "Traceback" not in result.stderr and "Silvar-Med" not in result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "hf-home").exists()


def test_train_checks_data_and_model_before_loading_weights(tmp_path, monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before a cheap check failed")

    monkeypatch.setattr(trainer, "load_policy", no_weights)
    out = str(tmp_path / "run")
    with pytest.raises(DatasetError, match="data folder not found"):
        train.main(["--model", "tiny", "--dataset", "vqa-rad", "--data-root", str(tmp_path / "nowhere"),
                    "--output-dir", out])
    with pytest.raises(UserError, match="--model nowhere/at/all: no such directory"):
        train.main(["--model", "nowhere/at/all", "--dataset", "synthetic", "--output-dir", out])
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):   # HF_HUB_OFFLINE=1 (conftest)
        train.main(["--model", "someone/not-downloaded", "--dataset", "synthetic", "--output-dir", out])
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="exists and is not a directory"):
        train.main(["--model", "tiny", "--dataset", "synthetic", "--output-dir", str(tmp_path / "file")])


def test_train_refuses_to_overwrite_a_run_or_resume_it_with_other_settings(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2" / "trainer_state.pt").write_bytes(b"")   # what makes a checkpoint complete
    (run / "config.json").write_text(TrainConfig().resolved().to_json())
    monkeypatch.setattr(trainer, "setup", lambda cfg, source: pytest.fail("setup reached"))
    with pytest.raises(UserError, match="holds checkpoints of an earlier run: add --resume"):
        train.main(["--output-dir", str(run)])
    with pytest.raises(UserError, match=r"--resume: .*\(run.method: 'rarl' -> 'grpo'\)"):
        train.main(["--output-dir", str(run), "--resume", "--method", "grpo"])


def test_evaluate_reads_every_dataset_and_checks_judge_keys_before_the_model(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "make_generate_fn", lambda args: pytest.fail("model loaded"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))   # empty, and HF_HUB_OFFLINE=1 (conftest)
    out = tmp_path / "out"
    base = ["--model", "tiny", "--output-dir", str(out), "--limit", "2"]
    with pytest.raises(DatasetError, match="vqa-rad: HF_HUB_OFFLINE is set and flaviagiammarino/vqa-rad is not in"):
        evaluate.main(base + ["--datasets", "synthetic:test,vqa-rad:test"])
    with pytest.raises(UserError, match="--judge gpt-4o-mini: .*OPENAI_API_KEY"):
        evaluate.main(base + ["--datasets", "synthetic:test", "--judge", "gpt-4o-mini"])
    with pytest.raises(UserError, match="--import-human-sheet .*: no such file"):
        evaluate.main(base + ["--datasets", "synthetic:test", "--import-human-sheet", str(tmp_path / "sheet.csv")])
    assert not (out / "predictions").exists()


def test_every_name_is_checked_before_anything_loads_listing_what_it_may_be(tmp_path, monkeypatch):
    """LoRA targets against the model's layers (from its config, no weights), BERTScore models, datasets
    and splits, judges: each refused at once, naming the value and what it may be."""
    monkeypatch.setattr(trainer, "setup", lambda cfg, source: pytest.fail("setup reached"))
    monkeypatch.setattr(pipeline, "load_eval_sets", lambda args: pytest.fail("datasets read"))
    out = str(tmp_path / "run")
    run = ["--model", "tiny", "--dataset", "synthetic", "--output-dir", out]
    with pytest.raises(UserError, match="^--lora-targets: k_prj is not a linear layer of the language model; its "
                                        "linear layers: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, "
                                        "v_proj$"):
        train.main(run + ["--lora-targets", "q_proj", "k_prj"])
    with pytest.raises(UserError, match="^--lora-r 100: more than the 64 of k_proj's smaller side"):  # 2 KV heads x 32
        train.main(run + ["--lora-r", "100"])
    with pytest.raises(UserError, match="^--max-completion-length 4096: tiny has 4096 positions"):
        train.main(run + ["--max-completion-length", "4096"])
    with pytest.raises(UserError, match="^--bertscore-model robertaa-large: not a BERTScore model with a known layer; "
                                        "choose one of roberta-large, "):
        train.main(run + ["--bertscore-model", "robertaa-large"])
    with pytest.raises(UserError, match="^--bertscore-model roberta-large: not in the local Hugging Face cache"):
        train.main(run + ["--bertscore-model", "roberta-large"])       # HF_HUB_OFFLINE=1 (conftest), no cache
    with pytest.raises(SystemExit):
        train.main(run + ["--dataset", "synthetc"])                    # argparse: invalid choice, the list
    with pytest.raises(DatasetError, match="^--dataset: synthetic has no split 'tran'; its splits: "):
        train.main(run + ["--split", "tran"])
    assert not Path(out).exists()
    evaluation = ["--model", "tiny", "--output-dir", out]
    with pytest.raises(DatasetError, match="^--datasets synthetc:test: unknown dataset 'synthetc'; known: silvar-med"):
        evaluate.main(evaluation + ["--datasets", "synthetic:test,synthetc:test"])
    with pytest.raises(UserError, match="^--bertscore-model robertaa-large: not a BERTScore model"):
        evaluate.main(evaluation + ["--datasets", "synthetic:test", "--bertscore-model", "robertaa-large"])
    for judge, message in [("gpt-4o-mni", "not a model this project knows, and one letter away from gpt-4o-mini: did "
                                          "you mean gpt-4o-mini?"),
                           ("gemini-1.5-flsh", r".* did you mean gemini-1\.5-flash\?$"),
                           ("llama3", "not an OpenAI model name .* nor a Gemini one .*; a model on another server "
                                      "needs --judge-base-url"),
                           ("gpt-4o-mini,gpt-4o-mini", "expected distinct comma-separated judge names")]:
        with pytest.raises(UserError, match=f"^--judge {judge}: {message}"):
            evaluate.main(evaluation + ["--datasets", "synthetic:test", "--judge", judge])
    assert not Path(out).exists()


@pytest.mark.parametrize("judge", ["gpt-4o-mini", "gpt-4o-mini-2024-07-18", "gemini-1.5-flash-002", "gpt-5.1-mini",
                                   "o3-mini", "gpt-4", "gemini-3-flash-preview", "ft:gpt-4o-mini:org::abc"])
def test_judge_names_a_provider_serves_pass_and_any_name_passes_behind_a_base_url(judge):
    check_judge_names(judge, [])
    check_judge_names("llama3,gpt-4o-mni", ["http://localhost:8000/v1"])  # its server decides


def test_wait_policy_is_passive_only_when_others_leave_too_few_cores():
    assert not threads.should_wait_passively(0.0, cores=2, threads=2)
    assert not threads.should_wait_passively(0.4, cores=2, threads=2)      # background noise
    assert threads.should_wait_passively(1.0, cores=2, threads=2)          # another run on one core
    assert not threads.should_wait_passively(1.0, cores=8, threads=4)      # a big machine with room to spare
    assert threads.should_wait_passively(6.0, cores=8, threads=4)


def test_other_cpu_load_sees_a_busy_process():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert threads.other_cpu_load(0.5) > 0.5     # one core's worth, give or take the scheduler
    finally:
        busy.kill()
        busy.wait()


REGISTER = "import sys, time; from pathlib import Path; from src.cli.threads import register_run; " \
           "print(register_run(Path(sys.argv[1])), flush=True); time.sleep(float(sys.argv[2]))"


def test_runs_register_and_see_each_other_but_not_the_process_that_started_them(tmp_path):
    registry = tmp_path / "runs"
    registry.mkdir()
    (registry / "999999999").touch()                                  # a run that died without cleaning up
    first = subprocess.Popen([sys.executable, "-c", REGISTER, str(registry), "30"], cwd=REPO, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert first.stdout.readline().strip() == "[]"                 # alone, and the dead run swept away
        assert not (registry / "999999999").exists()
        assert threads.register_run(registry) == [first.pid]          # a second run sees the first
        child = subprocess.run([sys.executable, "-c", REGISTER, str(registry), "0"], cwd=REPO, capture_output=True,
                               text=True, timeout=60)
        assert child.stdout.strip() == f"[{first.pid}]"                # its parent (this test) does not count
    finally:
        first.kill()
        first.wait()
    assert threads.register_run(registry) == []                        # the killed run no longer counts
