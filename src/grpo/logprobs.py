"""log pi(token) of the sampled completion tokens, without a full-vocabulary fp32 log-softmax.

The loss needs one number per token, log p(target) = logit[target] - logsumexp(logits). The naive
torch.log_softmax(logits.float(), -1).gather(...) first builds [T, V] fp32 log-probabilities: with
Qwen2-VL's V = 151,936, 8 completions x 512 tokens make 2.5 GB, and autograd keeps it for backward.

linear_logprobs(hidden, weight, targets) is the "fused linear log-softmax" of Liger Kernel's
FusedLinearCrossEntropy: it starts from the final hidden states and the lm_head weight, so the [T, V]
logits are never held for the whole batch; each chunk's logits are computed, reduced to (logsumexp,
target logit) and dropped, and recomputed in backward. It returns fp32 [T] (or [N, L]) log-probs and
is exact: equal to the naive computation up to fp32 rounding. Backward of log p(target) w.r.t. the
logits z is g * (onehot(target) - softmax(z)). (benchmarks/logprobs_memory.py measures it against the
naive forms and against a chunked log-softmax of logits that exist already.)
"""
from __future__ import annotations

import torch
from torch import Tensor


def scaled_chunk(logits: Tensor, temperature: float, banned: Tensor | None = None) -> Tensor:
    """A fresh copy of logits / temperature in fp32 (float64 if the logits are: so that float64
    tests check the math exactly), -inf at the `banned` ids. Fresh, so the helpers below may work on
    it in place."""
    scaled = logits.to(torch.promote_types(logits.dtype, torch.float32), copy=True).div_(temperature)
    return scaled if banned is None else scaled.index_fill_(-1, banned, float("-inf"))


def target_logprob(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """fp32 logits [..., V], targets [...] -> (log p(target) [...], logsumexp [...]).
    logsumexp(z) = m + log sum exp(z - m) with m = max z, computed in place in `logits` (a
    scaled_chunk, overwritten) so that no second [c, V] fp32 tensor is made."""
    target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [...]
    max_logit = logits.amax(dim=-1)  # [...]
    lse = logits.sub_(max_logit.unsqueeze(-1)).exp_().sum(dim=-1).log_() + max_logit  # [...]
    return target_logit - lse, lse


def logits_grad(logits: Tensor, lse: Tensor, targets: Tensor, grad_out: Tensor) -> Tensor:
    """Gradient of grad_out * log p(target) w.r.t. fp32 logits [..., V]: g * (onehot - softmax).
    Built in place in `logits` (a scaled_chunk, overwritten): one [c, V] fp32 tensor, not three."""
    softmax = logits.sub_(lse.unsqueeze(-1)).exp_()  # [..., V]
    grad = softmax.mul_(-grad_out.unsqueeze(-1))  # [..., V], -g softmax
    return grad.scatter_add_(-1, targets.unsqueeze(-1), grad_out.unsqueeze(-1))  # + g onehot


class _LinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float, chunk_size: int,
                banned: Tensor | None):
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        logp = torch.empty(targets.shape, dtype=dtype, device=hidden.device)  # [T]
        lse = torch.empty_like(logp)  # [T]
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            # The matmul runs in the inputs' dtype, as the model's own lm_head would (GPU kernels
            # accumulate bf16 products in fp32); the softmax math is fp32.
            logits = scaled_chunk(hidden[rows] @ weight.T, temperature, banned)  # [c, V] fp32
            logp[rows], lse[rows] = target_logprob(logits, targets[rows])
            del logits  # free it before the next chunk is built, not after
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.chunk_size, ctx.banned = temperature, chunk_size, banned
        return logp

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None  # [T, H]
        # Under LoRA the lm_head is frozen and this stays None; under full fine-tuning the weight
        # gradient sums over every chunk, so it accumulates in fp32.
        grad_weight = torch.zeros_like(weight, dtype=lse.dtype) if need_weight else None  # [V, H]
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            logits = scaled_chunk(hidden[rows] @ weight.T, ctx.temperature, ctx.banned)  # [c, V] fp32, recomputed
            grad_logits = logits_grad(logits, lse[rows], targets[rows], grad_out[rows])  # [c, V]
            grad_logits = grad_logits.div_(ctx.temperature).to(hidden.dtype)  # through z = h W^T / temp
            if need_hidden:
                grad_hidden[rows] = grad_logits @ weight  # [c, H]
            if need_weight:
                grad_weight += grad_logits.T @ hidden[rows]  # [V, H]
            del logits, grad_logits
        if need_weight:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def linear_logprobs(
    hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float = 1.0, chunk_size: int = 512,
    banned: Tensor | None = None,
) -> Tensor:
    """log softmax(hidden @ weight.T / temperature)[target] in fp32, never holding [T, V] logits.

    hidden: [N, L, H] or [T, H] final hidden states (after the last norm) at the positions that
            predict the targets; weight: [V, H] the lm_head weight; targets: [N, L] or [T] token ids.
    temperature: the sampling temperature, so that log-probs match the distribution sampled from.
    chunk_size: tokens per chunk. Extra memory is one chunk of logits in the inputs' dtype and one
            in fp32, chunk_size * V * (2 + 4) bytes (467 MB at 512 tokens on Qwen2-VL, bf16), in
            forward and in backward. Smaller saves memory but costs GPU time: each chunk rereads
            all of W, doing chunk_size flops per byte of it, and an H100 needs ~300 per byte to
            stay compute-bound.
    banned: [k] token ids with probability 0 (logit -inf), as the sampler never draws them: the
            softmax is then over the other ids, the distribution completions were drawn from
            (src/models/engine.py: next_tokens). No target may be a banned id.
    Returns fp32 (float64 for float64 inputs) of targets' shape. Gradients flow to hidden, and to
    weight when it requires grad (none to the banned logits).
    """
    if hidden.shape[:-1] != targets.shape or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"expected hidden [..., H], weight [V, H], targets [...], got hidden {tuple(hidden.shape)}, "
            f"weight {tuple(weight.shape)}, targets {tuple(targets.shape)}"
        )
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])  # [T, H]
    logp = _LinearLogprobs.apply(flat_hidden, weight, targets.reshape(-1), temperature, chunk_size, banned)  # [T]
    return logp.view(targets.shape)  # [N, L] or [T]
