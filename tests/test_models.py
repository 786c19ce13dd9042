"""Model loading, the tiny model, images, batched inputs and gradient checkpointing."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from src.models.inputs import ImageLoadError, build_prompt_batch, load_image, repeat_rows
from src.models.loading import enable_gradient_checkpointing, freeze_vision, load_base
from src.models.lora import LoRAConfig, inject_lora, lora_layers, mark_only_lora_as_trainable
from src.models.families import QWEN_SPECIAL_TOKENS as SPECIAL_TOKENS
from src.models.tiny import ensure_tiny
from tests.conftest import chat, random_image


def test_tiny_build_is_deterministic_and_small(tiny_path, tmp_path):
    again = ensure_tiny(seed=0, cache_dir=tmp_path)
    a, b = load_file(tiny_path / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tiny_path / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()
    other = load_file(ensure_tiny(seed=1, cache_dir=tmp_path) / "model.safetensors")
    # saved in the layout of the real checkpoint (model.layers.*, visual.*), as transformers writes it
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"], other["model.layers.0.self_attn.q_proj.weight"])
    params = sum(t.numel() for k, t in a.items())
    assert 2e5 < params < 5e6


def test_building_the_tiny_model_leaves_the_global_random_stream_alone(tiny_path):
    # else the first run that builds it samples differently from every later, identical run
    from transformers import AutoTokenizer

    from src.models.tiny import build_tiny_model

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(AutoTokenizer.from_pretrained(tiny_path), seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_has_qwen2_vl_tokens_template_and_architecture(tiny_policy):
    tok, config = tiny_policy.tokenizer, tiny_policy.model.config
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(SPECIAL_TOKENS)))  # contiguous, in Qwen2-VL's order
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert type(tiny_policy.model).__name__ == "Qwen2VLForConditionalGeneration"
    text = tok.apply_chat_template(chat("Is there a lesion?", system="S"), add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>Is there a lesion?<|im_end|>\n<|im_start|>assistant\n")
    # special tokens are single ids, and round-trip through decode
    encoded = tok("<|im_start|>assistant\n<think>a</think><|im_end|>", add_special_tokens=False).input_ids
    assert encoded[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.decode(encoded) == "<|im_start|>assistant\n<think>a</think><|im_end|>"


def test_tiny_generates_and_round_trips_through_save_pretrained(tiny_policy, tmp_path):
    batch = build_prompt_batch(tiny_policy.tokenizer, tiny_policy.image_processor, [chat("Is there a lesion?")],
                               [random_image(112, 112)])
    with torch.no_grad():
        out = tiny_policy.model.generate(**batch.model_kwargs, max_new_tokens=8, do_sample=False)
    assert out.shape == (1, batch.input_ids.shape[1] + 8) or out.shape[1] < batch.input_ids.shape[1] + 8
    tiny_policy.model.save_pretrained(tmp_path)
    tiny_policy.tokenizer.save_pretrained(tmp_path)
    tiny_policy.image_processor.save_pretrained(tmp_path)
    reloaded = load_base(str(tmp_path))
    with torch.no_grad():
        again = reloaded.model.eval().generate(**batch.model_kwargs, max_new_tokens=8, do_sample=False)
    assert torch.equal(out, again)


def test_cpu_loads_fp32_with_sdpa(tiny_policy):
    assert tiny_policy.model.dtype == torch.float32
    assert tiny_policy.model.config._attn_implementation == "sdpa"


def test_flash_attention_only_where_flash_attn_can_run(tmp_path, monkeypatch):
    """A working flash-attn (a stand-in module) is taken for bf16 / fp16 on an Ampere-or-later GPU; fp32
    (whose q/k/v its kernels refuse), an older GPU, a CPU and a build that does not import get sdpa."""
    import sys
    import types

    from src.models.loading import attention_implementation

    gpu, capability = torch.device("cuda", 1), {"cuda:1": (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability[str(device)])
    flash_attn = types.ModuleType("flash_attn")
    flash_attn.flash_attn_func = flash_attn.flash_attn_varlen_func = lambda *args, **kwargs: None
    monkeypatch.setitem(sys.modules, "flash_attn", flash_attn)
    assert attention_implementation(gpu, torch.bfloat16) == "flash_attention_2"
    assert attention_implementation(gpu, torch.float16) == "flash_attention_2"
    assert attention_implementation(gpu, torch.float32) == "sdpa"
    assert attention_implementation(torch.device("cpu"), torch.bfloat16) == "sdpa"
    capability["cuda:1"] = (7, 5)  # Turing: flash-attn 2 has no kernels for it
    assert attention_implementation(gpu, torch.bfloat16) == "sdpa"
    capability["cuda:1"] = (8, 0)

    # installed, but built against another torch: its import fails, and a warning says so
    package = tmp_path / "flash_attn"
    package.mkdir()
    (package / "__init__.py").write_text('raise ImportError("flash_attn_2_cuda.so: undefined symbol: _ZN3c10")')
    monkeypatch.delitem(sys.modules, "flash_attn")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning, match="flash-attn does not import .ImportError: flash_attn_2_cuda.so: undefined"):
        assert attention_implementation(gpu, torch.bfloat16) == "sdpa"
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # not installed: sdpa, and nothing to warn about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert attention_implementation(gpu, torch.bfloat16) == "sdpa"


def test_unknown_hub_id_offline_says_how_to_use_a_local_copy():
    with pytest.raises(OSError, match="--model /path/to"):
        load_base("nonexistent-org/nonexistent-qwen2-vl")


def test_an_adapter_on_a_local_base_loads_from_any_working_directory(tiny_path, tmp_path, monkeypatch):
    from src.models.loading import base_model_name, load_policy
    from src.models.lora import save_adapter

    monkeypatch.chdir(tiny_path.parent)
    base = base_model_name(tiny_path.name)  # given relative to the training run's working directory
    assert base == str(tiny_path.resolve())
    policy = load_base(tiny_path.name, device=torch.device("cpu"))
    config = LoRAConfig(r=2, alpha=4.0, dropout=0.0, targets=("q_proj",))
    inject_lora(policy.model, config)
    save_adapter(policy.model, tmp_path / "adapter", config, base)
    save_adapter(policy.model, tmp_path / "moved", config, "runs/gone/checkpoint-600")  # an older, relative record
    monkeypatch.chdir(tmp_path)
    assert sum(1 for _ in lora_layers(load_policy("adapter", device=torch.device("cpu")).model)) > 0
    with pytest.raises(FileNotFoundError, match="adapter moved: its base model runs/gone/checkpoint-600"):
        load_policy("moved", device=torch.device("cpu"))


def test_batch_with_different_image_sizes_pairs_each_row_with_its_own_image(tiny_policy):
    tok, ip, model = tiny_policy.tokenizer, tiny_policy.image_processor, tiny_policy.model
    convs = [chat("Is there a lesion?"), chat("How many lesions are there in the organ?")]
    images = [random_image(112, 112, seed=1), random_image(60, 200, seed=2)]  # 16 and 14 image tokens
    batch = build_prompt_batch(tok, ip, convs, images)
    assert batch.image_grid_thw.tolist() == [[1, 8, 8], [1, 4, 14]]
    assert batch.mm_token_type_ids.sum(1).tolist() == [16, 14]
    assert batch.attention_mask[0, 0] == 0 and batch.attention_mask[:, -1].all()  # left padding
    with torch.no_grad():
        together = model(**batch.model_kwargs).logits
        for i in range(2):
            alone = build_prompt_batch(tok, ip, [convs[i]], [images[i]])
            logits = model(**alone.model_kwargs).logits[0]
            torch.testing.assert_close(together[i, -logits.shape[0]:], logits, rtol=1e-4, atol=1e-4)
        # swapping the images changes row 0: the pairing is by row, not by accident of equal sizes
        swapped = build_prompt_batch(tok, ip, [convs[0]], [images[1]])
        assert (model(**swapped.model_kwargs).logits[0, -1] - together[0, -1]).abs().max() > 1e-3


def test_repeat_rows_keeps_each_copy_with_its_prompts_image(tiny_policy):
    tok, ip, model = tiny_policy.tokenizer, tiny_policy.image_processor, tiny_policy.model
    batch = build_prompt_batch(tok, ip, [chat("Is there a lesion?"), chat("Is it on the left?")],
                               [random_image(112, 112, 1), random_image(84, 140, 2)])
    repeated = repeat_rows(batch, 3)  # rows 0,1,2 = prompt 0; rows 3,4,5 = prompt 1
    with torch.no_grad():
        base, rep = model(**batch.model_kwargs).logits, model(**repeated.model_kwargs).logits
    for row in range(6):
        torch.testing.assert_close(rep[row], base[row // 3], rtol=1e-4, atol=1e-4)


def test_gradient_checkpointing_with_lora_gives_the_same_gradients(tiny_path):
    grads = []
    for checkpointing in (False, True):
        policy = load_base(str(tiny_path))
        model = policy.model
        freeze_vision(model)
        torch.manual_seed(2)  # same A in both runs
        inject_lora(model, LoRAConfig(dropout=0.0))
        mark_only_lora_as_trainable(model)
        torch.manual_seed(3)
        for layer in lora_layers(model):
            torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
        if checkpointing:
            enable_gradient_checkpointing(model)
        model.train()
        batch = build_prompt_batch(policy.tokenizer, policy.image_processor, [chat("Is there a lesion?")],
                                   [random_image(112, 112)])
        model(**batch.model_kwargs).logits.square().mean().backward()
        grads.append([layer.lora_A.weight.grad.clone() for layer in lora_layers(model)])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-7)
    assert all(g.abs().sum() > 0 for g in grads[1])


def test_freeze_vision_freezes_tower_and_merger(tiny_policy):
    freeze_vision(tiny_policy.model)
    assert not any(p.requires_grad for p in tiny_policy.model.model.visual.parameters())
    assert all(p.requires_grad for p in tiny_policy.model.model.language_model.parameters())


# ---- images -------------------------------------------------------------------------------------

def test_missing_and_corrupt_images_name_the_file(tmp_path):
    with pytest.raises(ImageLoadError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    corrupt = tmp_path / "scan.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageLoadError, match="scan.jpg"):
        load_image(corrupt)
    buffer = io.BytesIO()
    random_image(40, 40).save(buffer, format="PNG")
    truncated = buffer.getvalue()[:200]
    with pytest.raises(ImageLoadError, match="row 7"):
        load_image(truncated, name="path-vqa test row 7")


def test_grayscale_16bit_and_exif_rotation_are_normalised(tmp_path):
    gray = Image.new("L", (30, 20), 128)
    assert load_image(_png(gray, tmp_path / "g.png")).mode == "RGB"
    deep = Image.new("I;16", (30, 20))
    deep.putpixel((0, 0), 4000)
    rgb = load_image(_png(deep, tmp_path / "d.png"))
    assert rgb.getpixel((0, 0)) == (255, 255, 255) and rgb.getpixel((1, 1)) == (0, 0, 0)
    # EXIF orientation 6 = "rotate 90 degrees clockwise to display": a 30x20 file shows as 20x30
    photo = Image.new("RGB", (30, 20), (10, 20, 30))
    exif = photo.getexif()
    exif[0x0112] = 6
    path = tmp_path / "r.jpg"
    photo.save(path, exif=exif)
    assert load_image(path).size == (20, 30)


def _png(image: Image.Image, path):
    image.save(path)
    return path


def _build_tiny(cache_dir: str, queue) -> None:
    queue.put(str(ensure_tiny(seed=3, cache_dir=cache_dir)))


def test_concurrent_builds_of_the_tiny_model_share_one_result(tmp_path):
    """Two processes (as torchrun ranks do) asking for the same uncached model both get it, built once."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_build_tiny, args=(str(tmp_path), queue)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert [w.exitcode for w in workers] == [0, 0]
    paths = {queue.get(timeout=5) for _ in workers}
    assert len(paths) == 1
    built = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert [p.name for p in built] == [Path(paths.pop()).name]
    assert (built[0] / "model.safetensors").is_file()
