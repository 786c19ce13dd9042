"""A prompt the model cannot take whole (beyond its positions, or with an image the processor refuses) is
refused with its sample named, from config.json, tokenizer and image processor alone, before weights load."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import evaluate
from src.data.prompts import TRAINING_PROMPTS, build_messages
from src.data.rows import DatasetError
from src.data.sample import Sample
from src.eval import pipeline
from src.grpo import trainer
from src.models.inputs import build_prompt_batch
from src.models.prompt_length import PromptLimit
from tests.conftest import random_image
from tests.test_image_check import jpeg_bytes, reasoning_set
from tests.test_trainer import tiny_config

LONG_QUESTION = " ".join(["Is the opacity in the left lower lobe consistent with pneumonia"] * 600)  # 6,000 words


@pytest.fixture(scope="module")
def limit() -> PromptLimit:
    return PromptLimit.from_model("tiny")


def sample(tmp_path: Path, question: str, size=(32, 32), name="a.png", id="s1") -> Sample:
    path = tmp_path / name
    random_image(size[1], size[0]).save(path)
    return Sample(id=id, dataset="silvar-med", image=str(path), question=question, answer="yes", answer_type="closed")


def test_the_tiny_model_has_4096_positions(limit):
    assert limit.max_positions == 4096


@pytest.mark.parametrize("size", [(16, 16), (300, 100), (1000, 1000), (30, 500)])
def test_counted_prompt_tokens_equal_the_built_batch(limit, tiny_policy, tmp_path, size):
    question = "Which side holds the larger lesion, and is it brighter than the organ around it?"
    s = sample(tmp_path, question, size)
    system = TRAINING_PROMPTS["explanation"]
    [text] = limit.prompt_tokens([question], system)
    counted = text + limit.image_tokens(*size)
    from src.models.inputs import load_image

    batch = build_prompt_batch(tiny_policy.tokenizer, tiny_policy.image_processor, [build_messages(question, system)],
                               [load_image(s.image)])
    assert counted == batch.input_ids.shape[1]


def test_the_limit_reads_where_auto_image_processor_needs_torchvision(limit, monkeypatch):
    """transformers 5.17 without torchvision has only a placeholder AutoImageProcessor that raises ImportError:
    the limit loads the PIL image processor then, as load_policy does, and counts the same image tokens."""
    import transformers

    class Placeholder:
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            raise ImportError("AutoImageProcessor requires the Torchvision library")

    monkeypatch.setattr(transformers, "AutoImageProcessor", Placeholder)
    without = PromptLimit.from_model("tiny")
    assert type(without.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    sizes = [(16, 16), (300, 100), (1000, 1000), (30, 500)]
    assert [without.image_tokens(*size) for size in sizes] == [limit.image_tokens(*size) for size in sizes]
    assert without.max_positions == limit.max_positions == 4096


def test_a_6000_word_question_is_refused_naming_its_sample(limit, tmp_path):
    short, long = sample(tmp_path, "Is there a lesion?", id="ok"), sample(tmp_path, LONG_QUESTION, name="b.png", id="q7")
    with pytest.raises(DatasetError) as error:
        limit.check([short, long], [TRAINING_PROMPTS["explanation"]], lambda s: 512)
    message = str(error.value)
    assert message.startswith(f"1 sample(s) do not fit the model: silvar-med sample q7 (image {long.image}): ")
    assert "+ 512 completion tokens" in message and "more than the 4096 positions of tiny" in message
    with pytest.warns(UserWarning, match=r"left out 1 sample\(s\) that do not fit the model: silvar-med sample q7"):
        assert limit.check([short, long], [TRAINING_PROMPTS["explanation"]], lambda s: 512, True) == [short]


def test_the_completion_budget_counts_toward_the_positions(limit, tmp_path):
    s = sample(tmp_path, "Is there a lesion?")
    system = TRAINING_PROMPTS["explanation"]
    prompt = limit.prompt_tokens([s.question], system)[0] + limit.image_tokens(32, 32)
    assert limit.check([s], [system], lambda _: 4096 - prompt) == [s]  # exactly full
    with pytest.raises(DatasetError, match=rf"{prompt} prompt tokens \(\d+ of them for its 32x32 image\) \+ "
                                           rf"{4097 - prompt} completion tokens = 4097"):
        limit.check([s], [system], lambda _: 4097 - prompt)


def test_the_longest_system_prompt_counts(limit, tmp_path):
    s = sample(tmp_path, "Is there a lesion?")
    short, long = "Answer.", TRAINING_PROMPTS["explanation"]
    full = limit.prompt_tokens([s.question], long)[0] + limit.image_tokens(32, 32)
    budget = 4096 - full + 1  # fits under the short prompt only
    assert limit.check([s], [short], lambda _: budget) == [s]
    with pytest.raises(DatasetError):
        limit.check([s], [short, long], lambda _: budget)


def test_an_image_the_processor_refuses_is_named(limit, tmp_path):
    s = sample(tmp_path, "Is there a lesion?", size=(5000, 20))  # aspect ratio 250: Qwen2-VL accepts up to 200
    with pytest.raises(DatasetError, match=r"silvar-med sample s1 .*: its 5000x20 image: absolute aspect ratio must "
                                           r"be smaller than 200"):
        limit.check([s], ["Answer."], lambda _: 8)


def long_question_set(root: Path) -> Path:
    reasoning_set(root, {"a.jpg": jpeg_bytes()}, ["a.jpg", "a.jpg"])
    rows = [json.loads(line) for line in (root / "test.jsonl").read_text().splitlines()]
    rows[1]["question"] = LONG_QUESTION
    (root / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


@pytest.mark.parametrize("method", ["rarl", "sft"])
def test_training_refuses_a_prompt_beyond_the_positions_before_weights_load(tmp_path, method):
    root = long_question_set(tmp_path / "silvar-med")
    cfg = tiny_config(tmp_path, run=dict(method=method),
                      data=dict(dataset="silvar-med", data_root=str(root), split="test", samples=None))
    with pytest.raises(DatasetError, match=r"silvar-med sample q2 \(image .*a\.jpg\): \d+ prompt tokens"):
        trainer.training_samples(cfg, trainer.training_source(cfg))
    skipping = tiny_config(tmp_path, run=dict(method=method),
                           data=dict(dataset="silvar-med", data_root=str(root), split="test", samples=None,
                                     skip_bad_rows=True))
    with pytest.warns(UserWarning, match="left out 1 sample"):
        assert [s.id for s in trainer.training_samples(skipping, trainer.training_source(skipping))] == ["q1"]


def test_evaluate_refuses_a_prompt_beyond_the_positions_before_the_model_loads(tmp_path, monkeypatch):
    long_question_set(tmp_path / "data" / "silvar-med")

    def no_model(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pipeline, "make_generate_fn", no_model)
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=r"silvar-med sample q2 .*more than the 4096 positions of tiny"):
        evaluate.main(["--model", "tiny", "--data-root", str(tmp_path / "data"), "--output-dir", str(out),
                       "--datasets", "silvar-med:test"])
    assert not (out / "predictions").exists()
