"""Real size without real weights: Qwen2-VL-2B's image processing, the loader's fallbacks, the real-size command.

benchmarks/real_size.py at 2B takes ~15 minutes on 2 cores (docs/BENCHMARKS.md has its figures); the
benchmark tests run the same phases on tiny models of each family.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from benchmarks.qwen2_vl_2b import QWEN2_VL_2B_IDS, image_processor, qwen_sized_tokenizer
from src.models.inputs import IMAGE_PAD, build_prompt_batch
from tests.conftest import chat, random_image

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("width, height, max_pixels, grid", [
    # the real preprocessor_config.json's limit, 28*28*16384 = 12,845,056 pixels: 4500 x 3200 is 14.4M.
    # Sides rounded to multiples of 28 (4508 x 3192) are still too many, so both shrink by
    # beta = sqrt(4500 * 3200 / 12,845,056) = 1.0588 and round down: 4500 / beta / 28 = 151.8 -> 151 * 28 = 4228,
    # 3200 / beta / 28 = 107.9 -> 107 * 28 = 2996: a grid of 2996 / 14 = 214 by 4228 / 14 = 302 patches.
    (4500, 3200, 28 * 28 * 16384, (1, 214, 302)),
    # the model card's suggested limit, 28*28*1280 = 1,003,520: 1600 x 1200 -> beta = 1.3832,
    # 1600 / beta / 28 = 41.3 -> 1148, 1200 / beta / 28 = 30.98 -> 840: 60 x 82 patches.
    (1600, 1200, 28 * 28 * 1280, (1, 60, 82)),
])
def test_image_larger_than_max_pixels_is_resized_whole_not_cropped(width, height, max_pixels, grid):
    processor = type(image_processor())(min_pixels=56 * 56, max_pixels=max_pixels)
    image = random_image(height, width, seed=1)
    processed = processor(images=[image], return_tensors="pt")
    assert processed["image_grid_thw"].tolist() == [list(grid)]
    # what the model sees is the whole image resized to the grid's size (bicubic, as Qwen2-VL's processor
    # resizes); a crop to that size would give the same grid but other pixels
    resized = image.resize((grid[2] * 14, grid[1] * 14), Image.Resampling.BICUBIC)
    expected = processor(images=[resized], return_tensors="pt")
    assert expected["image_grid_thw"].tolist() == [list(grid)]  # already a valid size: not resized again
    torch.testing.assert_close(processed["pixel_values"], expected["pixel_values"], rtol=0, atol=0)


def test_real_size_prompt_has_t_h_w_over_4_image_tokens_at_the_real_ids():
    tokenizer, processor = qwen_sized_tokenizer(), image_processor()
    images = [random_image(512, 512), random_image(480, 640), random_image(3200, 4500)]
    batch = build_prompt_batch(tokenizer, processor, [chat("Is there a lesion?")] * 3, images)
    assert tokenizer.convert_tokens_to_ids(IMAGE_PAD) == QWEN2_VL_2B_IDS["image_pad"] == 151655
    counts = (batch.input_ids == QWEN2_VL_2B_IDS["image_pad"]).sum(1).tolist()
    # 512 -> 504 = 36 x 36 patches; 640 x 480 -> 644 x 476 = 46 x 34; 4500 x 3200 -> 4228 x 2996 = 302 x 214
    assert counts == [36 * 36 // 4, 46 * 34 // 4, 302 * 214 // 4] == [324, 391, 16157]
    assert batch.image_grid_thw.prod(-1).div(4).tolist() == counts
    assert batch.mm_token_type_ids.sum(1).tolist() == counts
    assert batch.pixel_values.shape == (36 * 36 + 46 * 34 + 302 * 214, 3 * 2 * 14 * 14)


def test_load_policy_takes_a_device_name(tiny_path):
    from src.models.loading import load_policy

    assert load_policy(str(tiny_path), device="cpu").device == torch.device("cpu")  # evaluate.py --device cpu


def test_image_processor_without_an_auto_class_falls_back_to_pil(tiny_path, monkeypatch):
    """transformers 5.17 without torchvision has only a placeholder AutoImageProcessor that raises ImportError."""
    import transformers

    from src.models.loading import load_image_processor

    class Placeholder:
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            raise ImportError("AutoImageProcessor requires the Torchvision library")

    monkeypatch.setattr(transformers, "AutoImageProcessor", Placeholder)
    processor = load_image_processor(str(tiny_path))
    assert type(processor).__name__ == "Qwen2VLImageProcessorPil"
    saved = json.loads((tiny_path / "preprocessor_config.json").read_text())
    assert dict(processor.to_dict()["size"]) == saved["size"] == {"longest_edge": 112 * 112, "shortest_edge": 56 * 56}


@pytest.mark.benchmark
@pytest.mark.parametrize("model, layers", [("tiny", 2), ("tiny-qwen2.5-vl", 2), ("tiny-qwen3-vl", 3)])
def test_real_size_command_runs_every_phase_on_a_tiny_model(tmp_path, model, layers):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "benchmarks.real_size", "--model", model, "--work-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "real_size.json").read_text())
    phases = result["phases"]
    assert list(phases) == ["train", "resume", "evaluate", "checks", "peft"]  # the tiny model needs no build
    assert all(p["status"] == "ok" for p in phases.values())
    # each phase is a child process timed within this test's call, and holds torch (over 128 MiB resident)
    assert sum(p["seconds"] for p in phases.values()) < wall
    assert all(p["peak_rss_bytes"] > 2**27 for p in phases.values())
    assert [len(phases[name]["figures"]["steps"]) for name in ("train", "resume")] == [2, 1]
    checks = phases["checks"]["figures"]
    assert checks["lora_modules"] == layers * 4  # layers x q, k, v, o
    # the tiny processors (max 112 x 112 pixels at 14 px patches, 128 x 128 at 16 px) resize 512 x 512 to
    # 8 x 8 patches and 640 x 480 to 8 x 6: 16 and 12 image tokens
    assert checks["image_tokens"] == [16, 12]
    assert checks["chunked_vs_plain_max_abs_diff"] <= 1e-4
    peft = phases["peft"]["figures"]
    assert peft["peft_vs_ours_max_abs_diff"] <= 1e-4 < peft["adapter_effect_max_abs"]
    assert "peak RSS GiB" in done.stdout


def test_the_model_names_are_the_benchmarks_and_tiny_models():
    """real_size lists the names without importing torch; they are the ones the builders know."""
    from benchmarks import qwen2_vl_2b, real_size
    from src.models import tiny

    assert real_size.RANDOM_MODELS == tuple(qwen2_vl_2b.RANDOM_MODELS)
    assert real_size.TINY_MODELS == tuple(tiny.TINY_MODELS)
