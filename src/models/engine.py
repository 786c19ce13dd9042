"""The rollout engine: G completions per prompt from a static KV cache, in plain PyTorch.

    prompts = encode_prompts(model, batch)     # each distinct image through the vision tower once
    completions = generate(model, tokenizer, prompts, group_size=G, max_new_tokens=L, temperature=1.0)

What it does, and what `model.generate` on B * G repeated rows does instead:
1. prefill once per prompt: B rows through the language model (image features from `prompts`), not
   B * G; the prompt's keys and values are then copied to its G rows of the cache;
2. a static cache [layers, B * G, kv_heads, P + L, head_dim] allocated once (src/models/kv_cache.py);
3. decode steps that read their inputs from, and write their outputs to, preallocated tensors and never
   wait on the host, so on CUDA one step is captured as a graph and replayed (src/models/cuda_graph.py);
   on CPU they run eagerly, attending only to the positions filled so far;
4. end-of-sequence is checked on the host every `check_every` steps, and decoding stops when every row
   has ended. Eager decoding then drops the rows that ended (they cost a decode step nothing from there
   on); a captured graph has fixed shapes, so there an ended row keeps producing padding until the end.
If capturing the graph fails, decoding runs eagerly (the same tokens, slower) and says so: a warning,
and `Completions.decoding` names the error. Each token comes with the log-probability it was drawn
with (src/models/sampling.py), which the trainer compares with its own forward pass every step.
LoRA runs as the side path of each adapted projection, the same computation as in the training forward,
so the sampling policy is the trained one up to float rounding (merging B A into bf16 weights would
round small adapter updates away).

The rules of src/models/generation.py hold: vision special tokens are never emitted, a completion ends
at its first <|im_end|> or <|endoftext|> (kept in the mask), temperature 0 is greedy. Greedy output is
token for token the one of transformers' generate (tests/test_engine.py).
Shape legend: B prompts, G completions per prompt, N = B * G rows, P prompt tokens, L new tokens.
"""
from __future__ import annotations

import warnings

import torch

from src.models import decoder
from src.models.cuda_graph import CapturedStep
from src.models.encoded_prompts import EncodedPrompts
from src.models.completions import END_TOKENS, VISION_TOKENS, Completions, completion_mask, token_ids
from src.models.kv_cache import StaticKVCache
from src.models.sampling import next_tokens


class DecodeStep:
    """One decode step over N rows, reading and writing only the tensors allocated here.

    token [r]: the token fed next; step []: its index in the completion; done [r]: the row has ended;
    rows [r]: which of the N completions each of the r rows still decoding is; out [N, L]: the
    completion tokens so far (padding after the end); logp [N, L] fp32: the log-probability each was
    drawn with (0 after the end); cache: the static KV cache.
    """

    def __init__(self, model, rows: int, prompt_length: int, max_new_tokens: int, temperature: float,
                 banned: torch.Tensor, end_ids: torch.Tensor, pad_id: int):
        device = banned.device
        self.model, self.prompt_length, self.temperature = model, prompt_length, temperature
        self.banned, self.end_ids, self.pad_id = banned, end_ids, pad_id
        self.cache = StaticKVCache.for_model(model, rows, prompt_length + max_new_tokens)
        self.token = torch.zeros(rows, dtype=torch.long, device=device)
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.done = torch.zeros(rows, dtype=torch.bool, device=device)
        self.out = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
        self.logp = torch.zeros(rows, max_new_tokens, dtype=torch.float32, device=device)
        self.first_position = torch.zeros(rows, dtype=torch.long, device=device)
        self.rows = torch.arange(rows, device=device)

    def start(self, prompt_cache: StaticKVCache, prompt_mask: torch.Tensor, group_size: int,
              next_position: torch.Tensor, first: torch.Tensor, first_logp: torch.Tensor) -> None:
        """Load the prefilled prompts (each into its G rows) and the first sampled token of every row."""
        self.cache.fill_prompts(prompt_cache, prompt_mask.bool(), group_size)
        self.first_position.copy_(next_position.repeat_interleave(group_size))      # [N]
        self.token.copy_(first)
        self.step.zero_()
        self.out.fill_(self.pad_id)
        self.out[:, 0] = first
        self.logp.zero_()
        self.logp[:, 0] = first_logp
        self.done.copy_(self.ends(first))

    def ends(self, token: torch.Tensor) -> torch.Tensor:
        return (token[:, None] == self.end_ids).any(1)                                # [N] bool

    def __call__(self, kv_length: int | None = None) -> None:
        """Feed `token`, sample the next one into `out`. kv_length: attend to this many cache positions
        (eager runs pass the filled length; a captured graph attends to all, masked)."""
        index = (self.step + self.prompt_length).view(1)                              # [1] cache position
        self.cache.visible.index_fill_(1, index, True)
        position = (self.first_position + self.step).expand(3, -1).unsqueeze(-1)      # [3, N, 1] M-RoPE
        embeds = self.model.get_input_embeddings()(self.token).unsqueeze(1)           # [N, 1, H]
        visible = self.cache.visible[:, None, None, :]                                # [N, 1, 1, P+L]
        hidden = decoder.forward(self.model, embeds, position, self.cache, index, visible, kv_length)
        token, logp = next_tokens(self.model.lm_head(hidden[:, -1]), self.temperature, self.banned)  # [N], [N]
        token = torch.where(self.done, self.pad_id, token)                            # padding after the end
        logp = torch.where(self.done, 0.0, logp)
        self.step += 1
        at = (self.rows, self.step.expand_as(self.rows))
        self.out.index_put_(at, token)                                                # out[rows, step] = token
        self.logp.index_put_(at, logp)
        self.done |= self.ends(token)
        self.token.copy_(token)

    def keep(self, live: torch.Tensor) -> None:
        """Decode only the rows where `live` [r] is True from now on."""
        index = live.nonzero().squeeze(1)                                             # [r']
        self.cache.keep(index)
        self.token, self.done, self.first_position, self.rows = (
            t[index] for t in (self.token, self.done, self.first_position, self.rows))


def captures(device: torch.device) -> bool:
    """Decode steps are captured as a CUDA graph on CUDA devices and run eagerly elsewhere."""
    return device.type == "cuda"


@torch.no_grad()
def prefill(model, prompts: EncodedPrompts) -> tuple[StaticKVCache, torch.Tensor]:
    """The B prompts through the language model once: their KV cache and next-token logits [B, V]."""
    batch, width = prompts.input_ids.shape
    inputs = prompts.inputs(model, range(batch))
    cache = StaticKVCache.for_model(model, batch, width)
    index = torch.arange(width, device=prompts.input_ids.device)
    hidden = decoder.forward(model, inputs["inputs_embeds"], inputs["position_ids"], cache, index,
                             decoder.prefill_visibility(prompts.attention_mask))           # [B, P, H]
    return cache, model.lm_head(hidden[:, -1])                                             # [B, V]


@torch.no_grad()
def generate(model, tokenizer, prompts: EncodedPrompts, *, group_size: int, max_new_tokens: int,
             temperature: float, stop_at_end: bool = True, check_every: int = 8,
             cuda_graph: bool | None = None) -> Completions:
    """G completions of each of the B prompts (row b * G + g is completion g of prompt b). The model must
    be in eval mode (no dropout while sampling). stop_at_end=False bans the end tokens too, so that every
    row decodes exactly max_new_tokens tokens (benchmarks). cuda_graph: replay decode steps from a CUDA
    graph (default: on CUDA devices); False decodes eagerly."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    device = prompts.input_ids.device
    rows, width = len(prompts) * group_size, prompts.input_ids.shape[1]
    end_list = token_ids(tokenizer, END_TOKENS)
    end_ids = torch.tensor(end_list, device=device)
    banned = torch.tensor(token_ids(tokenizer, VISION_TOKENS) + ([] if stop_at_end else end_list), device=device)
    step = DecodeStep(model, rows, width, max_new_tokens, temperature, banned, end_ids, tokenizer.pad_token_id)
    capture = captures(device) if cuda_graph is None else cuda_graph
    # one token is the prefill's alone: no decode step to capture (its warm-up would write past `out`)
    run_step, decoding = capture_or_eager(step) if capture and max_new_tokens > 1 else (None, "eager")

    prompt_cache, logits = prefill(model, prompts)                                          # [B, V]
    first, first_logp = next_tokens(logits.repeat_interleave(group_size, 0), temperature, banned)  # [N], [N]
    step.start(prompt_cache, prompts.attention_mask, group_size, prompts.next_position, first, first_logp)
    del prompt_cache
    decoded = 1
    while decoded < max_new_tokens:
        if run_step is not None:
            run_step()
        else:
            step(kv_length=width + decoded)  # the prompt and the decoded tokens so far, this one included
        decoded += 1
        if decoded % check_every == 0:  # the loop's only host synchronisation
            if bool(step.done.all()):
                break
            if run_step is None and bool(step.done.any()):
                step.keep(~step.done)

    ids = step.out[:, :decoded]                                                             # [N, <=L]
    mask, truncated = completion_mask(ids, end_list)
    length = int(mask.sum(1).max())                 # as generate: up to the longest completion's end
    ids, mask = ids[:, :length].masked_fill(~mask[:, :length], tokenizer.pad_token_id), mask[:, :length]
    logp = step.logp[:, :length].masked_fill(~mask, 0.0)                                   # [N, L]
    return Completions(ids=ids, mask=mask, truncated=truncated, logprobs=logp,
                       texts=tokenizer.batch_decode(ids, skip_special_tokens=True), decoding=decoding)


def capture_or_eager(step: DecodeStep) -> tuple[CapturedStep | None, str]:
    """The step captured as a CUDA graph, or None (eager decoding) when capture fails: then the
    warning and the returned description name the error, and the completions are the same, slower.
    A failed capture has run the step on unset state at most once; `start` resets all of it."""
    try:
        return CapturedStep(step), "cuda graph"
    except Exception as error:  # noqa: BLE001 - any capture failure: decode eagerly rather than not at all
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        warnings.warn(f"CUDA graph capture of the decode step failed ({reason}); decoding eagerly", stacklevel=3)
        return None, f"eager (CUDA graph capture failed: {reason})"
