"""After training: export.py merges an adapter into a standalone model that transformers loads with
the logits of base + adapter; predict.py answers one question about one image."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import export
import predict
from src.data.prompts import INFERENCE_PROMPTS
from src.data.sample import Sample
from src.errors import UserError
from src.models.generation import generate_completions, prompt_batch
from src.models.inputs import ImageLoadError
from src.models.loading import load_policy
from src.models.lora import LoRAConfig, inject_lora, lora_layers, save_adapter
from tests.conftest import random_image

FORWARD = """
import sys, torch
from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLForConditionalGeneration
model = Qwen2VLForConditionalGeneration.from_pretrained(sys.argv[1]).eval()
AutoTokenizer.from_pretrained(sys.argv[1]); AutoImageProcessor.from_pretrained(sys.argv[1])
inputs = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(**inputs).logits, sys.argv[3])
print(next(model.parameters()).dtype)
"""


@pytest.fixture
def adapter_dir(tiny_path, tmp_path) -> Path:
    """A LoRA adapter on the tiny model whose B is not zero, saved as train.py saves checkpoints."""
    policy = load_policy(str(tiny_path), device=torch.device("cpu"))
    config = LoRAConfig(r=4, alpha=8.0, dropout=0.0, targets=("q_proj", "v_proj", "gate_proj"))
    inject_lora(policy.model, config)
    torch.manual_seed(3)
    for layer in lora_layers(policy.model):
        torch.nn.init.normal_(layer.lora_B.weight, std=0.2)
    save_adapter(policy.model, tmp_path / "adapter", config, base_model="tiny")
    return tmp_path / "adapter"


def image_file(path: Path, seed: int = 0) -> Path:
    random_image(112, 112, seed).save(path)
    return path


def test_export_is_a_standalone_model_with_the_logits_of_base_plus_adapter(adapter_dir, tiny_path, tmp_path):
    out = export.main(["--model", str(adapter_dir), "--output-dir", str(tmp_path / "merged")])
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json", "chat_template.jinja"} <= files, files
    assert not any("adapter" in name for name in files) and not (tmp_path / "merged.tmp").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2VLForConditionalGeneration"] and "auto_map" not in config
    with safe_open(out / "model.safetensors", "pt") as merged, safe_open(tiny_path / "model.safetensors", "pt") as base:
        assert set(merged.keys()) == set(base.keys())                 # the base's own names, no lora_A/lora_B

    adapted = load_policy(str(adapter_dir), device=torch.device("cpu"))
    base = load_policy("tiny", device=torch.device("cpu"))
    sample = Sample(id="q", dataset="t", image=str(image_file(tmp_path / "scan.png")), question="Is there a lesion?",
                    answer="yes", answer_type="closed")
    inputs = prompt_batch(adapted, [sample], [INFERENCE_PROMPTS["reasoning"]]).model_kwargs
    torch.save(dict(inputs), tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = adapted.model.eval()(**inputs).logits
        unadapted = base.model.eval()(**inputs).logits
    # transformers alone, in a process that cannot import this project (another working directory)
    result = subprocess.run([sys.executable, "-c", FORWARD, str(out), str(tmp_path / "inputs.pt"),
                             str(tmp_path / "logits.pt")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "torch.float32"                   # the base's dtype
    logits = torch.load(tmp_path / "logits.pt")
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert (unadapted - expected).abs().max() > 0.05                  # the adapter matters, so the test can fail

    with pytest.raises(UserError, match="exists and is not empty"):
        export.main(["--model", str(adapter_dir), "--output-dir", str(out)])


def test_export_casts_to_the_requested_dtype(adapter_dir, tmp_path):
    out = export.main(["--model", str(adapter_dir), "--output-dir", str(tmp_path / "bf16"), "--dtype", "bfloat16"])
    with safe_open(out / "model.safetensors", "pt") as merged:
        assert {merged.get_tensor(k).dtype for k in merged.keys()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_predict_prints_the_think_text_and_the_answer(adapter_dir, tmp_path, capsys):
    image = image_file(tmp_path / "scan.png")
    for model in ("tiny", str(adapter_dir)):
        result = predict.main(["--model", model, "--image", str(image), "--question", "Is there a lesion?",
                               "--prompt", "short", "--max-new-tokens", "12", "--json"])
        printed = json.loads(capsys.readouterr().out)
        assert printed == {"think": result.think, "answer": result.answer, "completion": result.completion}
        policy = load_policy(model, device=torch.device("cpu"))
        sample = Sample(id="x", dataset="x", image=str(image), question="Is there a lesion?", answer="", answer_type="open")
        from src.data.prompts import TRAINING_PROMPTS

        assert result.completion == generate_completions(policy, [sample], TRAINING_PROMPTS["short"], max_new_tokens=12)[0]
    predict.main(["--model", "tiny", "--image", str(image), "--question", "Is there a lesion?", "--max-new-tokens", "4"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("think:") and lines[1].startswith("answer:")


def test_predict_checks_the_image_before_loading_the_model(tmp_path, monkeypatch):
    import src.models.loading as loading

    monkeypatch.setattr(loading, "load_policy", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ImageLoadError, match="image not found"):
        predict.main(["--model", "tiny", "--image", str(tmp_path / "none.png"), "--question", "Is it?"])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageLoadError, match="cannot read image"):
        predict.main(["--model", "tiny", "--image", str(tmp_path / "broken.png"), "--question", "Is it?"])


def test_predict_refuses_a_question_or_image_the_model_cannot_take_before_loading_it(tmp_path, monkeypatch):
    """What evaluate.py checks of every sample: positions (tiny has 4,096) and the processor's aspect limit."""
    import src.models.loading as loading

    monkeypatch.setattr(loading, "load_policy", lambda *a, **k: pytest.fail("model loaded"))
    image = image_file(tmp_path / "scan.png")
    with pytest.raises(UserError, match=r"--question and --image do not fit tiny: \d+ prompt tokens \(16 of them for "
                                        r"its 112x112 image\) \+ 512 completion tokens = \d+, more than the 4096 "
                                        r"positions of tiny; shorten the question"):
        predict.main(["--model", "tiny", "--image", str(image), "--question", "Is it? " * 2_000])
    random_image(1, 3000).save(tmp_path / "strip.png")
    with pytest.raises(UserError, match=r"do not fit tiny: its 3000x1 image: .*aspect ratio"):
        predict.main(["--model", "tiny", "--image", str(tmp_path / "strip.png"), "--question", "Is it?"])
