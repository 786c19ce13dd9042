"""take_subset keeps each stratum's share exactly (largest remainder) and is seeded."""
from collections import Counter

from src.data.sample import Sample
from src.data.subset import largest_remainder, take_subset


def make(n, modality=None, task=None, start=0):
    return [Sample(id=str(start + i), dataset="d", image="x.png", question="q", answer="yes", answer_type="closed",
                   modality=modality, task=task) for i in range(n)]


def silvar_like():
    """The paper's reasoning set mix: 194 MRI, 143 CT, 529 X-ray (866 in all), interleaved."""
    samples = make(194, "MRI") + make(143, "CT", start=194) + make(529, "X-ray", start=337)
    return sorted(samples, key=lambda s: int(s.id) * 7919 % 866)


def test_716_of_the_reasoning_set_keeps_the_modality_mix():
    subset = take_subset(silvar_like(), 716, seed=0)
    # shares 716 * (194, 143, 529) / 866 = 160.40, 118.23, 437.37: floors 715, the last seat to MRI (.40)
    assert Counter(s.modality for s in subset) == {"MRI": 161, "CT": 118, "X-ray": 437}
    assert len({s.id for s in subset}) == 716


def test_largest_remainder_sums_exactly():
    # 10 * (1, 1, 1) / 3 = 3.33 each: floors 9, the seat left goes to the first stratum (ties keep order)
    assert largest_remainder(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    # 5 * (6, 3, 1) / 10 = 3.0, 1.5, 0.5: floors 4, the seat goes to b (0.5 ties with c; b comes first)
    assert largest_remainder(5, {"a": 6, "b": 3, "c": 1}) == {"a": 3, "b": 2, "c": 0}


def test_subset_is_seeded_and_in_the_original_order():
    samples = silvar_like()
    first = take_subset(samples, 100, seed=3)
    assert first == take_subset(samples, 100, seed=3)
    assert first != take_subset(samples, 100, seed=4)
    positions = [samples.index(s) for s in first]
    assert positions == sorted(positions)


def test_task_is_the_stratum_without_modality():
    samples = make(30, task="Count") + make(10, task="Depth", start=30)
    # 8 * (30, 10) / 40 = 6, 2 exactly
    assert Counter(s.task for s in take_subset(samples, 8, seed=0)) == {"Count": 6, "Depth": 2}


def test_n_at_least_the_split_returns_all_in_order():
    samples = silvar_like()
    assert take_subset(samples, 866, seed=0) == samples
    assert take_subset(samples, 5000, seed=9) == samples
