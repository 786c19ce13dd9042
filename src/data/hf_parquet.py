"""The Hugging Face parquet exports (flaviagiammarino/vqa-rad, flaviagiammarino/path-vqa).

Columns: image ({"bytes", "path"} struct), question, answer; no answer type, so yes/no answers are
'closed' and the rest 'open'. Files as the Hub lays them out, `ROOT/data/<split>-00000-of-00004-<hash>.parquet`,
or the same names directly in ROOT, or one `ROOT/<split>.parquet`.
"""
from __future__ import annotations

from pathlib import Path

from src.data.rows import BadRows, DatasetError, image_bytes, read_parquet_records, text_field, yes_no_type
from src.data.sample import Sample

FILE_SPLITS = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}
COLUMNS = ["image", "question", "answer"]


def parquet_files(root: Path, split: str) -> list[Path]:
    """The split's parquet shards in name order (empty when the export has none for it)."""
    for folder in (root / "data", root):
        for name in FILE_SPLITS[split]:
            shards = sorted(folder.glob(f"{name}-*.parquet")) or sorted(folder.glob(f"{name}.parquet"))
            if shards:
                return shards
    return []


def load_parquet_export(dataset: str, root: Path, split: str, bad: BadRows) -> list[Sample]:
    files = parquet_files(root, split)
    if not files:
        raise DatasetError(f"{dataset}: no parquet files for split {split!r} in {root}/data or {root} "
                           f"(expected names like {FILE_SPLITS[split][0]}-00000-of-00001.parquet)")
    samples = []
    for shard, path in enumerate(files):
        def parse(number: int, record: dict, shard: int = shard) -> Sample:
            answer = text_field(record, "answer")
            return Sample(id=f"{split}-{shard}-{number}", dataset=dataset, image=image_bytes(record["image"]),
                          question=text_field(record, "question"), answer=answer, answer_type=yes_no_type(answer))
        samples += bad.parse(path, read_parquet_records(path, COLUMNS), parse)
    return samples
