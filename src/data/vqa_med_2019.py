"""VQA-Med 2019 (ImageCLEF, Ben Abacha et al. 2019), as its three official archives unpack.

    ROOT/ImageClef-2019-VQA-Med-Training/All_QA_Pairs_train.txt      synpicID|question|answer
                                        /Train_images/synpicID.jpg
                                        /QAPairsByCategory/C1_Modality_train.txt, C2_Plane_…, C3_Organ_…, C4_Abnormality_…
    ROOT/ImageClef-2019-VQA-Med-Validation/All_QA_Pairs_val.txt, Val_images/, QAPairsByCategory/*_val.txt
    ROOT/VQAMed2019Test/VQAMed2019_Test_Questions_w_Ref_Answers.txt  synpicID|category|question|answer
                       /VQAMed2019_Test_Images/synpicID.jpg
Each split's files may also sit directly in ROOT, and an image folder may hold a folder of its own name
(VQAMed2019_Test_Images/VQAMed2019_Test_Images/, as unzip tools unpack the test images' inner archive). In answers `#` separates alternative correct answers
(the first → `answer`, the rest → `alternatives`); yes/no answers are 'closed', the rest 'open'.
The category (modality, plane, organ, abnormality) → `task`: the test file's column, and for
train/val the QAPairsByCategory file a pair appears in (task None when that folder is absent).
"""
from __future__ import annotations

from pathlib import Path

from src.data.rows import BadRowError, BadRows, find_file, image_file, read_text, undecodable, yes_no_type
from src.data.sample import Sample

# split: (archive folder, question file, image folder, category-file suffix)
LAYOUT = {
    "train": ("ImageClef-2019-VQA-Med-Training", "All_QA_Pairs_train.txt", "Train_images", "train"),
    "val": ("ImageClef-2019-VQA-Med-Validation", "All_QA_Pairs_val.txt", "Val_images", "val"),
    "test": ("VQAMed2019Test", "VQAMed2019_Test_Questions_w_Ref_Answers.txt", "VQAMed2019_Test_Images", None),
}
CATEGORY_FILES = {"C1_Modality": "modality", "C2_Plane": "plane", "C3_Organ": "organ", "C4_Abnormality": "abnormality"}


def load_vqa_med_2019(root: Path, split: str, bad: BadRows) -> list[Sample]:
    archive, questions_name, images_name, category_suffix = LAYOUT[split]
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
    for stem, category in CATEGORY_FILES.items():
        path = folder / f"{stem}_{suffix}.txt"
        if path.is_file():
            for _, line in text_lines(path):
                image_id, question, *_ = [part.strip() for part in line.split("|")] + ["", ""]
                categories[(image_id, question)] = category
    return categories
