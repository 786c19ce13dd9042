"""`load_dataset(name, root, split)`: every dataset the paper uses, read from its official files.

Names: silvar-med, vqa-rad, slake, vqa-med-2019, path-vqa, cv-bench, synthetic. Splits are "train",
"val" and "test" ("validation", "validate" and "valid" mean "val"); each dataset has the splits it
was released with. A split may select rows by position as a Python slice does: "train[:616]" and
"train[616:]" are a split's first 616 rows and the rest (a validation set held out of the training
data, say). Each dataset's module docstring gives its on-disk layout (docs/DATA.md has them all).

A dataset given without a folder is fetched from the Hugging Face Hub (src/data/hub.py) into the Hub
cache and read from there: `locate_dataset` says where a dataset's files are (the folder given, or the
snapshot of its Hub repository with the commit it came from), `read_dataset` reads them, and
`load_dataset` does both.

Unusable rows (missing or undecodable image, empty question or answer, malformed line, bytes that are
not UTF-8) raise one DatasetError that names file and row, unless `skip_bad_rows=True`, which skips them
with a warning. Rows the official files themselves get wrong (a known upstream defect, listed in the
dataset's loader) are skipped by default with one warning naming file and row.

Every image is decoded when the dataset loads, so a bad one stops the run before any model loads.
`check_images` decodes each distinct image once, exactly as training and evaluation will
(`load_image`: decode, EXIF rotation, RGB), on a pool of threads (Pillow releases the GIL while it
decodes). A sample whose image fails (missing, empty, truncated, not an image, above Pillow's pixel
limit) becomes a bad row of its dataset file, reported with the rows the loader rejected: one
DatasetError naming file and row, or with skip_bad_rows one warning listing them all. Images above
89.5 megapixels pass (the processor resizes them, see src/models/inputs.py) and are named in one
warning. Its cost, measured, is in docs/DATA.md (`python -m benchmarks.dataset_check` measures it
for one split).
"""
from __future__ import annotations

import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from src.data.datasets import (SLAKE_DEFECTS, is_json_layout, load_cv_bench, load_path_vqa, load_slake,
                               load_vqa_med_2019, load_vqa_rad, original_release)
from src.data.hub import fetch_dataset
from src.data.reasoning_set import is_reasoning_set, load_silvar_med, upstream_folder
from src.data.rows import BadRows, DatasetError
from src.data.sample import Sample
from src.data.synthetic import SPLITS as SYNTHETIC_SPLITS, load_synthetic_split
from src.files import file_key
from src.models.inputs import LARGE_IMAGE_PIXELS, ImageLoadError, load_image


@dataclass(frozen=True)
class DatasetSpec:
    load: Callable[[Path, str, BadRows], list[Sample]]  # (root, canonical split, bad-row log) -> samples
    splits: tuple[str, ...]


DATASETS = {
    "silvar-med": DatasetSpec(load_silvar_med, ("train", "test")),
    "vqa-rad": DatasetSpec(load_vqa_rad, ("train", "test")),
    "slake": DatasetSpec(load_slake, ("train", "val", "test")),
    "vqa-med-2019": DatasetSpec(load_vqa_med_2019, ("train", "val", "test")),
    "path-vqa": DatasetSpec(load_path_vqa, ("train", "val", "test")),
    "cv-bench": DatasetSpec(load_cv_bench, ("test",)),
    "synthetic": DatasetSpec(load_synthetic_split, SYNTHETIC_SPLITS),
}
SPLIT_ALIASES = {"validation": "val", "validate": "val", "valid": "val"}

# Rows per split of each published form of a dataset (see `data_source`), as the files hold them;
# SLAKE counts English questions only. The VQA-RAD and PathVQA parquet exports dropped duplicates
# (VQA-RAD's also rebuilt its training split). The authors' Silvar-Med release states no counts:
# 716/150 is the paper's split, in our schema.
OFFICIAL_COUNTS = {
    "silvar-med": {"train": 716, "test": 150},
    "vqa-rad": {"train": 3064, "test": 451},
    "vqa-rad-parquet": {"train": 1793, "test": 451},
    "slake": {"train": 4919, "val": 1053, "test": 1061},
    "vqa-med-2019": {"train": 12792, "val": 2000, "test": 500},
    "path-vqa": {"train": 19755, "val": 6279, "test": 6761},
    "path-vqa-parquet": {"train": 19654, "val": 6259, "test": 6719},
    "cv-bench": {"test": 2638},
}
# Of those, rows the publishers' own files get wrong: the known defects of the dataset's loader,
# which every load skips; a whole split loads OFFICIAL_COUNTS minus these.
KNOWN_DEFECT_ROWS = {"slake": {"train": len(SLAKE_DEFECTS)}}


def usable_count(source: str, split: str) -> int | None:
    """Rows a loader returns for a whole split of this published form, or None where none is known."""
    rows = OFFICIAL_COUNTS.get(source, {}).get(split)
    return None if rows is None else rows - KNOWN_DEFECT_ROWS.get(source, {}).get(split, 0)


@dataclass(frozen=True)
class DataSource:
    """Where a dataset's files are: the folder given (--data-root), or a snapshot fetched from the Hub."""
    name: str
    root: Path | None            # None: the synthetic set in its cache
    repo: str | None = None      # the Hub repository the files came from (None for a folder given)
    commit: str | None = None    # its commit

    def describe(self) -> dict | None:
        """{"repo", "commit"} of files fetched from the Hub (what run.json records), else None."""
        return None if self.repo is None else {"repo": self.repo, "commit": self.commit}


def locate_dataset(name: str, root: str | Path | None, split: str, revision: str | None = None) -> DataSource:
    """Where dataset `name`'s split is read from: `root` when given (it always wins), else the synthetic
    set's cache, else its files fetched from the Hub at `revision` (default: main) into the Hub cache."""
    split = canonical_split(name, split_rows(split)[0])
    if root is not None:
        if revision is not None:
            raise DatasetError(f"{name}: --data-revision pins the Hub copy, but its files are read from the folder "
                               f"given ({root}): drop one of the two")
        if not Path(root).is_dir():
            raise DatasetError(f"{name}: data folder not found: {root}")
        return DataSource(name, Path(root))
    if name == "synthetic":
        if revision is not None:
            raise DatasetError("synthetic: generated here, not fetched: --data-revision does not apply")
        return DataSource(name, None)
    fetched = fetch_dataset(name, split, revision)
    return DataSource(name, fetched.root, fetched.repo, fetched.commit)


def load_dataset(name: str, root: str | Path | None, split: str, skip_bad_rows: bool = False,
                 revision: str | None = None) -> list[Sample]:
    """All usable rows of one split (or of its `[start:stop]` slice), in file order: read from `root`, or
    without one fetched from the Hub (the synthetic set is generated)."""
    return read_dataset(locate_dataset(name, root, split, revision), split, skip_bad_rows)


def read_dataset(source: DataSource, split: str, skip_bad_rows: bool = False) -> list[Sample]:
    """All usable rows of one split (or of its `[start:stop]` slice) of a located dataset. A whole split
    fetched from the Hub whose usable rows are not the official count says so in one warning."""
    split, rows = split_rows(split)
    name = source.name
    spec, split = dataset_spec(name), canonical_split(name, split)
    bad = BadRows(name)
    samples = check_images(spec.load(source.root, split, bad)[rows], bad)  # decoded now, not when a batch reaches them
    bad.resolve(skip_bad_rows)
    if source.repo is not None and rows == slice(None):
        try:
            check_official_count(name, source.root, split, samples)
        except DatasetError as error:
            warnings.warn(f"{error}; fetched from {source.repo} at commit {source.commit}", stacklevel=2)
    return samples


def split_rows(split: str) -> tuple[str, slice]:
    """"train[616:]" -> ("train", slice(616, None)); a split without brackets -> (split, all rows)."""
    match = re.fullmatch(r"([\w-]+)(?:\[(-?\d*):(-?\d*)\])?", split.strip())
    if match is None:
        raise DatasetError(f"split {split!r}: expected NAME or NAME[START:STOP], e.g. train or train[:616]")
    name, start, stop = match.groups()
    return name, slice(int(start) if start else None, int(stop) if stop else None)


def check_official_count(name: str, root: str | Path, split: str, samples: list[Sample]) -> None:
    """Raise DatasetError unless a whole split read from official files has the official row count.

    The count compared is the usable one: the published rows minus the known defects the loader
    skips. Forms without official counts (the synthetic set, the authors' Silvar-Med release) pass.
    """
    split = canonical_split(name, split)
    source = data_source(name, Path(root), split)
    expected = usable_count(source, split)
    if expected is not None and len(samples) != expected:
        published = OFFICIAL_COUNTS[source][split]
        of_them = f", {expected} of them usable" if expected != published else ""
        raise DatasetError(f"{name} {split} from {root} ({source}): {len(samples)} rows, the official release has "
                           f"{published}{of_them} (a partial copy, another version of the files, or skipped bad rows)")


def data_source(name: str, root: Path, split: str) -> str:
    """Which published form of dataset `name` ROOT holds: the key of OFFICIAL_COUNTS."""
    if name == "vqa-rad" and not is_json_layout(root):
        return "vqa-rad-parquet"
    if name == "path-vqa" and original_release(root) is None:
        return "path-vqa-parquet"
    if name == "silvar-med" and not is_reasoning_set(root, split) and upstream_folder(root, split) is not None:
        return "silvar-med-upstream"
    return name


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def canonical_split(name: str, split: str) -> str:
    canonical = SPLIT_ALIASES.get(split, split)
    if canonical not in dataset_spec(name).splits:
        raise DatasetError(f"{name} has no split {split!r}; its splits: {', '.join(dataset_spec(name).splits)}")
    return canonical


MAX_WORKERS = 8  # image-decoding threads at most


def default_workers() -> int:
    return min(MAX_WORKERS, os.cpu_count() or 1)


def check_images(samples: list[Sample], bad: BadRows, workers: int | None = None) -> list[Sample]:
    """The samples whose image decodes; each other one is recorded in `bad` with its file and row."""
    users: dict[str | bytes, list[Sample]] = {}  # one decode per distinct path (or byte string)
    for sample in samples:
        users.setdefault(sample.image, []).append(sample)
    sources = list(users)
    names = [source if isinstance(source, str) else f"{bad.dataset} sample {users[source][0].id} (image bytes)"
             for source in sources]
    with ThreadPoolExecutor(workers or default_workers()) as pool:
        results = list(tqdm(pool.map(image_problem, sources, names), total=len(sources),
                            desc=f"{bad.dataset}: decoding images", unit="image", delay=2.0))
    rejected, large = set(), []
    for source, name, (problem, size) in zip(sources, names, results):
        if problem is not None:
            for sample in users[source]:
                bad.reject(sample, problem)
                rejected.add(id(sample))
        elif size[0] * size[1] > LARGE_IMAGE_PIXELS:
            large.append(f"{name} ({size[0]}x{size[1]})")
    if large:
        warnings.warn(f"{bad.dataset}: {len(large)} image(s) above {LARGE_IMAGE_PIXELS / 1e6:.1f} megapixels; each "
                      "is decoded in full (3 bytes per pixel) before the image processor shrinks it to its "
                      f"max_pixels: {'; '.join(large)}", stacklevel=3)
    return [sample for sample in samples if id(sample) not in rejected]


def image_problem(source: str | bytes, name: str) -> tuple[str | None, tuple[int, int] | None]:
    """(None, (width, height)) for an image that decodes, else (the reason, None).

    A file's result is kept for the process under its path, size and modification time, so a dataset
    that loads again (evaluation after training, the demo's stages) is not decoded again, and a file
    that changes is."""
    key = file_key(source)
    if key is not None and key in _CHECKED:
        return _CHECKED[key]
    try:
        result = None, load_image(source, name=name).size
    except ImageLoadError as error:
        result = str(error), None
    if key is not None:
        _CHECKED[key] = result
    return result


_CHECKED: dict[tuple[str, int, int], tuple[str | None, tuple[int, int] | None]] = {}
