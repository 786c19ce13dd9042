"""GRPO: the RL loop and its math.

The pure core (loss: eq. 1-3; logprobs: they import only torch; unit-tested on CPU with
hand-computed numbers) maps onto the paper (RARL, sec. 2.2.1, which follows DeepSeekMath's GRPO) one
function per equation:

    eq. 2  A_i = (r_i - mean(r)) / std(r) over a group ...... loss.group_advantages
    eq. 3  D_KL = pi_ref/pi - log(pi_ref/pi) - 1 (k3) ....... loss.k3_kl
    eq. 1  min(r A, clip(r, 1-eps, 1+eps) A) ................ loss.clipped_surrogate
    eq. 1  1/G sum_i (...) - beta D_KL, as a loss ........... loss.grpo_loss, weighted by loss.token_weights
           log pi(token) without [T, V] fp32 logits ......... logprobs.linear_logprobs

The loop around it may import the rest of the project: step (grpo_step, one step in the paper's
order, with the rollout, the policy's log-probs and the reference policy pi_ref), trainer (setup and
the loop), sft, optim, distributed, checkpoint, run_log (metrics, TensorBoard, curves), config.

Shape legend, used in every shape comment of this package:
    B  prompts in a batch            G  completions sampled per prompt (group size)
    N  completions, N = B * G        P  prompt tokens
    L  completion tokens (padded)    V  vocabulary size (151,936 for Qwen2-VL)
    H  hidden size                   T  tokens in a flattened batch, e.g. T = N * L
Completions of one prompt are contiguous: completion g of prompt b sits at index b * G + g.
"""
