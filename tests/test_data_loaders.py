"""Each loader on small files written in its dataset's official schema, quirks included."""
import io
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from src.data.loaders import OFFICIAL_COUNTS, check_official_count, load_dataset
from src.data.rows import DatasetError


def png_bytes(value: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (4, 4), value).save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(folder, *names):
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(png_bytes())


def write_json(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))


def write_parquet(path, rows, struct_images=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    if struct_images:  # the HF Image feature: a {"bytes", "path"} struct per cell
        rows = [{**row, "image": {"bytes": row["image"], "path": None}} for row in rows]
    pq.write_table(pa.Table.from_pylist(rows), path)


def vqa_rad_row(qid, image, question, answer, answer_type, question_type="PRES"):
    return {"qid": qid, "image_name": image, "image_organ": "CHEST", "answer": answer, "answer_type": answer_type,
            "question_type": question_type, "question": question, "phrase_type": "freeform"}


def test_vqa_rad_json_keeps_closed_non_yes_no_and_strips_answer_type(tmp_path):
    write_images(tmp_path / "images", "synpic100.jpg", "synpic200.jpg")
    write_json(tmp_path / "trainset.json", [
        vqa_rad_row(1, "synpic100.jpg", "is there a pneumothorax?", "no", "CLOSED"),
        vqa_rad_row(2, "synpic100.jpg", "which lung is affected?", "left", "CLOSED  "),  # trailing spaces
        vqa_rad_row(3, "synpic200.jpg", "what is the modality?", "mri", "OPEN", "MODALITY"),
    ])
    samples = load_dataset("vqa-rad", tmp_path, "train")
    assert [(s.id, s.answer, s.answer_type, s.task) for s in samples] == [
        ("1", "no", "closed", "PRES"), ("2", "left", "closed", "PRES"), ("3", "mri", "open", "MODALITY")]
    assert samples[0].image == str(tmp_path / "images" / "synpic100.jpg")
    assert samples[0].meta == {"organ": "CHEST"} and samples[0].dataset == "vqa-rad"


def test_vqa_rad_parquet_export_types_yes_no_as_closed(tmp_path):
    image = png_bytes(7)
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", [
        {"image": image, "question": "is there a mass?", "answer": "yes"},
        {"image": image, "question": "what organ is shown?", "answer": "brain"},
    ])
    samples = load_dataset("vqa-rad", tmp_path, "test")
    assert [(s.answer, s.answer_type) for s in samples] == [("yes", "closed"), ("brain", "open")]
    assert samples[0].image == image


def test_slake_keeps_english_rows_only(tmp_path):
    write_images(tmp_path / "imgs", "xmlab1/source.jpg")
    row = {"img_id": 1, "img_name": "xmlab1/source.jpg", "location": "Lung", "modality": "X-Ray",
           "base_type": "vqa", "triple": ["vhead", "_", "_"]}
    write_json(tmp_path / "validate.json", [
        {**row, "qid": 10, "question": "Is the lung healthy?", "answer": "No", "q_lang": "en",
         "answer_type": "CLOSED", "content_type": "Abnormality"},
        {**row, "qid": 11, "question": "肺部健康吗?", "answer": "不健康", "q_lang": "zh",
         "answer_type": "CLOSED", "content_type": "Abnormality"},
        {**row, "qid": 12, "question": "Which organ is abnormal?", "answer": "Lung", "q_lang": "en",
         "answer_type": "OPEN", "content_type": "Organ"},
    ])
    samples = load_dataset("slake", tmp_path, "validation")  # the alias of "val"
    assert [(s.id, s.answer, s.answer_type, s.modality, s.task) for s in samples] == [
        ("10", "No", "closed", "X-Ray", "Abnormality"), ("12", "Lung", "open", "X-Ray", "Organ")]
    assert samples[0].image == str(tmp_path / "imgs" / "xmlab1" / "source.jpg")


def test_vqa_med_2019_training_archive_with_categories(tmp_path):
    archive = tmp_path / "ImageClef-2019-VQA-Med-Training"
    write_images(archive / "Train_images", "synpic1.jpg", "synpic2.jpg")
    (archive / "All_QA_Pairs_train.txt").write_text(
        "synpic1|in what plane was this image taken?|axial\n"
        "synpic2|is this a ct scan?|yes\n")
    (archive / "QAPairsByCategory").mkdir()
    (archive / "QAPairsByCategory" / "C2_Plane_train.txt").write_text("synpic1|in what plane was this image taken?|axial\n")
    (archive / "QAPairsByCategory" / "C1_Modality_train.txt").write_text("synpic2|is this a ct scan?|yes\n")
    samples = load_dataset("vqa-med-2019", tmp_path, "train")
    assert [(s.answer, s.alternatives, s.answer_type, s.task) for s in samples] == [
        ("axial", (), "open", "plane"), ("yes", (), "closed", "modality")]
    assert samples[1].image == str(archive / "Train_images" / "synpic2.jpg")


@pytest.mark.parametrize("folder", ["", "VQAMed2019Test"])  # files in ROOT, or as the test archive unpacks
def test_vqa_med_2019_test_keeps_hash_alternatives(tmp_path, folder):
    base = tmp_path / folder
    write_images(base / "VQAMed2019_Test_Images", "synpic54143.jpg", "synpic32365.jpg")
    (base / "VQAMed2019_Test_Questions_w_Ref_Answers.txt").write_text(
        "synpic54143|abnormality|what is the primary abnormality in this image?|anaplastic oligodendroglioma#"
        "multi-cystic complex mass\n"
        "synpic32365|modality|is this a ct scan?|yes\n")
    samples = load_dataset("vqa-med-2019", tmp_path, "test")
    assert samples[0].answer == "anaplastic oligodendroglioma"
    assert samples[0].alternatives == ("multi-cystic complex mass",)
    assert samples[0].references == ("anaplastic oligodendroglioma", "multi-cystic complex mass")
    assert [(s.task, s.answer_type) for s in samples] == [("abnormality", "open"), ("modality", "closed")]


def test_path_vqa_reads_every_shard_and_the_validation_name(tmp_path):
    image = png_bytes(3)
    write_parquet(tmp_path / "data" / "validation-00000-of-00002.parquet",
                  [{"image": image, "question": "is this inflamed?", "answer": "yes"}])
    write_parquet(tmp_path / "data" / "validation-00001-of-00002.parquet",
                  [{"image": image, "question": "what is present?", "answer": "fibrosis"}], struct_images=False)
    samples = load_dataset("path-vqa", tmp_path, "val")
    assert [(s.id, s.answer, s.answer_type, s.image) for s in samples] == [
        ("val-0-1", "yes", "closed", image), ("val-1-1", "fibrosis", "open", image)]


def cv_bench_row(idx, answer, filename="img/2D/count/ade20k_1.png"):
    return {"idx": idx, "type": "2D", "task": "Count", "question": "How many chairs are in the image?",
            "choices": ["0", "3", "2", "1"], "answer": answer,
            "prompt": "How many chairs are in the image? Select from the following choices.\n(A) 0\n(B) 3\n(C) 2\n(D) 1",
            "filename": filename, "source": "ADE20K"}


def test_cv_bench_multiple_choice(tmp_path):
    write_images(tmp_path, "img/2D/count/ade20k_1.png")
    (tmp_path / "test.jsonl").write_text(json.dumps(cv_bench_row(0, "(C)")) + "\n")
    [sample] = load_dataset("cv-bench", tmp_path, "test")
    assert (sample.answer, sample.answer_type, sample.task) == ("(C)", "choice", "Count")
    assert sample.choices == ("0", "3", "2", "1")
    assert sample.question.endswith("(D) 1")  # the benchmark's prompt, so the model sees the options
    assert sample.image == str(tmp_path / "img" / "2D" / "count" / "ade20k_1.png")


def test_cv_bench_answer_outside_the_options_is_a_bad_row(tmp_path):
    write_images(tmp_path, "img/2D/count/ade20k_1.png")
    (tmp_path / "test.jsonl").write_text(json.dumps(cv_bench_row(0, "(E)")) + "\n")
    with pytest.raises(DatasetError, match=r"test.jsonl, row 1: answer '\(E\)' is not one of the options"):
        load_dataset("cv-bench", tmp_path, "test")


def test_silvar_med_reasoning_set(tmp_path):
    write_images(tmp_path / "images", "cxr1.png")
    rows = [{"img_name": "cxr1.png", "question": "Is there cardiomegaly?", "reasoning": "The heart is enlarged.",
             "answer": "Yes", "modality": "X-ray"},
            {"image": "cxr1.png", "question": "What is abnormal?", "reasoning": "", "answer": "effusion"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    samples = load_dataset("silvar-med", tmp_path, "train")
    assert [(s.answer_type, s.reasoning, s.modality) for s in samples] == [
        ("closed", "The heart is enlarged.", "X-ray"), ("open", None, None)]
    assert samples[0].image == str(tmp_path / "images" / "cxr1.png")


@pytest.fixture
def silvar_with_bad_rows(tmp_path):
    """Row 1 fine, row 2 malformed JSON, row 3 an image that is not there, row 4 an empty answer."""
    write_images(tmp_path, "a.png")
    good = {"image": "a.png", "question": "Is there a lesion?", "reasoning": "None seen.", "answer": "no"}
    (tmp_path / "test.jsonl").write_text("\n".join([
        json.dumps(good), '{"image": "a.png", "question": ', json.dumps({**good, "image": "missing.png"}),
        json.dumps({**good, "answer": "  "})]) + "\n")
    return tmp_path


def test_bad_rows_raise_one_error_naming_file_and_rows(silvar_with_bad_rows):
    with pytest.raises(DatasetError) as error:
        load_dataset("silvar-med", silvar_with_bad_rows, "test")
    message = str(error.value)
    path = silvar_with_bad_rows / "test.jsonl"
    assert "3 unusable row(s)" in message
    assert f"{path}, row 2: malformed JSON line" in message
    assert f"{path}, row 3: image not found: {silvar_with_bad_rows / 'missing.png'}" in message
    assert f"{path}, row 4: empty 'answer'" in message


def test_bad_rows_are_skipped_with_a_warning_when_asked(silvar_with_bad_rows):
    with pytest.warns(UserWarning, match=r"silvar-med: skipped 3 unusable row\(s\)"):
        samples = load_dataset("silvar-med", silvar_with_bad_rows, "test", skip_bad_rows=True)
    assert [s.id for s in samples] == ["test-1"]


def test_missing_image_in_vqa_rad_names_file_and_row(tmp_path):
    (tmp_path / "images").mkdir()
    write_json(tmp_path / "testset.json", [vqa_rad_row(1, "synpic9.jpg", "is this normal?", "yes", "CLOSED")])
    with pytest.raises(DatasetError, match=r"testset.json, row 1: image not found: .*synpic9.jpg"):
        load_dataset("vqa-rad", tmp_path, "test")


def test_wrong_field_count_in_vqa_med_is_a_bad_row(tmp_path):
    write_images(tmp_path / "Val_images", "synpic1.jpg")
    (tmp_path / "All_QA_Pairs_val.txt").write_text("synpic1|is this a ct scan?|yes\nsynpic1|no answer here\n")
    with pytest.raises(DatasetError, match=r"All_QA_Pairs_val.txt, row 2: expected 3 '\|'-separated fields, found 2"):
        load_dataset("vqa-med-2019", tmp_path, "val")
    with pytest.warns(UserWarning):
        assert len(load_dataset("vqa-med-2019", tmp_path, "val", skip_bad_rows=True)) == 1


def test_unknown_dataset_split_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'vqa-x'"):
        load_dataset("vqa-x", tmp_path, "test")
    with pytest.raises(DatasetError, match="cv-bench has no split 'train'; its splits: test"):
        load_dataset("cv-bench", tmp_path, "train")
    with pytest.raises(DatasetError, match="file not found: .*validate.json"):
        load_dataset("slake", tmp_path, "val")
    with pytest.raises(DatasetError, match="give the folder"):
        load_dataset("slake", None, "test")


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    write_parquet(tmp_path / "test.parquet", [{"image": png_bytes(), "question": "q?", "answer": "yes"}])
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # makes `import pyarrow.parquet` fail
    with pytest.raises(DatasetError, match=r"needs pyarrow: pip install 'rarl\[parquet\]'"):
        load_dataset("path-vqa", tmp_path, "test")


def test_official_count_check(tmp_path):
    (tmp_path / "testset.json").write_text("[]")
    check_official_count("vqa-rad", tmp_path, "test", [None] * 451)
    with pytest.raises(DatasetError, match="3063 rows, the official release has 3064"):
        check_official_count("vqa-rad", tmp_path, "train", [None] * 3063)
    parquet_root = tmp_path / "hf"
    parquet_root.mkdir()  # no trainset.json: the parquet export, whose train split has 1,793 rows
    check_official_count("vqa-rad", parquet_root, "train", [None] * 1793)
    check_official_count("slake", tmp_path, "validation", [None] * 1053)
    check_official_count("synthetic", tmp_path, "train", [None] * 5)  # no official counts: unchecked
    assert sum(OFFICIAL_COUNTS["silvar-med"].values()) == 866
