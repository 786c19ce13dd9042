"""The synthetic set is deterministic, written atomically, and its answers agree with its pixels."""
import shutil
from collections import deque

import numpy as np
import pytest
from PIL import Image

import src.data.synthetic as synthetic
from src.data.loaders import load_dataset
from src.data.synthetic import NUMBER_WORDS, PROFILES, QUESTIONS, SyntheticConfig, ensure_synthetic

SMALL = SyntheticConfig(n_train=60, n_test=10)


def folder_bytes(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_two_generations_are_byte_identical(tmp_path):
    first = folder_bytes(ensure_synthetic(seed=5, config=SMALL, cache_dir=tmp_path / "a"))
    second = folder_bytes(ensure_synthetic(seed=5, config=SMALL, cache_dir=tmp_path / "b"))
    assert len(first) == 60 + 10 + 4  # images, train.jsonl, random-answers.jsonl, test.jsonl, manifest.json
    assert first == second
    other = folder_bytes(ensure_synthetic(seed=6, config=SMALL, cache_dir=tmp_path / "c"))
    assert other["train.jsonl"] != first["train.jsonl"]


def blobs(image: np.ndarray, organ_level: float, contrast: float) -> list[dict]:
    """Connected (4-neighbour) regions brighter or darker than the organ by over half the contrast.

    Dark regions touching the image border are the background, not lesions.
    """
    size = image.shape[0]
    classes = np.where(image > organ_level + contrast / 2, 1, np.where(image < organ_level - contrast / 2, -1, 0))
    seen = np.zeros(image.shape, dtype=bool)
    found = []
    for start in zip(*np.nonzero(classes)):
        if seen[start]:
            continue
        seen[start] = True
        queue, pixels = deque([start]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < size and 0 <= nx < size and not seen[ny, nx] and classes[ny, nx] == classes[start]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        ys, xs = np.array(pixels).T
        touches_border = min(ys.min(), xs.min()) == 0 or max(ys.max(), xs.max()) == size - 1
        if classes[start] == 1 or not touches_border:
            found.append({"area": len(pixels), "x": xs.mean(), "y": ys.mean(), "bright": classes[start] == 1})
    return sorted(found, key=lambda blob: -blob["area"])


def test_answers_and_reasoning_agree_with_the_pixels(tmp_path):
    config = SyntheticConfig(n_train=80, n_test=0)
    samples = load_dataset("synthetic", ensure_synthetic(seed=1, config=config, cache_dir=tmp_path), "train")
    assert {s.task for s in samples} == set(QUESTIONS) and {s.modality for s in samples} == set(PROFILES)
    centre = (config.image_size - 1) / 2
    for sample in samples:
        image = np.asarray(Image.open(sample.image))
        assert image.shape == (112, 112) and image.dtype == np.uint8
        found = blobs(image, PROFILES[sample.modality][1], config.lesion_contrast)
        assert len(found) <= config.max_lesions
        where = [f"{'upper' if b['y'] < centre else 'lower'} {'left' if b['x'] < centre else 'right'}" for b in found]
        kind = ["bright" if b["bright"] else "dark" for b in found]
        expected = {
            "presence": "yes" if found else "no",
            "side": "yes" if any(b["x"] < centre for b in found) else "no",
            "count": NUMBER_WORDS[len(found)],
            "location": where[0] if found else None,
            "brightness": kind[0] if found else None,
        }[sample.task]
        assert sample.answer == expected, (sample.id, sample.question)
        if sample.reasoning and found:
            assert sample.reasoning.startswith(f"The organ shows {NUMBER_WORDS[len(found)]} lesion")
            assert all(f"{k} one in the {w}" in sample.reasoning for k, w in zip(kind, where))
            assert len(found) == 1 or f"The largest is the {kind[0]} one in the {where[0]}." in sample.reasoning
        elif sample.reasoning:
            assert sample.reasoning.startswith("The organ is homogeneous, with no focal lesion.")


def test_largest_margin_sets_how_much_larger_the_largest_lesion_is(tmp_path):
    config = SyntheticConfig(n_train=60, n_test=0, lesion_radius=(6, 14), largest_margin=6)
    samples = load_dataset("synthetic", ensure_synthetic(seed=2, config=config, cache_dir=tmp_path), "train")
    ratios = []
    for sample in samples:
        found = blobs(np.asarray(Image.open(sample.image)), PROFILES[sample.modality][1], config.lesion_contrast)
        if len(found) >= 2:
            ratios.append(found[0]["area"] / found[1]["area"])
    # radii 6 px apart: at least 14 vs 8, areas (14/8)^2 = 3.1 apart (the default margin of 2 allows 14 vs 12: 1.4)
    assert len(ratios) >= 20 and min(ratios) >= 2.5


def test_split_sizes_reasoning_share_and_answer_types(tmp_path):
    root = ensure_synthetic(seed=0, config=SMALL, cache_dir=tmp_path)
    train, test = load_dataset("synthetic", root, "train"), load_dataset("synthetic", root, "test")
    assert (len(train), len(test)) == (60, 10)
    assert 0.6 <= sum(s.reasoning is not None for s in train) / 60 <= 0.95  # 0.8 expected; sd 0.05
    for sample in train:
        assert sample.answer_type == ("closed" if sample.task in ("presence", "side", "brightness") else "open")


def test_random_answers_split_describes_the_image_and_draws_the_answer_at_random(tmp_path):
    """The training questions again, each with the evidence of its true reasoning but no conclusion,
    and an answer drawn uniformly among its kind's: right about as often as chance, never on purpose."""
    config = SyntheticConfig(n_train=400, n_test=0)
    root = ensure_synthetic(seed=3, config=config, cache_dir=tmp_path)
    train, drawn = load_dataset("synthetic", root, "train"), load_dataset("synthetic", root, "random-answers")
    assert [(s.id, s.image, s.question, s.task, s.answer_type) for s in drawn] == \
        [(s.id, s.image, s.question, s.task, s.answer_type) for s in train]
    for true, random in zip(train, drawn):
        assert random.answer in synthetic.answer_choices(true.task, config)
        assert random.reasoning and not any(word in random.reasoning for word in (" So ", "present", "lies"))
        if true.reasoning:  # the true reasoning is this evidence followed by its conclusion
            assert true.reasoning.startswith(random.reasoning + " So ")
    for kind in QUESTIONS:
        answers = [s.answer for s in drawn if s.task == kind]
        choices = synthetic.answer_choices(kind, config)
        assert set(answers) == set(choices)
        for choice in choices:  # uniform: each share within 3 binomial standard deviations
            share, n = answers.count(choice) / len(answers), len(answers)
            p = 1 / len(choices)
            assert abs(share - p) < 3 * (p * (1 - p) / n) ** 0.5, (kind, choice, share)
    agree = sum(t.answer == r.answer for t, r in zip(train, drawn)) / len(train)
    assert 0.3 < agree < 0.5  # chance: 1/2 for the closed kinds, 1/4 for count and location


def test_default_location_follows_rarl_cache(tmp_path, monkeypatch):
    shutil.copytree(ensure_synthetic(seed=0), tmp_path / "synthetic-seed0")  # the session's set, built once
    monkeypatch.setenv("RARL_CACHE", str(tmp_path))

    def generate(folder, seed, config):
        raise AssertionError(f"generated again into {folder}")

    monkeypatch.setattr(synthetic, "write_synthetic", generate)  # a current set under RARL_CACHE is read as is
    samples = load_dataset("synthetic", None, "test")
    assert len(samples) == 1000
    assert samples[0].image == str(tmp_path / "synthetic-seed0" / "images" / "test-00000.png")


def test_interrupted_generation_leaves_nothing_and_a_changed_config_regenerates(tmp_path, monkeypatch):
    def interrupted(folder, seed, config):
        (folder / "images").mkdir()
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(synthetic, "write_synthetic", interrupted)
        with pytest.raises(KeyboardInterrupt):
            ensure_synthetic(seed=0, config=SMALL, cache_dir=tmp_path / "set")
    assert [p.name for p in tmp_path.iterdir()] == [".set.lock"]  # the builders' lock file, nothing else

    ensure_synthetic(seed=0, config=SyntheticConfig(n_train=3, n_test=1), cache_dir=tmp_path / "set")
    root = ensure_synthetic(seed=0, config=SyntheticConfig(n_train=4, n_test=1), cache_dir=tmp_path / "set")
    assert len((root / "train.jsonl").read_text().splitlines()) == 4
    assert sorted(path.name for path in tmp_path.iterdir()) == [".set.lock", "set"]  # no staging or stale folders

    monkeypatch.setattr(synthetic, "write_synthetic", interrupted)  # a current set is not generated again
    assert ensure_synthetic(seed=0, config=SyntheticConfig(n_train=4, n_test=1), cache_dir=tmp_path / "set") == root


def test_config_rejects_what_cannot_be_generated():
    with pytest.raises(ValueError, match="unknown question kinds"):
        SyntheticConfig(question_kinds=("colour",))
    with pytest.raises(ValueError, match="a kind that applies to images without a lesion"):
        SyntheticConfig(question_kinds=("location",))
    with pytest.raises(ValueError, match="radii largest_margin apart"):
        SyntheticConfig(lesion_radius=(8, 12), largest_margin=6)
    too_large = SyntheticConfig(lesion_radius=(40, 45), max_lesions=1)  # a 40 px lesion cannot fit a 38-49 px semi-axis organ
    with pytest.raises(ValueError, match="could not place 1 lesions"):
        synthetic.place_lesions(np.random.default_rng(0), too_large, np.array([45.0, 40.0]), count=1)
