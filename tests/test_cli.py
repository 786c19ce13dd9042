"""The command line: --help of every entry point, --config files, user errors (one line, status 2)
against bugs (a traceback), cheap checks before any model loads, and the CPU thread policy."""
from __future__ import annotations

import dataclasses
import json
import re
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
from src.cli import threads
from src.cli.config_file import parse_args
from src.cli.errors import UserError, run_main
from src.data.rows import DatasetError
from src.grpo import trainer
from src.grpo.config import SECTIONS, TrainConfig, build_parser, config_from_args

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
    cfg = config_from_args(parse_args(build_parser("t"), ["--config", str(tmp_path / "nested.yaml")]))
    assert cfg.to_dict() == {section: dict(values) for section, values in wanted.items()}
    assert set(SECTIONS) == set(wanted)

    flat = {name: value for values in nested.values() for name, value in values.items() if name != "model"}
    flat["model"] = "tiny"   # flat keys: a flag name; "model" here is --model
    toml = "\n".join(f"{k} = {json.dumps(v)}" for k, v in flat.items())
    (tmp_path / "flat.toml").write_text(toml)
    argv = ["--config", str(tmp_path / "flat.toml"), "--seed", "42", "--no-resume", "--lora-targets", "q_proj"]
    cfg = config_from_args(parse_args(build_parser("t"), argv))
    assert (cfg.run.seed, cfg.run.resume, cfg.model.lora_targets) == (42, False, ("q_proj",))  # command line wins
    assert (cfg.model.model, cfg.optim.learning_rate, cfg.run.method) == ("tiny", 0.375, wanted["run"]["method"])

    saved = tmp_path / "config.json"                                 # and a saved config reproduces itself
    saved.write_text(cfg.to_json())
    assert config_from_args(parse_args(build_parser("t"), ["--config", str(saved)])) == cfg


def test_evaluate_config_file_with_lists_and_required_flags(tmp_path):
    recipe = tmp_path / "eval.yaml"
    recipe.write_text("model: tiny\noutput-dir: out\ndata_root: [a, vqa-rad=b]\njudge_base_url: [http://x/v1]\n"
                      "export_human_sheet: true\nlimit: 3\n")
    args = evaluate.parse_args(["--config", str(recipe), "--data-root", "c"])
    assert (args.model, args.output_dir, args.limit, args.export_human_sheet) == ("tiny", Path("out"), 3, True)
    assert args.data_root == ["c"] and args.judge_base_url == ["http://x/v1"]   # a repeated flag replaces the list
    recipe.write_text("datasets: synthetic:test\n")
    with pytest.raises(SystemExit) as stop:       # --model and --output-dir are required, from either place
        evaluate.parse_args(["--config", str(recipe)])
    assert stop.value.code == 2


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
        parse_args(build_parser("t"), ["--config", str(path)])
    assert str(path) in str(error.value)
    with pytest.raises(UserError, match="no such file"):
        parse_args(build_parser("t"), ["--config", str(tmp_path / "missing.yaml")])


def test_user_error_is_one_line_and_status_2_while_a_bug_keeps_its_traceback(capsys):
    def refuse():
        raise UserError("--data-root: give the folder")

    with pytest.raises(SystemExit) as stop:
        run_main(refuse)
    assert stop.value.code == 2 and capsys.readouterr().err == "error: --data-root: give the folder\n"

    def bug():
        raise KeyError("a bug")

    with pytest.raises(KeyError):     # not swallowed: the interpreter prints its traceback
        run_main(bug)


def test_bare_train_command_names_the_missing_data_root_without_touching_the_hub(tmp_path):
    """`python train.py` with no arguments: the data root is asked for before any model loads."""
    result = subprocess.run([sys.executable, str(REPO / "train.py")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: silvar-med: give the folder holding its files (see docs/DATA.md)"]
    assert "Traceback" not in result.stderr and "model Qwen" not in result.stderr
    assert not (tmp_path / "runs").exists()


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
    (run / "config.json").write_text(TrainConfig().to_json())
    monkeypatch.setattr(trainer, "setup", lambda cfg: pytest.fail("setup reached"))
    with pytest.raises(UserError, match="holds checkpoints of an earlier run: add --resume"):
        train.main(["--output-dir", str(run)])
    with pytest.raises(UserError, match=r"--resume: .*\(run.method: 'rarl' -> 'grpo'\)"):
        train.main(["--output-dir", str(run), "--resume", "--method", "grpo"])


def test_evaluate_reads_every_dataset_and_checks_judge_keys_before_the_model(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "make_generate_fn", lambda args: pytest.fail("model loaded"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "out"
    base = ["--model", "tiny", "--output-dir", str(out), "--limit", "2"]
    with pytest.raises(DatasetError, match="vqa-rad: give the folder"):
        evaluate.main(base + ["--datasets", "synthetic:test,vqa-rad:test"])
    with pytest.raises(UserError, match="--judge gpt-4o-mini: .*OPENAI_API_KEY"):
        evaluate.main(base + ["--datasets", "synthetic:test", "--judge", "gpt-4o-mini"])
    with pytest.raises(UserError, match="--import-human-sheet .*: no such file"):
        evaluate.main(base + ["--datasets", "synthetic:test", "--import-human-sheet", str(tmp_path / "sheet.csv")])
    assert not (out / "predictions").exists()


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
