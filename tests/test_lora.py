"""Hand-written LoRA: exactness at init, merge/unmerge, the disabled reference, trainable set, PEFT interop."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.bench_step import merged_adapters
from src.models.inputs import build_prompt_batch
from src.models.lora import (
    LoRAConfig, LoRALinear, disabled_adapters, inject_lora, load_adapter, lora_layers, lora_state_dict,
    mark_only_lora_as_trainable, save_adapter,
)
from tests.conftest import chat, random_image


def randomise_b(model: nn.Module, seed: int = 1) -> None:
    """B starts at zero; give it values so that the adapter actually changes the output."""
    torch.manual_seed(seed)
    for layer in lora_layers(model):
        nn.init.normal_(layer.lora_B.weight, std=0.2)


def test_zero_b_equals_base_layer():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    x = torch.randn(5, 16)
    expected = base(x)
    layer = LoRALinear(base, r=4, alpha=8)
    assert torch.equal(layer(x), expected)  # B = 0: bit-identical, not merely close
    assert layer.lora_A.weight.abs().sum() > 0  # A is Kaiming-initialised, not zero


def test_forward_is_w0x_plus_scaled_bax():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 12), r=4, alpha=8)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(5, 16)
    w = layer.base_layer.weight + (8 / 4) * layer.lora_B.weight @ layer.lora_A.weight
    torch.testing.assert_close(layer(x), x @ w.T + layer.base_layer.bias, rtol=1e-5, atol=1e-5)


def test_merge_equals_unmerged_and_unmerge_restores_weights():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 12), r=4, alpha=8)
    nn.init.normal_(layer.lora_B.weight)
    original = layer.base_layer.weight.clone()
    x = torch.randn(5, 16)
    unmerged = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-5)
    layer.merge()  # idempotent: merging twice must not add B A twice
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, original, rtol=0, atol=1e-6)


def test_injection_targets_language_model_attention_only(tiny_policy):
    wrapped = inject_lora(tiny_policy.model, LoRAConfig())
    layers = tiny_policy.model.config.text_config.num_hidden_layers
    assert len(wrapped) == 4 * layers
    assert all(name.startswith("model.language_model.") for name in wrapped)
    assert not any(isinstance(m, LoRALinear) for m in tiny_policy.model.model.visual.modules())


def test_a_target_that_names_no_linear_layer_is_refused_before_anything_is_wrapped(tiny_policy):
    with pytest.raises(ValueError, match=r"\['k_prj'\] name no nn.Linear under 'model.language_model'; "
                                         r"its linear layers: .*k_proj"):
        inject_lora(tiny_policy.model, LoRAConfig(targets=("q_proj", "k_prj")))
    assert not any(True for _ in lora_layers(tiny_policy.model))  # q_proj was not wrapped either
    with pytest.raises(ValueError, match=r"\[\] name no nn.Linear"):
        inject_lora(tiny_policy.model, LoRAConfig(targets=()))

def logits_of(policy, question="Is there a lesion?", seed=0):
    batch = build_prompt_batch(policy.tokenizer, policy.image_processor, [chat(question)], [random_image(112, 112, seed)])
    with torch.no_grad():
        return policy.model(**batch.model_kwargs).logits


def test_disabled_adapters_restore_base_logits(tiny_policy):
    base = logits_of(tiny_policy)
    inject_lora(tiny_policy.model, LoRAConfig(dropout=0.0))
    randomise_b(tiny_policy.model)
    adapted = logits_of(tiny_policy)
    assert (adapted - base).abs().max() > 1e-2  # the adapter does change the model ...
    with disabled_adapters(tiny_policy.model):
        assert torch.equal(logits_of(tiny_policy), base)  # ... and disabling it gives the base exactly
    torch.testing.assert_close(logits_of(tiny_policy), adapted, rtol=0, atol=0)


def test_merged_model_matches_unmerged_model(tiny_policy):
    inject_lora(tiny_policy.model, LoRAConfig(dropout=0.0))
    randomise_b(tiny_policy.model)
    unmerged = logits_of(tiny_policy)
    with merged_adapters(tiny_policy.model):
        torch.testing.assert_close(logits_of(tiny_policy), unmerged, rtol=1e-4, atol=1e-4)
        with pytest.raises(RuntimeError):  # disabling merged adapters would silently give the wrong reference
            with disabled_adapters(tiny_policy.model):
                pass
    torch.testing.assert_close(logits_of(tiny_policy), unmerged, rtol=1e-5, atol=1e-5)


def test_merged_adapters_restore_bf16_base_weights_bit_for_bit():
    torch.manual_seed(0)
    model = nn.Sequential(LoRALinear(nn.Linear(64, 64).to(torch.bfloat16), r=8, alpha=16))
    nn.init.normal_(model[0].lora_B.weight, std=0.2)
    base = model[0].base_layer.weight.detach().clone()
    model[0].merge()
    model[0].unmerge()
    assert not torch.equal(model[0].base_layer.weight, base)  # the trap: in bf16 (W + d) - d != W
    model[0].base_layer.weight.data.copy_(base)
    with merged_adapters(model):
        assert model[0].merged and not torch.equal(model[0].base_layer.weight, base)
    assert torch.equal(model[0].base_layer.weight, base) and not model[0].merged


def test_only_lora_parameters_receive_gradients(tiny_policy):
    model = tiny_policy.model
    inject_lora(model, LoRAConfig())
    trainable = mark_only_lora_as_trainable(model)
    assert trainable == sum(v.numel() for v in lora_state_dict(model).values())
    batch = build_prompt_batch(tiny_policy.tokenizer, tiny_policy.image_processor, [chat("Is it on the left?")],
                               [random_image(112, 112)])
    model.train()
    model(**batch.model_kwargs).logits.square().mean().backward()
    for name, p in model.named_parameters():
        if ".lora_" in name:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    # with B = 0 the gradient reaches B (dL/dB = g (A x)^T) but not A (dL/dA = B^T g ... = 0)
    assert all(layer.lora_B.weight.grad.abs().sum() > 0 for layer in lora_layers(model))
    assert all(layer.lora_A.weight.grad.abs().sum() == 0 for layer in lora_layers(model))


def test_peft_loads_our_adapter_with_identical_logits(tiny_policy, tiny_path, tmp_path):
    from peft import PeftModel

    from src.models.loading import load_base

    config = LoRAConfig(r=4, alpha=16, dropout=0.0)
    inject_lora(tiny_policy.model, config)
    randomise_b(tiny_policy.model)
    ours = logits_of(tiny_policy)
    save_adapter(tiny_policy.model, tmp_path, config, base_model=str(tiny_path))

    peft_model = PeftModel.from_pretrained(load_base(str(tiny_path)).model, tmp_path).eval()
    batch = build_prompt_batch(tiny_policy.tokenizer, tiny_policy.image_processor, [chat("Is there a lesion?")],
                               [random_image(112, 112)])
    with torch.no_grad():
        theirs = peft_model(**batch.model_kwargs).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)

    # and back: our loader reads the directory into a fresh base model
    fresh = load_base(str(tiny_path))
    fresh.model.eval()
    assert load_adapter(fresh.model, tmp_path) == config
    torch.testing.assert_close(logits_of(fresh), ours, rtol=1e-5, atol=1e-5)
