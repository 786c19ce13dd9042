"""bf16 training that updates like fp32: LoRA factors in fp32 under a bf16 base, fp32 master weights for
full fine-tuning, `--dtype`, and the same checks through train.py.

Why it matters: AdamW moves a weight by about lr per step, and bf16 keeps 8 significant bits. At
|w| ~ 0.03 (a LoRA A entry of a 64-wide layer) bf16's spacing is 2.4e-4, so a bf16 weight stepped at
lr 1e-5 rounds back to itself: it never learns. The controls below show that failure, so the tests
would catch the factors (or the -full methods' weights) going back to bf16.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from src.grpo.config import ModelConfig, RunConfig, TrainConfig
from src.grpo.optim import MasterWeightAdamW, make_optimizer
from src.grpo.trainer import check_same_settings
from src.models.inputs import build_prompt_batch
from src.models.lora import (
    LoRAConfig, LoRALinear, inject_lora, load_adapter, lora_layers, merge_and_unload, save_adapter,
)
from src.models.loading import load_base, resolve_dtype
from tests.conftest import chat, random_image

BF16 = torch.bfloat16


def bf16_layer(seed: int = 0, features: int = 64) -> LoRALinear:
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(features, features).to(BF16), r=8, alpha=16)
    nn.init.normal_(layer.lora_B.weight, std=0.02)
    return layer


def test_lora_factors_are_fp32_under_a_bf16_base_and_the_output_keeps_the_base_dtype():
    layer = bf16_layer()
    assert layer.lora_A.weight.dtype == layer.lora_B.weight.dtype == torch.float32
    x = torch.randn(5, 64).to(BF16)
    y = layer(x)
    assert y.dtype == BF16
    # W0 x in bf16 (the base layer's own kernel), plus s B A x in fp32, rounded once
    delta = 2.0 * (x.float() @ layer.lora_A.weight.T @ layer.lora_B.weight.T)
    expected = (layer.base_layer(x).float() + delta).to(BF16)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    y.float().square().sum().backward()
    assert layer.lora_A.weight.grad.dtype == layer.lora_B.weight.grad.dtype == torch.float32


def adamw_steps(layer: LoRALinear, steps: int = 10, lr: float = 1e-5) -> float:
    """AdamW at the LoRA learning rate; the fraction of lora_A's entries that moved."""
    start = layer.lora_A.weight.detach().clone()
    optimizer = torch.optim.AdamW([layer.lora_A.weight, layer.lora_B.weight], lr=lr)
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(1)).to(layer.base_layer.weight.dtype)
    target = torch.randn(32, 64, generator=torch.Generator().manual_seed(2))
    for _ in range(steps):
        optimizer.zero_grad()
        (layer(x).float() - target).square().mean().backward()
        optimizer.step()
    return (layer.lora_A.weight.detach() != start).float().mean().item()


def test_lora_factors_move_at_lr_1e_5_under_a_bf16_base_where_bf16_factors_stall():
    assert adamw_steps(bf16_layer()) == 1.0  # every entry of A moved
    stalled = bf16_layer()
    stalled.lora_A.to(BF16), stalled.lora_B.to(BF16)  # the factors in the base's dtype: the failure mode
    assert adamw_steps(stalled) < 0.5  # most steps of ~1e-5 round back to the same bf16 value


def test_merge_computes_in_fp32_and_rounds_once_to_the_base_dtype():
    layer = bf16_layer()
    base = layer.base_layer.weight.detach().clone()
    x = torch.randn(5, 64).to(BF16)
    unmerged = layer(x)
    layer.merge()
    expected = (base.float() + 2.0 * layer.lora_B.weight @ layer.lora_A.weight).to(BF16)
    assert torch.equal(layer.base_layer.weight, expected)
    # merged: (W0 + s B A) rounded to bf16 once, then one bf16 matmul; unmerged: two roundings
    torch.testing.assert_close(layer(x), unmerged, rtol=2e-2, atol=2e-2)
    merged_model = nn.Sequential(bf16_layer())
    reference = merged_model[0].base_layer.weight.float() + merged_model[0].delta_weight()
    assert merge_and_unload(merged_model) == 1 and isinstance(merged_model[0], nn.Linear)
    assert torch.equal(merged_model[0].weight, reference.to(BF16))


def tiny_logits(policy) -> torch.Tensor:
    batch = build_prompt_batch(policy.tokenizer, policy.image_processor, [chat("Is there a lesion?")],
                               [random_image(112, 112)])
    with torch.no_grad():
        return policy.model(**batch.model_kwargs).logits.float()


def test_adapter_is_saved_in_fp32_and_peft_computes_what_we_compute_on_a_bf16_base(tiny_path, tmp_path):
    from peft import PeftModel

    config = LoRAConfig(r=4, alpha=16, dropout=0.0)
    ours = load_base(str(tiny_path), device="cpu", dtype=BF16)
    ours.model.eval()
    inject_lora(ours.model, config)
    torch.manual_seed(0)
    for layer in lora_layers(ours.model):
        nn.init.normal_(layer.lora_B.weight, std=0.2)
    save_adapter(ours.model, tmp_path, config, base_model=str(tiny_path))
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as saved:
        assert {saved.get_tensor(key).dtype for key in saved.keys()} == {torch.float32}
    peft_model = PeftModel.from_pretrained(load_base(str(tiny_path), device="cpu", dtype=BF16).model, tmp_path)
    peft = type(ours)(model=peft_model.eval(), tokenizer=ours.tokenizer, image_processor=ours.image_processor,
                      name="peft")
    assert all(p.dtype == torch.float32 for n, p in peft_model.named_parameters() if "lora_" in n)
    torch.testing.assert_close(tiny_logits(peft), tiny_logits(ours), rtol=0, atol=0)
    fresh = load_base(str(tiny_path), device="cpu", dtype=BF16)
    load_adapter(fresh.model, tmp_path)  # our loader: fp32 factors again, the same values
    for mine, loaded in zip(lora_layers(ours.model), lora_layers(fresh.model)):
        assert loaded.lora_A.weight.dtype == torch.float32
        assert torch.equal(mine.lora_A.weight, loaded.lora_A.weight)


def fixed_gradients(shape, steps: int) -> list[torch.Tensor]:
    """Gradients exactly representable in bf16: the bf16 and fp32 runs then see the same numbers."""
    generator = torch.Generator().manual_seed(3)
    return [torch.randn(shape, generator=generator).to(BF16).float() for _ in range(steps)]


def test_master_weight_adamw_is_torch_adamw_in_fp32():
    torch.manual_seed(0)
    weight = torch.randn(16, 8)
    ours, theirs = nn.Parameter(weight.clone()), nn.Parameter(weight.clone())
    mine = MasterWeightAdamW([ours], lr=1e-2, weight_decay=0.1)
    reference = torch.optim.AdamW([theirs], lr=1e-2, weight_decay=0.1)
    for grad in fixed_gradients(weight.shape, 5):
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        mine.step(), reference.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=0, atol=1e-6)
    assert (ours.detach() != weight).all()


def test_bf16_weights_update_like_fp32_at_lr_1e_6_through_master_weights():
    """Full fine-tuning's rate, 1e-6, on weights of size ~0.02: bf16 spacing there is ~1.2e-4. Pure bf16
    AdamW never moves a weight; the fp32 masters move exactly as fp32 weights do, and the bf16 weights
    are their rounding (moving once the masters have crossed a bf16 step)."""
    weight = torch.randn(64, 64, generator=torch.Generator().manual_seed(0)) * 0.02
    steps = 40
    fp32 = nn.Parameter(weight.clone())
    bf16, pure = nn.Parameter(weight.to(BF16)), nn.Parameter(weight.to(BF16))
    optimizers = [torch.optim.AdamW([fp32], lr=1e-6), make_optimizer([bf16], 1e-6, 0.0),
                  torch.optim.AdamW([pure], lr=1e-6)]
    assert isinstance(optimizers[1], MasterWeightAdamW)
    for grad in fixed_gradients(weight.shape, steps):
        fp32.grad, bf16.grad, pure.grad = grad.clone(), grad.to(BF16), grad.to(BF16)
        for optimizer in optimizers:
            optimizer.step()
    master = optimizers[1].param_groups[0]["params"][0]
    assert master.dtype == torch.float32
    # the same steps up to fp32's own rounding of |w| ~ 0.05 (spacing 4e-9), 40 times; the steps add up to 4e-5
    torch.testing.assert_close(master - weight.to(BF16).float(), fp32.detach() - weight, rtol=0, atol=5e-8)
    assert torch.equal(bf16.detach(), master.to(BF16))
    # 40 steps of 1e-6 carry 8.7% of the bf16 weights across a rounding step; pure bf16 AdamW moves only the
    # 2.0% near 0, where bf16's spacing is finer than 1e-6
    moved, moved_pure = ((p.detach() != weight.to(BF16)).float().mean() for p in (bf16, pure))
    assert moved_pure < 0.03 and moved > 0.06, (moved, moved_pure)


def test_master_weights_survive_a_checkpoint_round_trip():
    weight = torch.randn(32, 32, generator=torch.Generator().manual_seed(0)) * 0.02
    gradients = fixed_gradients(weight.shape, 6)
    straight = nn.Parameter(weight.to(BF16))
    optimizer = MasterWeightAdamW([straight], lr=1e-6)
    for grad in gradients:
        straight.grad = grad.to(BF16)
        optimizer.step()
    resumed = nn.Parameter(weight.to(BF16))
    first = MasterWeightAdamW([resumed], lr=1e-6)
    for grad in gradients[:3]:
        resumed.grad = grad.to(BF16)
        first.step()
    state = first.state_dict()
    # the masters themselves, as torch's state_dict holds m and v: no second copy of them while saving
    assert [m.data_ptr() for m in state["master_weights"]] == [m.data_ptr() for m in first.param_groups[0]["params"]]
    resumed = nn.Parameter(resumed.detach().clone())  # what a checkpoint's bf16 weights give back
    second = MasterWeightAdamW([resumed], lr=1e-6)  # masters start as the bf16 weights ...
    second.load_state_dict(state)                   # ... and the saved fp32 masters replace them
    for grad in gradients[3:]:
        resumed.grad = grad.to(BF16)
        second.step()
    assert torch.equal(second.param_groups[0]["params"][0], optimizer.param_groups[0]["params"][0])
    assert torch.equal(resumed, straight)


def test_dtype_auto_resolves_by_device_and_a_resume_refuses_another_dtype(tmp_path):
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("auto", "cuda") == BF16
    assert resolve_dtype("bfloat16", "cpu") == BF16
    cpu = TrainConfig(run=RunConfig(device="cpu", output_dir=str(tmp_path)))
    assert cpu.model.dtype == "auto" and cpu.resolved().model.dtype == "float32"
    bf16 = TrainConfig(run=RunConfig(device="cpu", output_dir=str(tmp_path)), model=ModelConfig(dtype="bfloat16"))
    assert bf16.resolved() is bf16
    (tmp_path / "config.json").write_text(bf16.to_json())
    check_same_settings(tmp_path / "config.json", bf16)
    with pytest.raises(ValueError, match="model.dtype: 'bfloat16' -> 'float32'"):  # auto on a CPU
        check_same_settings(tmp_path / "config.json", cpu.resolved())


def test_evaluate_runs_in_bf16_and_an_output_folder_keeps_one_dtype(tmp_path):
    import evaluate
    from src.errors import UserError

    argv = ["--model", "tiny", "--datasets", "synthetic:test", "--limit", "2", "--prompt", "reasoning",
            "--max-new-tokens", "4", "--judge", "none", "--device", "cpu", "--output-dir", str(tmp_path)]
    evaluate.main(argv + ["--dtype", "bfloat16"])
    assert json.loads((tmp_path / "run.json").read_text())["generation"]["dtype"] == "bfloat16"
    with pytest.raises(UserError, match="'bfloat16' -> 'float32'"):  # auto on a CPU
        evaluate.main(argv)


# ---- through train.py --------------------------------------------------------------------------------------

def train(tmp_path: Path, name: str, *flags: str) -> Path:
    import train as train_script

    out = tmp_path / name
    train_script.main(["--model", "tiny", "--dataset", "synthetic", "--samples", "8", "--prompts-per-step", "2",
                       "--group-size", "2", "--max-completion-length", "8", "--mini-batch-size", "4",
                       "--warmup-ratio", "0", "--no-gradient-checkpointing", "--device", "cpu",
                       "--output-dir", str(out), *flags])
    return out


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


def test_grpo_in_bf16_moves_the_adapter_as_fp32_does_and_reports_the_sampler_mismatch(tmp_path):
    """The issue's command at test size: grpo, 4 steps at lr 1e-5, a checkpoint every step."""
    moved, mismatch = {}, {}
    for dtype in ("float32", "bfloat16"):
        out = train(tmp_path, dtype, "--method", "grpo", "--max-steps", "4", "--save-steps", "1",
                    "--learning-rate", "1e-5", "--dtype", dtype)
        assert json.loads((out / "config.json").read_text())["model"]["dtype"] == dtype
        first, last = (tensors(out / f"checkpoint-{step}" / "adapter_model.safetensors") for step in (1, 4))
        assert {t.dtype for t in last.values()} == {torch.float32}  # saved as trained, whatever the base
        a_keys = [key for key in first if ".lora_A." in key]
        moved[dtype] = sum(int((first[k] != last[k]).sum()) for k in a_keys) / sum(first[k].numel() for k in a_keys)
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        mismatch[dtype] = [(m["rollout_logp_diff"], m["rollout_kl"]) for m in metrics]
    assert moved["float32"] > 0.99 and moved["bfloat16"] > 0.95 * moved["float32"], moved
    assert all(diff < 1e-4 and abs(kl) < 1e-6 for diff, kl in mismatch["float32"]), mismatch
    # measured, and not fp32's ~0. A step may measure exactly 0: the shared-prefix forward runs the engine's
    # arithmetic (the same modules and attention), and in bf16 can match the sampler bit for bit
    assert max(diff for diff, _ in mismatch["bfloat16"]) > 10 * max(d for d, _ in mismatch["float32"]), mismatch


def test_full_fine_tuning_in_bf16_moves_its_master_weights_at_lr_1e_6_as_fp32_does(tmp_path):
    moves = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", BF16)):
        out = train(tmp_path, name, "--method", "sft-full", "--max-steps", "2", "--save-steps", "1",
                    "--learning-rate", "1e-6", "--dtype", name)
        models = [load_base(str(out / f"checkpoint-{step}"), device="cpu", dtype=dtype).model for step in (1, 2)]
        trained = [n for n, _ in models[0].named_parameters() if not n.startswith("model.visual.")]  # optimizer order
        layers = [n for n in trained if ".layers." in n]  # the embedding moves only on the rows a batch uses
        weights = [dict(model.named_parameters()) for model in models]
        if dtype == BF16:
            states = [torch.load(out / f"checkpoint-{step}" / "trainer_state.pt", weights_only=False)["optimizer"]
                      for step in (1, 2)]
            masters = [dict(zip(trained, state["master_weights"])) for state in states]
            for n in layers:  # the checkpoint's bf16 weights are the fp32 masters, rounded
                assert weights[1][n].dtype == BF16 and masters[1][n].dtype == torch.float32
                assert torch.equal(weights[1][n], masters[1][n].to(BF16)), n
            moves[name] = {n: masters[1][n] - masters[0][n] for n in layers}
        else:
            moves[name] = {n: (weights[1][n] - weights[0][n]).detach() for n in layers}
    fp32, bf16 = (torch.cat([move.flatten() for move in moves[name].values()]) for name in ("float32", "bfloat16"))
    assert (bf16 != 0).float().mean() > 0.99  # every master weight moved (a bf16 weight mostly cannot, by ~1e-6)
    # ... as fp32's did: the same direction (bar weights whose gradient is noise, such as the key biases,
    # which softmax cancels) and size
    assert (torch.sign(bf16) == torch.sign(fp32)).float().mean() > 0.95
    torch.testing.assert_close(bf16.abs().mean(), fp32.abs().mean(), rtol=0.05, atol=0)
