"""`--samples N`: a seeded subset of a training split that keeps the split's mix of strata."""
from __future__ import annotations

import random
from collections import defaultdict

from src.data.sample import Sample


def take_subset(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    """n samples drawn without replacement, stratified, returned in the split's original order.

    Strata are the modality where the samples carry one, else the task, else there is one stratum.
    Stratum k of size N_k gets a quota of n * N_k / N rounded by largest remainder: every stratum gets
    the floor of its share, and the n - sum(floors) seats left go to the largest fractional parts
    (ties to the stratum seen first). The quotas sum to exactly n; e.g. 716 of Silvar-Med's 866
    (194 MRI, 143 CT, 529 X-ray) gives shares 160.40, 118.23, 437.37, so 160 + 118 + 437 = 715 and the
    last seat goes to MRI (0.40 the largest remainder): 161, 118, 437. n >= len(samples): all of them.
    """
    if n >= len(samples):
        return list(samples)
    if n < 0:
        raise ValueError(f"subset size must be >= 0, got {n}")
    key = "modality" if any(s.modality for s in samples) else "task" if any(s.task for s in samples) else None
    strata: dict[str | None, list[int]] = defaultdict(list)  # stratum -> positions in `samples`, in order
    for position, sample in enumerate(samples):
        strata[getattr(sample, key) if key else None].append(position)
    rng = random.Random(seed)
    chosen = []
    for stratum, quota in largest_remainder(n, {k: len(v) for k, v in strata.items()}).items():
        chosen += rng.sample(strata[stratum], quota)
    return [samples[position] for position in sorted(chosen)]


def largest_remainder(n: int, sizes: dict) -> dict:
    """Integer quotas proportional to `sizes` that sum to n (Hamilton's method)."""
    total = sum(sizes.values())
    quotas = {k: n * size // total for k, size in sizes.items()}  # integer arithmetic: no rounding error
    by_remainder = sorted(sizes, key=lambda k: n * sizes[k] % total, reverse=True)  # stable: ties keep order
    for k in by_remainder[: n - sum(quotas.values())]:
        quotas[k] += 1
    return quotas
