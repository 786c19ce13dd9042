"""Group-relative advantages: eq. 2 of the paper (GRPO's baseline is the group mean, not a critic)."""
from __future__ import annotations

from torch import Tensor


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
