"""The public benchmarks the paper evaluates on, each read from its official files: VQA-RAD, SLAKE,
VQA-Med 2019, PathVQA (and the Hugging Face parquet exports of VQA-RAD and PathVQA), CV-Bench.

Each dataset's section below opens with its on-disk layout, as the publishers' archives unpack, and
how its fields become a `Sample`; docs/DATA.md has them all. Every loader has the signature
`load_NAME(root, split, bad) -> list[Sample]` (`split` already canonical: "train", "val" or "test"),
turns each row into a Sample with a `parse(number, record)` function, and leaves unusable rows to
`bad` (src/data/rows.py). src/data/loaders.py maps dataset names to these loaders. The paper's own
reasoning set (Silvar-Med) is in src/data/reasoning_set.py.
"""
from __future__ import annotations

import re
from pathlib import Path

from src.data.rows import (BadRowError, BadRows, DatasetError, KnownDefect, closed_or_open, find_file, image_bytes,
                           image_file, optional_text, read_json_records, read_parquet_records, read_pickle_records,
                           read_text, text_field, undecodable, yes_no_type)
from src.data.sample import Sample


# ---- VQA-RAD ---------------------------------------------------------------------------------
#
# VQA-RAD (Lau et al. 2018), in the widely used split of the official release or the HF parquet export.
#
# JSON layout (MEVF / official split):
#     ROOT/trainset.json, ROOT/testset.json   lists of {qid, image_name, image_organ, question, answer,
#                                             answer_type, question_type, phrase_type}
#     ROOT/images/synpicNNNNN.jpg
# answer_type is "CLOSED" or "OPEN", sometimes with trailing spaces; CLOSED answers are not only yes/no
# ("left", "mri"), so the field is trusted rather than the answer. question_type (PRES, ABN, ...) → task.
# Without trainset.json, ROOT is read as the parquet export (`load_parquet_export` below).

VQA_RAD_FILES = {"train": "trainset.json", "test": "testset.json"}


def is_json_layout(root: Path) -> bool:
    return (root / VQA_RAD_FILES["train"]).is_file() or (root / VQA_RAD_FILES["test"]).is_file()


def load_vqa_rad(root: Path, split: str, bad: BadRows) -> list[Sample]:
    if not is_json_layout(root):
        return load_parquet_export("vqa-rad", root, split, bad)
    path = root / VQA_RAD_FILES[split]

    def parse(number: int, record: object) -> Sample:
        answer = text_field(record, "answer")
        return Sample(id=str(record.get("qid", f"{split}-{number}")), dataset="vqa-rad",
                      image=image_file(root / "images", text_field(record, "image_name")),
                      question=text_field(record, "question"), answer=answer, answer_type=closed_or_open(record),
                      task=optional_text(record, "question_type"), meta={"organ": optional_text(record, "image_organ")})

    return bad.parse(path, read_json_records(path), parse)


# ---- SLAKE -----------------------------------------------------------------------------------
#
# SLAKE (Liu et al. 2021), English questions only.
#
# Layout as the official archive unpacks:
#     ROOT/train.json, ROOT/validate.json, ROOT/test.json   lists of {qid, img_id, img_name, question,
#         answer, q_lang, location, modality, answer_type, base_type, content_type, triple}
#     ROOT/imgs/xmlabN/source.jpg                          (img_name is relative to imgs/)
# The Hub copy (BoKelvin/SLAKE) names the validation file validation.json; either name is read.
# Rows with q_lang "zh" are dropped before parsing (they are not bad rows, just not used).
# modality (MRI, CT, X-Ray) → modality; content_type (Organ, Position, Abnormality, ...) → task.
# Known defect of the official files, skipped with one warning: in train.json the English question
# "Does the picture contain liver?" of one row has an empty answer (4,919 English rows, 4,918 usable).

SLAKE_FILES = {"train": ("train.json",), "val": ("validate.json", "validation.json"), "test": ("test.json",)}
SLAKE_DEFECTS = [KnownDefect("train.json", {"q_lang": "en", "question": "Does the picture contain liver?"},
                             "empty 'answer'")]


def load_slake(root: Path, split: str, bad: BadRows) -> list[Sample]:
    path = find_file([root / name for name in SLAKE_FILES[split]], f"SLAKE {split} file")

    def parse(number: int, record: object) -> Sample:
        text_field(record, "q_lang")  # a row that does not say its language is malformed
        return Sample(id=str(record.get("qid", f"{split}-{number}")), dataset="slake",
                      image=image_file(root / "imgs", text_field(record, "img_name")),
                      question=text_field(record, "question"), answer=text_field(record, "answer"),
                      answer_type=closed_or_open(record), modality=optional_text(record, "modality"),
                      task=optional_text(record, "content_type"), meta={"location": optional_text(record, "location")})

    english = ((number, record) for number, record in read_json_records(path)
               if not (isinstance(record, dict) and record.get("q_lang", "en") != "en"))
    return bad.parse(path, english, parse, SLAKE_DEFECTS)


# ---- VQA-Med 2019 ----------------------------------------------------------------------------
#
# VQA-Med 2019 (ImageCLEF, Ben Abacha et al. 2019), as its three official archives unpack.
#
#     ROOT/ImageClef-2019-VQA-Med-Training/All_QA_Pairs_train.txt      synpicID|question|answer
#                                         /Train_images/synpicID.jpg
#                                         /QAPairsByCategory/C1_Modality_train.txt, C2_Plane_…, C3_Organ_…, C4_Abnormality_…
#     ROOT/ImageClef-2019-VQA-Med-Validation/All_QA_Pairs_val.txt, Val_images/, QAPairsByCategory/*_val.txt
#     ROOT/VQAMed2019Test/VQAMed2019_Test_Questions_w_Ref_Answers.txt  synpicID|category|question|answer
#                        /VQAMed2019_Test_Images/synpicID.jpg
# Each split's files may also sit directly in ROOT, and an image folder may hold a folder of its own name
# (VQAMed2019_Test_Images/VQAMed2019_Test_Images/, as unzip tools unpack the test images' inner archive). In answers `#` separates alternative correct answers
# (the first → `answer`, the rest → `alternatives`); yes/no answers are 'closed', the rest 'open'.
# The category (modality, plane, organ, abnormality) → `task`: the test file's column, and for
# train/val the QAPairsByCategory file a pair appears in (task None when that folder is absent).

# split: (archive folder, question file, image folder, category-file suffix)
VQA_MED_LAYOUT = {
    "train": ("ImageClef-2019-VQA-Med-Training", "All_QA_Pairs_train.txt", "Train_images", "train"),
    "val": ("ImageClef-2019-VQA-Med-Validation", "All_QA_Pairs_val.txt", "Val_images", "val"),
    "test": ("VQAMed2019Test", "VQAMed2019_Test_Questions_w_Ref_Answers.txt", "VQAMed2019_Test_Images", None),
}
VQA_MED_CATEGORIES = {"C1_Modality": "modality", "C2_Plane": "plane", "C3_Organ": "organ",
                      "C4_Abnormality": "abnormality"}


def load_vqa_med_2019(root: Path, split: str, bad: BadRows) -> list[Sample]:
    archive, questions_name, images_name, category_suffix = VQA_MED_LAYOUT[split]
    path = find_file([root / archive / questions_name, root / questions_name], f"VQA-Med 2019 {split} questions")
    images = path.parent / images_name
    if (images / images_name).is_dir():  # the image archive unpacked into a folder of its own name
        images = images / images_name
    categories = read_categories(path.parent / "QAPairsByCategory", category_suffix) if category_suffix else {}
    fields = 3 if category_suffix else 4

    def parse(number: int, line: str) -> Sample:
        problem = undecodable(line)
        if problem:
            raise BadRowError(f"{problem} (re-save the file as UTF-8)")
        parts = [part.strip() for part in line.split("|")]
        if len(parts) != fields:
            raise BadRowError(f"expected {fields} '|'-separated fields, found {len(parts)}")
        image_id, question, answers = parts[0], parts[-2], parts[-1]
        category = parts[1] if fields == 4 else categories.get((image_id, question))
        references = [answer.strip() for answer in answers.split("#") if answer.strip()]
        if not image_id or not question or not references:
            raise BadRowError("empty image id, question or answer")
        return Sample(id=f"{split}-{number}", dataset="vqa-med-2019", image=image_file(images, f"{image_id}.jpg"),
                      question=question, answer=references[0], alternatives=tuple(references[1:]),
                      answer_type=yes_no_type(references[0]), task=category)

    return bad.parse(path, text_lines(path), parse)


def text_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) for the non-blank lines of a text file."""
    return [(number, line) for number, line in enumerate(read_text(path).splitlines(), start=1) if line.strip()]


def read_categories(folder: Path, suffix: str) -> dict[tuple[str, str], str]:
    """(image id, question) → category, from the per-category copies of the training/validation pairs."""
    categories = {}
    for stem, category in VQA_MED_CATEGORIES.items():
        path = folder / f"{stem}_{suffix}.txt"
        if path.is_file():
            for _, line in text_lines(path):
                image_id, question, *_ = [part.strip() for part in line.split("|")] + ["", ""]
                categories[(image_id, question)] = category
    return categories


# ---- PathVQA ---------------------------------------------------------------------------------
#
# PathVQA (He et al. 2020): the authors' original release, or the Hugging Face parquet export.
#
# The original release (the archive linked from github.com/UCSD-AI4H/PathVQA) unpacks as
#     ROOT/pvqa/qas/train/train_qa.pkl, ROOT/pvqa/qas/val/val_qa.pkl, ROOT/pvqa/qas/test/test_qa.pkl
#         pickled lists of {"image": "train_0422", "question": ..., "answer": ...}
#     ROOT/pvqa/images/train/train_0422.jpg, ROOT/pvqa/images/val/…, ROOT/pvqa/images/test/…
# (ROOT may also be the pvqa folder itself.) Its 19,755 / 6,279 / 6,761 question pairs are read as
# published, exact duplicates included. The parquet export (flaviagiammarino/path-vqa, `load_parquet_export`)
# drops exact duplicate (image, question, answer) triplets and lower-cases the text: 19,654 / 6,259 / 6,719.
# Neither has an answer type: yes/no answers are 'closed', the rest 'open'.

def original_release(root: Path) -> Path | None:
    """The `pvqa` folder of the original release under ROOT (or ROOT itself), or None for the export."""
    for folder in (root / "pvqa", root):
        if (folder / "qas").is_dir():
            return folder
    return None


def load_path_vqa(root: Path, split: str, bad: BadRows) -> list[Sample]:
    folder = original_release(root)
    if folder is None:
        return load_parquet_export("path-vqa", root, split, bad)
    path = folder / "qas" / split / f"{split}_qa.pkl"

    def parse(number: int, record: object) -> Sample:
        answer = text_field(record, "answer")
        image = text_field(record, "image")
        return Sample(id=f"{split}-{number}", dataset="path-vqa", image=image_file(folder / "images" / split, f"{image}.jpg"),
                      question=text_field(record, "question"), answer=answer, answer_type=yes_no_type(answer),
                      meta={"image_id": image})

    return bad.parse(path, read_pickle_records(path), parse)


# ---- the Hugging Face parquet exports (VQA-RAD, PathVQA) -------------------------------------
#
# The Hugging Face parquet exports (flaviagiammarino/vqa-rad, flaviagiammarino/path-vqa).
#
# Columns: image ({"bytes", "path"} struct), question, answer; no answer type, so yes/no answers are
# 'closed' and the rest 'open'. Files as the Hub lays them out, `ROOT/data/<split>-00000-of-00004-<hash>.parquet`,
# or the same names directly in ROOT, or one `ROOT/<split>.parquet`.

PARQUET_SPLITS = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}
PARQUET_COLUMNS = ["image", "question", "answer"]


def parquet_files(root: Path, split: str) -> list[Path]:
    """The split's parquet shards in name order (empty when the export has none for it)."""
    for folder in (root / "data", root):
        for name in PARQUET_SPLITS[split]:
            shards = sorted(folder.glob(f"{name}-*.parquet")) or sorted(folder.glob(f"{name}.parquet"))
            if shards:
                return shards
    return []


def load_parquet_export(dataset: str, root: Path, split: str, bad: BadRows) -> list[Sample]:
    files = parquet_files(root, split)
    if not files:
        raise DatasetError(f"{dataset}: no parquet files for split {split!r} in {root}/data or {root} "
                           f"(expected names like {PARQUET_SPLITS[split][0]}-00000-of-00001.parquet)")
    samples = []
    for shard, path in enumerate(files):
        def parse(number: int, record: dict, shard: int = shard) -> Sample:
            answer = text_field(record, "answer")
            return Sample(id=f"{split}-{shard}-{number}", dataset=dataset, image=image_bytes(record["image"]),
                          question=text_field(record, "question"), answer=answer, answer_type=yes_no_type(answer))
        samples += bad.parse(path, read_parquet_records(path, PARQUET_COLUMNS), parse)
    return samples


# ---- CV-Bench --------------------------------------------------------------------------------
#
# CV-Bench (Tong et al. 2024, nyu-visionx/CV-Bench): 2,638 multiple-choice vision questions, test only.
#
#     ROOT/test.jsonl            (or the newer split files ROOT/test_2d.jsonl + ROOT/test_3d.jsonl)
#         {idx, type (2D/3D), task (Count, Relation, Depth, Distance), question, choices [...],
#          answer "(A)", prompt, filename "img/2D/count/ade20k_10.png", source, ...}
#     ROOT/img/2D/…, ROOT/img/3D/…
# `question` is the row's `prompt`, the benchmark's own text with the lettered options
# ("How many … ? Select from the following choices.
# (A) 0
# (B) 3 …"), since the answer is a letter the
# model must see the options for; `choices` keeps the option texts and `task` the sub-task for per-task scores.

CHOICE_LETTER = re.compile(r"\(([A-Z])\)")


def load_cv_bench(root: Path, split: str, bad: BadRows) -> list[Sample]:
    files = [root / "test.jsonl"] if (root / "test.jsonl").is_file() else [root / "test_2d.jsonl", root / "test_3d.jsonl"]

    def parse(number: int, record: object) -> Sample:
        answer = text_field(record, "answer")
        choices = record.get("choices")
        if not isinstance(choices, list) or not choices or not all(isinstance(c, (str, int)) for c in choices):
            raise BadRowError(f"choices is not a non-empty list of options: {choices!r}")
        letter = CHOICE_LETTER.fullmatch(answer)
        if letter is None or ord(letter.group(1)) - ord("A") >= len(choices):
            raise BadRowError(f"answer {answer!r} is not one of the options (A)..({chr(ord('A') + len(choices) - 1)})")
        return Sample(id=str(record.get("idx", f"{split}-{number}")), dataset="cv-bench",
                      image=image_file(root, text_field(record, "filename")), question=text_field(record, "prompt"),
                      answer=answer, answer_type="choice", choices=tuple(str(c) for c in choices),
                      task=text_field(record, "task"), meta={"type": record.get("type")})

    return [sample for path in files for sample in bad.parse(path, read_json_records(path), parse)]
