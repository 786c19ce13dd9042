"""The GRPO loop on the tiny model: first-step identities, what a step changes, pairing, accumulation, resume."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from src.data.prompts import TRAINING_PROMPTS
from src.data.sample import Sample
from src.grpo import step, trainer
from src.grpo.config import DataConfig, LossConfig, ModelConfig, OptimConfig, RolloutConfig, RunConfig, TrainConfig
from src.grpo.loss import group_advantages
from src.grpo.step import completion_logprobs, grpo_update, rollout_logprobs
from src.grpo.step import sample_rollout
from src.grpo.run_log import read_metrics
from src.models.engine import END_TOKENS, VISION_TOKENS, completion_mask, token_ids
from src.models.encoded_prompts import encode_prompts
from src.models.generation import prompt_batch, sample_groups
from src.models.inputs import repeat_rows
from src.models.lora import disabled_adapters, lora_layers
from src.rewards.total import RewardWeights, score_completions
from tests.conftest import random_image

REPO = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    """A few-second GRPO run on the tiny model and the synthetic data."""
    sections = dict(
        run=RunConfig(method="rarl", output_dir=str(tmp_path / "run"), save_steps=2, seed=0, device="cpu"),
        model=ModelConfig(model="tiny", gradient_checkpointing=False, lora_dropout=0.0),
        data=DataConfig(dataset="synthetic", samples=16),
        rollout=RolloutConfig(group_size=4, max_completion_length=12),
        loss=LossConfig(beta=0.04),
        optim=OptimConfig(prompts_per_step=2, mini_batch_size=4, max_steps=4, learning_rate=5e-3, warmup_ratio=0.0),
    )
    for name, changes in overrides.items():
        sections[name] = dataclasses.replace(sections[name], **changes)
    return TrainConfig(**sections)


def test_completion_mask_keeps_the_first_end_token_and_nothing_after():
    ids = torch.tensor([[5, 6, 9, 7, 9], [5, 5, 5, 5, 5], [9, 1, 2, 3, 4]])  # 9 = end token
    mask, truncated = completion_mask(ids, end_ids=[9])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


@pytest.mark.parametrize("engine", ["engine", "hf"])
def test_sampling_never_emits_vision_tokens(tiny_policy, engine):
    model, tok = tiny_policy.model, tiny_policy.tokenizer
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    # make <|image_pad|> by far the likeliest next token everywhere
    model.lm_head.register_forward_hook(lambda module, args, out: out.index_fill(-1, torch.tensor([image_pad]), 50.0))
    batch = prompt_batch(tiny_policy, [_sample(0)], ["You are a Medical Assistant."])
    plain = model.generate(**batch.model_kwargs, max_new_tokens=6, do_sample=False)
    assert (plain[:, batch.input_ids.shape[1]:] == image_pad).all()  # without the guard it would emit them
    completions = sample_groups(tiny_policy, batch, encode_prompts(model, batch), group_size=2, max_new_tokens=6,
                                temperature=1.0, engine_name=engine)
    assert completions.ids.shape == (2, 6)
    assert not torch.isin(completions.ids, torch.tensor(token_ids(tok, VISION_TOKENS))).any()


def _sample(i: int, size=(112, 112), tmp: Path | None = None) -> Sample:
    from io import BytesIO

    buffer = BytesIO()
    random_image(*size, seed=i).save(buffer, format="PNG")
    return Sample(id=str(i), dataset="test", image=buffer.getvalue(), question="Is there a lesion?", answer="yes",
                  answer_type="closed", reasoning="The organ shows one bright lesion.")


def test_rollout_pairs_every_completion_with_its_own_prompt_and_image(tiny_policy):
    """B=2 prompts with different image sizes, G=3: row b*G+g must be prompt b with image b."""
    samples = [_sample(1, (112, 112)), _sample(2, (56, 168))]
    rollout = sample_rollout(tiny_policy, samples, ["explanation", "short"], group_size=3, max_completion_length=8,
                             temperature=1.0)
    # 8 x 8 patches merge into 16 image tokens, 4 x 12 into 12: rows 0-2 hold image 1, rows 3-5 image 2
    assert [len(rollout.prompts.image_features[b]) for b in rollout.prompt_index] == [16] * 3 + [12] * 3
    with torch.no_grad():
        together = completion_logprobs(tiny_policy.model, rollout.prompts, rollout.prompt_index,
                                       rollout.completion_ids, rollout.completion_mask)              # [6, L]
        for row in range(6):
            b = row // 3
            alone_prompt = encode_prompts(tiny_policy.model, prompt_batch(
                tiny_policy, [samples[b]], [TRAINING_PROMPTS[["explanation", "short"][b]]]))
            alone = completion_logprobs(tiny_policy.model, alone_prompt, [0], rollout.completion_ids[row:row + 1],
                                        rollout.completion_mask[row:row + 1])
            m = rollout.completion_mask[row]
            torch.testing.assert_close(together[row][m], alone[0][m], rtol=1e-4, atol=1e-4)
    # rewards: group-normalised per prompt, so each group's advantages sum to zero
    rewards = score_completions(rollout.texts, [s for s in samples for _ in range(3)],
                                rollout.completion_mask.sum(1).tolist(), None, RewardWeights(), False).total
    assert group_advantages(torch.tensor(rewards), 3).view(2, 3).sum(1).abs().max() < 1e-5


def test_update_log_probs_are_the_ones_the_completions_were_sampled_with(tiny_policy):
    """pi_theta in the loss must be the model generate() drew from, row by row and image by image (a batch
    that paired completions with another row's image would train on the wrong pixels). Compared with
    generate's own scores, which have the vision tokens suppressed: the loss bans the same ids, so both
    are the distribution the tokens were drawn from."""
    model, tok = tiny_policy.model, tiny_policy.tokenizer
    samples = [_sample(1, (112, 112)), _sample(2, (56, 168))]
    batch = prompt_batch(tiny_policy, samples, [TRAINING_PROMPTS["explanation"]] * 2)
    prompts = repeat_rows(batch, 2)
    end_ids = token_ids(tok, END_TOKENS)
    banned = token_ids(tok, VISION_TOKENS)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**prompts.model_kwargs, max_new_tokens=10, do_sample=True, temperature=1.0, top_k=0,
                             top_p=1.0, eos_token_id=end_ids, pad_token_id=tok.pad_token_id,
                             suppress_tokens=banned, output_scores=True, return_dict_in_generate=True)
        ids = out.sequences[:, prompts.input_ids.shape[1]:]                                   # [4, L]
        mask, _ = completion_mask(ids, end_ids)
        sampled = torch.stack(out.scores, 1).log_softmax(-1).gather(2, ids.unsqueeze(2)).squeeze(2)
        ids = ids.masked_fill(~mask, tok.pad_token_id)
        trained = completion_logprobs(model, encode_prompts(model, batch), [0, 0, 1, 1], ids, mask,
                                      banned=torch.tensor(banned))                           # [4, L]
    torch.testing.assert_close(trained[mask], sampled[mask], rtol=0, atol=1e-5)


def test_first_step_has_zero_kl_unit_ratio_and_changes_only_lora(tmp_path):
    run = trainer.setup(tiny_config(tmp_path))
    before = {k: v.clone() for k, v in run.policy.model.state_dict().items()}
    metrics, _ = step.grpo_step(run, run.samples[:2], ["explanation", "explanation"])
    # policy == reference at step 1 (B = 0): the k3 KL is exactly 0 and the ratio exactly 1
    assert metrics["kl"] == 0.0
    assert metrics["ratio_mean"] == 1.0 and metrics["clip_ratio"] == 0.0
    after = run.policy.model.state_dict()
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed and all(".lora_" in k for k in changed)            # base weights bit-identical
    assert any(".lora_B." in k for k in changed)


@pytest.mark.parametrize("aggregation", ["sequence", "token", "dr_grpo"])
def test_mini_batch_accumulation_equals_one_big_batch(tmp_path, aggregation):
    """Gradients accumulated over mini-batches of 2 equal the gradient of one pass over all N rows."""
    cfg = tiny_config(tmp_path, loss=dict(aggregation=aggregation, beta=0.0))
    run = trainer.setup(cfg)
    for layer in lora_layers(run.policy.model):  # B != 0 so that every factor gets a gradient
        torch.nn.init.normal_(layer.lora_B.weight, std=0.05)
    rollout = sample_rollout(run.policy, run.samples[:2], ["explanation"] * 2, group_size=4, max_completion_length=12,
                             temperature=1.0)
    advantages = torch.linspace(-1.5, 1.5, 8)  # nonzero even if all rewards tie
    grads = []
    for mini_batch in (8, 2):
        object.__setattr__(run, "cfg", dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, mini_batch_size=mini_batch)))
        run.optimizer = torch.optim.SGD(run.params, lr=0.0)  # lr 0: grads computed, weights untouched
        run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda _: 1.0)
        grpo_update(run, rollout, advantages, None, None)
        grads.append([p.grad.clone() for p in run.params])
    for big, small in zip(*grads):
        torch.testing.assert_close(small, big, rtol=1e-4, atol=1e-7)


def test_train_command_runs_end_to_end(tmp_path):
    out = tmp_path / "OUT"
    command = [sys.executable, "train.py", "--method", "rarl", "--model", "tiny", "--dataset", "synthetic",
               "--samples", "32", "--max-steps", "4", "--save-steps", "2", "--output-dir", str(out),
               "--max-completion-length", "32", "--no-gradient-checkpointing"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["run"]["method"] == "rarl"
    metrics = read_metrics(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    required = {"step", "epoch", "loss", "kl", "clip_ratio", "reward", "reward_std", "reward/format", "reward/length",
                "reward/accuracy", "completion_length", "frac_zero_std", "lr", "grad_norm", "time/generate",
                "time/score", "time/update", "peak_memory_mb"}
    assert required <= set(metrics[0]), required - set(metrics[0])
    for saved in (2, 4):
        checkpoint = out / f"checkpoint-{saved}"
        config = json.loads((checkpoint / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["r"] == 8
        assert (checkpoint / "trainer_state.pt").is_file()
        assert all(k.startswith("base_model.model.") for k in load_file(checkpoint / "adapter_model.safetensors"))
    assert not list(out.glob("*.tmp"))


class Interrupt(Exception):
    pass


def test_interrupted_and_resumed_run_equals_uninterrupted_bit_for_bit(tmp_path, monkeypatch):
    """Weights, metrics and completions of the resumed run are those of the uninterrupted one, to the last
    bit. With one prompt's 8 completions per pass, the shared-prefix backward adds 8 x 2 KV heads x ~105
    prompt tokens x 32 = ~54k values into that prompt's keys and values: past torch's 32,768, where its
    CPU index_put_ adds them on every thread at once, in an order that changed from run to run before
    training ran torch's deterministic kernels (trainer.same_sums_on_cpu)."""
    assert torch.get_num_threads() > 1, "one thread adds in order anyway: this test needs two"
    shape = dict(rollout=dict(group_size=8), optim=dict(prompts_per_step=1, mini_batch_size=8))
    straight = tiny_config(tmp_path / "a", **shape)
    trainer.train(straight)

    broken = tiny_config(tmp_path / "b", **shape)
    real_write = trainer.MetricsLog.write

    def crash_after_three_steps(self, records):
        if records[0]["step"] == 4:
            raise Interrupt  # step 3 was logged but never checkpointed (save_steps = 2)
        real_write(self, records)

    monkeypatch.setattr(trainer.MetricsLog, "write", crash_after_three_steps)
    with pytest.raises(Interrupt):
        trainer.train(broken)
    monkeypatch.setattr(trainer.MetricsLog, "write", real_write)
    assert [m["step"] for m in read_metrics(Path(broken.run.output_dir) / "metrics.jsonl")] == [1, 2, 3]
    trainer.train(dataclasses.replace(broken, run=dataclasses.replace(broken.run, resume=True)))

    a = read_metrics(Path(straight.run.output_dir) / "metrics.jsonl")
    b = read_metrics(Path(broken.run.output_dir) / "metrics.jsonl")
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        for key in x:
            if not key.startswith("time/") and key != "peak_memory_mb":
                assert x[key] == y[key], (x["step"], key)
    completions = [read_metrics(Path(cfg.run.output_dir) / "completions.jsonl") for cfg in (straight, broken)]
    assert completions[0] == completions[1]  # step 3's lines from before the crash were dropped, then redone
    weights = [(Path(cfg.run.output_dir) / "checkpoint-4" / "adapter_model.safetensors").read_bytes()
               for cfg in (straight, broken)]
    assert weights[0] == weights[1]


def test_completions_log_holds_every_sample_with_its_rewards_and_advantage(tmp_path):
    cfg = tiny_config(tmp_path, optim=dict(max_steps=2))
    trainer.train(cfg)
    lines = read_metrics(Path(cfg.run.output_dir) / "completions.jsonl")
    metrics = read_metrics(Path(cfg.run.output_dir) / "metrics.jsonl")
    group, prompts = cfg.rollout.group_size, cfg.optim.prompts_per_step
    assert [line["step"] for line in lines] == [1] * (prompts * group) + [2] * (prompts * group)
    for number, record in zip((1, 2), metrics):
        step_lines = [line for line in lines if line["step"] == number]
        assert sum(line["reward"] for line in step_lines) / len(step_lines) == pytest.approx(record["reward"])
        assert step_lines[0]["completion"].startswith(record["sample_completion"])
        for start in range(0, len(step_lines), group):  # one prompt's group: same question, eq. 2 advantages
            rows = step_lines[start:start + group]
            assert len({(row["id"], row["prompt"]) for row in rows}) == 1
            rewards = torch.tensor([row["reward"] for row in rows])
            expected = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
            assert [row["advantage"] for row in rows] == pytest.approx(expected.tolist(), abs=1e-5)
    for line in lines:  # rarl's total: every component at weight 1, reasoning where the sample has one
        parts = [line[f"reward/{name}"] for name in ("format", "length", "accuracy", "reasoning")]
        assert line["reward"] == pytest.approx(sum(p for p in parts if p is not None), abs=1e-5)


def test_resume_refuses_other_settings_but_may_run_longer(tmp_path):
    first = tiny_config(tmp_path, optim=dict(max_steps=2))
    trainer.train(first)
    resume = dataclasses.replace(first.run, resume=True)
    other_lr = dataclasses.replace(first, run=resume, optim=dataclasses.replace(first.optim, learning_rate=1e-3))
    with pytest.raises(ValueError, match=r"optim.learning_rate: 0.005 -> 0.001"):
        trainer.train(other_lr)
    other_method = dataclasses.replace(first, run=dataclasses.replace(resume, method="grpo"))
    with pytest.raises(ValueError, match=r"run.method: 'rarl' -> 'grpo'"):
        trainer.train(other_method)
    longer = dataclasses.replace(first, run=resume, optim=dataclasses.replace(first.optim, max_steps=3))
    trainer.train(longer)
    assert [m["step"] for m in read_metrics(Path(first.run.output_dir) / "metrics.jsonl")] == [1, 2, 3]


def test_sft_lowers_the_cross_entropy(tmp_path):
    cfg = tiny_config(tmp_path, run=dict(method="sft"), optim=dict(max_steps=6, learning_rate=2e-2))
    run = trainer.setup(cfg)
    from src.grpo.sft import sft_step

    batch = run.samples[:4]
    losses = [sft_step(run, batch)["loss"] for _ in range(6)]
    # starts near ln(vocab) = ln(720) = 6.58; LoRA on a random model with frozen random embeddings
    # can only sharpen the output a little (measured: 6.62 -> 6.24 in 6 steps), but it must do that
    assert losses[0] > 6.4 and losses[-1] < losses[0] - 0.25, losses


def test_grpo_full_trains_the_language_model_against_a_frozen_copy(tmp_path):
    run = trainer.setup(tiny_config(tmp_path, run=dict(method="grpo-full"), optim=dict(learning_rate=1e-3)))
    assert not list(lora_layers(run.policy.model))
    assert run.reference.kind == "frozen copy" and run.reference.model is not run.policy.model
    # no copy of the vision tower, which the reference never runs (it reads the rollout's image features)
    assert isinstance(run.reference.model.model.visual, step.NoVisionTower)
    visual = {id(p) for p in run.policy.model.model.visual.parameters()}
    assert sum(p.numel() for p in run.reference.model.parameters()) == sum(
        p.numel() for p in run.policy.model.parameters() if id(p) not in visual)
    visual_before = {k: v.clone() for k, v in run.policy.model.model.visual.state_dict().items()}
    reference_before = {k: v.clone() for k, v in run.reference.model.state_dict().items()}
    metrics, _ = step.grpo_step(run, run.samples[:2], ["explanation"] * 2)
    assert metrics["kl"] == 0.0
    lm_after = run.policy.model.model.language_model.state_dict()
    assert any(not torch.equal(lm_after[k], reference_before["model.language_model." + k]) for k in lm_after)
    assert all(torch.equal(v, visual_before[k]) for k, v in run.policy.model.model.visual.state_dict().items())
    assert all(torch.equal(v, reference_before[k]) for k, v in run.reference.model.state_dict().items())


# --- what the redesigned step guarantees --------------------------------------------------------


def test_rl_refuses_dropout_and_sft_keeps_its_default():
    with pytest.raises(ValueError, match="RL runs without dropout"):
        TrainConfig(run=RunConfig(method="rarl"), model=ModelConfig(lora_dropout=0.05))
    assert TrainConfig(run=RunConfig(method="grpo")).lora.dropout == 0.0
    assert TrainConfig(run=RunConfig(method="sft")).lora.dropout == 0.05
    assert TrainConfig(run=RunConfig(method="sft"), model=ModelConfig(lora_dropout=0.1)).lora.dropout == 0.1


def test_with_two_iterations_the_first_update_has_ratio_exactly_one(tmp_path, monkeypatch):
    """num_iterations 2 end to end: pi_old is computed in its own pass, and with no dropout anywhere in
    RL the first update sees exactly that policy (ratio 1, nothing clipped); the second update, after
    an AdamW step, sees a moved policy."""
    cfg = tiny_config(tmp_path, model=dict(lora_dropout=None), loss=dict(num_iterations=2),
                      optim=dict(mini_batch_size=2, learning_rate=0.05))
    run = trainer.setup(cfg)
    for layer in lora_layers(run.policy.model):  # B != 0: the step moves every output
        torch.nn.init.normal_(layer.lora_B.weight, std=0.05)
    seen = []
    loss_fn = step.grpo_loss

    def recording(*args, **kwargs):
        loss, stats = loss_fn(*args, **kwargs)
        seen.append(stats.as_floats())
        return loss, stats

    monkeypatch.setattr(step, "grpo_loss", recording)
    step.grpo_step(run, run.samples[:2], ["explanation"] * 2)
    assert len(seen) == 8                                        # 2 iterations x 8 rows / mini-batch 2
    assert all(s["ratio_mean"] == 1.0 and s["clipfrac_low"] == s["clipfrac_high"] == 0.0 for s in seen[:4])
    assert all(abs(s["ratio_mean"] - 1.0) > 1e-4 for s in seen[4:])


def test_dr_grpo_divides_by_the_generation_budget_not_the_longest_completion(tmp_path):
    """First update, beta 0: r = 1, so the loss is -sum_i A_i |o_i| / (N * max_completion_length),
    whatever the batch's longest completion is."""
    cfg = tiny_config(tmp_path, loss=dict(aggregation="dr_grpo", beta=0.0), rollout=dict(max_completion_length=40))
    run = trainer.setup(cfg)
    run.optimizer = torch.optim.SGD(run.params, lr=0.0)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda _: 1.0)
    rollout = sample_rollout(run.policy, run.samples[:2], ["explanation"] * 2, group_size=4, max_completion_length=40,
                             temperature=1.0)
    rollout.completion_mask[:, 10:] = False        # completions of at most 10 tokens, well under the budget of 40
    advantages = torch.linspace(-1.5, 2.0, 8)
    lengths = rollout.completion_mask.sum(1).float()
    stats = grpo_update(run, rollout, advantages, None, None)
    assert stats["loss"] == pytest.approx(-(advantages * lengths).sum().item() / (8 * 40), abs=1e-6)


def test_drop_tied_groups_takes_them_out_of_the_normaliser_and_importance_level_reaches_the_loss(tmp_path,
                                                                                                   monkeypatch):
    """First update, beta 0, sequence aggregation: r = 1, so the loss is -sum_i A_i / (completions in the
    normaliser). Group 1's advantages are 0 (its rewards tie): by default the 8 completions count, with
    --drop-tied-groups only group 0's 4."""
    assert LossConfig().importance_level == "token" and not LossConfig().drop_tied_groups  # the paper's default
    seen = []
    loss_fn = step.grpo_loss
    monkeypatch.setattr(step, "grpo_loss", lambda *a, **kw: seen.append(kw["importance_level"]) or loss_fn(*a, **kw))
    cfg = tiny_config(tmp_path, loss=dict(beta=0.0))
    run = trainer.setup(cfg)
    rollout = sample_rollout(run.policy, run.samples[:2], ["explanation"] * 2, group_size=4, max_completion_length=12,
                             temperature=1.0)
    advantages = torch.tensor([1.5, -0.5, 0.25, -0.75, 0.0, 0.0, 0.0, 0.0])   # sum 0.5
    losses = {}
    for drop, level in ((False, "token"), (True, "sequence")):
        object.__setattr__(run, "cfg", dataclasses.replace(
            cfg, loss=dataclasses.replace(cfg.loss, drop_tied_groups=drop, importance_level=level)))
        run.optimizer = torch.optim.SGD(run.params, lr=0.0)
        run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda _: 1.0)
        losses[drop] = grpo_update(run, rollout, advantages, None, None)["loss"]
    assert losses[False] == pytest.approx(-0.5 / 8, abs=1e-6)
    assert losses[True] == pytest.approx(-0.5 / 4, abs=1e-6)
    assert seen == ["token"] * 2 + ["sequence"] * 2  # two mini-batches of 4 each


def test_first_steps_give_the_same_metrics_with_and_without_prefix_sharing(tmp_path, monkeypatch):
    """train.py's first 2 RL steps on the tiny model, prompts shared (the default) and not: the same
    samples, rewards, losses and KL within float tolerance (groups of 4 split over mini-batches of 2).
    The untrained tiny model's rewards tie, so advantages are fixed and nonzero: step 1 moves the policy."""
    monkeypatch.setattr(step, "group_advantages", lambda rewards, G, scale: torch.linspace(-1, 2, len(rewards)))
    metrics = {}
    for sharing in (True, False):
        cfg = tiny_config(tmp_path / str(sharing), model=dict(prefix_sharing=sharing), optim=dict(max_steps=2,
                                                                                                   mini_batch_size=2))
        trainer.train(cfg)
        metrics[sharing] = read_metrics(Path(cfg.run.output_dir) / "metrics.jsonl")
    assert [m["step"] for m in metrics[True]] == [1, 2]
    for shared, unshared in zip(metrics[True], metrics[False]):
        assert shared["reward"] == unshared["reward"] and shared["completion_length"] == unshared["completion_length"]
        for key in ("loss", "kl", "grad_norm"):
            assert shared[key] == pytest.approx(unshared[key], rel=1e-4, abs=1e-7), key
        for key in ("rollout_logp_diff", "rollout_kl"):  # fp32 noise on both sides
            assert shared[key] == pytest.approx(unshared[key], abs=1e-5) and shared[key] < 1e-4, key
    assert metrics[True][0]["loss"] != 0 and metrics[True][1]["kl"] > 0  # step 2 sees a moved policy


def test_continuing_an_adapter_takes_its_starting_weights_as_the_reference(tmp_path):
    """--model ADAPTER_DIR: pi_ref is that adapter as loaded, neither the base model nor the adapter
    after the run's updates."""
    from src.models.lora import save_adapter

    donor = trainer.setup(tiny_config(tmp_path / "donor"))
    for layer in lora_layers(donor.policy.model):
        torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    save_adapter(donor.policy.model, tmp_path / "adapter", donor.lora, str(donor.cfg.model.model))
    run = trainer.setup(tiny_config(tmp_path, model=dict(model=str(tmp_path / "adapter")),
                                    optim=dict(learning_rate=0.05)))
    assert run.reference.kind == "starting adapter"
    rollout = sample_rollout(run.policy, run.samples[:2], ["explanation"] * 2, group_size=4, max_completion_length=12,
                             temperature=1.0)
    before = run.reference.logprobs(rollout, 1.0, 8)
    policy = rollout_logprobs(run.policy.model, rollout, 1.0, 8)
    mask = rollout.completion_mask
    assert torch.equal(before[mask], policy[mask])               # at the start, pi_ref is the policy itself
    grpo_update(run, rollout, torch.linspace(-1.0, 1.0, 8), before, None)
    after = run.reference.logprobs(rollout, 1.0, 8)
    assert torch.equal(after[mask], before[mask])                # the updates did not move pi_ref
    moved = rollout_logprobs(run.policy.model, rollout, 1.0, 8)
    assert (moved[mask] - before[mask]).abs().max() > 1e-3       # while the policy moved
    with disabled_adapters(run.policy.model):
        base = rollout_logprobs(run.policy.model, rollout, 1.0, 8)
    assert (base[mask] - before[mask]).abs().max() > 1e-3        # and pi_ref is not the base model


def test_mask_truncated_takes_cut_off_completions_out_of_the_gradient(tmp_path):
    """With --mask-truncated a cut-off completion adds nothing: the gradient equals that of the same
    batch with those completions' advantages set to 0 (sequence aggregation, beta 0, same N)."""
    def gradients(mask_truncated: bool, advantages: torch.Tensor) -> list[torch.Tensor]:
        cfg = tiny_config(tmp_path, loss=dict(beta=0.0), rollout=dict(mask_truncated=mask_truncated))
        run = trainer.setup(cfg)
        for layer in lora_layers(run.policy.model):
            torch.nn.init.normal_(layer.lora_B.weight, std=0.05, generator=torch.Generator().manual_seed(3))
        run.optimizer = torch.optim.SGD(run.params, lr=0.0)
        run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda _: 1.0)
        grpo_update(run, rollout, advantages, None, None)
        return [p.grad.clone() for p in run.params]

    run = trainer.setup(tiny_config(tmp_path))
    torch.manual_seed(0)
    rollout = sample_rollout(run.policy, run.samples[:2], ["explanation"] * 2, group_size=4, max_completion_length=12,
                             temperature=1.0)
    rollout.truncated = torch.tensor([True, False, True, False, False, True, False, False])
    advantages = torch.linspace(-1.5, 2.0, 8)
    masked = gradients(True, advantages)
    zeroed = gradients(False, advantages.masked_fill(rollout.truncated, 0.0))
    for got, want in zip(masked, zeroed):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    assert any(g.abs().max() > 0 for g in masked)
