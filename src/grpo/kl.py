"""Per-token KL with the k3 estimator: eq. 3 of the paper (the policy against the reference), and the
same estimate between the sampler and the trainer (are the rollouts on-policy?).

k3 is from John Schulman, "Approximating KL Divergence" (http://joschu.net/blog/kl-approx.html):
with x = log pi_ref(t) - log pi(t) for a token t sampled from pi,
    k3 = exp(x) - x - 1,
an unbiased estimate of KL(pi || pi_ref) that, unlike -x, is never negative (e^x >= 1 + x).
"""
from __future__ import annotations

import torch
from torch import Tensor

# exp(20) = 4.85e8 is finite in fp32 and bf16, and so is its gradient. Without the clamp a token the
# reference finds far likelier than the policy (x around 89 in fp32) gives exp(x) = inf and a NaN
# loss, a failure reported on VLM GRPO runs. Where |x| > 20 the clamp stops that token's KL gradient.
LOG_RATIO_CLAMP = 20.0


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Eq. 3 per token: pi_ref/pi - log(pi_ref/pi) - 1, with log(pi_ref/pi) clamped to [-20, 20].

    logp, ref_logp: [N, L] log-probabilities of the sampled tokens under the policy and the
    reference. Returns [N, L] fp32, >= 0, exactly 0 where the two agree.
    """
    log_ratio = (ref_logp.float() - logp.float()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N, L]
    # expm1(x) - x equals exp(x) - x - 1 but keeps its digits for small x, where policy ~ reference
    # (the usual case), and its rounding can never produce a negative value.
    return torch.expm1(log_ratio) - log_ratio  # [N, L]


def sampler_mismatch(train_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> Tensor:
    """How far the trainer's log-probs of the sampled tokens are from the sampler's, summed over the
    completion tokens: [sum |log p_sampler - log p_train|, sum k3]. Divided by the token count these
    are metrics.jsonl's rollout_logp_diff and rollout_kl.

    Both sides compute the same policy (same weights, temperature and banned ids), so in fp32 the
    difference is float rounding (~1e-6); in bf16 the sampler's decode path and the training forward
    round differently, and a large value means the update treats off-policy samples as on-policy.
    The tokens were drawn from the sampler, so k3 with x = log p_train - log p_sampler estimates
    KL(sampler || trainer).

    train_logp, sampler_logp: [N, L] fp32; mask: [N, L] bool, the completion tokens. Returns [2] fp32.
    """
    mask = mask.float()                                                                    # [N, L]
    diff = (sampler_logp.float() - train_logp.float()).abs()                               # [N, L]
    kl = k3_kl(sampler_logp, train_logp)                                                   # [N, L]
    return torch.stack([(diff * mask).sum(), (kl * mask).sum()])                           # [2]
