"""The rollout engine: G completions per prompt from a static KV cache, in plain PyTorch.

    prompts = encode_prompts(model, batch)     # each distinct image through the vision tower once
    completions = generate(model, tokenizer, prompts, group_size=G, max_new_tokens=L, temperature=1.0)

What it does, and what `model.generate` on B * G repeated rows does instead:
1. prefill once per prompt: B rows through the language model (image features from `prompts`), not
   B * G; the prompt's keys and values are then copied to its G rows of the cache;
2. a static cache [layers, B * G, kv_heads, P + L, head_dim] allocated once (StaticKVCache below);
3. decode steps that read their inputs from, and write their outputs to, preallocated tensors and never
   wait on the host, so on CUDA one step is captured as a graph and replayed (CapturedStep below);
   on CPU they run eagerly, attending only to the positions filled so far;
4. end-of-sequence is checked on the host every `check_every` steps, and decoding stops when every row
   has ended. Eager decoding then drops the rows that ended (they cost a decode step nothing from there
   on); a captured graph has fixed shapes, so there an ended row keeps producing padding until the end.
If capturing the graph fails, decoding runs eagerly (the same tokens, slower) and says so: a warning,
and `Completions.decoding` names the error. Each token comes with the log-probability it was drawn
with (next_tokens below), which the trainer compares with its own forward pass every step.
LoRA runs as the side path of each adapted projection, the same computation as in the training forward,
so the sampling policy is the trained one up to float rounding (merging B A into bf16 weights would
round small adapter updates away).

The rules of every sampler hold (Completions below): vision special tokens are never emitted, a completion ends
at its first <|im_end|> or <|endoftext|> (kept in the mask), temperature 0 is greedy. Greedy output is
token for token the one of transformers' generate, in every family (tests/test_engine.py, test_families.py).
Shape legend: B prompts, G completions per prompt, N = B * G rows, P prompt tokens, L new tokens.

The module reads top to bottom: what a completion is; choosing a token; the static KV cache; the
language model over that cache; the CUDA graph of one decode step; the decode step; prefill and generate.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from src.models.encoded_prompts import EncodedPrompts
# END_TOKENS, VISION_TOKENS: the tokens every sampler ends at and never emits, in every family
from src.models.families import END_TOKENS, VISION_TOKENS, add_deepstack, family_of, projections
from src.models.mrope import rotary_of, rotate


# ----------------------------------------------------------------------------------------------------
# What a sampled completion is, whichever sampler produced it.
#
# Two rules every sampler keeps and every caller relies on:
# - vision special tokens are never emitted: a completion holding `<|image_pad|>` would break the next
#   forward pass ("Image features and image tokens do not match"), and a random or young policy does
#   sample them;
# - a completion ends at its first `<|im_end|>` (or `<|endoftext|>`); the mask keeps that end token
#   (its log-prob is part of the policy's choice to stop) and zeroes everything after it.
# ----------------------------------------------------------------------------------------------------



@dataclass
class Completions:
    """N sampled completions, right-padded to the longest one (L tokens)."""

    ids: torch.Tensor         # [N, L] long, pad after the end token
    mask: torch.Tensor        # [N, L] bool, True up to and including the end token
    truncated: torch.Tensor   # [N] bool, no end token within max_new_tokens
    logprobs: torch.Tensor    # [N, L] fp32 log-prob each token was drawn with (next_tokens), 0 after the end
    texts: list[str]          # decoded without special tokens
    decoding: str = ""        # how the sampler ran, for logs ("cuda graph", "eager", "hf generate", ...)

    @property
    def lengths(self) -> torch.Tensor:  # [N] tokens per completion, end token included
        return self.mask.sum(1)


def token_ids(tokenizer, tokens: Sequence[str]) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def completion_mask(ids: torch.Tensor, end_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, L] mask that is True up to and including the first end token; and [N] 'no end token' flags."""
    is_end = torch.isin(ids, torch.tensor(list(end_ids), device=ids.device))     # [N, L]
    ended_before = (is_end.long().cumsum(1) - is_end.long()) > 0                 # an end token strictly earlier
    return ~ended_before, ~is_end.any(1)


# ----------------------------------------------------------------------------------------------------
# Choosing the next token from the logits, on the device, without waiting on the host.
#
# temperature 0 is greedy (argmax; ties go to the lowest id, as in transformers). Otherwise one draw from
# p = softmax(logits / temperature) by inverse transform sampling: one uniform number u per row, and the
# first token whose cumulative probability exceeds u. It is exact (up to float rounding of the cumulative
# sum), needs no host synchronisation, so it runs inside a CUDA graph, and costs a cumulative sum and a
# binary search per row: torch.multinomial costs more than the tiny model's whole decode step on a CPU
# and may synchronise on CUDA, and the exponential race (argmax p / Exp(1)) draws V numbers per row.
# The uniform numbers come from torch's default generator of the device, whose state checkpoints save:
# a resumed run draws the same tokens. Banned ids (the vision special tokens) get probability 0 and are
# never drawn: a token with p = 0 adds nothing to the cumulative sum, so no u lands on it.
#
# Each token comes with its log-probability under the distribution it was drawn from: the softmax of
# logits / temperature over the ids that are not banned (the policy the trainer's log-probs compute,
# src/grpo/step.py: completion_logprobs), so the trainer can measure how far its own forward pass is from the sampler's.
# Greedy tokens come with the log-probabilities of the unscaled distribution (temperature 1).
# ----------------------------------------------------------------------------------------------------

def next_tokens(logits: torch.Tensor, temperature: float, banned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [n, V] -> (token ids [n], their log-probabilities [n] fp32); `banned` [k] ids are never chosen."""
    logits = logits.float().index_fill(-1, banned, float("-inf"))                  # [n, V] fp32
    scaled = logits / temperature if temperature > 0 else logits                   # [n, V]
    if temperature == 0:
        token = logits.argmax(-1)                                                  # [n]
    else:
        cumulative = torch.softmax(scaled, dim=-1).cumsum(-1)                      # [n, V]
        total = cumulative[:, -1:]                                                 # [n, 1], 1 up to rounding
        u = torch.rand(total.shape, device=logits.device) * total                  # [n, 1] in [0, total)
        u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))      # < total even after rounding
        token = torch.searchsorted(cumulative, u, right=True).squeeze(1)           # first cumulative > u
    logp = scaled.gather(-1, token.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(scaled, dim=-1)  # [n]
    return token, logp


# ----------------------------------------------------------------------------------------------------
# A static KV cache: every layer's keys and values for `rows` sequences of up to `length` tokens,
# allocated once before decoding.
#
# Nothing is allocated or concatenated per token: decode step i writes its keys and values at index P + i,
# in place, and marks that index as visible. Fixed shapes and in-place writes are also what lets a CUDA
# graph capture a decode step once and replay it for every token (CapturedStep).
# ----------------------------------------------------------------------------------------------------

class StaticKVCache:
    """keys, values: [layers, rows, kv_heads, length, head_dim]; visible: [rows, length] bool, the key
    positions a query may attend to (real prompt tokens and the tokens decoded so far)."""

    def __init__(self, layers: int, rows: int, kv_heads: int, length: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (layers, rows, kv_heads, length, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.visible = torch.zeros(rows, length, dtype=torch.bool, device=device)

    @classmethod
    def for_model(cls, model, rows: int, length: int) -> StaticKVCache:
        text = model.config.text_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        weight = model.get_input_embeddings().weight
        return cls(text.num_hidden_layers, rows, text.num_key_value_heads, length, head_dim, weight.dtype,
                   weight.device)

    @property
    def rows(self) -> int:
        return self.keys.shape[1]

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor, index: torch.Tensor) -> None:
        """keys, values [rows, kv_heads, S, head_dim] at token positions `index` [S] (a device tensor)."""
        self.keys[layer].index_copy_(2, index, keys)
        self.values[layer].index_copy_(2, index, values)

    def fill_prompts(self, prompts: StaticKVCache, prompt_visible: torch.Tensor, group_size: int) -> None:
        """Copy B prefilled prompts into this cache's B * G rows (row b * G + g is a copy of prompt b):
        each prompt is prefilled once, not once per completion. prompt_visible: [B, P] real tokens."""
        width = prompts.keys.shape[3]
        self.keys[:, :, :, :width] = prompts.keys.repeat_interleave(group_size, dim=1)
        self.values[:, :, :, :width] = prompts.values.repeat_interleave(group_size, dim=1)
        self.visible.zero_()
        self.visible[:, :width] = prompt_visible.repeat_interleave(group_size, dim=0)

    def keep(self, rows: torch.Tensor) -> None:
        """Only rows `rows` [r] from now on (the others have finished decoding)."""
        self.keys, self.values, self.visible = self.keys[:, rows], self.values[:, rows], self.visible[rows]


# ----------------------------------------------------------------------------------------------------
# The language model's forward pass over a static KV cache, for prefill and for one-token decode steps.
#
# The layers' own modules do the work (RMSNorms, the q/k/v/o projections, LoRA side paths included, the
# MLPs); only attention is written here, because it reads and writes the static cache:
#
#     for each layer:  h = norm(x);  q, k, v = proj(h);  [q, k = q_norm(q), k_norm(k)];  q, k = M-RoPE(q, k)
#                      cache[layer][:, :, index] = k, v
#                      x = x + o_proj(softmax(q K^T / sqrt(D) + mask) V);   x = x + mlp(norm(x))
#                      [x[image positions] += DeepStack features of this layer]
#
# The bracketed parts are the family's (src/models/families.py): Qwen3-VL's q/k RMSNorm per head, and its
# DeepStack, which only a prompt's prefill has (completion tokens are never image tokens). The rotary
# layout (chunked or interleaved) is the family's too (src/models/mrope.py).
#
# Grouped-query attention (Qwen2-VL-2B: 12 query heads on 2 KV heads) never copies keys in decoding:
# a one-token query's 6 heads per KV head are laid out as 6 query positions of that KV head, as
# transformers does. Prefill repeats the keys per query head, as transformers does with a mask.
# ----------------------------------------------------------------------------------------------------

def attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor,
              scale: float) -> torch.Tensor:
    """q [n, Hq, S, D], keys/values [n, Hkv, T, D], visible [n, 1, S, T] bool -> [n, Hq, S, D]."""
    n, heads, length, dim = q.shape
    groups = heads // keys.shape[1]
    if length == 1:  # decode: query heads of one KV head as positions, no key copies
        out = F.scaled_dot_product_attention(q.reshape(n, -1, groups, dim), keys, values, attn_mask=visible,
                                             scale=scale)                      # [n, Hkv, groups, D]
        return out.reshape(n, heads, 1, dim)
    keys = keys.repeat_interleave(groups, dim=1)                                 # [n, Hq, T, D]
    values = values.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=visible, scale=scale)


def decode_forward(model, embeds: torch.Tensor, positions: torch.Tensor, cache: StaticKVCache, index: torch.Tensor,
                   visible: torch.Tensor, kv_length: int | None = None, image_positions: torch.Tensor | None = None,
                   deepstack: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """Final hidden states [n, S, H] of tokens `embeds` [n, S, H] at M-RoPE `positions` [3, n, S],
    written to the cache at token positions `index` [S]; attention sees the cache's first `kv_length`
    positions (all by default: fixed shapes for CUDA graphs) where `visible` [n, 1, S, T] allows.
    DeepStack (Qwen3-VL's prefill): `deepstack[i]` [k, H] is added after layer i at the k `image_positions`
    ([n, S] bool)."""
    lm, family = model.model.language_model, family_of(model)
    n, length, _ = embeds.shape
    cos, sin = rotary_of(model).cos_sin(positions, embeds.dtype)                       # [n, S, D] each
    x = embeds
    for layer_index, layer in enumerate(lm.layers):
        attn = layer.self_attn
        q, k, v = (t.transpose(1, 2) for t in projections(attn, layer.input_layernorm(x), family))  # [n, H*, S, D]
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        cache.write(layer_index, k, v, index)
        keys = cache.keys[layer_index][:, :, :kv_length]                               # [n, Hkv, T, D]
        values = cache.values[layer_index][:, :, :kv_length]
        out = attention(q, keys, values, visible[..., :keys.shape[2]], attn.scaling)   # [n, Hq, S, D]
        x = x + attn.o_proj(out.transpose(1, 2).reshape(n, length, -1))                # [n, S, H]
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        if layer_index < len(deepstack):
            x = add_deepstack(x, image_positions, deepstack[layer_index])              # [n, S, H]
    return lm.norm(x)


def prefill_visibility(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, P] real-token mask -> [B, 1, P, P]: causal over real tokens; a padding position sees only
    itself (it is never seen by others, and a query with nothing to see would give NaN)."""
    width = attention_mask.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=attention_mask.device).tril()   # [P, P]
    diagonal = torch.eye(width, dtype=torch.bool, device=attention_mask.device)
    return ((causal & attention_mask.bool()[:, None, :]) | diagonal).unsqueeze(1)              # [B, 1, P, P]


# ----------------------------------------------------------------------------------------------------
# One decode step captured as a CUDA graph, then replayed for every token.
#
# Eager decoding of a 2B model launches hundreds of small kernels per token, and the GPU idles while Python
# issues them. A CUDA graph records the launches once and replays them with one call. That requires a
# step whose every input and output lives in tensors allocated before capture (the static KV cache, the
# decode state) and that never waits on the host: the decode step (DecodeStep) is written that way.
# Random numbers inside the graph come from the default CUDA generator, which advances on each replay.
# ----------------------------------------------------------------------------------------------------

class CapturedStep:
    """`step()` captured once; calling the object replays it. Run before the state is initialised: the
    warm-up call executes `step` for real on whatever the state holds (capture itself executes nothing)."""

    def __init__(self, step: Callable[[], None]):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the capture: lazy cuBLAS/allocator initialisation
            step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            step()

    def __call__(self) -> None:
        self.graph.replay()


# ----------------------------------------------------------------------------------------------------
# Prefill, the decode step over N rows, and generate.
# ----------------------------------------------------------------------------------------------------

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
        hidden = decode_forward(self.model, embeds, position, self.cache, index, visible, kv_length)
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
    hidden = decode_forward(model, inputs["inputs_embeds"], inputs["position_ids"], cache, index,
                            prefill_visibility(prompts.attention_mask), image_positions=inputs.get("visual_pos_masks"),
                            deepstack=inputs.get("deepstack_visual_embeds", ()))   # [B, P, H]
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
