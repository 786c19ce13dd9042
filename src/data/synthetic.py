"""The embedded default dataset: synthetic grayscale "scans" with lesions, learnable on a CPU.

Each image is an organ (an ellipse centred in the frame) on a dark background, holding zero to
`max_lesions` round lesions, each brighter or darker than the organ by `lesion_contrast`, plus Gaussian
noise. Two intensity profiles stand in for modalities: "synthetic-CT" (dark background, flat organ)
and "synthetic-MRI" (brighter levels and a left-to-right intensity ramp across the organ, like a bias
field). Lesions never touch each other or the organ's edge, the largest is larger than the others by at
least `largest_margin` px of radius, and no lesion centre lies within `midline_margin` px of the image's
midlines, so every answer below is unambiguous from the pixels.

One question per image, its kind drawn among those that apply (with no lesion, only presence, side and
count apply); `task` holds the kind, answers come from a small vocabulary:
    presence    "Is there a lesion in the organ?"                       yes / no        (closed)
    side        "Is there a lesion on the left side of the image?"      yes / no        (closed)
    brightness  "Is the largest lesion bright or dark?"                 bright / dark   (closed)
    count       "How many lesions are in the organ?"                    zero ... nine   (open)
    location    "Where is the largest lesion?"                          upper left, ... (open)
A `reasoning_fraction` of the samples carry a templated reasoning that states the visual evidence,
e.g. "The organ shows two lesions: a bright one in the upper left and a dark one in the lower right.
The largest is the bright one in the upper left. So the largest lesion lies in the upper left."

A third split, `random-answers`, holds the training questions and images again, each with an answer
drawn at random among those its kind allows and a reasoning that only describes the image (the
visual evidence, no conclusion). A model trained on it learns the <think>/<answer> format, the
answer vocabulary and how to describe an image, but not which answer is right: its answers are at
chance, and what it describes is the evidence a right answer can be drawn from.

Files are written in the reasoning-set schema (reasoning_set.py): ROOT/train.jsonl, ROOT/test.jsonl,
ROOT/random-answers.jsonl, ROOT/images/<split>-<index>.png (random-answers rows point at the training
images), plus ROOT/manifest.json (generator version, seed, config). The set is
generated into a temporary folder that is renamed into place when complete, so an interrupted run never
leaves half a dataset, and it is regenerated when the manifest differs (another seed, config or version).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from src.data.cache_lock import cache_lock
from src.data.reasoning_set import load_reasoning_set
from src.data.rows import BadRows
from src.data.sample import Sample

GENERATOR_VERSION = 2  # bump whenever the output for a given seed and config changes
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
QUESTIONS = {
    "presence": "Is there a lesion in the organ?",
    "side": "Is there a lesion on the left side of the image?",
    "brightness": "Is the largest lesion bright or dark?",
    "count": "How many lesions are in the organ?",
    "location": "Where is the largest lesion?",
}
CLOSED_KINDS = ("presence", "side", "brightness")
QUADRANTS = ("upper left", "upper right", "lower left", "lower right")
NEEDS_LESION = ("brightness", "location")
# modality: (background level, organ level, organ ramp amplitude), on the 0-255 scale
PROFILES = {"synthetic-CT": (10.0, 110.0, 0.0), "synthetic-MRI": (30.0, 140.0, 12.0)}
SPLITS = ("train", "random-answers", "test")


@dataclass(frozen=True)
class SyntheticConfig:
    """What is generated; the knobs that set how hard the task is come first."""

    lesion_radius: tuple[int, int] = (8, 14)  # smallest and largest lesion radius in px (inclusive)
    largest_margin: int = 2  # px of radius by which the largest lesion exceeds every other one
    lesion_contrast: float = 90.0  # |lesion level - organ level|; 90 keeps lesions >7 noise sigmas clear
    noise_std: float = 6.0  # Gaussian pixel noise
    max_lesions: int = 3  # lesions per image, drawn uniformly from 0..max_lesions
    question_kinds: tuple[str, ...] = tuple(QUESTIONS)
    reasoning_fraction: float = 0.8  # share of samples with a reference reasoning
    image_size: int = 112  # square; 112 px = 8x8 patches of 14 px = 16 tokens after 2x2 merging
    organ_axes: tuple[float, float] = (0.34, 0.44)  # organ semi-axes as fractions of the image size
    midline_margin: int = 4  # px between a lesion centre and the image midlines
    modalities: tuple[str, ...] = tuple(PROFILES)
    # Sized so that a gain of a few points is larger than its measurement noise: the demo trains on
    # train[:616] and chooses checkpoints on the 600 questions train[616:]; on 1,000 test questions one
    # standard error of a ~65% accuracy is 1.5 points (3.9 on 150). Each sample has its own random
    # stream, so a larger set starts with the rows of a smaller one.
    n_train: int = 1216
    n_test: int = 1000

    def __post_init__(self):
        unknown = set(self.question_kinds) - set(QUESTIONS) or set(self.modalities) - set(PROFILES)
        if unknown:
            raise ValueError(f"unknown question kinds or modalities: {sorted(unknown)}")
        if not 1 <= self.lesion_radius[0] <= self.lesion_radius[1] or not 0 <= self.max_lesions < len(NUMBER_WORDS):
            raise ValueError(f"need 1 <= min radius <= max radius and 0 <= max_lesions <= 9: {self}")
        if self.max_lesions >= 2 and self.lesion_radius[1] - self.lesion_radius[0] < self.largest_margin:
            raise ValueError(f"two lesions need radii largest_margin apart, beyond the lesion_radius range: {self}")
        if not any(kind not in NEEDS_LESION for kind in self.question_kinds):
            raise ValueError("question_kinds needs a kind that applies to images without a lesion")


@dataclass(frozen=True)
class Lesion:
    x: int  # centre column
    y: int  # centre row
    radius: int
    bright: bool


def default_cache_dir(seed: int) -> Path:
    return Path(os.environ.get("RARL_CACHE", ".cache")) / f"synthetic-seed{seed}"


def ensure_synthetic(seed: int = 0, config: SyntheticConfig = SyntheticConfig(),
                     cache_dir: str | Path | None = None) -> Path:
    """The folder holding the synthetic set for (seed, config), generated there unless already current."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir(seed)
    manifest = json.loads(json.dumps({"generator_version": GENERATOR_VERSION, "seed": seed, "config": asdict(config)}))
    if read_manifest(folder) == manifest:
        return folder
    with cache_lock(folder):
        if read_manifest(folder) == manifest:  # another process built it while we waited
            return folder
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            write_synthetic(staging, seed, config)
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
            if folder.exists():  # a stale set: move it aside first, as rename cannot replace a folder
                stale = staging.with_name(staging.name + ".stale")
                os.rename(folder, stale)
                shutil.rmtree(stale)
            os.rename(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_synthetic_split(root: Path | None, split: str, bad: BadRows) -> list[Sample]:
    """One split of a set `ensure_synthetic` wrote to `root`; root None: the default set (seed 0)."""
    return load_reasoning_set("synthetic", root or ensure_synthetic(), split, bad)



def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def write_synthetic(folder: Path, seed: int, config: SyntheticConfig) -> None:
    (folder / "images").mkdir()
    for split_code, (split, count) in enumerate((("train", config.n_train), ("test", config.n_test))):
        rows, random_rows = [], []
        for index in tqdm(range(count), desc=f"synthetic {split}", leave=False):
            rng = np.random.default_rng([seed, split_code, index])  # one stream per sample: order-independent
            image, row, lesions = synthetic_sample(rng, config)
            row = {"id": f"{split}-{index:05d}", "image": f"images/{split}-{index:05d}.png", **row}
            Image.fromarray(image).save(folder / row["image"], format="PNG")
            rows.append(json.dumps(row))
            if split == "train":
                answers = answer_choices(row["task"], config)
                drawn = answers[np.random.default_rng([seed, 2, index]).integers(len(answers))]
                random_rows.append(json.dumps({**row, "answer": drawn, "reasoning": describe(lesions, config.image_size)}))
        (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
        if split == "train":
            (folder / "random-answers.jsonl").write_text("\n".join(random_rows) + "\n")


def answer_choices(kind: str, config: SyntheticConfig) -> tuple[str, ...]:
    """Every answer a question of this kind can have."""
    return {"presence": ("yes", "no"), "side": ("yes", "no"), "brightness": ("bright", "dark"),
            "count": NUMBER_WORDS[:config.max_lesions + 1], "location": QUADRANTS}[kind]


def synthetic_sample(rng: np.random.Generator, config: SyntheticConfig) -> tuple[np.ndarray, dict, list[Lesion]]:
    """One image (H, W) uint8, its row (question, answer, answer_type, task, modality, reasoning) and its lesions."""
    modality = config.modalities[rng.integers(len(config.modalities))]
    axes = rng.uniform(*config.organ_axes, size=2) * config.image_size  # (x semi-axis, y semi-axis)
    lesions = place_lesions(rng, config, axes, count=int(rng.integers(config.max_lesions + 1)))
    image = render(rng, config, modality, axes, lesions)
    kinds = [kind for kind in config.question_kinds if lesions or kind not in NEEDS_LESION]
    kind = kinds[rng.integers(len(kinds))]
    answer = answer_for(kind, lesions, config.image_size)
    row = {"question": QUESTIONS[kind], "answer": answer, "answer_type": "closed" if kind in CLOSED_KINDS else "open",
           "task": kind, "modality": modality}
    if rng.random() < config.reasoning_fraction:
        row["reasoning"] = describe(lesions, config.image_size) + " " + conclusion(kind, answer)
    return image, row, lesions


def place_lesions(rng: np.random.Generator, config: SyntheticConfig, axes: np.ndarray, count: int,
                  attempts: int = 100, spots: int = 200) -> list[Lesion]:
    """`count` lesions inside the organ, apart from each other and the midlines, largest first."""
    centre, gap = (config.image_size - 1) / 2, 3  # gap: px of organ kept between lesions and at the edge

    def fits(x: int, y: int, radius: int, placed: list[Lesion]) -> bool:
        room = axes - radius - gap  # semi-axes of the ellipse the centre must lie in
        return (min(room) > 0 and ((x - centre) / room[0]) ** 2 + ((y - centre) / room[1]) ** 2 <= 1
                and min(abs(x - centre), abs(y - centre)) >= config.midline_margin
                and all(np.hypot(x - o.x, y - o.y) >= radius + o.radius + gap for o in placed))

    for _ in range(attempts):
        radii = sorted(rng.integers(config.lesion_radius[0], config.lesion_radius[1] + 1, size=count), reverse=True)
        if count >= 2 and radii[0] - radii[1] < config.largest_margin:
            continue  # the largest lesion must be unambiguous
        lesions = []
        for radius in radii:
            xs, ys = rng.integers(config.image_size, size=(2, spots))  # candidate centres, first fit wins
            spot = next((i for i in range(spots) if fits(xs[i], ys[i], radius, lesions)), None)
            if spot is None:
                break
            lesions.append(Lesion(int(xs[spot]), int(ys[spot]), int(radius), bool(rng.random() < 0.5)))
        if len(lesions) == count:
            return lesions
    raise ValueError(f"could not place {count} lesions in {attempts} attempts; lesions too large for {config}")


def render(rng: np.random.Generator, config: SyntheticConfig, modality: str, axes: np.ndarray,
           lesions: list[Lesion]) -> np.ndarray:
    background, organ_level, ramp = PROFILES[modality]
    centre = (config.image_size - 1) / 2
    y, x = np.mgrid[: config.image_size, : config.image_size]  # (H, W) each
    image = np.full(x.shape, background)  # (H, W)
    organ = ((x - centre) / axes[0]) ** 2 + ((y - centre) / axes[1]) ** 2 <= 1
    image[organ] = (organ_level + ramp * (x - centre) / axes[0])[organ]
    for lesion in lesions:
        disk = (x - lesion.x) ** 2 + (y - lesion.y) ** 2 <= lesion.radius ** 2
        image[disk] = organ_level + (config.lesion_contrast if lesion.bright else -config.lesion_contrast)
    image = image + rng.normal(0.0, config.noise_std, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def quadrant(lesion: Lesion, image_size: int) -> str:
    centre = (image_size - 1) / 2
    return f"{'upper' if lesion.y < centre else 'lower'} {'left' if lesion.x < centre else 'right'}"


def answer_for(kind: str, lesions: list[Lesion], image_size: int) -> str:
    """The answer to a question of this kind; lesions are ordered largest first."""
    if kind == "presence":
        return "yes" if lesions else "no"
    if kind == "side":
        return "yes" if any(lesion.x < (image_size - 1) / 2 for lesion in lesions) else "no"
    if kind == "count":
        return NUMBER_WORDS[len(lesions)]
    if kind == "location":
        return quadrant(lesions[0], image_size)
    return "bright" if lesions[0].bright else "dark"


def describe(lesions: list[Lesion], image_size: int) -> str:
    """The visual evidence: every lesion's brightness and quadrant, and which is the largest."""
    if not lesions:
        return "The organ is homogeneous, with no focal lesion."
    items = [f"{'bright' if lesion.bright else 'dark'} one in the {quadrant(lesion, image_size)}" for lesion in lesions]
    if len(lesions) == 1:
        return f"The organ shows one lesion: a {items[0]}."
    listing = ", ".join(f"a {item}" for item in items[:-1]) + f" and a {items[-1]}"
    return f"The organ shows {NUMBER_WORDS[len(lesions)]} lesions: {listing}. The largest is the {items[0]}."


def conclusion(kind: str, answer: str) -> str:
    return {
        "presence": "So a lesion is present." if answer == "yes" else "So no lesion is present.",
        "side": "So a lesion lies on the left side." if answer == "yes" else "So no lesion lies on the left side.",
        "count": f"So there {'is' if answer == 'one' else 'are'} {answer} {'lesion' if answer == 'one' else 'lesions'}.",
        "location": f"So the largest lesion lies in the {answer}.",
        "brightness": f"So the largest lesion is {answer}.",
    }[kind]


def corpus() -> list[str]:
    """Every phrase the generator writes, for training a tokenizer that holds them in few tokens."""
    lesions = [Lesion(x=10, y=10, radius=9, bright=True), Lesion(x=90, y=90, radius=8, bright=False)]
    texts = list(QUESTIONS.values()) + list(NUMBER_WORDS) + list(QUADRANTS)
    texts += [describe(lesions[:n], 112) for n in range(3)]
    texts += [conclusion(kind, answer) for kind, answers in (
        ("presence", ("yes", "no")), ("side", ("yes", "no")), ("count", NUMBER_WORDS[:4]),
        ("location", ("upper left", "lower right")), ("brightness", ("bright", "dark"))) for answer in answers]
    return texts
