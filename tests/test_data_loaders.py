"""Each loader on small files written in its dataset's official schema, quirks included."""
import io
import json
import pickle
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
    with pytest.raises(DatasetError, match="SLAKE val file not found; looked for: .*validate.json, .*validation.json"):
        load_dataset("slake", tmp_path, "val")
    with pytest.raises(DatasetError, match="vqa-med-2019: VQA-Med 2019 has no copy on the Hugging Face Hub"):
        load_dataset("vqa-med-2019", None, "test")


def test_parquet_without_pyarrow_names_the_missing_dependency(tmp_path, monkeypatch):
    write_parquet(tmp_path / "test.parquet", [{"image": png_bytes(), "question": "q?", "answer": "yes"}])
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # makes `import pyarrow.parquet` fail
    with pytest.raises(DatasetError, match=r"needs pyarrow, a dependency of this project .*: pip install -e \."):
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


def test_dataset_check_reports_bad_images_and_the_official_count(tmp_path, capsys):
    """benchmarks/dataset_check.py, the check of one split before a GPU is rented: a row whose image does
    not decode is listed, and the usable rows are compared with the official count."""
    from benchmarks.dataset_check import main

    write_images(tmp_path / "images", "a.png")
    (tmp_path / "images" / "broken.png").write_bytes(b"not an image")
    rows = [{"qid": qid, "image_name": name, "question": "Is there a mass?", "answer": "yes", "answer_type": "CLOSED"}
            for qid, name in ((1, "a.png"), (2, "broken.png"))]
    write_json(tmp_path / "testset.json", rows)
    main(["vqa-rad", "--data-root", str(tmp_path), "--split", "test", "--workers", "1"])
    out = capsys.readouterr().out
    assert "vqa-rad test: 2 rows, 2 distinct images decoded" in out and "1 row(s) with an unusable image" in out
    assert f"{tmp_path / 'testset.json'}, row 2:" in out
    assert "not the official count: vqa-rad test" in out and "1 rows, the official release has 451" in out


# ---------------------------------------------------------------- the official files as published

def slake_row(qid, question, answer, q_lang="en", answer_type="CLOSED"):
    return {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": question, "answer": answer, "q_lang": q_lang,
            "location": "Abdomen", "modality": "CT", "answer_type": answer_type, "base_type": "vqa",
            "content_type": "Organ", "triple": ["vhead", "_", "_"], "qid": qid}


def test_slake_official_train_loads_by_default_and_passes_its_count_check(tmp_path):
    """The official train.json: 4,919 English rows, one of them ("Does the picture contain liver?")
    with an empty answer, plus Chinese rows. It loads without skip_bad_rows, with one warning naming
    file and row, and its 4,918 usable rows pass the count check."""
    write_images(tmp_path / "imgs", "xmlab1/source.jpg")
    rows = []
    for qid in range(4919):
        rows.append(slake_row(qid, "Does the picture contain liver?", "" if qid == 1234 else "Yes"))
        rows.append(slake_row(10_000 + qid, "图片中有肝脏吗?", "是", q_lang="zh"))
    write_json(tmp_path / "train.json", rows)
    with pytest.warns(UserWarning) as caught:
        samples = load_dataset("slake", tmp_path, "train")
    [warning] = [str(w.message) for w in caught]
    # qid 1234 is the 2,469th row of the list (English and Chinese rows alternate)
    assert "slake: skipped 1 row(s) that the official release itself gets wrong" in warning
    assert f"{tmp_path / 'train.json'}, row 2469: empty 'answer'" in warning
    assert len(samples) == 4918 and "1234" not in {s.id for s in samples}
    check_official_count("slake", tmp_path, "train", samples)
    with pytest.raises(DatasetError, match=r"4917 rows, the official release has 4919, 4918 of them usable"):
        check_official_count("slake", tmp_path, "train", samples[:-1])


def test_slake_known_defect_does_not_hide_other_bad_rows(tmp_path):
    write_images(tmp_path / "imgs", "xmlab1/source.jpg")
    write_json(tmp_path / "train.json", [slake_row(1, "Does the picture contain liver?", ""),
                                         slake_row(2, "Is this a CT?", " ")])
    with pytest.warns(UserWarning, match="known upstream defects"), \
            pytest.raises(DatasetError, match=r"1 unusable row\(s\): .*train.json, row 2: empty 'answer'"):
        load_dataset("slake", tmp_path, "train")
    # the same empty answer in another split's file is not the known defect
    write_json(tmp_path / "test.json", [slake_row(1, "Does the picture contain liver?", "")])
    with pytest.raises(DatasetError, match=r"test.json, row 1: empty 'answer'"):
        load_dataset("slake", tmp_path, "test")


def write_silvar_release(root, split, rows, images=("xmlab102.jpg", "xmlab7_2.jpg")):
    folder = root / split
    write_images(folder / f"imgs_{split}_abnormal", *images)
    write_json(folder / "dataset_unique_abnormal.json", rows)
    return folder


def test_silvar_med_authors_release_one_sample_per_question(tmp_path):
    explanation = ("Yes, the image appears abnormal due to irregularities in the lung fields. These findings "
                   "could indicate an infection.")
    folder = write_silvar_release(tmp_path, "train", [
        {"img_name": "xmlab102.jpg", "question": "Does this image look abnormal?", "answer": explanation},
        {"img_name": "xmlab102_1.jpg",  # not in the folder: falls back to xmlab102.jpg, as upstream
         "question": ["Is the lung healthy?", "What disease is shown?"],
         "answer": ["No. The lung shows a lesion.", "The image shows pneumonia in the right lung."]},
        {"img_name": "xmlab7_2.jpg", "question": "Is this an MRI?", "answer": "No"},
    ])
    with pytest.warns(UserWarning, match=r"2 of 4 published answers hold no explanation that can be split"):
        samples = load_dataset("silvar-med", tmp_path, "train")
    assert [(s.id, s.answer, s.answer_type, s.reasoning) for s in samples] == [
        ("train-1", "Yes", "closed", explanation),
        ("train-2-q1", "No", "closed", "No. The lung shows a lesion."),
        ("train-2-q2", "The image shows pneumonia in the right lung.", "open", None),  # no short answer to split
        ("train-3", "No", "closed", None),
    ]
    images = folder / "imgs_train_abnormal"
    assert [s.image for s in samples] == [str(images / "xmlab102.jpg")] * 3 + [str(images / "xmlab7_2.jpg")]
    assert samples[1].question == "Is the lung healthy?" and samples[2].question == "What disease is shown?"
    check_official_count("silvar-med", tmp_path, "train", samples)  # the release states no counts: unchecked


def test_silvar_med_authors_release_bad_rows_name_row_and_field(tmp_path):
    write_silvar_release(tmp_path, "test", [
        {"img_name": "xmlab102.jpg", "question": ["Q1?", "Q2?"], "answer": ["Yes, because."]},
        {"img_name": "xmlab102.jpg", "question": ["Q1?"], "answer": [["nested"]]},
        {"img_name": "xmlab5.jpg", "question": "Q?", "answer": "No"},
        {"img_name": "xmlab102.jpg", "question": "Q?"},
    ])
    with pytest.raises(DatasetError) as error:
        load_dataset("silvar-med", tmp_path, "test")
    message, path = str(error.value), tmp_path / "test" / "dataset_unique_abnormal.json"
    assert f"{path}, row 1: question and answer lists must be non-empty and of one length; found 2 and 1" in message
    assert f"{path}, row 2: field 'answer[0]' is not text: ['nested']" in message
    assert f"{path}, row 3: image not found: {tmp_path / 'test' / 'imgs_test_abnormal' / 'xmlab5.jpg'}" in message
    assert f"{path}, row 4: missing field 'answer'" in message


def test_silvar_med_our_schema_wins_over_the_release_layout(tmp_path):
    write_silvar_release(tmp_path, "train", [{"img_name": "xmlab102.jpg", "question": "Q?", "answer": "No"}])
    write_images(tmp_path / "images", "a.png")
    (tmp_path / "train.jsonl").write_text(json.dumps(
        {"image": "a.png", "question": "Q?", "reasoning": "R.", "answer": "yes"}) + "\n")
    [sample] = load_dataset("silvar-med", tmp_path, "train")
    assert sample.reasoning == "R." and sample.image == str(tmp_path / "images" / "a.png")


def write_pvqa(root, split, rows, images=("test_0001",)):
    for image in images:
        write_images(root / "pvqa" / "images" / split, f"{image}.jpg")
    path = root / "pvqa" / "qas" / split / f"{split}_qa.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(rows))
    return path


def test_path_vqa_original_release_as_published(tmp_path):
    write_pvqa(tmp_path, "test", [
        {"image": "test_0001", "question": "is this inflamed?", "answer": "yes"},
        {"image": "test_0001", "question": "is this inflamed?", "answer": "yes"},  # exact duplicates are published
        {"image": "test_0001", "question": "what is present?", "answer": "fibrosis"},
    ])
    samples = load_dataset("path-vqa", tmp_path, "test")
    assert [(s.id, s.answer, s.answer_type, s.meta["image_id"]) for s in samples] == [
        ("test-1", "yes", "closed", "test_0001"), ("test-2", "yes", "closed", "test_0001"),
        ("test-3", "fibrosis", "open", "test_0001")]
    assert samples[0].image == str(tmp_path / "pvqa" / "images" / "test" / "test_0001.jpg")
    # ROOT may be the pvqa folder itself
    assert len(load_dataset("path-vqa", tmp_path / "pvqa", "test")) == 3


def test_path_vqa_count_check_knows_both_releases(tmp_path):
    row = {"image": "test_0001", "question": "is this inflamed?", "answer": "yes"}
    write_pvqa(tmp_path / "original", "test", [row] * 6761)
    samples = load_dataset("path-vqa", tmp_path / "original", "test")
    check_official_count("path-vqa", tmp_path / "original", "test", samples)
    write_parquet(tmp_path / "export" / "data" / "test-00000-of-00001.parquet",
                  [{"image": png_bytes(), "question": "is this inflamed?", "answer": "yes"}] * 6719)
    exported = load_dataset("path-vqa", tmp_path / "export", "test")
    check_official_count("path-vqa", tmp_path / "export", "test", exported)
    with pytest.raises(DatasetError, match=r"\(path-vqa-parquet\): 6761 rows, the official release has 6719"):
        check_official_count("path-vqa", tmp_path / "export", "test", samples)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_path_vqa_pickle_that_asks_for_code_is_refused(tmp_path):
    path = write_pvqa(tmp_path, "val", [])
    path.write_bytes(pickle.dumps([{"image": "x", "question": "q?", "answer": Evil()}]))
    with pytest.raises(DatasetError, match=r"val_qa.pkl: not a readable pickle of plain rows \(it asks for builtins.print"):
        load_dataset("path-vqa", tmp_path, "val")


def test_vqa_med_2019_test_images_unzipped_into_their_own_folder(tmp_path):
    base = tmp_path / "VQAMed2019Test"
    write_images(base / "VQAMed2019_Test_Images" / "VQAMed2019_Test_Images", "synpic1.jpg")
    (base / "VQAMed2019_Test_Questions_w_Ref_Answers.txt").write_text("synpic1|modality|is this a ct scan?|yes\n")
    [sample] = load_dataset("vqa-med-2019", tmp_path, "test")
    assert sample.image == str(base / "VQAMed2019_Test_Images" / "VQAMed2019_Test_Images" / "synpic1.jpg")


# ---------------------------------------------------------------- files that cannot be read

def layouts(tmp_path):
    """(dataset, split, annotation file, a good row) for every JSON-based loader."""
    write_images(tmp_path / "rad" / "images", "synpic1.jpg")
    write_images(tmp_path / "slake" / "imgs", "xmlab1/source.jpg")
    write_images(tmp_path / "silvar", "a.png")
    write_images(tmp_path / "cv", "img/2D/count/ade20k_1.png")
    write_images(tmp_path / "release" / "test" / "imgs_test_abnormal", "xmlab1.jpg")
    found = [
        ("vqa-rad", tmp_path / "rad", "test", tmp_path / "rad" / "testset.json",
         vqa_rad_row(1, "synpic1.jpg", "is this normal?", "yes", "CLOSED")),
        ("slake", tmp_path / "slake", "test", tmp_path / "slake" / "test.json", slake_row(1, "Is this a CT?", "Yes")),
        ("silvar-med", tmp_path / "silvar", "test", tmp_path / "silvar" / "test.json",
         {"image": "a.png", "question": "Q?", "reasoning": "R.", "answer": "yes"}),
        ("silvar-med", tmp_path / "release", "test", tmp_path / "release" / "test" / "dataset_unique_abnormal.json",
         {"img_name": "xmlab1.jpg", "question": "Q?", "answer": "No, the lung is clear."}),
        ("cv-bench", tmp_path / "cv", "test", tmp_path / "cv" / "test.jsonl", cv_bench_row(0, "(A)")),
    ]
    for _, _, _, path, good in found:
        write_rows(path, [good])
    return found


def write_rows(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        path.write_text(json.dumps(rows))


def test_every_loader_names_file_row_and_field_of_an_unreadable_row(tmp_path):
    for name, root, split, path, good in layouts(tmp_path):
        assert len(load_dataset(name, root, split)) == 1, name
        field = "answer"
        write_rows(path, [good, ["a list", "where an object belongs"], {k: v for k, v in good.items() if k != field},
                          {**good, field: {"text": "yes"}}])
        with pytest.raises(DatasetError) as error:
            load_dataset(name, root, split)
        message = str(error.value)
        assert f"{name}: 3 unusable row(s)" in message, name
        assert f"{path}, row 2: expected a JSON object, found list" in message, name
        assert f"{path}, row 3: missing field '{field}'" in message, name
        assert f"{path}, row 4: field '{field}' is not text: {{'text': 'yes'}}" in message, name


def test_a_file_that_is_not_json_or_not_a_list_is_one_clear_error(tmp_path):
    for name, root, split, path, good in layouts(tmp_path):
        if path.suffix == ".jsonl":
            continue
        path.write_text('[{"qid": 1,\n  "question": }]')
        with pytest.raises(DatasetError, match=rf"{path}: not valid JSON \(Expecting value at line 2, column 15\)"):
            load_dataset(name, root, split)
        path.write_text(json.dumps({"rows": [good]}))
        with pytest.raises(DatasetError, match=rf"{path}: expected a JSON list of rows, found dict"):
            load_dataset(name, root, split)


def test_optional_fields_that_are_not_text_are_bad_rows(tmp_path):
    write_images(tmp_path, "a.png")
    (tmp_path / "test.jsonl").write_text(json.dumps(
        {"image": "a.png", "question": "Q?", "reasoning": "R.", "answer": "yes", "modality": ["CT"]}) + "\n")
    with pytest.raises(DatasetError, match=r"test.jsonl, row 1: field 'modality' is not text: \['CT'\]"):
        load_dataset("silvar-med", tmp_path, "test")


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    write_images(tmp_path / "images", "synpic1.jpg")
    text = json.dumps([vqa_rad_row(1, "synpic1.jpg", "is this normal?", "yes", "CLOSED")])
    (tmp_path / "testset.json").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert len(load_dataset("vqa-rad", tmp_path, "test")) == 1


# ---------------------------------------------------------------- bytes that are not UTF-8

def test_jsonl_row_with_non_utf8_bytes_is_named_and_skippable(tmp_path):
    write_images(tmp_path, "a.png")
    good = json.dumps({"image": "a.png", "question": "Is there a lesion?", "reasoning": "R.", "answer": "no"})
    bad = good.replace("lesion", "l\xe9sion").encode("latin-1")  # é saved as Latin-1: byte 0xe9
    (tmp_path / "test.jsonl").write_bytes(good.encode() + b"\n" + bad + b"\n" + good.encode() + b"\n")
    with pytest.raises(DatasetError, match=r"test.jsonl, row 2: field 'question': byte 0xe9 at character 13 is not UTF-8"):
        load_dataset("silvar-med", tmp_path, "test")
    with pytest.warns(UserWarning, match=r"skipped 1 unusable row\(s\): .*test.jsonl, row 2: field 'question'"):
        assert [s.id for s in load_dataset("silvar-med", tmp_path, "test", skip_bad_rows=True)] == ["test-1", "test-3"]


def test_json_list_row_with_non_utf8_bytes_is_named_and_skippable(tmp_path):
    write_images(tmp_path / "images", "synpic1.jpg")
    rows = [vqa_rad_row(i, "synpic1.jpg", "is this normal?", "yes", "CLOSED") for i in (1, 2, 3)]
    rows[1]["answer"] = "right l\xf6be"
    (tmp_path / "testset.json").write_bytes(json.dumps(rows, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(DatasetError, match=r"testset.json, row 2: field 'answer': byte 0xf6 at character 8 is not UTF-8"):
        load_dataset("vqa-rad", tmp_path, "test")
    with pytest.warns(UserWarning, match=r"skipped 1 unusable row"):
        assert [s.id for s in load_dataset("vqa-rad", tmp_path, "test", skip_bad_rows=True)] == ["1", "3"]


def test_json_list_with_a_stray_byte_outside_any_row_names_line_and_offset(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "testset.json").write_bytes(b'[{"qid": 1},\n \xff{"qid": 2}]')
    with pytest.raises(DatasetError) as error:
        load_dataset("vqa-rad", tmp_path, "test", skip_bad_rows=True)
    assert str(error.value).startswith(f"{tmp_path / 'testset.json'}: byte 0xff at line 2, column 2 (byte offset 14) "
                                       "is not UTF-8 and lies outside any row's text")


def test_text_file_line_with_non_utf8_bytes_is_a_bad_row(tmp_path):
    write_images(tmp_path / "Val_images", "synpic1.jpg")
    (tmp_path / "All_QA_Pairs_val.txt").write_bytes(b"synpic1|is this a ct scan?|yes\nsynpic1|is this \x96 ct?|yes\n")
    with pytest.raises(DatasetError, match=r"All_QA_Pairs_val.txt, row 2: byte 0x96 at character 17 is not UTF-8"):
        load_dataset("vqa-med-2019", tmp_path, "val")
    with pytest.warns(UserWarning):
        assert len(load_dataset("vqa-med-2019", tmp_path, "val", skip_bad_rows=True)) == 1


def test_silvar_med_without_either_layout_names_both(tmp_path):
    with pytest.raises(DatasetError, match=r"silvar-med test: found neither .*test.jsonl \(or .json\), the paper's set "
                                           r"in our schema, nor the authors' release .*test/imgs_test_abnormal/"):
        load_dataset("silvar-med", tmp_path, "test")


def test_a_split_may_select_rows_like_a_python_slice():
    whole = load_dataset("synthetic", None, "train")
    held_out, kept = load_dataset("synthetic", None, "train[616:]"), load_dataset("synthetic", None, "train[:616]")
    assert [s.id for s in kept] + [s.id for s in held_out] == [s.id for s in whole]
    assert len(held_out) == 600 and [s.id for s in load_dataset("synthetic", None, "test[-5:]")] == \
        [s.id for s in load_dataset("synthetic", None, "test")][-5:]
    with pytest.raises(DatasetError, match=r"expected NAME or NAME\[START:STOP\]"):
        load_dataset("synthetic", None, "train[1:2:3]")
