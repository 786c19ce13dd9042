"""`load_dataset(name, root, split)`: every dataset the paper uses, read from its official files.

Names: silvar-med, vqa-rad, slake, vqa-med-2019, path-vqa, cv-bench, synthetic. Splits are "train",
"val" and "test" ("validation", "validate" and "valid" mean "val"); each dataset has the splits it
was released with. Each dataset's module docstring gives its on-disk layout (docs/DATA.md has them all).

Unusable rows (missing or undecodable image, empty question or answer, malformed line) raise one
DatasetError that names file and row, unless `skip_bad_rows=True`, which skips them with a warning.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from src.data.cv_bench import load_cv_bench
from src.data.hf_parquet import load_parquet_export
from src.data.image_check import check_images
from src.data.reasoning_set import load_reasoning_set
from src.data.rows import BadRows, DatasetError
from src.data.sample import Sample
from src.data.slake import load_slake
from src.data.synthetic import load_synthetic_split
from src.data.vqa_med_2019 import load_vqa_med_2019
from src.data.vqa_rad import is_json_layout, load_vqa_rad


@dataclass(frozen=True)
class DatasetSpec:
    load: Callable[[Path, str, BadRows], list[Sample]]  # (root, canonical split, bad-row log) -> samples
    splits: tuple[str, ...]


DATASETS = {
    "silvar-med": DatasetSpec(lambda root, split, bad: load_reasoning_set("silvar-med", root, split, bad),
                              ("train", "test")),
    "vqa-rad": DatasetSpec(load_vqa_rad, ("train", "test")),
    "slake": DatasetSpec(load_slake, ("train", "val", "test")),
    "vqa-med-2019": DatasetSpec(load_vqa_med_2019, ("train", "val", "test")),
    "path-vqa": DatasetSpec(lambda root, split, bad: load_parquet_export("path-vqa", root, split, bad),
                            ("train", "val", "test")),
    "cv-bench": DatasetSpec(load_cv_bench, ("test",)),
    "synthetic": DatasetSpec(load_synthetic_split, ("train", "test")),
}
SPLIT_ALIASES = {"validation": "val", "validate": "val", "valid": "val"}

# Rows per split of the official releases (REFERENCE.md sec. 3; SLAKE counts English questions only).
# VQA-RAD's HF parquet export dropped duplicates and rebuilt the training split, hence its own row.
OFFICIAL_COUNTS = {
    "silvar-med": {"train": 716, "test": 150},
    "vqa-rad": {"train": 3064, "test": 451},
    "vqa-rad-parquet": {"train": 1793, "test": 451},
    "slake": {"train": 4919, "val": 1053, "test": 1061},
    "vqa-med-2019": {"train": 12792, "val": 2000, "test": 500},
    "path-vqa": {"train": 19654, "val": 6259, "test": 6719},
    "cv-bench": {"test": 2638},
}


def load_dataset(name: str, root: str | Path | None, split: str, skip_bad_rows: bool = False) -> list[Sample]:
    """All usable rows of one split, in file order. `root` may be None only for the synthetic set."""
    spec, split = dataset_spec(name), canonical_split(name, split)
    if root is None and name != "synthetic":
        raise DatasetError(f"{name}: give the folder holding its files (see docs/DATA.md)")
    root = Path(root) if root is not None else None
    if root is not None and not root.is_dir():
        raise DatasetError(f"{name}: data folder not found: {root}")
    bad = BadRows(name)
    samples = check_images(spec.load(root, split, bad), bad)  # decoded now, not when a batch reaches them
    bad.resolve(skip_bad_rows)
    return samples


def check_official_count(name: str, root: str | Path, split: str, samples: list[Sample]) -> None:
    """Raise DatasetError unless a whole split read from official files has the official row count.

    Datasets without official counts (the synthetic one) pass unchecked.
    """
    source = "vqa-rad-parquet" if name == "vqa-rad" and not is_json_layout(Path(root)) else name
    expected = OFFICIAL_COUNTS.get(source, {}).get(canonical_split(name, split))
    if expected is not None and len(samples) != expected:
        raise DatasetError(f"{name} {split} from {root}: {len(samples)} rows, the official release has {expected} "
                           "(a partial copy, another version of the files, or skipped bad rows)")


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def canonical_split(name: str, split: str) -> str:
    canonical = SPLIT_ALIASES.get(split, split)
    if canonical not in dataset_spec(name).splits:
        raise DatasetError(f"{name} has no split {split!r}; its splits: {', '.join(dataset_spec(name).splits)}")
    return canonical
