"""reproduce.py on the embedded default: every run of Tables 2, 3 and 6 trained and evaluated at tiny
scale (judged by a local fake judge), the tables assembled beside the paper's numbers."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import reproduce
from src.cli.config_file import load_file
from src.errors import UserError
from src.recipes.paper import TABLES, answers_right
from tests.judge_server import JudgeServer

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
KEY = "sk-test-reproduce"


def test_every_recipe_is_a_valid_config_of_its_entry_point():
    import evaluate
    import train
    from src.cli.config_file import read_config

    names = {row.train for table in TABLES.values() for row in table.rows if row.train} | \
            {table.evaluate for table in TABLES.values()}
    assert {f"{p.parent.name}/{p.stem}" for p in RECIPES.glob("*/*.yaml")} == names   # no stray or missing file
    for name in names:
        parser = evaluate.build_parser() if name.endswith("evaluate") else train.build_parser()
        values = read_config(parser, RECIPES / f"{name}.yaml")
        text = (RECIPES / f"{name}.yaml").read_text()
        setting_lines = [line for line in text.splitlines() if line and not line.startswith("#")]
        assert len(values) == len(setting_lines) and all("# paper" in line or "# ours" in line for line in setting_lines)
    assert load_file(RECIPES / "table2/grpo-lora-500.yaml")["samples"] == 500
    assert load_file(RECIPES / "table6/evaluate.yaml")["prompt"] == "both"


@pytest.mark.parametrize("file, old, new, message", [
    ("table6/rarl.yaml", "learning_rate: 1.0e-5", "lerning_rate: 1.0e-5", "unknown setting 'lerning_rate'"),
    ("table6/rarl.yaml", "lora_r: 8 ", "lora_r: 0 ", "lora_r: must be at least 1, got 0"),
    ("table6/rarl.yaml", "lora_dropout: 0.0 ", "lora_dropout: 0.1 ", "--lora-dropout 0.1 with --method rarl"),
    ("table6/rarl.yaml", "seed: 0 ", "seed: 0\nseed: 1 ", "line 9: 'seed' is given twice (first on line 8)"),
    ("table6/evaluate.yaml", "judge_concurrency: 8 ", "judge_concurrency: 0 ", "judge_concurrency: must be at least 1"),
    ("table6/rarl.yaml", "lora_targets: [q_proj, k_proj,", "lora_targets: [q_proj, k_prj,",
     "--lora-targets: k_prj is not a linear layer of the language model; its linear layers: down_proj, gate_proj"),
    ("table6/rarl.yaml", "bertscore_model: null ", "bertscore_model: robertaa-large ",
     "--bertscore-model robertaa-large: not a BERTScore model with a known layer"),
    ("table6/rarl.yaml", "learning_rate: 1.0e-5 ", "learning_rate: 1.0e-5\nlearning-rate: 1.0e-5 ",
     "'learning_rate' and 'learning-rate' both set --learning-rate"),
])
def test_a_mistake_in_the_last_tables_recipe_stops_before_the_first_stage_naming_the_users_file(
        tmp_path, monkeypatch, file, old, new, message):
    import evaluate
    import train

    recipes = tmp_path / "recipes"
    shutil.copytree(RECIPES, recipes)
    text = (recipes / file).read_text()
    assert old in text
    (recipes / file).write_text(text.replace(old, new))
    for stage in (train, evaluate):
        monkeypatch.setattr(stage, "main", lambda argv: pytest.fail("a stage ran before the recipes were checked"))
    with pytest.raises(UserError) as error:
        reproduce.main(["--tiny", "--recipes", str(recipes), "--output-dir", str(tmp_path / "out")])
    assert str(error.value).startswith(f"{recipes / file}: ") and message in str(error.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("judge, key, message", [
    ("gpt-4o-mni", "sk-x", "--judge gpt-4o-mni: not a model this project knows, and one letter away from gpt-4o-mini"),
    ("gpt-4o-mini", None, "--judge gpt-4o-mini: judge 'gpt-4o-mini' needs an API key in OPENAI_API_KEY"),
])
def test_a_judge_typo_or_a_missing_key_stops_before_the_first_stage(tmp_path, monkeypatch, judge, key, message):
    import evaluate
    import train

    for stage in (train, evaluate):
        monkeypatch.setattr(stage, "main", lambda argv: pytest.fail("a stage ran before the recipes were checked"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    if key:
        monkeypatch.setenv("OPENAI_API_KEY", key)
    with pytest.raises(UserError) as error:
        reproduce.main(["--tiny", "--tables", "3", "--judge", judge, "--output-dir", str(tmp_path / "out")])
    assert str(error.value).startswith(f"{RECIPES / 'table3/evaluate.yaml'}: {message}")
    assert not (tmp_path / "out").exists()


def test_a_judge_url_with_credentials_reaches_evaluate_but_no_file_or_printed_line(tmp_path, monkeypatch, capsys):
    import evaluate

    seen = []
    monkeypatch.setattr(evaluate, "main", lambda argv: seen.append(argv) or {})
    url = "gpt-4o-mini=https://me:pa55w0rd-s3cret@judge.example/v1"
    reproduce.run_evaluation(RECIPES, "table6/rarl", "table6/evaluate", Path("model"), tmp_path,
                             {"judge_base_url": [url]})
    assert seen[0][-2:] == ["--judge-base-url", url]
    assert "pa55w0rd" not in (tmp_path / "table6/rarl/eval.yaml").read_text() + capsys.readouterr().out
    assert load_file(tmp_path / "table6/rarl/eval.yaml")["judge"] == "gpt-4o-mini,gemini-1.5-flash"


@pytest.mark.slow
def test_reproduce_runs_every_table_at_tiny_scale(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    out = tmp_path / "paper"
    with JudgeServer(KEY) as server:
        judges = ["--judge", "gpt-4o-mini,gemini-1.5-flash", "--judge-base-url", f"gpt-4o-mini={server.url}/v1",
                  "--judge-base-url", f"gemini-1.5-flash={server.url}/v1beta"]
        numbers = reproduce.main(["--tiny", "--output-dir", str(out), *judges])
        requests = sum(server.requests.values())
        # a second run finds every stage on disk: no training step, no generation, no judge call
        checkpoints = {p: p.stat().st_mtime_ns for p in out.glob("*/*/train/checkpoint-*/*")}
        assert reproduce.main(["--tiny", "--output-dir", str(out), *judges]) == numbers
        assert sum(server.requests.values()) == requests
        assert {p: p.stat().st_mtime_ns for p in out.glob("*/*/train/checkpoint-*/*")} == checkpoints

    assert list(numbers) == ["Table 2", "Table 3", "Table 6"]
    for table in TABLES.values():                               # every run trained to its last step, as resolved
        for row in table.rows:
            if row.train:
                recipe = yaml.safe_load((out / row.train / "train.yaml").read_text())
                assert (recipe["model"], recipe["dataset"], recipe["max_steps"]) == ("tiny", "synthetic", 2)
                assert (out / row.train / "train" / "checkpoint-2").is_dir()
                assert json.loads((out / row.train / "train" / "config.json").read_text())["run"]["method"] == \
                    load_file(RECIPES / f"{row.train}.yaml")["method"]

    table2 = {(r["method"], r["samples"]): r for r in numbers["Table 2"]}
    assert table2[("RL w/ LoRA", 5000)]["paper"]["Total"] == 59.04
    assert table2[("RL only (w/o LoRA) [32]", 15000)]["ours"]["Total"] is None     # from the literature: not run
    summary = json.loads((out / "table2" / "sft-500" / "eval" / "summary.json").read_text())
    assert table2[("SFT", 500)]["ours"]["Total"] == answers_right(summary["groups"][0]["metrics"])
    assert summary["groups"][0]["prompt"] == "explanation" and summary["groups"][0]["metrics"]["n"] == 4

    rarl = json.loads((out / "table6" / "rarl" / "eval" / "summary.json").read_text())
    groups = {g["prompt"]: g for g in rarl["groups"]}
    assert set(groups) == {"reasoning", "non-reasoning"}
    table6 = {(r["prompt"], r["dataset"]): r for r in numbers["Table 6"]}
    assert len(table6) == 10
    for prompt, group in groups.items():
        ours = table6[(prompt, "vqa-rad")]["ours"]               # at tiny scale every dataset is the synthetic set
        assert ours["GPT-4o mini Final"] == group["judges"]["gpt-4o-mini"]["final"]
        assert ours["Gemini 1.5 Flash Reasoning"] == group["judges"]["gemini-1.5-flash"]["reasoning"]
        assert ours["Human Evaluation Final"] is None
        assert ours["no judge: answers right"] == answers_right(group["metrics"])
    assert table6[("reasoning", "silvar-med")]["paper"]["GPT-4o mini Reasoning"] == 70.27
    assert table6[("non-reasoning", "path-vqa")]["paper"]["Gemini 1.5 Flash Final"] == 23.72

    markdown = (out / "tables.md").read_text()
    for title in ("### Table 2:", "### Table 3:", "### Table 6:"):
        assert title in markdown
    assert "| RL w/ LoRA | 5,000 | 63.89% |" in markdown and "| **RL + LoRA** |" in markdown
    assert "our judges: `gpt-4o-mini` in the GPT-4o mini columns, `gemini-1.5-flash` in the Gemini 1.5 Flash" in markdown
