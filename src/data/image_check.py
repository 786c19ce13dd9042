"""Every image of a dataset decoded when the dataset loads, so a bad one stops the run before any model loads.

`check_images` decodes each distinct image once, exactly as training and evaluation will
(`load_image`: decode, EXIF rotation, RGB), on a pool of threads (Pillow releases the GIL while it
decodes). A sample whose image fails (missing, empty, truncated, not an image, above Pillow's pixel
limit) becomes a bad row of its dataset file, reported with the rows the loader rejected: one
DatasetError naming file and row, or with skip_bad_rows one warning listing them all. Images above
89.5 megapixels pass (the processor resizes them, see src/models/images.py) and are named in one
warning. Its cost, measured, is in docs/DATA.md; `python -m src.data.image_check DATASET --data-root
ROOT` runs the check alone and prints it.
"""
from __future__ import annotations

import argparse
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from src.data.rows import BadRows
from src.data.sample import Sample
from src.models.images import LARGE_IMAGE_PIXELS, ImageLoadError, load_image

MAX_WORKERS = 8


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


def file_key(source: str | bytes) -> tuple[str, int, int] | None:
    """(path, size, mtime in ns) of an image file; None for image bytes or a file that cannot be stat'ed."""
    if not isinstance(source, str):
        return None
    try:
        stat = os.stat(source)
    except OSError:
        return None
    return source, stat.st_size, stat.st_mtime_ns


def main(argv: list[str] | None = None) -> None:
    """Check one split's images and print what it cost: a dataset can be checked before a GPU is rented."""
    from src.data.loaders import canonical_split, dataset_spec

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("dataset")
    parser.add_argument("--data-root")
    parser.add_argument("--split", default="train")
    parser.add_argument("--workers", type=int, default=default_workers(), help="decoding threads")
    args = parser.parse_args(argv)
    bad = BadRows(args.dataset)
    root = Path(args.data_root) if args.data_root else None
    samples = dataset_spec(args.dataset).load(root, canonical_split(args.dataset, args.split), bad)
    start = time.perf_counter()
    usable = check_images(samples, bad, args.workers)
    seconds = time.perf_counter() - start
    distinct = len({sample.image for sample in samples})
    print(f"{args.dataset} {args.split}: {len(samples)} rows, {distinct} distinct images decoded in {seconds:.2f} s "
          f"with {args.workers} thread(s) ({1e3 * seconds / max(distinct, 1):.2f} ms per image); "
          f"{len(samples) - len(usable)} row(s) with an unusable image")
    for row in bad.rows:
        print(f"  {row}")


if __name__ == "__main__":
    main()
