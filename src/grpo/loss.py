"""The GRPO objective, eq. 1-3 of the paper, in the order a step uses them: the group advantages
(eq. 2), the k3 KL to the reference (eq. 3), and the clipped surrogate with its token weights, the loss
(eq. 1). Pure tensor code: it imports only torch.

The GRPO loss: eq. 1 of the paper, per token, with a named choice of how tokens are averaged.

Eq. 1 writes the objective per completion v_i with one ratio r_i. As in DeepSeekMath (the paper's
ref. [28]) and every GRPO trainer, it is applied per token t of completion i,
    r_it = pi(o_it) / pi_old(o_it),
    J_it = min(r_it A_i, clip(r_it, 1 - eps_low, 1 + eps_high) A_i) - beta k3_it,
and the loss we minimise is -J summed over tokens with the weights of one of the AGGREGATIONS
(token_weights). eps_low = eps_high
is eq. 1's symmetric clip; DAPO raises eps_high ("clip-higher") to let rare tokens grow.

The ratio is one of the IMPORTANCE_LEVELS (importance_logratio): per token as above (the paper), or
per completion, GSPO's (Zheng et al. 2025) s_i = exp(mean_t log r_it), the same for all its tokens and
clipped once for the whole completion.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


# ----------------------------------------------------------------------------------------------------
# Eq. 2. Group-relative advantages: eq. 2 of the paper (GRPO's baseline is the group mean, not a critic).
# ----------------------------------------------------------------------------------------------------

def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """View a flat [N] reward vector as [B, G]: row b holds the G completions of prompt b."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be a flat [B*G] vector, got shape {tuple(rewards.shape)}")
    if group_size < 2 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"group_size must be >= 2 and divide the {rewards.numel()} rewards, got {group_size}"
        )
    return rewards.float().view(-1, group_size)  # [B, G]


def _all_equal(grouped: Tensor) -> Tensor:
    """[B, 1] bool: True for groups whose G rewards are all the same number."""
    return grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)  # [B, 1]


def group_advantages(rewards: Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """Eq. 2: A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps), per group of G completions.

    rewards: [N] with N = B * G, completions of prompt b at indices b*G .. b*G + G - 1.
    Returns [N] fp32 advantages, one per completion (broadcast over its tokens by the loss).

    std is the unbiased sample std (divides by G - 1), as torch.std and TRL compute it; eps (TRL's
    1e-4) keeps the division finite when a group's rewards are all equal. Such a group carries no
    learning signal, and its advantages are set to exactly 0: the fp32 mean of G equal numbers is
    not always that number (eight 0.1s give deviations of ~1e-8), and 1e-8 / (1e-8 + eps) would
    otherwise be a spurious ~1e-4 advantage.

    scale=False drops the division (Dr. GRPO, Liu et al. 2025: A_i = r_i - mean). With it, a group
    whose rewards differ only by noise (0.01 of BERTScore or length) gets advantages as large as a
    group split between right and wrong answers; without it, advantages keep the rewards' units.
    """
    grouped = _grouped(rewards, group_size)  # [B, G]
    mean = grouped.mean(dim=1, keepdim=True)  # [B, 1]
    advantages = grouped - mean  # [B, G]
    if scale:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + eps)  # unbiased std, [B, 1]
    advantages = advantages.masked_fill(_all_equal(grouped), 0.0)  # [B, G]
    return advantages.view(-1)  # [N]


def zero_std_fraction(rewards: Tensor, group_size: int) -> float:
    """Fraction of groups whose G rewards are all equal (zero advantage, no gradient): frac_zero_std.

    rewards: [N] laid out as in group_advantages. A python float, for logging.
    """
    return _all_equal(_grouped(rewards, group_size)).float().mean().item()


def tied_group_rows(advantages: Tensor, group_size: int) -> Tensor:
    """[N] bool: the rows of groups whose G rewards all tie, the groups `--drop-tied-groups` leaves out.

    Read from the advantages [N] (laid out as in group_advantages): group_advantages sets such a group's
    to exactly 0, and any other group has a completion off its mean, so a nonzero advantage.
    """
    grouped = _grouped(advantages, group_size)  # [B, G]
    return (grouped == 0).all(dim=1, keepdim=True).expand_as(grouped).reshape(-1)  # [N]


# ----------------------------------------------------------------------------------------------------
# Eq. 3. Per-token KL with the k3 estimator: eq. 3 of the paper (the policy against the reference), and the
# same estimate between the sampler and the trainer (are the rollouts on-policy?).
#
# k3 is from John Schulman, "Approximating KL Divergence" (http://joschu.net/blog/kl-approx.html):
# with x = log pi_ref(t) - log pi(t) for a token t sampled from pi,
#     k3 = exp(x) - x - 1,
# an unbiased estimate of KL(pi || pi_ref) that, unlike -x, is never negative (e^x >= 1 + x).
# ----------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------
# Eq. 1. The clipped surrogate per token, its ratio, and how token losses become one number.
# ----------------------------------------------------------------------------------------------------

IMPORTANCE_LEVELS = ("token", "sequence")


def importance_logratio(logp: Tensor, old_logp: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """log r of each completion token: [N, L] fp32 (padding positions hold junk; they get no weight).

    logp, old_logp: [N, L] as in clipped_surrogate; mask: [N, L] the tokens in the loss.
    - "token" (eq. 1 per token, DeepSeekMath): log r_it = log pi(o_it) - log pi_old(o_it);
    - "sequence" (GSPO, Zheng et al. 2025): log s_i = (1 / |o_i|) sum_t log r_it, the length-normalised
      log-ratio of the whole completion, given to each of its tokens. Its gradient reaches every token of
      the completion through the mean, and one clip holds or releases the whole completion.
    """
    if level not in IMPORTANCE_LEVELS:
        raise ValueError(f"unknown importance level {level!r}; choose one of {IMPORTANCE_LEVELS}")
    logratio = logp.float() - old_logp.float()  # [N, L]
    if level == "token":
        return logratio
    mask = mask.float()  # [N, L]
    per_completion = (logratio * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)  # [N, 1]
    return per_completion.expand_as(logratio)  # [N, L]


def clipped_surrogate(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, epsilon_low: float = 0.2, epsilon_high: float = 0.2,
    mask: Tensor | None = None, importance_level: str = "token",
) -> Tensor:
    """Eq. 1's surrogate per token: min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), r = pi / pi_old.

    logp, old_logp: [N, L] log-probabilities of the sampled tokens under the policy being trained
    and the policy that sampled them. advantages: [N], one per completion, shared by its tokens.
    mask, importance_level: which ratio r is (importance_logratio; mask is needed for "sequence").
    Returns [N, L] fp32, to be maximised. The min makes it pessimistic: once r has left the clip
    range in the direction the advantage pushes it, the token's gradient is zero.
    """
    mask = torch.ones_like(logp, dtype=torch.bool) if mask is None else mask  # [N, L]
    ratio = torch.exp(importance_logratio(logp, old_logp, mask, importance_level))  # [N, L]
    adv = advantages.float().unsqueeze(1)  # [N, 1], broadcast over the completion's tokens
    unclipped = ratio * adv  # [N, L]
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high) * adv  # [N, L]
    return torch.minimum(unclipped, clipped)  # [N, L]


# --- Aggregation: how much each token's loss weighs in the step's global batch -----------------
# The choice weighs long and short completions differently (the "length bias" of Dr. GRPO, 2025).
# Weights are decided once per step, over the global batch (every mini-batch and every rank), so a
# mini-batch's loss is a plain weighted sum and gradient accumulation and data parallelism add up to
# the whole batch's loss by construction.

AGGREGATIONS = ("sequence", "token", "dr_grpo")


def token_weights(mask: Tensor, aggregation: str, completions: int | None = None, tokens: int | None = None,
                  max_length: int | None = None) -> Tensor:
    """[N, L] weight of each completion token in the loss, 0 on padding.

    mask: [N, L] completion tokens of this rank's rows. completions, tokens: how many completions and
    completion tokens the global batch holds (all ranks; default: this mask's). max_length: the
    generation budget (default: this mask's width L).
    - "sequence" (eq. 1, DeepSeekMath): 1 / (completions * |o_i|): each completion's tokens sum to
      1 / completions, so a token of a short completion weighs more than one of a long completion;
    - "token" (DAPO, TRL's default): 1 / tokens: every token of the batch weighs the same;
    - "dr_grpo" (Dr. GRPO): 1 / (completions * max_length): the normaliser does not depend on the
      completions' lengths, and max_length is the generation budget, not the batch's longest one.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}")
    mask = mask.float()                                                            # [N, L]
    completions = max(mask.shape[0] if completions is None else completions, 1)  # 0: no completion has weight
    if aggregation == "sequence":
        lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)  # [N, 1]; a row with no token weighs 0
        return mask / (lengths * completions)                                      # [N, L]
    if aggregation == "token":
        return mask / max(int(mask.sum()) if tokens is None else tokens, 1)       # [N, L]
    return mask / (completions * (mask.shape[1] if max_length is None else max_length))  # [N, L]


@dataclass(frozen=True)
class LossStats:
    """What one grpo_loss call measured: detached 0-dim fp32 tensors on the loss's device.

    Tensors, not floats, so that computing them costs no GPU->CPU sync; `as_floats` syncs once.
    All are token means over the completion tokens (mask == 1), whatever the loss aggregation.
    """

    kl: Tensor | None  # mean k3 KL to the reference (eq. 3); None when no ref_logp was given
    ratio_mean: Tensor  # mean r = pi / pi_old; exactly 1 on the first update of a batch
    clipfrac_low: Tensor  # fraction of tokens held by the lower clip: r < 1 - eps_low and A < 0
    clipfrac_high: Tensor  # fraction of tokens held by the upper clip: r > 1 + eps_high and A > 0

    def as_floats(self) -> dict[str, float]:
        """{name: value} for logging, with a single device-to-host transfer; kl left out if None."""
        named = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return dict(zip(named, torch.stack(list(named.values())).tolist()))


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    ref_logp: Tensor | None,
    advantages: Tensor,
    weights: Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    beta: float = 0.04,
    importance_level: str = "token",
) -> tuple[Tensor, LossStats]:
    """The GRPO loss -(surrogate - beta * KL) (eq. 1 with eq. 3), summed over tokens with `weights`.

    logp:       [N, L] log pi(token) under the policy being trained (carries the gradient).
    old_logp:   [N, L] log pi_old(token) under the policy that sampled the completions, or None on
                the first update of a batch (one update per generation, TRL's and R1-V's default). Then
                old_logp = logp.detach(): the ratio r = exp(logp - logp.detach()) is exactly 1 while
                its gradient r * grad(logp) = grad(logp), so the loss gradient is the plain policy
                gradient -A grad(logp), and no extra forward pass is needed.
    ref_logp:   [N, L] log pi_ref(token) under the frozen reference, or None. Required when beta > 0;
                when given with beta == 0 the KL is measured for the stats only.
    advantages: [N] one per completion (eq. 2, loss.group_advantages).
    weights:    [N, L] each token's weight in the batch (token_weights: the aggregation), 0 on padding.
    epsilon_low, epsilon_high: the clip range [1 - epsilon_low, 1 + epsilon_high] of the ratio.
    beta:       KL weight; 0.04 is DeepSeekMath's (and R1-V's) value.
    importance_level: "token" (eq. 1) or "sequence" (GSPO): importance_logratio, over the tokens
                that have a weight.
    Returns the scalar fp32 loss to minimise and its LossStats (token means over the tokens with a
    weight). All math is in fp32 whatever the inputs' dtype.
    """
    if beta > 0 and ref_logp is None:
        raise ValueError(f"beta = {beta} > 0 needs ref_logp (the reference policy's log-probs)")
    if weights.shape != logp.shape or advantages.shape != logp.shape[:1]:
        raise ValueError(
            f"expected logp and weights [N, L] and advantages [N], got logp {tuple(logp.shape)}, "
            f"weights {tuple(weights.shape)}, advantages {tuple(advantages.shape)}"
        )
    logp = logp.float()  # [N, L]
    old_logp = logp.detach() if old_logp is None else old_logp.float()  # [N, L]

    mask = weights > 0  # [N, L] the tokens in the loss
    objective = clipped_surrogate(logp, old_logp, advantages, epsilon_low, epsilon_high, mask,
                                  importance_level)  # [N, L]
    kl = None if ref_logp is None else k3_kl(logp, ref_logp)  # [N, L]
    if beta > 0:
        objective = objective - beta * kl  # [N, L]
    loss = -(objective * weights).sum()  # weights already hold the aggregation's normaliser

    with torch.no_grad():
        ratio = torch.exp(importance_logratio(logp, old_logp, mask, importance_level))  # [N, L]
        mask = mask.float()  # [N, L]
        adv = advantages.float().unsqueeze(1)  # [N, 1]
        stats = LossStats(
            kl=None if kl is None else token_mean(kl, mask),
            ratio_mean=token_mean(ratio, mask),
            clipfrac_low=token_mean(((ratio < 1.0 - epsilon_low) & (adv < 0)).float(), mask),
            clipfrac_high=token_mean(((ratio > 1.0 + epsilon_high) & (adv > 0)).float(), mask),
        )
    return loss, stats


def token_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    """Mean over the tokens where mask is 1: the statistics' average."""
    return (per_token * mask).sum() / mask.sum().clamp(min=1)
