"""Check one split of a dataset before a GPU is rented: its rows against the official release, and what
decoding its images costs.

    python -m benchmarks.dataset_check vqa-rad --data-root data/vqa-rad --split test --workers 2
    python -m benchmarks.dataset_check slake --split test        # fetched from the Hugging Face Hub

Reads the split's files as load_dataset does, decodes every distinct image once (src/data/loaders.py's
check_images, on --workers threads) and prints the rows, the images, the decoding time per image and
every unusable row; then whether the usable rows match the official count of the published form the
folder holds (src/data/loaders.py's OFFICIAL_COUNTS: a partial download or another version of the files
shows here). Without --data-root the split is fetched from the Hub first, as train.py and evaluate.py
fetch it. docs/DATA.md quotes the decoding figures.
"""
from __future__ import annotations

import argparse
import time

from src.data.loaders import (canonical_split, check_images, check_official_count, dataset_spec, default_workers,
                               locate_dataset)
from src.data.rows import BadRows, DatasetError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--data-root", help="the dataset's folder (default: its files fetched from the Hugging Face "
                                            "Hub into HF_HOME)")
    parser.add_argument("--data-revision", help="the commit, tag or branch of its Hub repository (default: main)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--workers", type=int, default=default_workers(), help="decoding threads")
    args = parser.parse_args(argv)
    bad = BadRows(args.dataset)
    source = locate_dataset(args.dataset, args.data_root, args.split, args.data_revision)
    root = source.root
    if source.repo is not None:
        print(f"{args.dataset}: {source.repo} at commit {source.commit}, in {root}")
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
    if root is not None:
        try:
            check_official_count(args.dataset, root, args.split, usable)
            print(f"{len(usable)} usable rows: the official count of this form of {args.dataset}, where one is known")
        except DatasetError as error:
            print(f"not the official count: {error}")


if __name__ == "__main__":
    main()
