"""BERTScore scorer: offline loading, the F1 contract, parity with the `bert_score` package."""
import socket
import time

import pytest
import torch

HUGE = "lesion " * 15_000  # 105,000 characters
GARBAGE = bytes(range(256)).decode("latin-1")


@pytest.fixture(scope="module")
def no_network():
    """HF offline mode on, and any attempt to open a connection fails loudly."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", refuse)
        yield


@pytest.fixture(scope="module")
def scorer(no_network):
    from src.rewards.bertscore import MINILM, load_bertscorer

    return load_bertscorer(MINILM, device="cpu")


def test_loads_embedded_minilm_offline(scorer):
    from src.rewards.bertscore import MINILM

    assert (scorer.model_name, scorer.layer) == (MINILM, 6)


def test_default_falls_back_fast_when_roberta_is_not_cached(no_network, monkeypatch):
    from huggingface_hub import try_to_load_from_cache

    from src.rewards.bertscore import MINILM, ROBERTA_LARGE, load_bertscorer

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the probe itself must not try the network
    start = time.monotonic()
    default = load_bertscorer(device="cpu")
    cached = isinstance(try_to_load_from_cache(ROBERTA_LARGE, "config.json"), str)
    assert default.model_name == (ROBERTA_LARGE if cached else MINILM)
    assert default.layer == (17 if cached else 6)
    assert time.monotonic() - start < 30


def test_identical_text_scores_one_and_beats_unrelated_text(scorer):
    reference = "There is a round opacity in the left lower lobe of the lung."
    identical, related, unrelated = scorer.score(
        [reference, "A round opacity is seen in the left lower lung lobe.", "The stock market closed higher."],
        [reference] * 3,
    )
    assert identical > 0.999
    assert identical > related > unrelated
    assert related > 0.8  # a paraphrase: most tokens find a close match


def test_empty_text_on_either_side_scores_zero(scorer):
    assert scorer.score(["", "  \n", "lesion", "lesion"], ["lesion", "lesion", "", " "]) == [0.0] * 4


def test_odd_text_never_raises_and_stays_in_unit_interval(scorer):
    values = scorer.score([HUGE, GARBAGE, "\x00\x01", "é" * 600], ["lesion", GARBAGE, "yes", "e"])
    assert all(0.0 <= value <= 1.0 for value in values)
    assert values[1] > 0.999  # garbage against itself is still identical text


def test_result_does_not_depend_on_batch_size(scorer):
    candidates = ["the cat sat on the mat", "lesion in the liver", "yes", "an mri of the brain"]
    references = ["a cat was sitting on the mat", "hepatic lesion", "no", "brain ct"]
    scorer.clear_cache()
    big = scorer.score(candidates, references)
    scorer.clear_cache()
    scorer.batch_size = 1
    try:
        small = scorer.score(candidates, references)
    finally:
        scorer.batch_size = 64
    # Padding in the F1's matrices changes float32 summation order only: equal to ~1e-7.
    assert small == pytest.approx(big, abs=1e-6)


def test_a_texts_embedding_does_not_depend_on_its_batch_or_the_cache(scorer):
    """Embedded without padding among texts of its own token count, a text gets the same embedding in
    any company, so a cached score equals a fresh one."""
    text = "a bright lesion in the upper left"
    scorer.clear_cache()
    alone = scorer._embed([text])[text]
    scorer.clear_cache()
    company = [text, "a dark lesion in the lower right", "the organ is homogeneous", "no"]
    together = scorer._embed(company)
    assert together[text][0].shape == alone[0].shape  # [T, D]: every token of the text, none of padding
    assert torch.allclose(together[text][0], alone[0], atol=1e-6)
    assert torch.equal(together[text][1], alone[1])  # the counted tokens: all but [CLS] and [SEP]
    assert together[text][1].tolist() == [0.0] + [1.0] * (len(alone[1]) - 2) + [0.0]
    cached = scorer.score([text, "no lesion"], ["a lesion on the left", "no"])
    scorer.clear_cache()
    assert scorer.score([text, "no lesion"], ["a lesion on the left", "no"]) == pytest.approx(cached, abs=1e-6)


def test_the_cache_keeps_the_most_recent_texts_within_its_budget(scorer):
    from src.rewards.bertscore import BertScorer

    small = BertScorer(scorer.model_name, scorer.model, scorer.tokenizer, scorer.layer, scorer.device,
                       batch_size=64, cache_bytes=40_000)  # a few short texts' embeddings (384 floats a token)
    texts = [f"lesion number {word}" for word in ("one", "two", "three", "four", "five", "six", "seven")]
    expected = scorer.score(texts, texts[::-1])
    assert small.score(texts, texts[::-1]) == pytest.approx(expected, abs=1e-6)
    kept = list(small._cache)
    assert 0 < len(kept) < len(texts) and 0 < small._cached_bytes <= 40_000
    assert small._cached_bytes == sum(e.numel() * 4 + c.numel() * 4 for e, c in small._cache.values())
    small.score([kept[0]], ["lesion"])  # used again: now the most recent, and "lesion" after it
    assert list(small._cache)[-2:] == [kept[0], "lesion"]


def test_matches_the_bert_score_package(scorer):
    """Same model, same layer, no idf, no rescaling: the authors' implementation gives the same F1.
    (Texts with clearly positive cosines: the package scores padding as a cosine-0 match, see _f1.)"""
    import bert_score

    from src.rewards.bertscore import minilm_path

    candidates = ["the cat sat on the mat", "Yes, there is a lesion in the left lung.", "an mri of the brain"]
    references = ["a cat was sitting on the mat", "A lesion is seen in the left lung", "brain mri scan"]
    _, _, f1 = bert_score.score(candidates, references, model_type=minilm_path(), num_layers=6)
    assert scorer.score(candidates, references) == pytest.approx(f1.tolist(), abs=1e-6)


def test_mismatched_lengths_raise(scorer):
    with pytest.raises(ValueError, match="2 candidates but 1 references"):
        scorer.score(["a", "b"], ["a"])


def test_unknown_model_needs_a_layer():
    from src.rewards.bertscore import load_bertscorer

    with pytest.raises(ValueError, match="no BERTScore layer known for 'my/encoder'"):
        load_bertscorer("my/encoder")


def test_layer_is_checked_against_the_model(no_network):
    from src.rewards.bertscore import load_bertscorer, minilm_path

    with pytest.raises(ValueError, match="layer 7 outside 1..6"):
        load_bertscorer(minilm_path(), device="cpu", layer=7)
