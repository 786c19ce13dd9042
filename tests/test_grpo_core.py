"""The GRPO core (eq. 1-3) against numbers computed by hand; the arithmetic is in the comments."""
import math

import pytest
import torch

from src.grpo.loss import (
    AGGREGATIONS, LossStats, clipped_surrogate, group_advantages, grpo_loss, importance_logratio, k3_kl,
    tied_group_rows, token_weights, zero_std_fraction,
)

LN = math.log


# --- eq. 2: group advantages ---------------------------------------------------------------------


def test_group_advantages_two_groups_and_zero_std_fraction():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])  # B = 2 prompts, G = 4
    # Group 1: mean 0.5, deviations +-0.5, unbiased var = 4 * 0.25 / 3 = 1/3, std = sqrt(1/3).
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)  # = 0.86588
    # Group 2: all equal: no signal, advantages exactly 0.
    expected = torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(group_advantages(rewards, group_size=4), expected, rtol=0, atol=1e-7)
    assert torch.equal(group_advantages(rewards, group_size=4)[4:], torch.zeros(4))
    assert zero_std_fraction(rewards, group_size=4) == 0.5


def test_unscaled_advantages_keep_the_rewards_units():
    # Dr. GRPO: A = r - mean. A group split by noise (rewards 2.61, 2.62) gets +-0.005; eq. 2 divides
    # by its unbiased std 0.005 * 2 / sqrt(3) = 0.00577 and gives +-0.85, as large as a real split.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.61, 2.62, 2.61, 2.62])
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, -0.005, 0.005, -0.005, 0.005])
    torch.testing.assert_close(group_advantages(rewards, 4, scale=False), expected, rtol=0, atol=1e-6)
    scaled = group_advantages(rewards, 4)[4:]
    torch.testing.assert_close(scaled, torch.tensor([-1.0, 1.0, -1.0, 1.0]) * 0.005 / (0.005 * 2 / 3 ** 0.5 + 1e-4),
                               rtol=0, atol=1e-4)


def test_group_advantages_use_the_unbiased_std():
    # mean 0.75; deviations -0.75 x3, 2.25; sum of squares 3 * 0.5625 + 5.0625 = 6.75.
    # Unbiased: var = 6.75 / 3 = 2.25, std = 1.5 -> A = [-0.5, -0.5, -0.5, 1.5].
    # (The biased std sqrt(6.75 / 4) = 1.299 would give -0.577 and 1.732.)
    rewards = torch.tensor([0.0, 0.0, 0.0, 3.0])
    expected = torch.tensor([-0.5, -0.5, -0.5, 1.5])
    torch.testing.assert_close(group_advantages(rewards, 4, eps=0.0), expected, rtol=0, atol=1e-7)


def test_equal_rewards_that_fp32_cannot_average_exactly_give_exactly_zero():
    # The fp32 mean of eight 0.1s is not 0.1: deviations ~1e-8 divided by (std ~1e-8 + 1e-4) would
    # be ~1e-4 advantages with no meaning. A group with equal rewards must get exactly 0.
    rewards = torch.full((8,), 0.1)
    assert torch.equal(group_advantages(rewards, group_size=8), torch.zeros(8))
    assert zero_std_fraction(rewards, group_size=8) == 1.0


def test_advantages_keep_each_group_to_itself():
    # Group 2 is group 1 shifted by 10 and scaled by 3: same standardised advantages.
    g1 = torch.tensor([0.2, 0.9, 0.4])
    adv = group_advantages(torch.cat([g1, 10 + 3 * g1]), group_size=3, eps=0.0)
    torch.testing.assert_close(adv[:3], adv[3:], rtol=0, atol=1e-6)
    torch.testing.assert_close(adv[:3].sum(), torch.tensor(0.0), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "rewards, group_size",
    [(torch.zeros(6), 4), (torch.zeros(4), 1), (torch.zeros(2, 4), 4)],
    ids=["G does not divide N", "G = 1 has no std", "not flat"],
)
def test_group_advantages_reject_bad_layouts(rewards, group_size):
    with pytest.raises(ValueError, match="group_size|flat"):
        group_advantages(rewards, group_size)


# --- eq. 3: k3 KL --------------------------------------------------------------------------------


def test_k3_hand_values():
    logp = torch.zeros(3)
    ref_logp = torch.tensor([LN(2.0), -LN(2.0), 0.0])
    # x = ln 2:  2 - ln 2 - 1 = 1 - ln 2 = 0.30685;  x = -ln 2: 0.5 + ln 2 - 1 = ln 2 - 0.5 = 0.19315;
    # x = 0: policy == reference, exactly 0.
    expected = torch.tensor([1 - LN(2.0), LN(2.0) - 0.5, 0.0])
    torch.testing.assert_close(k3_kl(logp, ref_logp), expected, rtol=0, atol=1e-7)
    assert k3_kl(logp, ref_logp)[2].item() == 0.0


def test_k3_is_never_negative_near_zero():
    # Where policy ~ reference, exp(x) - x - 1 in fp32 rounds below 0 for ~1.6% of these x;
    # k3 must stay >= 0 (it is a KL estimate).
    torch.manual_seed(0)
    logp = 1e-3 * torch.randn(100_000)
    assert (k3_kl(logp, torch.zeros_like(logp)) >= 0).all()


def test_k3_is_finite_with_finite_gradients_for_extreme_log_ratios():
    logp = torch.tensor([1e4, -1e4, 0.0, -30.0], requires_grad=True)
    ref_logp = torch.tensor([-1e4, 1e4, 0.0, -5.0])
    kl = k3_kl(logp, ref_logp)
    # x = ref - logp is clamped to [-20, 20]: x = -2e4 -> e^-20 + 20 - 1; x = 2e4 -> e^20 - 20 - 1;
    # x = 25 -> clamped to 20 as well.
    expected = torch.tensor([math.exp(-20) + 19, math.exp(20) - 21, 0.0, math.exp(20) - 21])
    torch.testing.assert_close(kl, expected, rtol=1e-6, atol=0)
    kl.sum().backward()
    assert torch.isfinite(logp.grad).all()
    # Clamped tokens get no gradient; at x = 0 the gradient 1 - e^x is 0 too.
    assert torch.equal(logp.grad, torch.zeros(4))


def test_k3_gradient_inside_the_clamp():
    # d/dlogp [e^x - x - 1] with x = ref - logp is 1 - e^x: at x = ln 2 it is -1.
    logp = torch.tensor([0.0], requires_grad=True)
    k3_kl(logp, torch.tensor([LN(2.0)])).sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([-1.0]), rtol=0, atol=1e-6)


def test_k3_computes_in_fp32_from_bf16():
    zeros = torch.zeros(2, dtype=torch.bfloat16)
    assert k3_kl(zeros, zeros).dtype == torch.float32


# --- eq. 1: clipped surrogate --------------------------------------------------------------------


def test_clipped_surrogate_hand_values():
    # Token log-ratios 0, 1, -1, ln 1.1 -> ratios 1, e, 1/e, 1.1; clip range [0.8, 1.2].
    logratio = torch.tensor([0.0, 1.0, -1.0, LN(1.1)])
    logp = torch.stack([logratio, logratio])  # [N=2, L=4]
    old_logp = torch.zeros(2, 4)
    advantages = torch.tensor([2.0, -1.0])  # one per completion, broadcast over its tokens
    expected = torch.tensor(
        [
            # A = 2:  r = 1 -> 2;  r = e clipped to 1.2 -> 2.4 (< 2e);  r = 1/e: min(2/e, 0.8 * 2) = 2/e
            # = 0.7358, unclipped (the pessimistic side);  r = 1.1 inside the range -> 2.2.
            [2.0, 2.4, 2 / math.e, 2.2],
            # A = -1: r = 1 -> -1;  r = e: min(-e, -1.2) = -e, unclipped;  r = 1/e clipped to 0.8
            # -> -0.8 (< -1/e);  r = 1.1 -> -1.1.
            [-1.0, -math.e, -0.8, -1.1],
        ]
    )
    torch.testing.assert_close(clipped_surrogate(logp, old_logp, advantages), expected, rtol=0, atol=1e-6)


def test_clipped_surrogate_asymmetric_clip_higher():
    # DAPO's clip-higher: eps_low 0.2, eps_high 0.28. r = e, A = 1 -> clipped to 1.28;
    # r = 1/e, A = -1 -> clipped to 0.8 -> -0.8.
    logp = torch.tensor([[1.0], [-1.0]])
    out = clipped_surrogate(logp, torch.zeros(2, 1), torch.tensor([1.0, -1.0]), 0.2, 0.28)
    torch.testing.assert_close(out, torch.tensor([[1.28], [-0.8]]), rtol=0, atol=1e-6)


# --- GSPO: the sequence-level importance ratio ---------------------------------------------------------------------

# Three completions, L = 3, clip range [0.8, 1.2]; log r_it = logp - old_logp per token (99 = padding, masked):
#   row 0, A = +1, 2 tokens:  0.3, -0.3  -> mean 0    -> s = 1         (per token: e^0.3 = 1.35, e^-0.3 = 0.74)
#   row 1, A = -1, 3 tokens:  0.1, 0.2, 0.3 -> mean 0.2 -> s = e^0.2 = 1.2214 (A < 0: min(-1.2214, -1.2) unclipped)
#   row 2, A = +1, 2 tokens:  0.5, 0.3  -> mean 0.4 -> s = e^0.4 = 1.4918, held by the upper clip at 1.2
GSPO_LOGRATIO = torch.tensor([[0.3, -0.3, 99.0], [0.1, 0.2, 0.3], [0.5, 0.3, 99.0]])
GSPO_MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
GSPO_ADVANTAGES = torch.tensor([1.0, -1.0, 1.0])


def test_sequence_importance_ratio_is_the_mean_token_log_ratio_of_each_completion():
    logratio = importance_logratio(GSPO_LOGRATIO, torch.zeros(3, 3), GSPO_MASK, "sequence")
    assert torch.equal(importance_logratio(GSPO_LOGRATIO, torch.zeros(3, 3), GSPO_MASK, "token"), GSPO_LOGRATIO)
    expected = torch.tensor([[0.0] * 3, [0.2] * 3, [0.4] * 3])  # padding's 99 is not in the mean
    torch.testing.assert_close(logratio, expected, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="unknown importance level"):
        importance_logratio(GSPO_LOGRATIO, torch.zeros(3, 3), GSPO_MASK, "token-level")


def test_sequence_level_loss_gradient_and_clip_fraction_by_hand():
    logp = GSPO_LOGRATIO.clone().requires_grad_()
    weights = token_weights(GSPO_MASK, "sequence")  # 1 / (3 |o_i|): 1/6, 1/9, 1/6
    loss, stats = grpo_loss(logp, torch.zeros(3, 3), None, GSPO_ADVANTAGES, weights, beta=0.0,
                            importance_level="sequence")
    # surrogate per token: row 0: 1 * 1 = 1; row 1: -e^0.2 = -1.2214; row 2: clip(e^0.4) * 1 = 1.2
    # loss = -(2 * 1/6 - 3 * e^0.2 / 9 + 2 * 1.2 / 6) = -(0.33333 - 0.40713 + 0.4) = -0.32620
    assert loss.item() == pytest.approx(-(1 / 3 - math.exp(0.2) / 3 + 0.4), abs=1e-6)
    loss.backward()
    # d s_i / d logp_it = s_i / |o_i|, and every token of a completion carries s_i:
    #   row 0: -(2 tokens x 1/6) x 1/2 = -1/6 on each token;  row 1: +(3 x 1/9) x e^0.2 / 3 = e^0.2 / 9 on each;
    #   row 2: held by the clip as a whole, 0 on both tokens.
    # (Per token, row 0's first token, r = 1.35, would be clipped and get 0, its second -1/6 x 0.74.)
    expected = torch.tensor([[-1 / 6, -1 / 6, 0.0], [math.exp(0.2) / 9] * 3, [0.0, 0.0, 0.0]])
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-6)
    # tokens carry their completion's ratio: mean (2 * 1 + 3 * e^0.2 + 2 * e^0.4) / 7; row 2's 2 tokens clipped high
    assert stats.ratio_mean.item() == pytest.approx((2 + 3 * math.exp(0.2) + 2 * math.exp(0.4)) / 7, abs=1e-6)
    assert stats.clipfrac_high.item() == pytest.approx(2 / 7, abs=1e-7) and stats.clipfrac_low.item() == 0.0


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_on_the_first_update_sequence_and_token_ratios_give_the_same_gradient(aggregation):
    # r = 1 (old = logp.detach()): d s_i / d logp_it = 1 / |o_i|, and a completion's tokens share one weight
    # in every aggregation, so sum_t w_i / |o_i| = w_i: the per-token policy gradient.
    grads = []
    for level in ("token", "sequence"):
        logp = GSPO_LOGRATIO.clone().requires_grad_()
        loss, _ = grpo_loss(logp, None, None, GSPO_ADVANTAGES, token_weights(GSPO_MASK, aggregation), beta=0.0,
                            importance_level=level)
        loss.backward()
        grads.append(logp.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-7)


# --- tied groups out of the normaliser -----------------------------------------------------------------------------


def test_tied_groups_leave_the_normaliser():
    # B = 3 groups of G = 2: group 1's rewards tie (advantages exactly 0, eq. 2), groups 0 and 2 do not.
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2, 0.7])
    advantages = group_advantages(rewards, 2)
    tied = tied_group_rows(advantages, 2)
    assert tied.tolist() == [False, False, True, True, False, False]
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0]])  # lengths 3 1 2 3 2 1
    kept = mask * ~tied.unsqueeze(1)  # the trainer's loss mask: 4 completions, 7 tokens
    # sequence: 1 / (4 kept completions x |o_i|), so each kept completion weighs 1/4 (not 1/6)
    sequence = token_weights(kept, "sequence", completions=4)
    torch.testing.assert_close(sequence.sum(1), torch.tensor([0.25, 0.25, 0, 0, 0.25, 0.25]), rtol=0, atol=1e-7)
    # token: 1 / 7 kept tokens (not 1 / 12); dr_grpo: 1 / (4 x 3) per kept token
    torch.testing.assert_close(token_weights(kept, "token"), kept / 7, rtol=0, atol=1e-8)
    torch.testing.assert_close(token_weights(kept, "dr_grpo", completions=4), kept / 12, rtol=0, atol=1e-8)
    # the first update's loss -sum_i A_i w_i |o_i| grows by 6/4 for sequence: tied rows had A = 0 anyway
    every = token_weights(mask, "sequence")
    loss_every, _ = grpo_loss(torch.zeros(6, 3), None, None, advantages, every, beta=0.0)
    loss_kept, _ = grpo_loss(torch.zeros(6, 3), None, None, advantages, sequence, beta=0.0)
    assert loss_kept.item() == pytest.approx(loss_every.item() * 6 / 4, abs=1e-6)
    # every group tied: no weight anywhere, and no 0 / 0
    none = token_weights(torch.zeros(6, 3), "sequence", completions=0)
    assert torch.equal(none, torch.zeros(6, 3))


# --- aggregations --------------------------------------------------------------------------------

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 99.0, 99.0, 99.0]])  # 99 = padding, masked
RAGGED = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # lengths 3 and 1, L = 4


@pytest.mark.parametrize(
    "name, expected",
    [
        ("sequence", 3.0),  # ((1 + 2 + 3) / 3 + 4 / 1) / 2 = (2 + 4) / 2 = 3
        ("token", 2.5),  # (1 + 2 + 3 + 4) / 4 tokens = 2.5
        ("dr_grpo", 1.25),  # (1 + 2 + 3 + 4) / (N * L = 2 * 4) = 1.25
    ],
)
def test_aggregations_on_a_ragged_mask(name, expected):
    assert (PER_TOKEN * token_weights(RAGGED, name)).sum().item() == pytest.approx(expected, abs=1e-7)


def test_token_weights_over_a_global_batch_on_two_ranks():
    # rank 0 holds completions of 3 and 1 tokens, rank 1 of 2 and 4 (padded to L = 4 on each rank);
    # the global batch: 4 completions, 10 tokens; generation budget 6.
    rank0 = torch.tensor([[1.0, 1, 1, 0], [1, 0, 0, 0]])
    rank1 = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 1]])
    weights = {name: [token_weights(mask, name, completions=4, tokens=10, max_length=6) for mask in (rank0, rank1)]
               for name in AGGREGATIONS}
    # sequence: 1 / (4 completions x own length): 1/12, 1/4 on rank 0; 1/8, 1/16 on rank 1
    expected = [[[1 / 12] * 3 + [0], [1 / 4, 0, 0, 0]], [[1 / 8] * 2 + [0, 0], [1 / 16] * 4]]
    for got, want in zip(weights["sequence"], expected):
        torch.testing.assert_close(got, torch.tensor(want), rtol=0, atol=1e-8)
    # token: 1/10 on each of the 10 tokens; dr_grpo: 1 / (4 x 6) = 1/24 each
    for got, mask in zip(weights["token"], (rank0, rank1)):
        torch.testing.assert_close(got, mask / 10, rtol=0, atol=1e-8)
    for got, mask in zip(weights["dr_grpo"], (rank0, rank1)):
        torch.testing.assert_close(got, mask / 24, rtol=0, atol=1e-8)
    # over both ranks: each completion 1/4 (sequence), all tokens 1 (token), 10/24 (dr_grpo)
    total = {name: sum(w.sum().item() for w in pair) for name, pair in weights.items()}
    assert total == pytest.approx({"sequence": 1.0, "token": 1.0, "dr_grpo": 10 / 24}, abs=1e-7)


def test_token_weights_reject_an_unknown_aggregation():
    with pytest.raises(ValueError, match="unknown aggregation"):
        token_weights(torch.ones(2, 3), "mean")


# --- grpo_loss -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aggregation, expected",
    [
        # First update: r = 1, so the per-token loss is -A_i: -1 on 3 tokens, -2 on 1 token.
        ("sequence", -1.5),  # (-1 - 2) / 2 completions
        ("token", -1.25),  # (3 * -1 + 1 * -2) / 4 tokens
        ("dr_grpo", -0.625),  # (3 * -1 + 1 * -2) / (2 * 4)
    ],
)
def test_grpo_loss_first_update_per_aggregation(aggregation, expected):
    logp = torch.randn(2, 4)
    loss, _ = grpo_loss(logp, None, None, torch.tensor([1.0, 2.0]), token_weights(RAGGED, aggregation), beta=0.0)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_first_step_policy_equals_reference_kl_zero_ratio_one():
    torch.manual_seed(0)
    logp = torch.randn(4, 6, requires_grad=True)
    loss, stats = grpo_loss(logp, None, logp.detach(), torch.tensor([1.0, -3.0, 0.5, 1.5]),
                            token_weights(torch.ones(4, 6), "sequence"))
    assert stats.kl.item() == 0.0
    assert stats.ratio_mean.item() == 1.0
    assert stats.clipfrac_low.item() == 0.0 and stats.clipfrac_high.item() == 0.0
    # r = 1 and KL = 0, so the loss is -mean(A) = -(1 - 3 + 0.5 + 1.5) / 4 = 0.
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


def test_sequence_loss_gradient_is_the_policy_gradient():
    # d loss / d logp_it = -A_i / (|o_i| * N) on completion tokens, 0 on padding. beta > 0 with
    # ref == policy adds nothing: d k3 / d logp = 1 - e^0 = 0.
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -4.0, -4.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss, _ = grpo_loss(logp, None, logp.detach(), torch.tensor([1.0, -2.0]), token_weights(mask, "sequence"),
                        beta=0.04)
    loss.backward()
    # Row 0: -1 / (3 * 2) = -1/6 on each token. Row 1: -(-2) / (1 * 2) = 1 on its one token.
    expected = torch.tensor([[-1 / 6, -1 / 6, -1 / 6], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-7)


def test_clip_fractions_count_only_active_clips():
    # Row 0, A = +1: ratios 1.5, 0.5, 1, 1.1. Upper clip active on 1.5 (> 1.2 and A > 0); 0.5 is
    #   below 0.8 but with A > 0 the min keeps the unclipped 0.5, so it is not clipped.
    # Row 1, A = -1: ratios 1.5, 0.5, 0.5, [padding 0.5]. 1.5 with A < 0 keeps -1.5, not clipped;
    #   the two 0.5s are held by the lower clip. Padding does not count.
    # 7 completion tokens: clipfrac_high = 1/7, clipfrac_low = 2/7;
    # ratio_mean = (1.5 + 0.5 + 1 + 1.1 + 1.5 + 0.5 + 0.5) / 7 = 6.6 / 7.
    ratios = torch.tensor([[1.5, 0.5, 1.0, 1.1], [1.5, 0.5, 0.5, 0.5]])
    logp = torch.log(ratios).requires_grad_()
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    loss, stats = grpo_loss(logp, torch.zeros(2, 4), None, torch.tensor([1.0, -1.0]), token_weights(mask, "sequence"),
                            beta=0.0)
    assert stats.clipfrac_high.item() == pytest.approx(1 / 7, abs=1e-7)
    assert stats.clipfrac_low.item() == pytest.approx(2 / 7, abs=1e-7)
    assert stats.ratio_mean.item() == pytest.approx(6.6 / 7, abs=1e-6)
    # The clipped tokens, and only they (and padding), get no gradient.
    loss.backward()
    no_grad = torch.tensor([[True, False, False, False], [False, True, True, True]])
    assert torch.equal(logp.grad == 0, no_grad)


def test_kl_term_enters_the_loss_with_weight_beta():
    # A = 0 leaves only the KL: x = ref - logp = ln 2 on every token, k3 = 1 - ln 2 = 0.30685;
    # loss = beta * k3 = 0.5 * 0.30685 = 0.15343 for every aggregation of a full mask.
    logp = torch.zeros(2, 3)
    ref_logp = torch.full((2, 3), LN(2.0))
    for aggregation in AGGREGATIONS:
        loss, stats = grpo_loss(logp, None, ref_logp, torch.zeros(2), token_weights(torch.ones(2, 3), aggregation),
                                beta=0.5)
        assert loss.item() == pytest.approx(0.5 * (1 - LN(2.0)), abs=1e-6)
        assert stats.kl.item() == pytest.approx(1 - LN(2.0), abs=1e-6)


def test_beta_zero_without_reference():
    loss, stats = grpo_loss(torch.zeros(2, 3), None, None, torch.ones(2), token_weights(torch.ones(2, 3), "sequence"),
                            beta=0.0)
    assert loss.item() == pytest.approx(-1.0)
    assert stats.kl is None
    assert set(stats.as_floats()) == {"ratio_mean", "clipfrac_low", "clipfrac_high"}


def test_loss_math_is_fp32_for_bf16_inputs_and_stats_are_detached_tensors():
    logp = torch.log(torch.tensor([[0.5, 0.25]], dtype=torch.bfloat16)).requires_grad_()
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, stats = grpo_loss(logp, None, logp.detach(), torch.tensor([1.0]), token_weights(mask, "sequence"))
    assert loss.dtype == torch.float32
    assert isinstance(stats, LossStats)
    assert all(v.dim() == 0 and not v.requires_grad for v in (stats.kl, stats.ratio_mean, stats.clipfrac_low))
    assert stats.as_floats() == {"kl": 0.0, "ratio_mean": 1.0, "clipfrac_low": 0.0, "clipfrac_high": 0.0}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta=0.04), "needs ref_logp"),
        (dict(beta=0.0, advantages=torch.ones(3)), r"advantages \[N\]"),
    ],
)
def test_grpo_loss_rejects_bad_arguments(kwargs, match):
    advantages = kwargs.pop("advantages", torch.ones(2))
    with pytest.raises(ValueError, match=match):
        grpo_loss(torch.zeros(2, 3), None, None, advantages, token_weights(torch.ones(2, 3), "sequence"), **kwargs)
