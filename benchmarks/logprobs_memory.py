"""Peak memory of per-token log-probs: naive full log-softmax vs the chunked versions.

    python -m benchmarks.logprobs_memory                      # CPU, bf16, 4 x 256 tokens, Qwen2-VL vocab
    python -m benchmarks.logprobs_memory --device cuda --completions 8 --length 512 --hidden 1536

Prints, for forward + backward (the training step) and for a no-grad forward (old / reference
log-probs), the peak memory each method adds on top of its inputs. On CUDA that is
torch.cuda.max_memory_allocated; on CPU, where torch's allocations are invisible to tracemalloc,
it is the peak resident set size (Linux VmHWM) of a fresh process, so one run cannot inherit
another's freed pages. The lm_head is frozen (the LoRA case): only hidden / logits get gradients.
Figures, not assertions: the tests check correctness, this shows what the chunking buys.

Measured on a 2-core CPU (torch 2.13), --completions 8 --length 512, bf16, H = 256, in MiB
(one [T, V] fp32 tensor is 2,374 MiB; the chunked figures do not grow with T):
    method                               fwd+bwd   no-grad fwd
    naive log_softmax(logits.float())      7,126         4,749
    selective_log_softmax(logits)          1,489           301   (fwd+bwd: 1,188 is the bf16 grad)
    naive log_softmax(hidden @ W.T)        7,133         5,943
    linear_logprobs(hidden, W)               462           456
"""
from __future__ import annotations

import argparse
import multiprocessing

import torch
from torch import Tensor

from src.memory import peak_bytes, reset_peak
from src.grpo.logprobs import linear_logprobs, logits_grad, scaled_chunk, target_logprob

MIB = 2**20


# A chunked log-softmax of logits that exist already (a model's forward returned them): the fp32 work
# happens a chunk of rows at a time, and backward recomputes the softmax per chunk from the saved
# logits and their logsumexp. The trainer does not use it (linear_logprobs never makes the logits);
# it is here to show what chunking alone buys.


class _SelectiveLogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, temperature: float, chunk_rows: int) -> Tensor:
        dtype = torch.promote_types(logits.dtype, torch.float32)
        logp = torch.empty(targets.shape, dtype=dtype, device=logits.device)  # [N, L]
        lse = torch.empty_like(logp)  # [N, L]
        for start in range(0, logits.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            chunk = scaled_chunk(logits[rows], temperature)  # [c, L, V] fp32
            logp[rows], lse[rows] = target_logprob(chunk, targets[rows])
            del chunk  # free it before the next chunk is built, not after
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
        return logp

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, targets, lse = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)  # [N, L, V] in the logits' dtype
        for start in range(0, logits.shape[0], ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            chunk = scaled_chunk(logits[rows], ctx.temperature)  # [c, L, V] fp32, recomputed
            grad_chunk = logits_grad(chunk, lse[rows], targets[rows], grad_out[rows])  # [c, L, V] in chunk
            grad_logits[rows] = grad_chunk.div_(ctx.temperature)  # chain rule through z / temperature
            del chunk, grad_chunk
        return grad_logits, None, None, None


def selective_log_softmax(
    logits: Tensor, targets: Tensor, temperature: float = 1.0, chunk_rows: int = 1
) -> Tensor:
    """log softmax(logits / temperature)[target] in fp32, chunk_rows completions at a time.

    logits: [N, L, V], any float dtype (bf16 from the model); may be a slice such as
            model_logits[:, P - 1 : -1] (chunks index the first dim, so no contiguous copy is made).
    targets: [N, L] token ids, the completion tokens that each logit row predicts.
    temperature: the sampling temperature, so that log-probs match the distribution sampled from.
    Returns [N, L] fp32 (float64 for float64 logits). Extra memory is one fp32 chunk,
    chunk_rows * L * V * 4 bytes (311 MB for one 512-token completion on Qwen2-VL), in forward and
    in backward; backward also returns the gradient [N, L, V] in the logits' dtype, as any would.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"expected logits [N, L, V] and targets [N, L], got {tuple(logits.shape)}, {tuple(targets.shape)}"
        )
    return _SelectiveLogSoftmax.apply(logits, targets, temperature, chunk_rows)


def naive_from_logits(logits, targets):
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def naive_from_hidden(hidden, weight, targets):
    return naive_from_logits(hidden @ weight.T, targets)


# name: (starts from logits?, fn(x, weight, targets) with x the logits [N, L, V] or hidden [N, L, H])
METHODS = {
    "naive log_softmax(logits.float())": (True, lambda z, w, t: naive_from_logits(z, t)),
    "selective_log_softmax(logits)": (True, lambda z, w, t: selective_log_softmax(z, t)),
    "naive log_softmax(hidden @ W.T)": (False, naive_from_hidden),
    "linear_logprobs(hidden, W)": (False, linear_logprobs),
}


def measure(method: str, backward: bool, args: argparse.Namespace) -> int:
    """Bytes the method adds at its peak, above the inputs (built first, in the model's dtype)."""
    torch.manual_seed(0)
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    n, l, h, v = args.completions, args.length, args.hidden, args.vocab
    from_logits, fn = METHODS[method]
    hidden = torch.randn(n, l, h, dtype=dtype, device=device)  # [N, L, H]
    weight = torch.randn(v, h, dtype=dtype, device=device) / h**0.5  # [V, H], frozen
    x = (hidden @ weight.T) if from_logits else hidden  # logits [N, L, V] as a model returns them, or hidden
    del hidden
    targets = torch.randint(v, (n, l), device=device)  # [N, L]
    x.requires_grad_(backward)

    before = reset_peak(device)
    with torch.set_grad_enabled(backward):
        logp = fn(x, weight, targets)  # [N, L] fp32
        if backward:
            logp.sum().backward()
    return peak_bytes(device) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--completions", type=int, default=4, help="N, completions in the batch")
    parser.add_argument("--length", type=int, default=256, help="L, completion tokens each")
    parser.add_argument("--hidden", type=int, default=256, help="H (Qwen2-VL-2B: 1536), sets time not memory")
    parser.add_argument("--vocab", type=int, default=151_936, help="V (Qwen2-VL: 151,936)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()

    tokens = args.completions * args.length
    print(
        f"N x L = {args.completions} x {args.length} = {tokens} tokens, V = {args.vocab:,}, "
        f"H = {args.hidden}, {args.dtype} on {args.device}; "
        f"one [T, V] fp32 tensor = {tokens * args.vocab * 4 / MIB:,.0f} MiB"
    )
    print(f"{'method':<36} {'fwd+bwd peak MiB':>17} {'no-grad fwd peak MiB':>21}")
    # CPU: a fresh process per measurement (spawn), so freed-but-kept pages cannot hide a peak.
    context = multiprocessing.get_context("spawn")
    for method in METHODS:
        peaks = []
        for backward in (True, False):
            if args.device == "cpu":
                with context.Pool(1) as pool:
                    peaks.append(pool.apply(measure, (method, backward, args)))
            else:
                peaks.append(measure(method, backward, args))
        print(f"{method:<36} {peaks[0] / MIB:>17,.0f} {peaks[1] / MIB:>21,.0f}")


if __name__ == "__main__":
    main()
