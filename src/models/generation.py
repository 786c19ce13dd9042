"""Sampling completions from a policy, for GRPO rollouts (temperature 1) and evaluation (greedy).

Two samplers, one contract (src/models/engine.py: Completions):
- "engine" (the default): src/models/engine.py, a static-cache decoder that prefills each prompt once
  and reuses the step's image features;
- "hf": transformers' `model.generate` on B * G repeated rows, the reference the engine is tested against.

A checkpoint's generation_config.json and what the samplers take from it
------------------------------------------------------------------------
The Instruct releases publish sampling settings there (src/models/families.py: sampling): Qwen2-VL and
Qwen2.5-VL near-greedy ones (top_k 1, top_p 0.001, a temperature near 0; Qwen2.5-VL also
repetition_penalty 1.05), Qwen3-VL chat sampling (temperature 0.7, top_k 20, top_p 0.8). Both samplers
ignore all of them (do_sample, temperature, top_k, top_p, min_p, typical_p, repetition_penalty, n-gram
bans, ...) in rollouts and in evaluation, and take only the token ids: the end of a completion is the
family's end tokens (<|im_end|>, <|endoftext|>: what every release's eos_token_id lists), padding is
the tokenizer's. The run's own flags decide how tokens are drawn: --temperature for rollouts (default
1.0), greedy for evaluation (--temperature 0 there by default). Why:
- GRPO samples from the policy pi_theta it optimises: the clipped ratio and the KL term of eq. 1-3 are
  ratios of pi_theta's probabilities, and the trainer's log-probs (its forward pass at the rollout
  temperature) must be the ones the tokens were drawn with (metrics.jsonl: rollout_logp_diff). A
  top-k / top-p truncation or a repetition penalty draws from another distribution: off-policy samples
  the loss would treat as on-policy.
- Evaluation compares models: the base model, its fine-tunes, other families. One decoding rule
  (greedy unless --temperature says otherwise) for all of them keeps a difference in scores a
  difference in the models, not in the settings each checkpoint happens to ship (Qwen3-VL's would make
  every evaluation random).
So the "hf" sampler runs generate with a generation config holding the checkpoint's token ids only
(`checkpoint_sampling_ignored`): transformers otherwise fills every setting the call leaves unset from
the checkpoint's file, a repetition_penalty of 1.05 included. The checkpoint's file itself is left as
it is: a merged export (src/models/export.py) keeps it for serving.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from tqdm import tqdm

from src.data.prompts import build_messages
from src.data.sample import Sample
from src.models import engine
from src.models.engine import END_TOKENS, VISION_TOKENS, Completions, completion_mask, token_ids
from src.models.encoded_prompts import EncodedPrompts, encode_prompts
from src.models.inputs import PromptBatch, build_prompt_batch, load_image, repeat_rows

ENGINES = ("engine", "hf")


class DrawnDistribution:
    """A logits processor that is the whole of what generate does to the logits, and keeps the
    log-probability of each token generate then draws.

    It bans the vision tokens (and whatever a min_new_tokens processor banned before it) and divides
    by the temperature itself; generate runs with temperature 1, no top-k / top-p, no suppress_tokens
    and none of the checkpoint's sampling settings (checkpoint_sampling_ignored), so its other
    processors change nothing and their order does not matter. Each
    call sees the token drawn after the previous call (the last of input_ids): its log-probability
    is read from the previous call's distribution. `logprobs(sequences)` adds the last token's.
    Greedy (temperature 0) keeps the unscaled distribution's log-probabilities, as the engine does.
    """

    def __init__(self, banned: list[int], temperature: float):
        self.banned, self.temperature = banned, temperature
        self.previous: torch.Tensor | None = None     # [N, V] log-softmax of the last call's distribution
        self.drawn: list[torch.Tensor] = []           # one [N] per token drawn so far

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.previous is not None:
            self.drawn.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))        # [N]
        banned = torch.tensor(self.banned, device=scores.device)
        scores = scores.float().index_fill(-1, banned, float("-inf"))                        # [N, V] fp32
        if self.temperature > 0:
            scores = scores / self.temperature
        self.previous = scores.log_softmax(-1)
        return scores

    def logprobs(self, sequences: torch.Tensor) -> torch.Tensor:
        """[N, L]: the log-probability of each of the L tokens generate drew (the last L of sequences)."""
        last = self.previous.gather(1, sequences[:, -1:]).squeeze(1)
        return torch.stack(self.drawn + [last], 1)


@contextlib.contextmanager
def checkpoint_sampling_ignored(model) -> Iterator[None]:
    """model.generation_config holds only the checkpoint's token ids (bos, eos, pad) for the duration: none
    of its sampling settings reach generate (module docstring)."""
    from transformers import GenerationConfig

    published = model.generation_config
    model.generation_config = GenerationConfig(**{key: getattr(published, key, None)
                                                  for key in ("bos_token_id", "eos_token_id", "pad_token_id")})
    try:
        yield
    finally:
        model.generation_config = published


@torch.no_grad()
def hf_generate(model, tokenizer, prompts: PromptBatch, max_new_tokens: int, temperature: float) -> Completions:
    """One completion per prompt row with transformers' generate; temperature 0 means greedy decoding."""
    from transformers import LogitsProcessorList

    end_ids = token_ids(tokenizer, END_TOKENS)
    distribution = DrawnDistribution(token_ids(tokenizer, VISION_TOKENS), temperature)
    sampling = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0) if temperature > 0 else \
        dict(do_sample=False)  # temperature 1 for generate: `distribution` applies the real one
    with checkpoint_sampling_ignored(model):
        out = model.generate(
            **prompts.model_kwargs, max_new_tokens=max_new_tokens, eos_token_id=end_ids,
            pad_token_id=tokenizer.pad_token_id, logits_processor=LogitsProcessorList([distribution]),
            use_cache=True, **sampling,
        )
    ids = out[:, prompts.input_ids.shape[1]:]                                    # [N, L]
    mask, truncated = completion_mask(ids, end_ids)
    ids = ids.masked_fill(~mask, tokenizer.pad_token_id)
    logprobs = distribution.logprobs(out).masked_fill(~mask, 0.0)                # [N, L]
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return Completions(ids=ids, mask=mask, truncated=truncated, logprobs=logprobs, texts=texts,
                       decoding="hf generate")


def sample_groups(policy, batch: PromptBatch, encoded: EncodedPrompts, *, group_size: int, max_new_tokens: int,
                  temperature: float, engine_name: str = "engine") -> Completions:
    """G completions of each of B prompts (row b * G + g: completion g of prompt b), from either sampler.
    `batch` is the tokenized prompts with pixels (what "hf" reads), `encoded` the same prompts with
    their image features (what "engine" reads)."""
    if engine_name == "engine":
        return engine.generate(policy.model, policy.tokenizer, encoded, group_size=group_size,
                               max_new_tokens=max_new_tokens, temperature=temperature)
    if engine_name == "hf":
        rows = repeat_rows(batch, group_size).to(policy.device)                 # N rows, each with its image
        return hf_generate(policy.model, policy.tokenizer, rows, max_new_tokens, temperature)
    raise ValueError(f"unknown rollout engine {engine_name!r}; expected one of {ENGINES}")


def prompt_batch(policy, samples: Sequence[Sample], system_prompts: Sequence[str]) -> PromptBatch:
    """B chats (system prompt + image + question), tokenized into one batch on the CPU."""
    conversations = [build_messages(s.question, system) for s, system in zip(samples, system_prompts)]
    images = [load_image(s.image, name=f"{s.dataset} sample {s.id}") for s in samples]
    return build_prompt_batch(policy.tokenizer, policy.image_processor, conversations, images)


def generate_completions(policy, samples: Sequence[Sample], system_prompt: str, max_new_tokens: int = 512,
                         temperature: float = 0.0, batch_size: int = 8, engine_name: str = "engine") -> list[str]:
    """One completion per sample under `system_prompt` (greedy by default), in batches, for evaluation."""
    policy.model.eval()
    texts: list[str] = []
    starts = range(0, len(samples), batch_size)
    for start in tqdm(starts, desc="generate", unit="batch", disable=len(starts) < 2):
        chunk = samples[start:start + batch_size]
        batch = prompt_batch(policy, chunk, [system_prompt] * len(chunk))
        encoded = encode_prompts(policy.model, batch) if engine_name == "engine" else None
        texts += sample_groups(policy, batch, encoded, group_size=1, max_new_tokens=max_new_tokens,
                               temperature=temperature, engine_name=engine_name).texts
    return texts
