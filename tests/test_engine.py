"""The rollout engine against transformers: positions, image features, prefill, greedy tokens, log-probs.

The random tiny model greedily repeats the last prompt token (its tied embedding dominates the logits),
which would make token-for-token parity trivial. `lively` gives it an untied random lm_head, so that
completions vary by row, and raises <|im_end|> so that rows end at different steps.
"""
from __future__ import annotations

import io

import pytest
import torch

from src.data.prompts import TRAINING_PROMPTS
from src.data.sample import Sample
from src.grpo.step import completion_logprobs
from src.models import engine
from src.models.engine import END_TOKENS, VISION_TOKENS, StaticKVCache, token_ids
from src.models.encoded_prompts import encode_prompts
from src.models.generation import prompt_batch, sample_groups
from benchmarks.bench_step import with_completions
from src.models.inputs import repeat_rows
from src.models.mrope import prompt_positions, rotary_of
from tests.conftest import random_image

PROMPTS = ["explanation", "short", "open-ended"]


def sample(i: int, size: tuple[int, int], words: int = 0) -> Sample:
    buffer = io.BytesIO()
    random_image(*size, seed=i).save(buffer, format="PNG")
    return Sample(id=str(i), dataset="test", image=buffer.getvalue(), answer="yes", answer_type="closed",
                  question="Is there a lesion" + " on the left side" * words + "?")


def three_prompts(policy):
    """B = 3 prompts: three image sizes (16, 12 and 12 image tokens), three prompt lengths."""
    samples = [sample(1, (112, 112)), sample(2, (56, 168), words=3), sample(3, (84, 112), words=1)]
    return prompt_batch(policy, samples, [TRAINING_PROMPTS[name] for name in PROMPTS])


def untie_head(policy, seed: int = 0) -> None:
    """Replace the tied lm_head by a random one (std 3 / sqrt(H)): completions that depend on the row."""
    head = policy.model.lm_head
    untied = torch.nn.Linear(head.in_features, head.out_features, bias=False)
    with torch.no_grad():
        untied.weight.copy_(torch.randn(untied.weight.shape, generator=torch.Generator().manual_seed(seed))
                            * 3 * head.in_features ** -0.5)
    policy.model.lm_head = untied


@pytest.fixture
def lively(tiny_policy):
    untie_head(tiny_policy)
    end = token_ids(tiny_policy.tokenizer, END_TOKENS)[0]
    tiny_policy.model.lm_head.register_forward_hook(  # +4 on <|im_end|>: some rows end early, some never
        lambda module, args, out: out.index_add(-1, torch.tensor([end]), torch.full(out.shape[:-1] + (1,), 4.0)))
    return tiny_policy


def test_mrope_positions_equal_transformers_get_rope_index(tiny_policy):
    batch = three_prompts(tiny_policy)
    model = tiny_policy.model
    expected, deltas = model.model.get_rope_index(batch.input_ids, mm_token_type_ids=batch.mm_token_type_ids,
                                                   image_grid_thw=batch.image_grid_thw,
                                                   attention_mask=batch.attention_mask)
    positions, next_position = prompt_positions(batch.input_ids, batch.attention_mask, batch.image_grid_thw,
                                                model.config.image_token_id, 2)
    real = batch.attention_mask.bool()
    assert torch.equal(positions[:, real], expected[:, real])
    assert (positions[:, ~real] == 0).all()
    # transformers continues after the prompt at (real tokens + delta): the first completion position
    assert torch.equal(next_position, real.sum(1) + deltas.squeeze(1))
    assert len(set(next_position.tolist())) == 3 and (next_position < real.sum(1)).all()  # the image shortens


def test_rotary_cos_sin_equal_transformers(tiny_policy):
    model = tiny_policy.model
    batch = three_prompts(tiny_policy)
    positions, _ = prompt_positions(batch.input_ids, batch.attention_mask, batch.image_grid_thw,
                                    model.config.image_token_id, 2)
    rotary = model.model.language_model.rotary_emb
    x = torch.zeros(1, dtype=torch.float32)
    expected_cos, expected_sin = rotary(x, positions)
    cos, sin = rotary_of(model).cos_sin(positions, torch.float32)
    assert torch.equal(cos, expected_cos) and torch.equal(sin, expected_sin)


def test_each_distinct_image_goes_through_the_vision_tower_once(tiny_policy):
    """Two of three prompts share an image: the tower sees 2 images; each prompt's features equal, bit
    for bit, what the tower gives on the G repeated rows that generate() and the old passes fed it."""
    samples = [sample(1, (112, 112)), sample(2, (56, 168)), sample(1, (112, 112), words=2)]
    batch = prompt_batch(tiny_policy, samples, [TRAINING_PROMPTS["explanation"]] * 3)
    model = tiny_policy.model
    seen = []
    hook = model.model.visual.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    encoded = encode_prompts(model, batch)
    hook.remove()
    assert seen == [64 + 48]  # one call, 8x8 + 4x12 patches: the shared image once
    rows = repeat_rows(batch, 3)
    with torch.no_grad():
        per_row = model.model.get_image_features(pixel_values=rows.pixel_values, image_grid_thw=rows.image_grid_thw)
    per_row = per_row.pooler_output
    for row, features in enumerate(per_row):
        assert torch.equal(encoded.image_features[row // 3], features)


def test_encoded_inputs_are_what_the_pixel_path_feeds_the_language_model(tiny_policy):
    """Hidden states from EncodedPrompts.inputs equal transformers' forward from pixel_values."""
    model = tiny_policy.model
    batch = three_prompts(tiny_policy)
    encoded = encode_prompts(model, batch)
    ids = torch.randint(0, 700, (6, 5), generator=torch.Generator().manual_seed(0))              # [N, L]
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2] * 3, dtype=torch.bool)                        # [N, L]
    rows = repeat_rows(batch, 2)
    with torch.no_grad():
        expected = model.model(**with_completions(rows, ids, mask), use_cache=False).last_hidden_state
        inputs = encoded.inputs(model, [0, 0, 1, 1, 2, 2], ids, mask)
        hidden = model.model.language_model(**inputs, use_cache=False).last_hidden_state
    real = torch.cat([rows.attention_mask.bool(), mask], 1)                                        # [N, P+L]
    torch.testing.assert_close(hidden[real], expected[real], rtol=0, atol=1e-6)


def test_prefill_once_then_expand_equals_prefilling_every_row(tiny_policy):
    model = tiny_policy.model
    batch = three_prompts(tiny_policy)
    once_cache, once_logits = engine.prefill(model, encode_prompts(model, batch))
    every_cache, every_logits = engine.prefill(model, encode_prompts(model, repeat_rows(batch, 2)))
    expanded = StaticKVCache.for_model(model, 6, batch.input_ids.shape[1] + 4)
    expanded.fill_prompts(once_cache, batch.attention_mask, 2)
    width = batch.input_ids.shape[1]
    real = repeat_rows(batch, 2).attention_mask.bool()                                             # [N, P]
    for name in ("keys", "values"):
        got, want = getattr(expanded, name)[:, :, :, :width], getattr(every_cache, name)
        torch.testing.assert_close(got.transpose(2, 3)[:, real], want.transpose(2, 3)[:, real], rtol=0, atol=1e-6)
    assert torch.equal(expanded.visible[:, :width], real) and not expanded.visible[:, width:].any()
    torch.testing.assert_close(once_logits.repeat_interleave(2, 0), every_logits, rtol=0, atol=1e-5)


def test_greedy_is_token_for_token_transformers_generate(lively):
    batch = three_prompts(lively)
    encoded = encode_prompts(lively.model, batch)
    ours = sample_groups(lively, batch, encoded, group_size=2, max_new_tokens=24, temperature=0.0)
    reference = sample_groups(lively, batch, encoded, group_size=2, max_new_tokens=24, temperature=0.0,
                              engine_name="hf")
    lengths = ours.lengths.tolist()
    assert max(lengths) == 24 and min(lengths) < 16  # rows end at different steps, some never
    assert torch.equal(ours.ids, reference.ids)
    assert torch.equal(ours.mask, reference.mask) and torch.equal(ours.truncated, reference.truncated)
    assert ours.texts == reference.texts


class Replay:
    """CapturedStep without CUDA: a warm-up call at construction (as graph capture makes), then plain calls."""

    def __init__(self, step):
        step()
        self.step = step

    def __call__(self):
        self.step()


def test_captured_step_path_gives_the_eager_tokens(lively, monkeypatch):
    """The CUDA path's state handling, run on the CPU: one warm-up step on the unset state before
    `start` (as graph capture does), then full-length masked attention on every step."""
    batch = three_prompts(lively)
    encoded = encode_prompts(lively.model, batch)
    eager = engine.generate(lively.model, lively.tokenizer, encoded, group_size=2, max_new_tokens=24, temperature=0)
    monkeypatch.setattr(engine, "captures", lambda device: True)
    monkeypatch.setattr(engine, "CapturedStep", Replay)
    captured = engine.generate(lively.model, lively.tokenizer, encoded, group_size=2, max_new_tokens=24,
                               temperature=0)
    assert torch.equal(captured.ids, eager.ids) and torch.equal(captured.mask, eager.mask)
    torch.testing.assert_close(captured.logprobs, eager.logprobs, rtol=0, atol=1e-5)  # full-length attention
    assert (captured.decoding, eager.decoding) == ("cuda graph", "eager")


def test_a_failed_capture_decodes_eagerly_and_says_why(lively, monkeypatch):
    class Unsupported:
        def __init__(self, step):
            raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    batch = three_prompts(lively)
    encoded = encode_prompts(lively.model, batch)
    eager = engine.generate(lively.model, lively.tokenizer, encoded, group_size=2, max_new_tokens=12, temperature=0)
    monkeypatch.setattr(engine, "captures", lambda device: True)
    monkeypatch.setattr(engine, "CapturedStep", Unsupported)
    with pytest.warns(UserWarning, match="capture of the decode step failed"):
        fallback = engine.generate(lively.model, lively.tokenizer, encoded, group_size=2, max_new_tokens=12,
                                   temperature=0)
    assert torch.equal(fallback.ids, eager.ids)
    assert fallback.decoding == "eager (CUDA graph capture failed: RuntimeError: operation not permitted when " \
                                "stream is capturing)"


def test_one_new_token_is_the_prefill_alone_and_zero_is_refused(lively, monkeypatch):
    """max_new_tokens 1: no decode step runs, none is captured (a graph's warm-up step would write
    token 2 of a 1-token buffer: a device-side assert on CUDA)."""
    batch = three_prompts(lively)
    encoded = encode_prompts(lively.model, batch)
    two = engine.generate(lively.model, lively.tokenizer, encoded, group_size=2, max_new_tokens=2, temperature=0)
    monkeypatch.setattr(engine, "captures", lambda device: True)
    monkeypatch.setattr(engine, "CapturedStep", lambda step: pytest.fail("a one-token decode captured a step"))
    one = engine.generate(lively.model, lively.tokenizer, encoded, group_size=2, max_new_tokens=1, temperature=0)
    assert one.ids.shape == (6, 1) and torch.equal(one.ids[:, 0], two.ids[:, 0])
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        engine.generate(lively.model, lively.tokenizer, encoded, group_size=2, max_new_tokens=0, temperature=0)


@pytest.mark.parametrize("engine_name", ["engine", "hf"])
def test_sampled_tokens_come_with_the_log_probs_they_were_drawn_with(tiny_policy, engine_name):
    """Each sampler returns the log-prob it drew each token with: log softmax(logits / T) over the ids
    it may draw (vision tokens banned), recomputed here from the logits it saw. The update's forward
    (completion_logprobs with the rollout's banned ids) gives the same numbers: in fp32 the sampler
    and the trainer are the same policy up to rounding (metrics.jsonl's rollout_logp_diff)."""
    untie_head(tiny_policy, seed=1)
    model, tokenizer = tiny_policy.model, tiny_policy.tokenizer
    batch = three_prompts(tiny_policy)
    encoded = encode_prompts(model, batch)
    banned = torch.tensor(token_ids(tokenizer, VISION_TOKENS))
    logits = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: logits.append(out[:, -1] if out.dim() == 3
                                                                                      else out))
    torch.manual_seed(0)
    completions = sample_groups(tiny_policy, batch, encoded, group_size=2, max_new_tokens=10, temperature=0.7,
                                engine_name=engine_name)
    hook.remove()
    if engine_name == "engine":
        logits[0] = logits[0].repeat_interleave(2, 0)               # the prefill gave [B, V]; each step [N, V]
    mask, ids = completions.mask, completions.ids
    drawn = torch.stack(logits[:ids.shape[1]], 1).float().index_fill(-1, banned, float("-inf")).div(0.7)  # [N, L, V]
    drawn = drawn.log_softmax(-1).gather(2, ids.unsqueeze(2)).squeeze(2)                                 # [N, L]
    torch.testing.assert_close(completions.logprobs[mask], drawn[mask], rtol=0, atol=1e-5)
    assert (completions.logprobs[~mask] == 0).all()
    with torch.no_grad():
        trained = completion_logprobs(model, encoded, [0, 0, 1, 1, 2, 2], ids, mask, temperature=0.7, banned=banned)
    difference = (trained - completions.logprobs)[mask].abs()
    assert difference.max() < 1e-5, difference.max()
    full_vocabulary = completion_logprobs(model, encoded, [0, 0, 1, 1, 2, 2], ids, mask, temperature=0.7)
    assert (full_vocabulary - completions.logprobs)[mask].abs().max() > 1e-2  # without the ban: 1,000 x further


def test_a_fixed_seed_gives_the_same_completions(tiny_policy):
    untie_head(tiny_policy)
    batch = three_prompts(tiny_policy)
    encoded = encode_prompts(tiny_policy.model, batch)
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(sample_groups(tiny_policy, batch, encoded, group_size=4, max_new_tokens=12, temperature=1.0).ids)
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert len({tuple(row) for row in runs[0].tolist()}) > 6  # the G rows of a prompt differ


def test_without_stop_at_end_every_row_decodes_the_limit(lively):
    batch = three_prompts(lively)
    completions = engine.generate(lively.model, lively.tokenizer, encode_prompts(lively.model, batch), group_size=2,
                                  max_new_tokens=16, temperature=0, stop_at_end=False)
    assert completions.ids.shape == (6, 16) and completions.mask.all() and completions.truncated.all()


def test_sampling_draws_each_token_with_its_probability_and_never_a_banned_one():
    from src.models.engine import next_tokens

    p = torch.tensor([0.05, 0.10, 0.20, 0.30, 0.35, 0.0])
    logits = p.clamp_min(1e-30).log()
    logits[5] = 10.0                                       # the likeliest token by far, but banned
    banned = torch.tensor([5])
    torch.manual_seed(0)
    draws, logp = next_tokens(logits.expand(200_000, -1), 1.0, banned)               # [200000] each
    frequency = torch.bincount(draws, minlength=6).float() / len(draws)
    assert frequency[5] == 0
    torch.testing.assert_close(frequency[:5], p[:5], rtol=0, atol=0.005)  # 4.7 sd at p = 0.35
    torch.testing.assert_close(logp, p[draws].log(), rtol=0, atol=1e-6)  # p over the allowed ids (they sum to 1)
    hot = torch.softmax(p[:5].log() / 2.0, 0)                             # temperature 2 flattens p
    draws, logp = next_tokens(logits.expand(200_000, -1), 2.0, banned)
    frequency = torch.bincount(draws, minlength=6).float() / 2e5
    torch.testing.assert_close(frequency[:5], hot, rtol=0, atol=0.005)
    torch.testing.assert_close(logp, hot[draws].log(), rtol=0, atol=1e-6)
    greedy, logp = next_tokens(logits.expand(3, -1), 0.0, banned)
    assert greedy.tolist() == [4, 4, 4]                                   # greedy skips the ban too
    torch.testing.assert_close(logp, torch.tensor(0.35).log().expand(3), rtol=0, atol=1e-6)  # temperature 1
