"""Every supported family through our own code, against that family's transformers class on the same weights.

Each family's tiny model (src/models/tiny.py: tiny-qwen2-vl, tiny-qwen2.5-vl, tiny-qwen3-vl) is built so
that a mistake shows: untied output embeddings with logits of a few units, every norm weight and bias
moved off 1 / 0, and the family's own features on (Qwen2.5-VL window attention beside a full-attention
block; Qwen3-VL q/k norm, interleaved M-RoPE sections, DeepStack into two of three language layers).
The batch is three prompts with images of three sizes (so three prompt lengths: left padding), G = 2,
and where decoding is compared, a rule on the logits (`end_sometimes`) that makes rows end at different
steps. Every check is fp32 on the CPU.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from benchmarks.bench_step import with_completions
from src.data.prompts import TRAINING_PROMPTS
from src.grpo.step import completion_logprobs
from src.models.encoded_prompts import encode_prompts
from src.models.engine import token_ids
from src.models.families import QWEN3_VL, UnsupportedModel, family_of
from src.models.generation import prompt_batch, sample_groups
from src.models.inputs import repeat_rows
from src.models.loading import load_base, load_policy
from src.models.lora import (
    LoRAConfig, disabled_adapters, inject_lora, load_adapter, lora_layers, mark_only_lora_as_trainable, save_adapter,
)
from src.models.mrope import prompt_positions, rotary_of
from src.models.tiny import TINY_MODELS, ensure_tiny
from tests.test_engine import Replay, sample

# tiny-qwen2-vl, tiny-qwen2.5-vl, tiny-qwen3-vl. Qwen2-VL's engine, shared-prefix forward, LoRA and PEFT
# files have their own tests on `tiny` (tests/test_engine.py, test_shared_prefix.py, test_lora.py,
# test_trainer.py), so make test runs these on the two other families and `make test-benchmarks` on all three.
NAMES = [pytest.param(name, marks=pytest.mark.benchmark) if TINY_MODELS[name].family.model_type == "qwen2_vl" else name
         for name in TINY_MODELS if name != "tiny"]
PROMPTS = ("explanation", "short", "open-ended")
SIZES = ((112, 112), (56, 168), (84, 112))   # (height, width): 16, 12, 12 image tokens at 28 px; 16, 10, 12 at 32


class TinyPaths:
    """name -> the tiny model's directory, built on first use (once per session: ensure_tiny caches it)."""

    def __getitem__(self, name: str):
        return ensure_tiny(name=name)


@pytest.fixture(scope="session")
def family_paths(_isolated_cache):
    return TinyPaths()


@pytest.fixture(params=NAMES)
def policy(request, family_paths):
    """A fresh fp32 CPU copy of one family's tiny model."""
    policy = load_policy(str(family_paths[request.param]), device=torch.device("cpu"))
    policy.model.eval()
    return policy


def three_prompts(policy):
    samples = [sample(i, size, words=i) for i, size in enumerate(SIZES)]
    return prompt_batch(policy, samples, [TRAINING_PROMPTS[name] for name in PROMPTS])


def end_sometimes(policy, every: int = 6):
    """Wherever the lm_head module runs (both samplers): at a position whose likeliest token has an id
    divisible by `every`, <|im_end|> becomes the likeliest by one logit. Rows then end at different
    steps, the same in every sampler (the rule reads only the logits). Returns the hook."""
    end = torch.tensor([policy.tokenizer.convert_tokens_to_ids("<|im_end|>")])

    def hook(module, args, out):
        lift = out.amax(-1, keepdim=True) + 1.0 - out.index_select(-1, end)                    # [..., 1]
        return out.index_add(-1, end, lift * (out.argmax(-1, keepdim=True) % every == 0))

    return policy.model.lm_head.register_forward_hook(hook)


def test_each_tiny_model_is_its_family_with_its_features_on(policy):
    model, family, tokenizer = policy.model, family_of(policy.model), policy.tokenizer
    assert type(model).__name__ == family.model_class
    assert not model.config.tie_word_embeddings
    assert not torch.equal(model.lm_head.weight, model.get_input_embeddings().weight)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")]
    assert norms and all(not torch.any(m.weight == 1) for m in norms)
    biases = [m.bias for m in model.modules() if isinstance(getattr(m, "bias", None), torch.nn.Parameter)]
    assert biases and all(not torch.any(b == 0) for b in biases)
    attention = model.model.language_model.layers[0].self_attn
    assert hasattr(attention, "q_norm") == family.qk_norm and (attention.q_proj.bias is not None) == family.qkv_bias
    vision = model.config.vision_config
    if family.name == "Qwen2.5-VL":
        assert vision.fullatt_block_indexes == [1] and vision.depth == 3          # windows in blocks 0 and 2
        # 112 px = 4 x 4 image tokens in windows of 56 px = 2 x 2: four windows
        assert vision.window_size // vision.spatial_merge_size // vision.patch_size == 2
    if family.deepstack:
        assert vision.deepstack_visual_indexes == [0, 1] and model.config.text_config.num_hidden_layers == 3
    assert policy.image_processor.patch_size == family.patch_size
    # the added tokens at consecutive ids in the published order; Qwen3-VL's <think> is one (non-special) token
    ids = token_ids(tokenizer, family.added_tokens)
    assert ids == list(range(ids[0], ids[0] + len(family.added_tokens)))
    think = tokenizer("<think>yes</think>", add_special_tokens=False)["input_ids"]
    assert (len(think) == 3) == ("<think>" in family.added_tokens)
    assert tokenizer.decode(think, skip_special_tokens=True) == "<think>yes</think>"
    assert {key: getattr(model.generation_config, key) for key in family.sampling} == family.sampling


def test_positions_and_rotary_are_transformers(policy):
    model = policy.model
    batch = three_prompts(policy)
    expected, deltas = model.model.get_rope_index(batch.input_ids, mm_token_type_ids=batch.mm_token_type_ids,
                                                   image_grid_thw=batch.image_grid_thw,
                                                   attention_mask=batch.attention_mask)
    positions, next_position = prompt_positions(batch.input_ids, batch.attention_mask, batch.image_grid_thw,
                                                model.config.image_token_id, 2)
    real = batch.attention_mask.bool()
    assert len(set(real.sum(1).tolist())) == 3                       # three lengths: two rows left-padded
    assert torch.equal(positions[:, real], expected[:, real])
    assert torch.equal(next_position, real.sum(1) + deltas.squeeze(1))
    wide = positions + torch.arange(3).view(3, 1, 1) * 7             # t, h, w apart: every axis shows
    expected_cos, expected_sin = model.model.language_model.rotary_emb(torch.zeros(1), wide)
    cos, sin = rotary_of(model).cos_sin(wide, torch.float32)
    assert torch.equal(cos, expected_cos) and torch.equal(sin, expected_sin)


def test_encoded_inputs_are_what_the_pixel_path_feeds_the_language_model(policy):
    """Hidden states from EncodedPrompts.inputs (image features, DeepStack included) equal transformers'
    forward from pixel_values."""
    model = policy.model
    batch = three_prompts(policy)
    encoded = encode_prompts(model, batch)
    assert all(len(layers) == (2 if family_of(model).deepstack else 0) for layers in encoded.deepstack_features)
    ids = torch.randint(0, 700, (6, 5), generator=torch.Generator().manual_seed(0))              # [N, L]
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2] * 3, dtype=torch.bool)                        # [N, L]
    rows = repeat_rows(batch, 2)
    with torch.no_grad():
        expected = model.model(**with_completions(rows, ids, mask), use_cache=False).last_hidden_state
        hidden = model.model.language_model(**encoded.inputs(model, [0, 0, 1, 1, 2, 2], ids, mask),
                                            use_cache=False).last_hidden_state
    real = torch.cat([rows.attention_mask.bool(), mask], 1)                                        # [N, P+L]
    torch.testing.assert_close(hidden[real], expected[real], rtol=0, atol=1e-5)


def test_greedy_engine_completions_are_generates_token_for_token(policy):
    end_sometimes(policy)
    batch = three_prompts(policy)
    encoded = encode_prompts(policy.model, batch)
    ours = sample_groups(policy, batch, encoded, group_size=2, max_new_tokens=20, temperature=0.0)
    reference = sample_groups(policy, batch, encoded, group_size=2, max_new_tokens=20, temperature=0.0,
                              engine_name="hf")
    lengths = ours.lengths.tolist()
    assert len(set(lengths)) > 1 and len(set(ours.ids[::2, 0].tolist())) > 1   # ragged; the prompts differ
    assert torch.equal(ours.ids, reference.ids)
    assert torch.equal(ours.mask, reference.mask) and ours.texts == reference.texts


def test_the_cuda_graph_paths_state_handling_gives_the_eager_tokens(policy, monkeypatch):
    """The captured decode step's path on the CPU (as tests/test_engine.py runs it for Qwen2-VL): a warm-up
    step on unset state, then attention over the whole static cache, masked."""
    from src.models import engine

    end_sometimes(policy)
    encoded = encode_prompts(policy.model, three_prompts(policy))
    eager = engine.generate(policy.model, policy.tokenizer, encoded, group_size=2, max_new_tokens=12, temperature=0)
    monkeypatch.setattr(engine, "captures", lambda device: True)
    monkeypatch.setattr(engine, "CapturedStep", Replay)
    captured = engine.generate(policy.model, policy.tokenizer, encoded, group_size=2, max_new_tokens=12,
                               temperature=0)
    assert captured.decoding == "cuda graph" and torch.equal(captured.ids, eager.ids)
    torch.testing.assert_close(captured.logprobs, eager.logprobs, rtol=0, atol=1e-5)


def test_prompt_lengths_are_counted_as_the_batch_holds_them(policy):
    """Before any weights load, src/models/prompt_length.py counts a prompt's tokens with the family's
    tokenizer and image processor (16 px patches for Qwen3-VL): the counts of the built batch."""
    from src.models.prompt_length import PromptLimit

    limit = PromptLimit.from_model(policy.name)
    batch = three_prompts(policy)
    texts = limit.prompt_tokens(["Is there a lesion" + " on the left side" * i + "?" for i in range(3)],
                                TRAINING_PROMPTS["explanation"])
    images = [limit.image_tokens(width, height) for height, width in SIZES]
    assert images == (batch.input_ids == policy.model.config.image_token_id).sum(1).tolist()
    assert texts[0] + images[0] == batch.attention_mask[0].sum()        # row 0 has the explanation prompt


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def test_training_log_probs_and_lora_gradients_are_transformers_forward(policy):
    """Sampled completions (G = 2, ragged): log pi from the shared-prefix and the unshared training forward
    equal log_softmax of the transformers forward from pixel values within 1e-5, and so do the LoRA
    gradients of a weighted sum of them (B != 0, so A and B both get gradients)."""
    model = policy.model
    hook = end_sometimes(policy)
    batch = three_prompts(policy)
    encoded = encode_prompts(model, batch)
    torch.manual_seed(0)
    completions = sample_groups(policy, batch, encoded, group_size=2, max_new_tokens=8, temperature=1.0)
    hook.remove()  # the training forward reads lm_head's weight, not the module: compare the model itself
    ids, mask = completions.ids, completions.mask                                                  # [N, L]
    assert len(set(mask.sum(1).tolist())) > 1
    inject_lora(model, LoRAConfig(dropout=0.0))
    mark_only_lora_as_trainable(model)
    for layer in lora_layers(model):
        torch.nn.init.normal_(layer.lora_B.weight, std=0.05)
    weights = torch.linspace(-1.0, 1.0, ids.numel()).view_as(ids) * mask                          # [N, L]
    rows, prompt_len = repeat_rows(batch, 2), batch.input_ids.shape[1]
    prompt_index = [0, 0, 1, 1, 2, 2]

    def pass_(compute):
        model.zero_grad(set_to_none=True)
        logp = compute()                                                                           # [N, L]
        (logp * weights).sum().backward()
        return logp.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    def transformers_forward():
        logits = model(**with_completions(rows, ids, mask), use_cache=False).logits[:, prompt_len - 1:-1]
        return torch.log_softmax(logits.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)

    reference_logp, reference_grads = pass_(transformers_forward)
    for sharing in (True, False):
        logp, grads = pass_(lambda: completion_logprobs(model, encoded, prompt_index, ids, mask,
                                                        prefix_sharing=sharing))
        assert relative_error(logp[mask], reference_logp[mask]) < 1e-5, sharing
        assert len(grads) == 2 * 4 * model.config.text_config.num_hidden_layers
        for ours, theirs in zip(grads, reference_grads):
            assert theirs.abs().max() > 0
            assert relative_error(ours, theirs) < 1e-5, sharing


def test_a_saved_adapter_loads_in_peft_and_merges_into_the_familys_class(policy, tmp_path):
    from peft import PeftModel

    from src.models.export import export_merged

    family, path = family_of(policy.model), policy.name
    config = LoRAConfig(r=4, alpha=16, dropout=0.0)
    inject_lora(policy.model, config)
    for layer in lora_layers(policy.model):
        torch.nn.init.normal_(layer.lora_B.weight, std=0.2)
    batch = three_prompts(policy)
    with torch.no_grad():
        ours = policy.model(**batch.model_kwargs).logits
        with disabled_adapters(policy.model):
            base = policy.model(**batch.model_kwargs).logits
    assert (ours - base).abs().max() > 1e-2                             # the adapter changes the logits
    save_adapter(policy.model, tmp_path / "adapter", config, base_model=path)
    peft_model = PeftModel.from_pretrained(family.model_cls().from_pretrained(path), tmp_path / "adapter").eval()
    merged_dir = export_merged(str(tmp_path / "adapter"), tmp_path / "merged", dtype=torch.float32)
    merged = family.model_cls().from_pretrained(merged_dir).eval()
    fresh = load_base(path).model.eval()
    assert load_adapter(fresh, tmp_path / "adapter") == config
    with torch.no_grad():
        for other, tolerance in ((peft_model, 1e-5), (fresh, 1e-5), (merged, 1e-4)):  # merging rounds W0 + s B A
            torch.testing.assert_close(other(**batch.model_kwargs).logits, ours, rtol=tolerance, atol=tolerance)
    assert json.loads((merged_dir / "config.json").read_text())["model_type"] == family.model_type


def test_an_unsupported_model_type_is_refused_before_any_weights_load(family_paths, tmp_path, monkeypatch, capsys):
    import train
    from transformers import PreTrainedModel

    from benchmarks.real_size import write_dataset
    from src.cli.errors import run_main
    from src.models.prompt_length import PromptLimit

    folder = tmp_path / "llava"
    shutil.copytree(family_paths["tiny-qwen3-vl"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, model_type="llava")))
    (folder / "model.safetensors").write_bytes(b"not weights")
    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("weights read")))
    refusal = ("model_type 'llava' is not supported; supported model types: qwen2_vl (Qwen2-VL), "
               "qwen2_5_vl (Qwen2.5-VL), qwen3_vl (Qwen3-VL)")
    for attempt in (lambda: load_base(str(folder)), lambda: PromptLimit.from_model(str(folder))):
        with pytest.raises(UnsupportedModel) as refused:
            attempt()
        assert str(refused.value) == f"{folder} (config.json): {refusal}"
    write_dataset(tmp_path / "data")  # a small reasoning set: the model is checked after the dataset
    with pytest.raises(SystemExit) as stop:
        run_main(lambda: train.main(["--method", "rarl", "--model", str(folder), "--dataset", "silvar-med",
                                     "--data-root", str(tmp_path / "data"), "--output-dir", str(tmp_path / "run"),
                                     "--device", "cpu"]))
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: --model {folder}: {refusal}"


def test_the_checkpoints_sampling_settings_reach_neither_sampler(family_paths, tmp_path):
    """tiny-qwen3-vl's generation_config.json carries Qwen3-VL's sampling settings (temperature 0.7, top_k
    20, top_p 0.8); a copy adds a repetition penalty of 3. Greedy completions of both samplers on it are
    those of the checkpoint without any of them (while generate honouring them gives others), and
    sampling at temperature 1 draws first tokens outside the top 20."""
    original = family_paths["tiny-qwen3-vl"]
    settings = json.loads((original / "generation_config.json").read_text())
    assert {k: settings[k] for k in QWEN3_VL.sampling} == QWEN3_VL.sampling
    folders = {name: tmp_path / name for name in ("with", "without")}
    for name, folder in folders.items():
        shutil.copytree(original, folder)
        written = dict(settings, repetition_penalty=3.0) if name == "with" else \
            {k: v for k, v in settings.items() if k not in QWEN3_VL.sampling}
        (folder / "generation_config.json").write_text(json.dumps(written))
    policies = {name: load_policy(str(folder), device=torch.device("cpu")) for name, folder in folders.items()}
    policy = policies["with"]
    batch = three_prompts(policy)
    encoded = encode_prompts(policy.model, batch)
    greedy = {(name, engine): sample_groups(policies[name], batch, encoded, group_size=1, max_new_tokens=12,
                                            temperature=0.0, engine_name=engine).ids
              for name in folders for engine in ("engine", "hf")}
    assert all(torch.equal(ids, greedy["without", "hf"]) for ids in greedy.values())
    with torch.no_grad():
        honoured = policy.model.generate(**batch.model_kwargs, max_new_tokens=12, do_sample=False)
        plain = policy.model.generate(**batch.model_kwargs, max_new_tokens=12, do_sample=False, repetition_penalty=1.0)
    assert not torch.equal(honoured, plain)                                      # the settings would matter
    torch.manual_seed(0)
    drawn = sample_groups(policy, batch, encoded, group_size=8, max_new_tokens=1, temperature=1.0, engine_name="hf")
    with torch.no_grad():
        first = policy.model(**batch.model_kwargs).logits[:, -1].repeat_interleave(8, 0)             # [N, V]
    rank = (first > first.gather(1, drawn.ids[:, :1])).sum(1)                                        # [N], 0 = top
    assert rank.max() >= QWEN3_VL.sampling["top_k"]
    assert policy.model.generation_config.repetition_penalty == 3.0             # the file is left as it is


@pytest.mark.parametrize("name", NAMES)
def test_a_train_py_run_samples_what_it_trains_on(name, tmp_path):
    """train.py --method rarl for 2 steps, fp32 on the CPU: each step's sampler log-probs are the update's
    forward (rollout_logp_diff, a token mean of |difference|) within 1e-4. (--resume and evaluate.py on
    each family: `benchmarks.real_size --model tiny-qwen3-vl`, a benchmark test.)"""
    import train
    from src.grpo.run_log import read_metrics

    out = tmp_path / "run"
    train.main(["--method", "rarl", "--model", name, "--dataset", "synthetic", "--samples", "8",
                "--prompts-per-step", "2", "--group-size", "2", "--mini-batch-size", "2",
                "--max-completion-length", "12",
                "--max-steps", "2", "--save-steps", "2", "--no-gradient-checkpointing", "--device", "cpu",
                "--dtype", "float32", "--output-dir", str(out)])
    metrics = read_metrics(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(0 < m["rollout_logp_diff"] < 1e-4 for m in metrics), [m["rollout_logp_diff"] for m in metrics]
    assert json.loads((out / "checkpoint-2" / "adapter_config.json").read_text())["base_model_name_or_path"] == name
