"""Chunked log-probs (selective_log_softmax, linear_logprobs) against the naive full log-softmax."""
import pytest
import torch

from benchmarks.logprobs_memory import selective_log_softmax
from src.grpo.logprobs import linear_logprobs

N, L, H, V = 5, 7, 6, 13  # T = 35 tokens: chunk sizes 2 (rows) and 8 (tokens) do not divide them
TEMPERATURE = 0.7


def naive_logprobs(logits, targets, temperature=1.0):
    """The reference: a full fp32 (or float64) log-softmax over the vocabulary, then gather."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def make_inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, L, H, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(V, H, generator=g, dtype=dtype).requires_grad_()
    targets = torch.randint(V, (N, L), generator=g)
    upstream = torch.randn(N, L, generator=g, dtype=torch.promote_types(dtype, torch.float32))
    return hidden, weight, targets, upstream


def grads(fn, inputs, upstream):
    """Gradients of <fn(), upstream> w.r.t. inputs: a random upstream checks every token's grad."""
    return torch.autograd.grad((fn() * upstream).sum(), inputs)


def grad_pairs(fast, slow, inputs, upstream):
    """(fast, slow) gradient pairs, one per input."""
    return zip(grads(fast, inputs, upstream), grads(slow, inputs, upstream))


# The tolerance is deliberate: float64 checks the math (1e-10), float32 its rounding (1e-5).
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_selective_log_softmax_matches_naive(dtype, atol):
    hidden, weight, targets, upstream = make_inputs(dtype)
    logits = (hidden @ weight.T).detach().requires_grad_()  # [N, L, V]
    fast = lambda: selective_log_softmax(logits, targets, temperature=TEMPERATURE, chunk_rows=2)
    slow = lambda: naive_logprobs(logits, targets, TEMPERATURE)
    torch.testing.assert_close(fast(), slow(), rtol=0, atol=atol)
    ((g_fast, g_slow),) = grad_pairs(fast, slow, [logits], upstream)
    torch.testing.assert_close(g_fast, g_slow, rtol=0, atol=atol)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_linear_logprobs_matches_naive(dtype, atol):
    hidden, weight, targets, upstream = make_inputs(dtype)
    fast = lambda: linear_logprobs(hidden, weight, targets, temperature=TEMPERATURE, chunk_size=8)
    slow = lambda: naive_logprobs(hidden @ weight.T, targets, TEMPERATURE)
    torch.testing.assert_close(fast(), slow(), rtol=0, atol=atol)
    for g_fast, g_slow in grad_pairs(fast, slow, [hidden, weight], upstream):
        torch.testing.assert_close(g_fast, g_slow, rtol=0, atol=atol)


def test_gradcheck_float64():
    hidden, weight, targets, _ = make_inputs(torch.float64)
    logits = (hidden @ weight.T).detach().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: selective_log_softmax(z, targets, temperature=TEMPERATURE, chunk_rows=2), (logits,)
    )
    assert torch.autograd.gradcheck(
        lambda h, w: linear_logprobs(h, w, targets, temperature=TEMPERATURE, chunk_size=8), (hidden, weight)
    )


def test_linear_logprobs_frozen_weight_gets_no_gradient():
    # Under LoRA the lm_head is frozen: only hidden gets a gradient, and it is the same.
    hidden, weight, targets, upstream = make_inputs(torch.float64)
    frozen = weight.detach()
    fast = lambda: linear_logprobs(hidden, frozen, targets, chunk_size=8)
    slow = lambda: naive_logprobs(hidden @ frozen.T, targets)
    ((g_fast, g_slow),) = grad_pairs(fast, slow, [hidden], upstream)
    torch.testing.assert_close(g_fast, g_slow, rtol=0, atol=1e-10)
    linear_logprobs(hidden, frozen, targets, chunk_size=8).sum().backward()
    assert frozen.grad is None and hidden.grad is not None


def test_flat_tokens_and_sliced_logits_give_the_same_values():
    hidden, weight, targets, _ = make_inputs(torch.float64)
    by_completion = linear_logprobs(hidden, weight, targets, chunk_size=8)  # [N, L]
    flat = linear_logprobs(hidden.reshape(-1, H), weight, targets.reshape(-1), chunk_size=8)  # [T]
    torch.testing.assert_close(flat.view(N, L), by_completion, rtol=0, atol=0)
    # A model's logits cover prompt and completion; the completion slice is not contiguous.
    full = torch.randn(N, L + 3, V, dtype=torch.float64)  # [N, P + L, V] with P = 3
    sliced = full[:, 2:-1]  # positions P-1 .. P+L-2 predict the L completion tokens
    assert not sliced.is_contiguous()
    expected = naive_logprobs(sliced, targets)
    torch.testing.assert_close(selective_log_softmax(sliced, targets), expected, rtol=0, atol=1e-10)


def test_bf16_inputs_give_fp32_logprobs_and_bf16_gradients():
    hidden, weight, targets, upstream = make_inputs(torch.bfloat16)
    fast = lambda: linear_logprobs(hidden, weight, targets, chunk_size=8)
    slow = lambda: naive_logprobs(hidden @ weight.T, targets)
    assert fast().dtype == torch.float32
    # Same bf16 logits, fp32 softmax math on both sides: equal to fp32 rounding.
    torch.testing.assert_close(fast(), slow(), rtol=0, atol=1e-5)
    for g_fast, g_slow in grad_pairs(fast, slow, [hidden, weight], upstream):
        assert g_fast.dtype == torch.bfloat16
        # Both round the logit gradient to bf16 before the matmuls. The weight gradient differs in
        # rounding only: here one bf16 product per chunk summed in fp32, there one bf16 product.
        # Measured: up to 2 ulps (bf16 keeps 8 significant bits, ulp 2^-7 relative) on |grad| < 8.
        torch.testing.assert_close(g_fast.float(), g_slow.float(), rtol=2**-6, atol=2**-6)


def test_shape_mismatch_is_rejected():
    hidden, weight, targets, _ = make_inputs(torch.float32)
    with pytest.raises(ValueError, match="expected hidden"):
        linear_logprobs(hidden, weight, targets[:, :-1])
    with pytest.raises(ValueError, match="expected logits"):
        selective_log_softmax(hidden @ weight.T, targets[:-1])
