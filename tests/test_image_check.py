"""Images are decoded when the dataset loads: a truncated, empty, missing or undecodable one is named by file
and row before any model loads, and --skip-bad-rows leaves them out with one warning listing them all."""
from __future__ import annotations

import dataclasses
import io
import json
import warnings
from pathlib import Path

import pytest
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

import evaluate
from src.data.loaders import load_dataset
from src.data.rows import DatasetError
from src.grpo import trainer
from src.models import images
from src.models.images import load_image
from tests.conftest import random_image
from tests.test_data_loaders import png_bytes, write_parquet
from tests.test_evaluate import FakeModel, FakeScorer
from tests.test_resume_safety import snapshot
from tests.test_trainer import tiny_config


def jpeg_bytes(size: int = 64, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    random_image(size, size, seed).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def reasoning_set(root: Path, images: dict[str, bytes | None], rows: list[str], split: str = "test") -> Path:
    """A silvar-med-schema split: one row per image name in `rows`; an image whose bytes are None is absent."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        if data is not None:
            (root / "images" / name).write_bytes(data)
    lines = [json.dumps({"id": f"q{i}", "image": name, "question": f"Is there a lesion {i}?", "answer": "yes",
                         "reasoning": "A lesion is visible."}) for i, name in enumerate(rows, start=1)]
    (root / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))
    return root


@pytest.fixture
def bad_images(tmp_path) -> Path:
    good = jpeg_bytes()
    images = {"good.jpg": good, "truncated.jpg": good[: len(good) // 2], "empty.png": b"",
              "text.png": b"this is not an image", "missing.png": None}
    return reasoning_set(tmp_path / "silvar-med", images,
                         ["good.jpg", "truncated.jpg", "empty.png", "text.png", "missing.png", "truncated.jpg"])


def expected_reasons(root: Path) -> list[str]:
    rows, images = root / "test.jsonl", root / "images"
    return [f"{rows}, row 2: cannot read image {images / 'truncated.jpg'}: image file is truncated",
            f"{rows}, row 3: cannot read image {images / 'empty.png'}: empty file",
            f"{rows}, row 4: cannot read image {images / 'text.png'}: cannot identify image file",
            f"{rows}, row 5: image not found: {root / 'missing.png'}",
            f"{rows}, row 6: cannot read image {images / 'truncated.jpg'}: image file is truncated"]


def test_bad_images_stop_the_load_naming_file_and_row(bad_images):
    with pytest.raises(DatasetError) as error:
        load_dataset("silvar-med", bad_images, "test")
    message = str(error.value)
    assert message.startswith("silvar-med: 5 unusable row(s): ")
    for reason in expected_reasons(bad_images):
        assert reason in message


def test_skip_bad_rows_leaves_them_out_with_one_warning_listing_them_all(bad_images):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = load_dataset("silvar-med", bad_images, "test", skip_bad_rows=True)
    assert [s.id for s in samples] == ["q1"]
    [warning] = [w for w in caught if issubclass(w.category, UserWarning)]
    text = str(warning.message)
    assert text.startswith("silvar-med: skipped 5 unusable row(s): ")
    listed = text.removeprefix("silvar-med: skipped 5 unusable row(s): ").split("; ")
    assert len(listed) == 5  # all of them, not the first few
    for line, reason in zip(listed, expected_reasons(bad_images)):
        assert line.startswith(reason)


def test_an_undecodable_image_in_a_parquet_export_names_file_and_row(tmp_path):
    good = png_bytes(7)
    path = tmp_path / "data" / "test-00000-of-00001.parquet"
    write_parquet(path, [{"image": good, "question": "is this inflamed?", "answer": "yes"},
                         {"image": good[:20], "question": "is this benign?", "answer": "no"}])
    with pytest.raises(DatasetError, match=rf"{path}, row 2: cannot read image path-vqa sample test-0-2 \(image "
                                           r"bytes\): "):
        load_dataset("path-vqa", tmp_path, "test")
    with pytest.warns(UserWarning, match="skipped 1 unusable row"):
        assert [s.id for s in load_dataset("path-vqa", tmp_path, "test", skip_bad_rows=True)] == ["test-0-1"]


def test_training_refuses_a_bad_image_when_its_dataset_loads_and_changes_nothing(tmp_path):
    good = jpeg_bytes()
    root = reasoning_set(tmp_path / "silvar-med", {"a.jpg": good, "b.jpg": good}, ["a.jpg", "b.jpg"] * 2)
    cfg = tiny_config(tmp_path, run=dict(method="sft"), optim=dict(max_steps=2),
                      data=dict(dataset="silvar-med", data_root=str(root), split="test", samples=None))
    trainer.train(cfg)
    out = Path(cfg.run.output_dir)
    before = snapshot(out)
    (root / "images" / "b.jpg").write_bytes(good[: len(good) // 3])  # the disk damages an image between runs
    longer = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=True),
                                 optim=dataclasses.replace(cfg.optim, max_steps=4))
    with pytest.raises(DatasetError, match=rf"{root / 'test.jsonl'}, row 2: cannot read image .*b\.jpg: image file "
                                           r"is truncated.*row 4: "):
        trainer.train(longer)
    assert snapshot(out) == before


def test_evaluate_stops_on_a_bad_image_of_its_last_dataset_before_the_model_loads(tmp_path, monkeypatch):
    good = jpeg_bytes()
    root = tmp_path / "data"
    reasoning_set(root / "silvar-med", {"a.jpg": good}, ["a.jpg", "a.jpg"])
    (root / "vqa-rad" / "images").mkdir(parents=True)
    (root / "vqa-rad" / "images" / "synpic1.jpg").write_bytes(good)
    (root / "vqa-rad" / "testset.json").write_text(json.dumps([
        {"qid": 1, "image_name": "synpic1.jpg", "question": "Is this an MRI?", "answer": "yes", "answer_type": "CLOSED"}]))
    fake = FakeModel()
    monkeypatch.setattr(evaluate, "make_generate_fn", fake.make_generate_fn)
    monkeypatch.setattr(evaluate, "load_bertscorer", lambda name, device=None: FakeScorer())
    out = tmp_path / "out"
    command = ["--model", "tiny", "--data-root", str(root), "--output-dir", str(out), "--datasets", "silvar-med:test"]
    evaluate.main(command)
    before = snapshot(out)
    (root / "vqa-rad" / "images" / "synpic1.jpg").write_bytes(good[:100])
    with pytest.raises(DatasetError, match=rf"{root / 'vqa-rad' / 'testset.json'}, row 1: cannot read image "):
        evaluate.main(command[:-1] + ["silvar-med:test,vqa-rad:test"])
    assert fake.loads == 1 and snapshot(out) == before  # the model was not loaded again; no file changed


def test_an_image_above_the_decompression_bomb_limit_is_a_named_bad_row(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 2000)  # stands for 179 MP: 50 x 50 is 2,500 pixels
    root = reasoning_set(tmp_path, {"big.png": png_bytes()}, ["big.png"])
    random_image(50, 50).save(root / "images" / "big.png")
    with pytest.raises(DatasetError, match=r"test.jsonl, row 1: cannot read image .*big\.png: 50x50 is 2,500 pixels, "
                                           r"more than the 2,000 decoded here .*; downscale the image"):
        load_dataset("silvar-med", root, "test")


@pytest.mark.slow
def test_a_10000_by_10000_image_is_named_once_then_resized_whole_by_the_processor(tmp_path, tiny_policy):
    root = reasoning_set(tmp_path, {}, ["huge.png"])
    huge = Image.new("L", (10_000, 10_000), 0)
    huge.paste(255, (8_000, 8_000, 10_000, 10_000))  # a bright bottom-right corner, a fifth of each side
    huge.save(root / "images" / "huge.png", compress_level=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        [sample] = load_dataset("silvar-med", root, "test")
        image = load_image(sample.image)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    [warning] = caught
    assert "1 image(s) above 89.5 megapixels" in str(warning.message)
    assert f"{root / 'images' / 'huge.png'} (10000x10000)" in str(warning.message)
    processor = tiny_policy.image_processor
    vision = processor(images=[image], return_tensors="pt")
    side, _ = smart_resize(10_000, 10_000, 28, processor.size["shortest_edge"], processor.size["longest_edge"])
    assert side == 84  # the whole image, shrunk under the tiny model's max_pixels (112^2)
    assert vision["image_grid_thw"][0].tolist() == [1, side // 14, side // 14]
    # Not cropped: patches come in merge-block order, so the last is the bottom-right 14 x 14 pixels, inside the
    # bright corner (CLIP-normalised white is +1.9 to +2.1), and the first, the top-left, is black (-1.8 to -1.5).
    patches = vision["pixel_values"]
    assert patches[-1].min() > 1.8 and patches[0].max() < -1.4


def test_a_checked_image_that_changes_on_disk_is_checked_again(tmp_path):
    from src.data.image_check import image_problem
    from src.models.prompt_length import image_size

    path = tmp_path / "scan.png"
    random_image(28, 42).save(path)
    assert image_problem(str(path), "scan.png") == (None, (42, 28)) and image_size(str(path)) == (42, 28)
    random_image(30, 20).save(path)                                     # another image under the same name
    assert image_problem(str(path), "scan.png") == (None, (20, 30)) and image_size(str(path)) == (20, 30)
    path.write_bytes(path.read_bytes()[:40])                            # then cut on disk
    problem, size = image_problem(str(path), "scan.png")
    assert "scan.png" in problem and size is None
    assert "cannot be read" in image_size(str(path))
