"""Masked language modelling: BERT's pretraining objective as a data collator, and batches of sentences.

Covers: ``mask_tokens``, the MLM corruption of Devlin et al. (2019) — select 15% of the
non-special tokens of each batch at random; of the selected, replace 80% by ``[MASK]``, 10% by
a random token and leave 10% unchanged; the labels hold the original id at selected positions
and -100 (ignored by ``cross_entropy``) everywhere else. Special tokens (``[CLS]``, ``[SEP]``,
``[PAD]``, ...) are never selected, so padding never becomes a prediction target. All
randomness comes from a ``torch.Generator`` that the caller passes in.
``MLMCollator`` pads a list of token-id lists and masks them in one call; ``pad_batch`` pads;
``sub_vocabulary`` keeps the part of a WordPiece vocabulary that a corpus uses (a smaller
embedding table and output layer for a small model); ``mlm_batches``/``classification_batches``
are batch functions for ``lama.train.Trainer`` over tokenized sentences (optionally drawn in
batches of similar length, so little compute goes into padding); ``predict`` runs a classifier
over many sentences in length-sorted batches.
Leaves out: whole-word masking, next-sentence prediction, span corruption (T5) and dynamic
sequence packing.

Shapes: token ids, attention mask and labels are ``(B, T)`` long tensors.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

__all__ = ["mask_tokens", "MLMCollator", "pad_batch", "sub_vocabulary", "mlm_batches", "classification_batches",
           "predict"]


def mask_tokens(input_ids: torch.Tensor, special_ids: Iterable[int], mask_id: int, vocab_size: int,
                generator: torch.Generator, mlm_prob: float = 0.15, mask_frac: float = 0.8,
                random_frac: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt ``input_ids`` (B, T) for masked language modelling; returns ``(corrupted, labels)``.

    Each token whose id is not in ``special_ids`` is selected independently with probability
    ``mlm_prob``. A selected token becomes ``mask_id`` with probability ``mask_frac``, a random
    non-special id with probability ``random_frac``, and stays itself otherwise. ``labels`` is
    the original id at selected positions and -100 elsewhere. ``input_ids`` is not modified.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must be a (B, T) long tensor, got {getattr(input_ids, 'shape', type(input_ids))}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    for name, p in (("mlm_prob", mlm_prob), ("mask_frac", mask_frac), ("random_frac", random_frac)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p!r}")
    if mask_frac + random_frac > 1.0:
        raise ValueError(f"mask_frac + random_frac must be <= 1, got {mask_frac} + {random_frac}")
    special = torch.tensor(sorted(set(int(i) for i in special_ids)), dtype=torch.long)
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id={mask_id} is outside the vocabulary [0, {vocab_size})")
    normal = torch.ones(vocab_size, dtype=torch.bool)
    normal[special] = False  # ids a random replacement may take: every non-special token
    candidates = normal.nonzero().squeeze(1)  # (V',)
    if len(candidates) == 0:
        raise ValueError("special_ids cover the whole vocabulary: nothing can be masked")
    # one uniform draw per position decides selection, a second decides what happens to it
    u_select = torch.rand(input_ids.shape, generator=generator)  # (B, T)
    u_action = torch.rand(input_ids.shape, generator=generator)  # (B, T)
    random_ids = candidates[torch.randint(len(candidates), input_ids.shape, generator=generator)]  # (B, T)
    selected = (u_select < mlm_prob) & ~torch.isin(input_ids, special)  # (B, T)
    labels = input_ids.masked_fill(~selected, -100)
    out = input_ids.clone()
    to_mask = selected & (u_action < mask_frac)
    to_random = selected & (u_action >= mask_frac) & (u_action < mask_frac + random_frac)
    out[to_mask] = mask_id
    out[to_random] = random_ids[to_random]
    return out, labels


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, max_length: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token-id lists to the longest (cut at ``max_length``): ``(input_ids, attention_mask)`` (B, T).

    Cutting keeps the last id of a sequence (its ``[SEP]``) at the new end, so a cut sequence is
    still framed ``[CLS] ... [SEP]``.
    """
    if len(seqs) == 0:
        raise ValueError("seqs must hold at least one sequence, got none")
    if max_length is not None:
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for [CLS] and [SEP]), got {max_length}")
        seqs = [s if len(s) <= max_length else [*s[:max_length - 1], s[-1]] for s in seqs]
    T = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros(len(seqs), T, dtype=torch.long)  # (B, T)
    for n, s in enumerate(seqs):
        input_ids[n, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        attention_mask[n, :len(s)] = 1
    return input_ids, attention_mask


@dataclass
class MLMCollator:
    """Pads a list of tokenized sentences and masks them: a dict ready for ``BertForMaskedLM(**batch)``.

    ``pad_id`` and ``mask_id`` are added to ``special_ids``: padding is never selected, and a random
    replacement is never ``[MASK]``.
    """
    vocab_size: int             # V: ids lie in [0, V)
    mask_id: int                # id of [MASK]
    pad_id: int                 # id of [PAD]
    special_ids: tuple = ()     # ids never selected ([CLS], [SEP], [UNK], ...); pad_id and mask_id are added
    mlm_prob: float = 0.15      # fraction of non-special tokens selected as prediction targets
    mask_frac: float = 0.8      # of the selected: replaced by [MASK]
    random_frac: float = 0.1    # of the selected: replaced by a random token (the rest stay unchanged)
    max_length: int | None = None  # cut longer sequences (keeping their final [SEP])

    def __post_init__(self):
        self.special_ids = tuple(sorted({*map(int, self.special_ids), int(self.pad_id), int(self.mask_id)}))

    def __call__(self, seqs: Sequence[Sequence[int]], generator: torch.Generator) -> dict:
        input_ids, attention_mask = pad_batch(seqs, self.pad_id, self.max_length)
        corrupted, labels = mask_tokens(input_ids, self.special_ids, self.mask_id, self.vocab_size, generator,
                                        self.mlm_prob, self.mask_frac, self.random_frac)
        return {"input_ids": corrupted, "attention_mask": attention_mask, "labels": labels}


def sub_vocabulary(tokenizer, tokenized: Iterable[Sequence[str]], min_count: int = 1) -> list[str]:
    """The part of ``tokenizer``'s vocabulary that a tokenized corpus uses at least ``min_count`` times.

    ``tokenized`` holds each text as the token strings ``tokenizer.tokenize`` gave. Returns a
    vocabulary list (the special tokens first, then the rest, each group in its original order) for
    ``WordPieceTokenizer(vocab)``. With ``min_count=1`` every word of the corpus splits exactly as
    before (each piece greedy longest-match chose is still there and nothing longer was added);
    other words may split differently, or become ``[UNK]``.
    """
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be a positive int, got {min_count!r}")
    counts = Counter(t for tokens in tokenized for t in tokens)
    specials = sorted(set(tokenizer.special_tokens.values()), key=tokenizer.vocab.get)  # [PAD] stays first in BERT's
    keep = [t for t in tokenizer.id_to_token if counts[t] >= min_count and t not in specials]
    return specials + keep


def _length_order(seqs, generator):
    """Indices sorted by length, ties broken at random (so equal-length sentences are shuffled)."""
    tie = torch.randperm(len(seqs), generator=generator).tolist()
    return sorted(range(len(seqs)), key=lambda n: (len(seqs[n]), tie[n]))


def _draw(n: int, batch_size: int, order, generator) -> list[int]:
    """Indices of one batch: uniformly at random, or (with ``order``) a run of similar lengths."""
    if order is None:
        return torch.randint(n, (batch_size,), generator=generator).tolist()
    start = int(torch.randint(max(1, n - batch_size + 1), (1,), generator=generator))
    return order[start:start + batch_size]


def mlm_batches(data: dict, collator: MLMCollator, by_length: bool = True, seed: int = 0) -> Callable:
    """Batch function ``get_batch(split, batch_size, generator)`` for ``Trainer``: masked sentences.

    ``data`` maps a split name to a list of token-id lists. With ``by_length`` a batch is a run of
    sentences of similar length (the length order is fixed once, with ties shuffled by ``seed``).
    """
    g = torch.Generator().manual_seed(seed)
    orders = {k: _length_order(v, g) if by_length else None for k, v in data.items()}

    def get_batch(split: str, batch_size: int, generator: torch.Generator) -> dict:
        if split not in data:
            raise KeyError(f"unknown split {split!r}; this batch function knows {sorted(data)}")
        seqs = data[split]
        idx = _draw(len(seqs), batch_size, orders[split], generator)
        return collator([seqs[n] for n in idx], generator)

    return get_batch


def classification_batches(data: dict, pad_id: int, max_length: int | None = None, by_length: bool = False,
                           seed: int = 0) -> Callable:
    """Batch function for ``Trainer``: ``data`` maps a split to ``(list of token-id lists, labels (N,))``."""
    g = torch.Generator().manual_seed(seed)
    for k, (seqs, labels) in data.items():
        if len(seqs) != len(labels):
            raise ValueError(f"split {k!r}: {len(seqs)} sequences but {len(labels)} labels")
    orders = {k: _length_order(v[0], g) if by_length else None for k, v in data.items()}

    def get_batch(split: str, batch_size: int, generator: torch.Generator) -> dict:
        if split not in data:
            raise KeyError(f"unknown split {split!r}; this batch function knows {sorted(data)}")
        seqs, labels = data[split]
        idx = _draw(len(seqs), batch_size, orders[split], generator)
        input_ids, attention_mask = pad_batch([seqs[n] for n in idx], pad_id, max_length)
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "labels": torch.as_tensor(labels)[torch.tensor(idx)]}

    return get_batch


@torch.no_grad()
def predict(model, seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int = 128,
            max_length: int | None = None) -> torch.Tensor:
    """Logits ``(N, n_classes)`` of a classifier over tokenized sentences, in their original order.

    Sentences are run in length-sorted batches (less padding); the result does not depend on
    the batching because padding is masked everywhere.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda n: len(seqs[n]))
    out = [None] * len(seqs)
    for i in range(0, len(seqs), batch_size):
        idx = order[i:i + batch_size]
        input_ids, attention_mask = pad_batch([seqs[n] for n in idx], pad_id, max_length)
        logits, _ = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
        for n, row in zip(idx, logits.float().cpu()):
            out[n] = row
    model.train(was_training)
    return torch.stack(out)
