"""evaluate.py end to end with a fake generator and scorer: crash and resume, judges on a local
server, human sheet round trip; nothing generated or judged twice, no key in any file or log."""
from __future__ import annotations

import csv
import json
import logging
import os
import signal
from pathlib import Path

import pytest

import evaluate
from src.errors import UserError
from src.eval import pipeline
from src.run_guard import Interrupted
from tests.conftest import random_image
from tests.judge_server import JudgeServer

KEY = "sk-test-SECRET123"
REASONING_SET = [
    {"id": "r1", "image": "a.png", "question": "Is there a mass in the left lung?", "answer": "yes",
     "reasoning": "A round opacity sits in the left upper lobe."},
    {"id": "r2", "image": "b.png", "question": "Is the heart enlarged?", "answer": "no",
     "reasoning": "The cardiac silhouette is normal."},
]
VQA_RAD = [
    {"qid": 1, "image_name": "synpic1.jpg", "question": "Is this an MRI?", "answer": "yes", "answer_type": "CLOSED"},
    {"qid": 2, "image_name": "synpic1.jpg", "question": "Which organ is shown?", "answer": "liver",
     "answer_type": "OPEN "},
    {"qid": 3, "image_name": "synpic1.jpg", "question": "Is there a fracture?", "answer": "no", "answer_type": "CLOSED"},
]


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A parent folder with one subfolder per dataset, in each dataset's official layout."""
    root = tmp_path / "data"
    (root / "silvar-med" / "images").mkdir(parents=True)
    (root / "silvar-med" / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in REASONING_SET))
    (root / "vqa-rad" / "images").mkdir(parents=True)
    (root / "vqa-rad" / "testset.json").write_text(json.dumps(VQA_RAD))
    for seed, image in enumerate(("silvar-med/images/a.png", "silvar-med/images/b.png", "vqa-rad/images/synpic1.jpg")):
        random_image(16, 16, seed).save(root / image)  # decoded when the dataset loads
    return root


class FakeModel:
    """Says "yes" to everything, thinking aloud which prompt it got; can crash on a chosen call."""

    def __init__(self):
        self.loads, self.calls, self.generated, self.crash_on_call = 0, 0, [], None

    def make_generate_fn(self, args):
        self.loads += 1
        return self.generate

    def generate(self, samples, system_prompt):
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise RuntimeError("CUDA out of memory")
        prompt = "reasoning" if "step-by-step" in system_prompt else "non-reasoning"
        self.generated += [(prompt, s.id) for s in samples]
        return [f"<think>I was given the {prompt} prompt.</think><answer>yes</answer>" for s in samples]


class FakeScorer:
    model_name = "fake-bertscore"

    def score(self, candidates, references):
        return [1.0 if c == r else 0.25 for c, r in zip(candidates, references)]


@pytest.fixture
def fake(monkeypatch) -> FakeModel:
    model = FakeModel()
    monkeypatch.setattr(pipeline, "make_generate_fn", model.make_generate_fn)
    monkeypatch.setattr(pipeline, "load_bertscorer", lambda name, device=None: FakeScorer())
    real_limit = pipeline.PromptLimit.from_model
    monkeypatch.setattr(pipeline.PromptLimit, "from_model", lambda name: real_limit("tiny"))  # prompts counted as tiny's
    monkeypatch.setattr(pipeline, "check_model_source", lambda name: None)  # "fake/model" is no hub model
    return model


def run(data_root: Path, out: Path, *extra: str) -> dict:
    return evaluate.main(["--model", "fake/model", "--data-root", str(data_root), "--output-dir", str(out),
                          "--datasets", "silvar-med:test,vqa-rad:test", "--batch-size", "2", *extra])


def test_judge_free_run_resumes_after_a_crash_without_regenerating(tmp_path, data_root, fake):
    out = tmp_path / "out"
    fake.crash_on_call = 3       # calls: silvar reasoning, silvar non-reasoning, vqa-rad reasoning batch 1
    with pytest.raises(RuntimeError, match="out of memory"):
        run(data_root, out, "--judge", "none")
    assert len(fake.generated) == 4
    summary = run(data_root, out, "--judge", "none")
    # every (prompt, question) generated exactly once over the two runs: 2 prompts x (2 + 3) questions
    assert len(fake.generated) == len(set(fake.generated)) == 10
    assert fake.loads == 2                               # once per run that had something to generate
    run(data_root, out, "--judge", "none")
    assert fake.calls == 7 and fake.loads == 2           # third run: nothing to generate, model never loaded

    groups = {(g["dataset"], g["prompt"]): g["metrics"] for g in summary["groups"]}
    assert list(groups) == [("silvar-med", "reasoning"), ("silvar-med", "non-reasoning"),
                            ("vqa-rad", "reasoning"), ("vqa-rad", "non-reasoning")]
    silvar, vqa_rad = groups[("silvar-med", "reasoning")], groups[("vqa-rad", "reasoning")]
    assert silvar["closed"] == {"n": 2, "accuracy": 0.5, "by_task": {}}         # "yes" right for r1 only
    assert silvar["reasoning"]["n"] == 2 and silvar["format_rate"] == 1.0
    assert vqa_rad["closed"] == {"n": 2, "accuracy": 0.5, "by_task": {}}        # qid 1 right, qid 3 wrong
    assert vqa_rad["open"]["token_recall"] == 0.0 and vqa_rad["open"]["bertscore_f1"] == 0.25
    assert summary["judges"] == {} and summary["bertscore_model"] == "fake-bertscore"
    report = (out / "report.md").read_text()
    assert "LLM-as-judge" not in report and "| VQA-RAD | reasoning | 3 | 100.00% | 50.00% (2) |" in report
    assert json.loads((out / "summary.json").read_text()) == summary


def test_ctrl_c_stops_after_the_batch_in_progress_and_a_rerun_goes_on(tmp_path, data_root, fake, monkeypatch):
    out, real = tmp_path / "out", fake.generate

    def generate(samples, system_prompt):
        if fake.calls == 1:  # Ctrl-C while the second batch is generated
            os.kill(os.getpid(), signal.SIGINT)
        return real(samples, system_prompt)

    monkeypatch.setattr(fake, "generate", generate)
    handler = signal.getsignal(signal.SIGINT)  # Python's default_int_handler, or SIG_IGN in a background job
    with pytest.raises(Interrupted, match=r"^SIGINT: stopped after 2 of 2 new predictions, appended to "
                                          rf"{out / 'predictions' / 'silvar-med-test-non-reasoning.jsonl'}") as stop:
        run(data_root, out, "--judge", "none")
    assert stop.value.exit_status == 130 and len(fake.generated) == 4 and not (out / ".lock").exists()
    assert signal.getsignal(signal.SIGINT) is handler  # the run's handler is gone again
    run(data_root, out, "--judge", "none")
    assert len(fake.generated) == len(set(fake.generated)) == 10   # the rest, nothing twice


def test_judged_run_on_a_local_server_then_cached_rerun_and_human_sheet(tmp_path, data_root, fake, monkeypatch,
                                                                         caplog):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    with JudgeServer(KEY) as server:
        judges = ["--judge", "gpt-4o-mini,gemini-1.5-flash", "--judge-retry-delay", "0.01",
                  "--judge-base-url", f"gpt-4o-mini={server.url}/v1",
                  "--judge-base-url", f"gemini-1.5-flash={server.url}/v1beta"]
        summary = run(data_root, out, *judges, "--export-human-sheet")
        # 10 distinct prompts (5 questions x 2 inference prompts) per judge, each asked once
        assert sum(server.requests.values()) == 20 and set(server.requests.values()) == {1}
        sheet = out / "human_sheet.csv"
        with open(sheet, newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:     # the clinician agrees with the reasoning of r1 and r2 and the answer of r1 only
            row["reasoning_score"] = "1" if row["dataset"] == "silvar-med" else ""
            row["prediction_score"] = "1" if row["id"] == "r1" else "0"
        with open(sheet, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        rerun = run(data_root, out, *judges, "--import-human-sheet", str(sheet))
        assert sum(server.requests.values()) == 20          # everything came from the cache
    assert fake.calls == 6 and fake.loads == 1              # 1 + 1 + 2 + 2 batches; second run loaded nothing

    by_group = {(g["dataset"], g["prompt"]): g for g in rerun["groups"]}
    for judge in ("gpt-4o-mini", "gemini-1.5-flash"):
        # the fake judge: prediction_score = (answer == reference), reasoning_score always 1
        silvar = by_group[("silvar-med", "reasoning")]["judges"][judge]
        assert (silvar["final"], silvar["reasoning"], silvar["judged"]) == (0.5, 1.0, 2)
        vqa_rad = by_group[("vqa-rad", "non-reasoning")]["judges"][judge]
        assert vqa_rad["final"] == pytest.approx(1 / 3) and vqa_rad["reasoning"] is None
        assert summary["judges"][judge]["new_replies"] == 10 and rerun["judges"][judge]["new_replies"] == 0
        assert summary["judges"][judge]["prompt_tokens"] == rerun["judges"][judge]["prompt_tokens"] == 1000
    assert by_group[("silvar-med", "reasoning")]["human"] == {"final": 0.5, "reasoning": 1.0, "scored": 2,
                                                              "scored_reasoning": 2}
    report = (out / "report.md").read_text()
    assert "| Ours (reasoning set) | 100.00% | 50.00% | 100.00% | 50.00% | 100.00% | 50.00% |" in report
    assert "| VQA-RAD | — | 33.33% | — | 33.33% | — | 0.00% |" in report
    judgments = (out / "judgments" / "gpt-4o-mini.jsonl").read_text().splitlines()
    assert len(judgments) == 10 and json.loads(judgments[0])["status"] == "ok"
    written = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())
    assert KEY not in written and KEY not in caplog.text


def test_refuses_to_mix_models_in_one_output_dir(tmp_path, data_root, fake):
    out = tmp_path / "out"
    run(data_root, out, "--judge", "none", "--limit", "1")
    with pytest.raises(UserError, match="holds predictions made with other settings \\(model: 'fake/model' -> "
                                        "'other/model'\\)"):  # one line, exit status 2 (run_main)
        evaluate.main(["--model", "other/model", "--data-root", str(data_root), "--output-dir", str(out),
                       "--datasets", "vqa-rad:test"])
    with pytest.raises(UserError, match=r"generation.temperature: 0.0 -> 0.7; generation.engine: 'engine' -> 'hf'"):
        evaluate.main(["--model", "fake/model", "--data-root", str(data_root), "--output-dir", str(out),
                       "--datasets", "vqa-rad:test", "--temperature", "0.7", "--rollout-engine", "hf"])


def test_changed_settings_compares_nested_leaves_and_skips_what_may_change_or_was_never_saved(tmp_path):
    from src.files import changed_settings

    path = tmp_path / "config.json"
    assert changed_settings(path, {"a": 1}) == []  # nothing saved yet
    path.write_text(json.dumps({"run": {"seed": 0, "save_steps": 10}, "optim": {"lr": 1e-3}}))
    now = {"run": {"seed": 1, "save_steps": 20, "new_field": True}, "optim": {"lr": 1e-3}}
    assert changed_settings(path, now, may_change=("run.save_steps",)) == ["run.seed: 0 -> 1"]
    assert changed_settings(path, now) == ["run.seed: 0 -> 1", "run.save_steps: 10 -> 20"]


def test_cli_value_parsing():
    assert pipeline.data_root(["vqa-rad=/d/rad", "/d"], "vqa-rad") == Path("/d/rad")
    assert pipeline.data_root(["vqa-rad=/d/rad", "/d"], "slake") == Path("/d/slake")
    assert pipeline.data_root([], "synthetic") is None
    urls = ["http://localhost:8000/v1", "gemini-1.5-flash=http://g/v1beta"]
    assert pipeline.judge_base_url(urls, "gemini-1.5-flash") == "http://g/v1beta"
    assert pipeline.judge_base_url(urls, "llama3") == "http://localhost:8000/v1"
    assert pipeline.judge_base_url([], "gpt-4o-mini") is None


def test_open_answers_get_a_side_error_rate_and_on_request_the_clinical_score(tmp_path, fake, monkeypatch):
    root = tmp_path / "data"
    (root / "vqa-rad" / "images").mkdir(parents=True)
    random_image(16, 16).save(root / "vqa-rad" / "images" / "synpic1.jpg")
    rows = [{"qid": 1, "image_name": "synpic1.jpg", "question": "Which lung?", "answer": "Right lung",
             "answer_type": "OPEN"},
            {"qid": 2, "image_name": "synpic1.jpg", "question": "Which lung?", "answer": "left lung",
             "answer_type": "OPEN"}]
    (root / "vqa-rad" / "testset.json").write_text(json.dumps(rows))
    monkeypatch.setattr(pipeline, "make_generate_fn",   # the model says "The left lung." to everything
                        lambda args: lambda samples, prompt: ["<think>t</think><answer>The left lung.</answer>"] * 2)

    def evaluate_open(out: str, *extra: str) -> tuple[dict, str]:
        summary = evaluate.main(["--model", "fake/model", "--data-root", str(root), "--output-dir", str(tmp_path / out),
                                 "--datasets", "vqa-rad:test", "--prompt", "reasoning", "--judge", "none", *extra])
        return summary, (tmp_path / out / "report.md").read_text()

    # qid 1: left for right, a side error (clinical 0); qid 2: the same answer as read (clinical 1)
    summary, report = evaluate_open("clinical", "--open-answer-score", "clinical")
    open_ = summary["groups"][0]["metrics"]["open"]
    assert (open_["side_errors"], open_["side_error_rate"], open_["side_questions"]) == (1, 0.5, 2)
    assert open_["clinical"] == 0.5 and summary["open_answer_score"] == "clinical"
    assert "Open clinical | Open side errors |" in report and "| 0.5000 | 50.00% (1 of 2) |" in report
    summary, report = evaluate_open("paper")              # the default: the paper's metrics and the side errors
    open_ = summary["groups"][0]["metrics"]["open"]
    assert "clinical" not in open_ and open_["side_error_rate"] == 0.5 and summary["open_answer_score"] == "bertscore"
    assert "Open clinical" not in report and "| 50.00% (1 of 2) |" in report


def test_a_prediction_holding_a_5000_digit_number_is_evaluated_like_any_other(tmp_path, fake, monkeypatch):
    """Python's int() refuses strings past 4,300 digits; the side-error reading never converts one."""
    root = tmp_path / "data"
    (root / "vqa-rad" / "images").mkdir(parents=True)
    random_image(16, 16).save(root / "vqa-rad" / "images" / "synpic1.jpg")
    rows = [{"qid": 1, "image_name": "synpic1.jpg", "question": "How many?", "answer": "3", "answer_type": "OPEN"}]
    (root / "vqa-rad" / "testset.json").write_text(json.dumps(rows))
    answer = "9" * 5_000
    monkeypatch.setattr(pipeline, "make_generate_fn",
                        lambda args: lambda samples, prompt: [f"<think>t</think><answer>{answer}</answer>"])
    summary = evaluate.main(["--model", "fake/model", "--data-root", str(root), "--output-dir", str(tmp_path / "out"),
                             "--datasets", "vqa-rad:test", "--prompt", "reasoning", "--judge", "none"])
    open_ = summary["groups"][0]["metrics"]["open"]
    assert open_["n"] == 1 and open_["exact_match"] == 0.0 and open_["side_errors"] == 0
